"""`mixture:NAME`: an exact Gaussian mixture (ground-truth ε, no training) on the linear 1000-step schedule."""

from __future__ import annotations

from pathlib import Path

import torch

from ...core.prediction import Denoiser
from ...core.schedule import NoiseSchedule
from ...models.contract import Model

NAME = "mixture"


def detect(spec: str, path: Path | None) -> bool:
    return spec.startswith("mixture:")


def load(spec: str, path: Path | None, device: torch.device, dtype: torch.dtype | None) -> Model:
    from ..data import mixture

    mix = mixture(spec.split(":", 1)[1])
    sched = NoiseSchedule.linear(1000)
    den = Denoiser(mix.eps_model(sched), sched, sample_shape=(mix.dim,))
    return Model(spec, NAME, den, (mix.dim,), mixture=mix)
