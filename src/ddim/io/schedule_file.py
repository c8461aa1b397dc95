"""`schedule.json` beside a model: a searched step list bound to that model (its fingerprint), the sampler and
the step count it was searched for, used by name with `--spacing optimised`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError, UsageError
from ..core.prediction import Denoiser
from .checkpoint import atomic_write_json, read_json
from .sharding import model_fingerprint

FILE = "schedule.json"


def search_for_model(model: Any, nfe: int, sampler: str, method: str, n_cal: int, *, prompt: str | None = None,
                     negative_prompt: str | None = None, guidance: float | None = None,
                     size: tuple[int, int] | None = None, progress: bool = False, **kw: Any) -> tuple[Any, dict]:
    """A schedule searched for a loaded Model: text-to-image folders under a prompt (default: the empty one)
    with their guidance (default: the model's) at a size (default: the model's), the denoiser resized first so a
    dynamic flow shift follows the size. Returns the OptimizedSchedule and the conditions it was searched under."""
    from ..ops.optimize import search_schedule

    den = model.denoiser
    searched: dict[str, Any] = {}
    if size is not None:
        shape = model.shape_for(size)
        den = den.replace(sample_shape=shape) if shape != model.sample_shape else den
        searched["size"] = f"{int(size[1])}x{int(size[0])}"  # width x height, as --size takes it
    if model.condition_kind == "prompt":
        p = "" if prompt is None else prompt
        g = model.defaults.guidance if guidance is None else float(guidance)
        kw.update(condition=model.condition([p] * n_cal), guidance=g,
                  uncond=None if negative_prompt is None else model.condition([negative_prompt] * n_cal))
        searched.update(prompt=p, guidance=g, **({} if negative_prompt is None else
                                                 {"negative_prompt": negative_prompt}))
    elif prompt is not None or negative_prompt is not None:
        raise UsageError(f"--prompt: {model.name} takes no prompts (a text-to-image folder does)")
    elif guidance is not None:
        raise UsageError(f"--guidance: the schedule search guides prompt models only; {model.name} takes none")
    return search_schedule(den, nfe, sampler, method=method, n_cal=n_cal, progress=progress, **kw), searched


def write_schedule(path: str | Path, den: Denoiser, result: Any, method: str, n_cal: int,
                   searched: dict[str, Any] | None = None) -> Path:
    """Store an OptimizedSchedule for `den` (atomic), with the prompt, guidance and size it was searched under."""
    path = Path(path)
    atomic_write_json(path, {
        "format": 1, "model": model_fingerprint(den), "sampler": result.sampler, "nfe": result.nfe,
        "steps": len(result.timesteps), "timesteps": [float(t) if not den.path.grid else int(t)
                                                      for t in result.timesteps.tolist()],
        "method": method, "calibration": {"samples": n_cal, "seeds": "10^6 + i",
                                          "error_best_fixed": result.error_start, "error": result.error_optimized,
                                          **(searched or {})}})
    return path


def read_schedule(path: str | Path, den: Denoiser, sampler: str | None, steps: int | None) -> tuple[str, torch.Tensor]:
    """(sampler, timesteps) of a stored schedule, refused when it belongs to another model, sampler or step count."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--spacing optimised needs {path} (search one with `ddim schedule`)")
    d = read_json(path)
    if not isinstance(d, dict) or not isinstance(d.get("timesteps"), list) or not isinstance(d.get("sampler"), str):
        raise CheckpointError(f"{path} is not a schedule file (timesteps, sampler, model)")
    if d.get("model") != model_fingerprint(den):
        raise UsageError(f"{path} was searched for another model (fingerprint differs); search it again")
    if sampler is not None and sampler != d["sampler"]:
        raise UsageError(f"{path} holds a {d['sampler']} schedule; use --sampler {d['sampler']} or search again")
    ts = den.path.validate_timesteps(d["timesteps"])
    if steps is not None and steps != len(ts):
        raise UsageError(f"{path} holds {len(ts)} steps ({d['nfe']} NFE with {d['sampler']}); asked for {steps}")
    return d["sampler"], ts
