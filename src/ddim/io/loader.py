"""Resolve a model spec (`mixture:mog3`, a run folder, a diffusers folder, `digits`) to a ready Denoiser."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UsageError
from ..core.prediction import Denoiser
from ..core.schedule import NoiseSchedule

BUILTIN_MODELS = ("digits", "digits-cond")


@dataclass
class LoadedModel:
    denoiser: Denoiser
    sample_shape: tuple[int, ...]
    name: str
    info: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> LoadedModel:
        """Move the network (when it has parameters) to `device`."""
        if isinstance(self.denoiser.net, torch.nn.Module):
            self.denoiser.net.to(device)
        return self

    def exact_log_likelihood(self, x: torch.Tensor, bits_per_dim: bool = False) -> torch.Tensor | None:
        """The true log-density of x at the model's lowest level, for exact mixtures; None for trained models."""
        mix = self.info.get("mixture")
        if mix is None:
            return None
        a = self.denoiser.schedule.alpha_sigma(self.denoiser.schedule.t_range[0])[0] ** 2
        ll = mix.log_prob(x.double(), a)
        return -ll / (x[0].numel() * math.log(2)) if bits_per_dim else ll


def builtin_path(name: str) -> Path:
    """Folder of a model shipped inside the package (diffusers layout)."""
    return Path(str(resources.files("ddim") / "assets" / name))


def load_model(spec: str | Path) -> LoadedModel:
    """A model by name or folder, with its Denoiser, sample shape and provenance."""
    spec = str(spec)
    if spec.startswith("mixture:"):
        from .data import mixture

        name = spec.split(":", 1)[1]
        mix = mixture(name)
        sched = NoiseSchedule.linear(1000)
        den = Denoiser(mix.eps_model(sched), sched, sample_shape=(mix.dim,))
        return LoadedModel(den, (mix.dim,), spec, {"mixture": mix})
    path = builtin_path(spec) if spec in BUILTIN_MODELS else Path(spec)
    if (path / "config.json").is_file() and (path / "latest").is_file():
        from .runs import load_run_denoiser

        den, cfg = load_run_denoiser(path)
        return LoadedModel(den, den.sample_shape, spec, {"config": cfg})
    if (path / "unet").is_dir() or (path / "model_index.json").is_file() or (path / "scheduler").is_dir():
        from .interop import load

        den = load(path)
        return LoadedModel(den, den.sample_shape or (), spec, {})
    if not path.exists():
        raise UsageError(f"unknown model {spec!r}: use mixture:mog3, digits, a run folder or a diffusers folder")
    raise UsageError(f"{path} is neither a ddim run folder (config.json + latest) nor a diffusers model folder")
