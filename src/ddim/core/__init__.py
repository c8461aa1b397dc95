"""The core: noise paths, per-sample noise, the prediction interface, runs, samplers and `sample`.

Names are imported on first use (`ddim.core.errors` and the parser need no torch)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "CheckpointError": "errors", "ModelOutputError": "errors", "UsageError": "errors", "SeededNoise": "noise",
    "ContinuousPath": "path", "Levels": "path", "NoisePath": "path", "Denoiser": "prediction", "RunStats": "run",
    "StepInfo": "run", "sample": "sample", "SAMPLERS": "samplers", "Sampler": "samplers", "NoiseSchedule": "schedule",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ddim.core' has no attribute {name!r}")
