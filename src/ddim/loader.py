"""Resolve a model spec (`mixture:mog3`, a run folder, a diffusers folder, `digits`) to a ready Denoiser."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .denoiser import Denoiser
from .schedule import NoiseSchedule

BUILTIN_MODELS = ("digits",)


@dataclass
class LoadedModel:
    denoiser: Denoiser
    sample_shape: tuple[int, ...]
    name: str
    info: dict[str, Any] = field(default_factory=dict)


def builtin_path(name: str) -> Path:
    """Folder of a model shipped inside the package (diffusers layout)."""
    return Path(str(resources.files("ddim") / "assets" / name))


def load_model(spec: str | Path) -> LoadedModel:
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
        from .train import load_run

        net, cfg = load_run(path)
        sched = NoiseSchedule.from_diffusers_config(cfg["schedule"])
        shape = tuple(cfg["sample_shape"])
        den = Denoiser(net, sched, prediction_type=cfg["prediction_type"], sample_shape=shape)
        return LoadedModel(den, shape, spec, {"config": cfg})
    if (path / "unet").is_dir() or (path / "model_index.json").is_file() or (path / "scheduler").is_dir():
        from .interop import load

        den = load(path)
        return LoadedModel(den, den.sample_shape or (), spec, {})
    if not path.exists():
        raise ValueError(f"unknown model {spec!r}: use mixture:mog3, digits, a run folder or a diffusers folder")
    raise ValueError(f"{path} is neither a ddim run folder (config.json + latest) nor a diffusers model folder")
