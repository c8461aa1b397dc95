"""The core: noise paths, per-sample noise, the prediction interface, runs, samplers and `sample`."""

from .errors import CheckpointError, ModelOutputError, UsageError
from .noise import SeededNoise
from .path import ContinuousPath, Levels, NoisePath
from .prediction import Denoiser
from .run import RunStats, StepInfo
from .sample import sample
from .samplers import SAMPLERS, Sampler
from .schedule import NoiseSchedule

__all__ = ["SAMPLERS", "CheckpointError", "ContinuousPath", "Denoiser", "Levels", "ModelOutputError", "NoisePath",
           "NoiseSchedule", "RunStats", "Sampler", "SeededNoise", "StepInfo", "UsageError", "sample"]
