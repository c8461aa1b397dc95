"""What the diffusers-style folder formats share: the scheduler config beside the network, the conditioning
record, and the measured sampling defaults a folder may carry (sampling.json, an LCM/TCD scheduler class)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...core.errors import CheckpointError, UsageError
from ...core.prediction import Denoiser
from ...models.contract import Model, SamplingDefaults
from ..checkpoint import read_json

#: scheduler classes whose models sample with a consistency sampler by default
CONSISTENCY_SCHEDULERS = {"LCMScheduler": "lcm", "TCDScheduler": "tcd"}


def scheduler_file(path: Path) -> Path:
    """scheduler/scheduler_config.json of a pipeline folder (or scheduler_config.json beside a bare network)."""
    for p in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"):
        if p.is_file():
            return p
    raise UsageError(f"{path} has no scheduler config (scheduler/scheduler_config.json)")


#: what a sampling.json entry may hold: the sampler, its spacing and steps, and optionally an explicit level list
#: used when the budget is exactly that entry's (other budgets take the spacing)
SAMPLING_KEYS = {"sampler", "spacing", "steps", "timesteps"}


def sampling_defaults(path: Path | None, **kw: Any) -> SamplingDefaults:
    """A folder's measured defaults: sampling.json's table, or the consistency sampler of an LCM/TCD config."""
    if path is None:
        return SamplingDefaults(**kw)
    table: dict[int, dict[str, Any]] = {}
    f = path / "sampling.json"
    if f.is_file():
        whole = read_json(f)
        if unknown := sorted(set(whole) - {"nfe", "steps"}):
            raise CheckpointError(f"{f}: unknown keys {', '.join(unknown)} (known: nfe, steps)")
        counts = whole.get("steps")
        if counts is not None:
            if not (isinstance(counts, list) and counts and all(type(c) is int and c > 0 for c in counts)):
                raise CheckpointError(f"{f}: steps must be a list of positive integers (the step counts it "
                                      "was trained for)")
            kw = {**kw, "step_counts": tuple(counts)}
        raw = whole.get("nfe", {})
        try:
            table = {int(k): dict(v) for k, v in raw.items() if isinstance(v, dict) and isinstance(v.get("sampler"),
                                                                                              str)}
        except (TypeError, ValueError):
            raise CheckpointError(f"{f}: nfe must map budgets (integers) to {{sampler, spacing}}") from None
        for k, v in table.items():
            unknown = sorted(set(v) - SAMPLING_KEYS)
            if unknown:
                raise CheckpointError(f"{f}: nfe {k} has unknown keys {', '.join(unknown)} (known: "
                                      f"{', '.join(sorted(SAMPLING_KEYS))})")
            ts = v.get("timesteps")
            if ts is not None and (not isinstance(ts, list) or len(ts) != v.get("steps")
                                   or not all(isinstance(t, int | float) for t in ts)):
                raise CheckpointError(f"{f}: nfe {k} timesteps must be a list of `steps` numbers")
    sampler = spacing = None
    sched = path / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        sampler = CONSISTENCY_SCHEDULERS.get(read_json(sched).get("_class_name"))
        spacing = "lcm" if sampler else None
    return SamplingDefaults(nfe=table, sampler=sampler, spacing=spacing, **kw)


def model_from_denoiser(spec: str, fmt: str, den: Denoiser, folder: Path | None,
                        students: dict[int, Denoiser] | None = None, **defaults: Any) -> Model:
    """A pixel-space Model of a folder's denoiser (class-conditional when its conditioning says so)."""
    kind = "class" if den.conditioning is not None else None
    return Model(spec, fmt, den, den.sample_shape or (), condition_kind=kind, defaults=sampling_defaults(folder,
                 **defaults), students=students or {}, folder=folder)


def folder_conditioning(path: Path, default: Any = None) -> Any:
    """The folder's conditioning.json (classes and null label), else `default`."""
    f = path / "conditioning.json"
    if not f.is_file():
        return default
    from ..runs import conditioning_from_json

    return conditioning_from_json(read_json(f), str(f))


def network_denoiser(path: Path, net: torch.nn.Module, sample_shape: tuple[int, ...], conditioning: Any,
                     net_dtype: torch.dtype | None) -> Denoiser:
    """The Denoiser of a network and the scheduler config of its folder."""
    from ..config import denoiser_from_config

    return denoiser_from_config(net, scheduler_file(path), sample_shape=sample_shape, conditioning=conditioning,
                                net_dtype=net_dtype)
