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


def write_schedule(path: str | Path, den: Denoiser, result: Any, method: str, n_cal: int) -> Path:
    """Store an OptimizedSchedule for `den` (atomic)."""
    path = Path(path)
    atomic_write_json(path, {
        "format": 1, "model": model_fingerprint(den), "sampler": result.sampler, "nfe": result.nfe,
        "steps": len(result.timesteps), "timesteps": [float(t) if not den.path.grid else int(t)
                                                      for t in result.timesteps.tolist()],
        "method": method, "calibration": {"samples": n_cal, "seeds": "10^6 + i",
                                          "error_best_fixed": result.error_start, "error": result.error_optimized}})
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
