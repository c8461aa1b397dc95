"""ddim: fast, deterministic, tested sampling of diffusion models."""

from .denoiser import Denoiser, ModelOutputError
from .models.mixture import GaussianMixture
from .noise import SeededNoise
from .samplers import SAMPLERS, sample
from .schedule import NoiseSchedule

__all__ = ["SAMPLERS", "Denoiser", "GaussianMixture", "ModelOutputError", "NoiseSchedule", "SeededNoise",
           "sample"]
__version__ = "0.1.0"
