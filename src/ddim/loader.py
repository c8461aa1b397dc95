"""Resolve a model spec (`mixture:mog3`, a run folder, a built-in name) to a ready Denoiser."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .denoiser import Denoiser
from .schedule import NoiseSchedule


@dataclass
class LoadedModel:
    denoiser: Denoiser
    sample_shape: tuple[int, ...]
    name: str
    info: dict[str, Any] = field(default_factory=dict)


def load_model(spec: str) -> LoadedModel:
    if spec.startswith("mixture:"):
        from .data import mixture

        name = spec.split(":", 1)[1]
        mix = mixture(name)
        sched = NoiseSchedule.linear(1000)
        den = Denoiser(mix.eps_model(sched), sched, sample_shape=(mix.dim,))
        return LoadedModel(den, (mix.dim,), spec, {"mixture": mix})
    raise ValueError(f"unknown model {spec!r}: use mixture:mog3")
