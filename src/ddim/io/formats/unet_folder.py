"""A diffusers UNet2DModel folder (DDPMPipeline layout: model_index.json, unet/, scheduler/), unconditional or
with a class embedding (conditioning.json names the null class), with optional sampling.json defaults."""

from __future__ import annotations

from pathlib import Path

import torch

from ...core.errors import UsageError
from ...core.guidance import ClassLabels
from ...core.prediction import Denoiser
from ...models.contract import Model
from ..networks import load_diffusers
from ._folder import folder_conditioning, model_from_denoiser, network_denoiser

NAME = "unet_folder"


def detect(spec: str, path: Path | None) -> bool:
    return path is not None and path.is_dir() and ((path / "unet").is_dir() or (path / "model_index.json").is_file()
                                                   or (path / "scheduler").is_dir() or (path / "config.json").is_file())


def net_folder(path: Path) -> Path:
    folder = path / "unet" if (path / "unet").is_dir() else path
    if not (folder / "config.json").is_file():
        raise UsageError(f"{path} is not a diffusers model folder (no unet/config.json or config.json)")
    return folder


def load_unet(path: Path, folder: Path, device: torch.device, dtype: torch.dtype | None,
              weights: Path | None = None) -> Denoiser:
    """The Denoiser of the UNet2DModel in `folder` (weights from `weights` when given) with the scheduler and
    conditioning of the model folder `path`."""
    net = load_diffusers(folder, ("UNet2DModel",), device, dtype, weights)
    size = net.config.sample_size
    size = size if isinstance(size, int) else size[0]
    default = ClassLabels(int(net.config.num_class_embeds), null=None) if net.config.num_class_embeds else None
    cond = folder_conditioning(path, default)  # a class-conditional UNet from elsewhere: no known null class
    return network_denoiser(path, net, (net.config.in_channels, size, size), cond, dtype)


def load(spec: str, path: Path, device: torch.device, dtype: torch.dtype | None) -> Model:
    den = load_unet(path, net_folder(path), device, dtype)
    return model_from_denoiser(spec, NAME, den, path)
