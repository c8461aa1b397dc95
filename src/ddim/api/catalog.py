"""What a front end can offer: the samplers with their declared options, the guidance rules, the spacings, and
a served model's description — one listing for `ddim samplers`, `GET /v1/samplers` and `GET /v1/models`."""

from __future__ import annotations

from typing import Any

from ..models.contract import Model


def samplers() -> list[dict[str, Any]]:
    """Every registered sampler: name (stable: none has been renamed), declared options with defaults, NFE per
    step, whether its step is DDIM-type (what CFG++ needs)."""
    from ..core.samplers import SAMPLERS

    return [{"name": name, "options": dict(s.options), "nfe_per_step": s.nfe_per_step, "nfe_offset": s.nfe_offset,
             "ddim_type": s.ddim_type}
            for name, s in sorted(SAMPLERS.items())]


def guidance_rules() -> list[dict[str, Any]]:
    from ..core.guidance import GUIDANCE_RULES

    return [{"name": r.name, "options": dict(r.options), "ddim_type_only": r.ddim_type_only}
            for r in GUIDANCE_RULES.values()]


def spacings() -> dict[str, list[str]]:
    from ..core.path import CONTINUOUS_SPACINGS
    from ..core.schedule import SPACINGS

    return {"grid": list(SPACINGS), "continuous": list(CONTINUOUS_SPACINGS)}


def describe_model(name: str, model: Model) -> dict[str, Any]:
    """A served model as clients see it (no paths: the name is the handle)."""
    d = model.defaults
    return {"id": name, "format": model.format, "condition": model.condition_kind,
            "image_shape": list(model.image_shape), "sample_shape": list(model.sample_shape),
            "prediction_type": model.denoiser.prediction_type, "fingerprint": model.fingerprint,
            "students": sorted(model.students), "defaults": {"sampler": d.sampler, "spacing": d.spacing,
                                                              "guidance": d.guidance,
                                                              "nfe": {str(k): dict(v) for k, v in d.nfe.items()}}}
