"""Model specs (`mixture:mog3`, a built-in name, a run folder, a diffusers folder) → a loaded `Model`, by
dispatching over the format registry (`ddim.io.formats`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from ..core.errors import UsageError
from ..models.contract import Model
from .formats import FORMATS, format_module

BUILTIN_MODELS = ("digits", "digits-cond", "digits-flow", "digits-distilled", "digits-rectified", "digits-meanflow",
                  "digits-rectified-1step")


def builtin_path(name: str) -> Path:
    """Folder of a model shipped inside the package (diffusers layout)."""
    return Path(str(resources.files("ddim") / "assets" / name))


def detect(spec: str) -> tuple[str, Path | None]:
    """(format name, folder) of a model spec; a one-line error when no format reads it."""
    path = None if spec.startswith("mixture:") else (builtin_path(spec) if spec in BUILTIN_MODELS else Path(spec))
    for name in FORMATS:
        if format_module(name).detect(spec, path):
            return name, path
    if path is None or not path.exists():
        raise UsageError(f"unknown model {spec!r}: use mixture:mog3, {', '.join(BUILTIN_MODELS)}, a run folder or "
                         "a diffusers folder")
    raise UsageError(f"{path} is not a diffusers model folder (model_index.json, unet/, scheduler/) nor a ddim "
                     "run folder (config.json + latest)")


def load_model(spec: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Model:
    """A model by name or folder, on `device`, its networks cast to `dtype` (the sampler's maths stay float32)."""
    spec = str(spec)
    name, path = detect(spec)
    return format_module(name).load(spec, path, torch.device(device), dtype)
