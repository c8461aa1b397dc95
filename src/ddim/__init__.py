"""ddim: fast, deterministic, tested sampling of diffusion models.

Layers, each importing only those before it: core (paths, prediction, samplers, sample) → models (networks,
the Model contract) → ops (inversion, latent edits, likelihood, schedule search, metrics) → io (files,
configs, one module per model format) → training → bench → api (requests, `run`) → app (CLI, demo).
Names are imported on first use, so `ddim --help` starts without torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "SAMPLERS": "core.samplers", "CheckpointError": "core.errors", "ContinuousPath": "core.path",
    "Denoiser": "core.prediction", "ModelOutputError": "core.errors", "NoisePath": "core.path",
    "NoiseSchedule": "core.schedule", "RunStats": "core.run", "SeededNoise": "core.noise", "StepInfo": "core.run",
    "UsageError": "core.errors", "sample": "core.sample", "ClassLabels": "core.guidance", "Guidance": "core.guidance",
    "FlowShift": "core.path", "ConditionalMixture": "models.mixture", "GaussianMixture": "models.mixture",
    "metrics": "ops", "sdedit": "ops.editing", "swap_condition": "ops.editing", "invert": "ops.inversion",
    "reconstruct": "ops.inversion", "edit": "ops.latent", "interpolate": "ops.latent", "lerp": "ops.latent",
    "slerp": "ops.latent", "log_likelihood": "ops.likelihood", "optimize_timesteps": "ops.optimize",
    "load_model": "io.loader", "run": "api.run", "parse_request": "api.request",
}
__all__ = sorted([*_LAZY, "load"])
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = import_module(".ops.metrics", __name__) if name == "metrics" else \
            getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ddim' has no attribute {name!r}")


def load(path: str) -> Any:
    """A Denoiser from a local diffusers folder (pipeline or UNet + scheduler config), a ddim run folder,
    or a built-in name (`digits`, `digits-cond`, `digits-flow`, `mixture:mog3`)."""
    from .io.loader import load_model

    return load_model(path).denoiser
