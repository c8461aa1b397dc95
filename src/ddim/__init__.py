"""ddim: fast, deterministic, tested sampling of diffusion models."""

from . import metrics
from .denoiser import Denoiser, ModelOutputError
from .inversion import invert, reconstruct
from .latent import edit, interpolate, lerp, slerp
from .likelihood import log_likelihood
from .models.mixture import GaussianMixture
from .noise import SeededNoise
from .optimize import optimize_timesteps
from .samplers import SAMPLERS, sample
from .schedule import NoiseSchedule

__all__ = [
    "SAMPLERS", "Denoiser", "GaussianMixture", "ModelOutputError", "NoiseSchedule", "SeededNoise", "edit",
    "interpolate", "invert", "lerp", "load", "log_likelihood", "metrics", "optimize_timesteps", "reconstruct",
    "sample", "slerp",
]


def load(path: str) -> Denoiser:
    """A Denoiser from a local diffusers folder (pipeline or UNet + scheduler config), a ddim run folder,
    or a built-in name (`digits`, `mixture:mog3`)."""
    from .loader import load_model

    return load_model(path).denoiser


__version__ = "0.1.0"
