"""diffusers scheduler configs ⇄ our noise schedule and Denoiser options, validated at this one boundary.

Missing keys take diffusers' DDIMScheduler defaults; unknown keys are ignored with a warning; a key of the
wrong type is a one-line `UsageError` naming the key and the file.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UsageError
from ..core.path import ContinuousPath, FlowShift, NoisePath
from ..core.prediction import PREDICTION_TYPES, Denoiser
from ..core.schedule import SPACINGS, NoiseSchedule
from .checkpoint import read_json

# key: (accepted types, default); bool is checked before int (a bool is an int in Python)
_SCHEDULE_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "num_train_timesteps": ((int,), 1000),
    "beta_start": ((float, int), 0.0001),
    "beta_end": ((float, int), 0.02),
    "beta_schedule": ((str,), "linear"),
    "trained_betas": ((list, type(None)), None),
    "set_alpha_to_one": ((bool,), True),
    "steps_offset": ((int,), 0),
    "rescale_betas_zero_snr": ((bool,), False),
    "timestep_spacing": ((str,), "leading"),
    "prediction_type": ((str,), "epsilon"),
    "clip_sample": ((bool,), False),
    "clip_sample_range": ((float, int), 1.0),
    "thresholding": ((bool,), False),
    "dynamic_thresholding_ratio": ((float, int), 0.995),
    "sample_max_value": ((float, int), 1.0),
}
# Keys understood elsewhere (sampler options, bookkeeping): accepted without a warning, not type-checked here.
_OTHER_KEYS = {
    "_class_name", "_diffusers_version", "variance_type", "skip_prk_steps", "solver_order", "algorithm_type",
    "solver_type", "lower_order_final", "use_karras_sigmas", "predict_x0", "disable_corrector", "solver_p",
    "euler_at_final", "final_sigmas_type", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas",
    "use_flow_sigmas", "lambda_min_clipped", "flow_shift", "shift", "time_shift_type", "timestep_type",
    "_use_default_values", "original_inference_steps", "timestep_scaling",
}
SCHEDULE_CONFIG_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                        "set_alpha_to_one", "steps_offset", "rescale_betas_zero_snr", "timestep_spacing")


def _raw_config(config: dict[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    if isinstance(config, dict):
        return config, "scheduler config"
    path = Path(config)
    if path.is_dir():
        path = path / "scheduler_config.json"
    return read_json(path), str(path)


def _shown(v: Any) -> str:
    """A value for an error message: its JSON when it has one, else its repr (never a second error)."""
    try:
        return json.dumps(v)[:60]
    except (TypeError, ValueError):
        return repr(v)[:60]


def read_scheduler_config(config: dict[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    """(validated config with defaults filled in, where it came from) from a dict or a scheduler_config.json."""
    config, where = _raw_config(config)
    unknown = sorted(set(config) - set(_SCHEDULE_KEYS) - _OTHER_KEYS)
    if unknown:
        warnings.warn(f"{where}: ignoring unknown scheduler config keys: {', '.join(unknown)}", stacklevel=3)
    out: dict[str, Any] = {}
    for key, (types, default) in _SCHEDULE_KEYS.items():
        v = config.get(key, default)
        if key == "trained_betas" and isinstance(v, np.ndarray | tuple):  # diffusers takes arrays here too
            v = np.asarray(v).tolist()
        ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
        if not ok or (isinstance(v, float) and not math.isfinite(v)):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise UsageError(f"{where}: {key} must be {want}, got {_shown(v)}")
        out[key] = v
    grid_types = [p for p in PREDICTION_TYPES if p != "flow_prediction"]  # velocity models: a FlowMatch scheduler
    if out["prediction_type"] not in grid_types:
        raise UsageError(f"{where}: unknown prediction_type {out['prediction_type']!r} for a β-schedule scheduler; "
                         f"choose one of {', '.join(grid_types)} (flow models use FlowMatchEulerDiscreteScheduler)")
    if out["timestep_spacing"] not in SPACINGS:
        raise UsageError(f"{where}: unknown timestep_spacing {out['timestep_spacing']!r}")
    if out["num_train_timesteps"] < 1:
        raise UsageError(f"{where}: num_train_timesteps must be >= 1")
    if out["trained_betas"] is not None and not all(isinstance(b, int | float) and not isinstance(b, bool)
                                                   for b in out["trained_betas"]):
        raise UsageError(f"{where}: trained_betas must be a list of numbers")
    return out, where


FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
_FLOW_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "num_train_timesteps": ((int,), 1000),
    "shift": ((float, int), 1.0),
    "use_dynamic_shifting": ((bool,), False),
    "base_shift": ((float, int, type(None)), 0.5),
    "max_shift": ((float, int, type(None)), 1.15),
    "base_image_seq_len": ((int, type(None)), 256),
    "max_image_seq_len": ((int, type(None)), 4096),
    "shift_terminal": ((float, int, type(None)), None),
    "time_shift_type": ((str,), "exponential"),
    "invert_sigmas": ((bool,), False),
    "stochastic_sampling": ((bool,), False),
    "use_karras_sigmas": ((bool,), False),
    "use_exponential_sigmas": ((bool,), False),
    "use_beta_sigmas": ((bool,), False),
}


def is_flow_config(config: dict[str, Any]) -> bool:
    return config.get("_class_name") in FLOW_SCHEDULERS


def flow_path_from_config(config: dict[str, Any], where: str = "scheduler config",
                          sample_shape: tuple[int, ...] | None = None, patch: int = 2,
                          grid: str = "scheduler") -> ContinuousPath:
    """The flow path (σ = t, network time σ·N) and σ list of a FlowMatchEulerDiscreteScheduler config; under
    dynamic shifting μ follows the token count of `sample_shape` in `patch`×`patch` patches (calculate_shift);
    `grid="pipeline"`: σ before shifting is linspace(1, 1/n, n), as FluxPipeline passes it."""
    c = {}
    for key, (types, default) in _FLOW_KEYS.items():
        v = config.get(key, default)
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types) or (
                isinstance(v, float) and not math.isfinite(v)):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise UsageError(f"{where}: {key} must be {want}, got {_shown(v)}")
        c[key] = v
    if c["invert_sigmas"]:
        raise UsageError(f"{where}: invert_sigmas (an increasing σ list) cannot drive ddim's samplers; the drop-in "
                         "ddim.diffusers.FlowMatchEulerDiscreteScheduler takes it")
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        if c[key]:
            raise UsageError(f"{where}: {key} is not read when ddim samples a flow model: ask for the spacing "
                             "(spacing='karras' in the API, --spacing karras in the CLI); the drop-in "
                             "ddim.diffusers.FlowMatchEulerDiscreteScheduler takes the key")
    line = None
    if c["use_dynamic_shifting"]:
        line = (c["base_image_seq_len"] or 256, c["max_image_seq_len"] or 4096,
                float(c["base_shift"] if c["base_shift"] is not None else 0.5),
                float(c["max_shift"] if c["max_shift"] is not None else 1.15), patch)
    try:
        shift = FlowShift(float(c["shift"]), c["use_dynamic_shifting"], None,
                          None if c["shift_terminal"] is None else float(c["shift_terminal"]), c["time_shift_type"],
                          c["num_train_timesteps"], line, grid)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    path = ContinuousPath("flow", t_max=1.0, time_scale=float(c["num_train_timesteps"]), flow_shift=shift)
    return path if sample_shape is None else path.at_shape(sample_shape)


def flow_config(path: ContinuousPath) -> dict[str, Any]:
    """A FlowMatchEulerDiscreteScheduler config for a flow path."""
    fs = path.flow_shift or FlowShift(num_train_timesteps=int(path.time_scale))
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.42.1", **fs.to_json()}


def schedule_from_config(config: dict[str, Any] | str | Path) -> NoisePath:
    """The noise path of a diffusers scheduler config (dict, file, or folder holding scheduler_config.json):
    a grid schedule, or the flow path of a FlowMatch scheduler."""
    raw, where = _raw_config(config)
    if is_flow_config(raw):
        return flow_path_from_config(raw, where)
    c, where = read_scheduler_config(config)
    T, rescale, spacing = c["num_train_timesteps"], c["rescale_betas_zero_snr"], c["timestep_spacing"]
    orig = raw.get("original_inference_steps", min(50, T))  # an LCM/TCD key: validated when given
    if isinstance(orig, bool) or not isinstance(orig, int) or not 1 <= orig <= T:
        raise UsageError(f"{where}: original_inference_steps must be an integer in 1..{T}, got {orig!r}")
    kw = {"steps_offset": c["steps_offset"], "spacing": spacing, "set_alpha_to_one": c["set_alpha_to_one"],
          "original_inference_steps": orig}
    kind = c["beta_schedule"]
    try:
        if c["trained_betas"] is not None:
            betas = np.asarray(c["trained_betas"], dtype=np.float64)
            sched = NoiseSchedule._from_betas_rescaled(betas, rescale, {"trained_betas": betas.tolist()},
                                                       "trained_betas", **kw)
        elif kind == "linear":
            sched = NoiseSchedule.linear(T, c["beta_start"], c["beta_end"], rescale_zero_terminal_snr=rescale, **kw)
        elif kind == "scaled_linear":
            sched = NoiseSchedule.scaled_linear(T, c["beta_start"], c["beta_end"], rescale_zero_terminal_snr=rescale,
                                                **kw)
        elif kind == "squaredcos_cap_v2":
            sched = NoiseSchedule.cosine(T, rescale_zero_terminal_snr=rescale, **kw)
        else:
            raise UsageError(f"unsupported beta_schedule {kind!r} (linear, scaled_linear, squaredcos_cap_v2)")
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    return sched


def schedule_to_config(sched: NoisePath) -> dict[str, Any]:
    """A scheduler config diffusers' schedulers accept (betas written out when not a named schedule; a flow
    path as FlowMatchEulerDiscreteScheduler)."""
    if isinstance(sched, ContinuousPath) and sched.kind == "flow":
        return flow_config(sched)
    if not isinstance(sched, NoiseSchedule):
        raise UsageError(f"no diffusers scheduler config for {sched!r}")
    cfg = {k: v for k, v in sched.config.items() if k in SCHEDULE_CONFIG_KEYS}
    if "beta_schedule" not in cfg and "trained_betas" not in cfg:
        cfg["trained_betas"] = sched.betas.tolist()
    cfg["num_train_timesteps"] = sched.T
    cfg["set_alpha_to_one"] = sched.set_alpha_to_one and sched.final_alpha_cumprod == 1.0
    cfg["steps_offset"] = sched.steps_offset
    cfg["timestep_spacing"] = sched.spacing if sched.spacing in ("leading", "trailing", "linspace") else "trailing"
    return cfg


def denoiser_from_config(net: Callable[..., Any] | None, config: dict[str, Any] | str | Path,
                         sample_shape: tuple[int, ...] | None = None, **denoiser_kw: Any) -> Denoiser:
    """A Denoiser with the schedule and prediction options of a diffusers scheduler config (a FlowMatch config:
    the flow path and velocity prediction; μ for dynamic shifting from the sample size, 2×2 patches)."""
    raw, where = _raw_config(config)
    if is_flow_config(raw):
        return Denoiser(net, flow_path_from_config(raw, where, sample_shape), prediction_type="flow_prediction",
                        sample_shape=sample_shape, **denoiser_kw)
    c, _ = read_scheduler_config(config)
    clip = float(c["clip_sample_range"]) if c["clip_sample"] else None
    return Denoiser(net, schedule_from_config(c), prediction_type=c["prediction_type"], clip_sample=clip,
                    thresholding=c["thresholding"], dynamic_thresholding_ratio=float(c["dynamic_thresholding_ratio"]),
                    sample_max_value=float(c["sample_max_value"]), sample_shape=sample_shape, **denoiser_kw)
