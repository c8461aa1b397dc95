"""A diffusers DiT folder (DiTPipeline layout: transformer/ with DiTTransformer2DModel, scheduler/), class-
conditional with DiT's extra label row as the null class; a learned-variance output keeps its C channels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...core.guidance import ClassLabels
from ...models.contract import Model
from ..checkpoint import read_json
from ..networks import load_diffusers
from ._folder import folder_conditioning, model_from_denoiser, network_denoiser

NAME = "dit_folder"


def detect(spec: str, path: Path | None) -> bool:
    f = None if path is None else path / "transformer" / "config.json"
    return f is not None and f.is_file() and read_json(f).get("_class_name") == "DiTTransformer2DModel"


class FirstChannels(torch.nn.Module):
    """A network with a learned variance (2C output channels, DiT's default): keep the C prediction channels."""

    def __init__(self, net: torch.nn.Module, channels: int) -> None:
        super().__init__()
        self.net, self.channels = net, channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kw: Any) -> torch.Tensor:
        out = self.net(x, t, **kw)
        return (out if isinstance(out, torch.Tensor) else out.sample)[:, : self.channels]


def load(spec: str, path: Path, device: torch.device, dtype: torch.dtype | None) -> Model:
    net = load_diffusers(path / "transformer", ("DiTTransformer2DModel",), device, dtype)
    c_in, size = net.config.in_channels, net.config.sample_size
    size = size if isinstance(size, int) else size[0]
    out_c = net.config.out_channels or 2 * c_in
    k = net.config.num_embeds_ada_norm
    cond = folder_conditioning(path, ClassLabels(int(k), null=int(k)) if k else None)  # DiT's table has a CFG row
    den = network_denoiser(path, FirstChannels(net, c_in) if out_c != c_in else net, (c_in, size, size), cond, dtype)
    return model_from_denoiser(spec, NAME, den, path)
