"""ddim: fast, deterministic, tested sampling of diffusion models.

Layers, each importing only those before it: core (paths, prediction, samplers, sample) → models → ops
(inversion, latent edits, likelihood, schedule search, metrics) → io (files, configs, diffusers folders) →
training → bench → app (CLI, demo).
"""

from .core import (
    SAMPLERS,
    CheckpointError,
    ContinuousPath,
    Denoiser,
    ModelOutputError,
    NoisePath,
    NoiseSchedule,
    RunStats,
    SeededNoise,
    StepInfo,
    UsageError,
    sample,
)
from .core.guidance import ClassLabels, Guidance
from .core.path import FlowShift
from .models.mixture import ConditionalMixture, GaussianMixture
from .ops import metrics
from .ops.editing import sdedit, swap_condition
from .ops.inversion import invert, reconstruct
from .ops.latent import edit, interpolate, lerp, slerp
from .ops.likelihood import log_likelihood
from .ops.optimize import optimize_timesteps

__all__ = [
    "SAMPLERS", "CheckpointError", "ClassLabels", "ConditionalMixture", "ContinuousPath", "Denoiser", "FlowShift",
    "GaussianMixture", "Guidance", "ModelOutputError", "NoisePath", "NoiseSchedule", "RunStats", "SeededNoise",
    "StepInfo", "UsageError", "edit", "interpolate", "invert", "lerp", "load", "log_likelihood", "metrics",
    "optimize_timesteps", "reconstruct", "sample", "sdedit", "slerp", "swap_condition",
]


def load(path: str) -> Denoiser:
    """A Denoiser from a local diffusers folder (pipeline or UNet + scheduler config), a ddim run folder,
    or a built-in name (`digits`, `digits-cond`, `digits-flow`, `mixture:mog3`)."""
    from .io.loader import load_model

    return load_model(path).denoiser


__version__ = "0.1.0"
