"""diffusers interoperability: load a local pipeline / UNet folder as a Denoiser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError, UsageError
from ..core.guidance import ClassLabels
from ..core.prediction import Denoiser
from .checkpoint import read_json
from .config import denoiser_from_config

#: diffusers network classes a folder may hold, by sub-folder
NETWORKS = {"UNet2DModel": "unet", "DiTTransformer2DModel": "transformer"}


class _FirstChannels(torch.nn.Module):
    """A network with a learned variance (2C output channels, DiT's default): keep the C prediction channels."""

    def __init__(self, net: torch.nn.Module, channels: int) -> None:
        super().__init__()
        self.net, self.channels = net, channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kw: Any) -> torch.Tensor:
        out = self.net(x, t, **kw)
        return (out if isinstance(out, torch.Tensor) else out.sample)[:, : self.channels]


def load(path: str | Path) -> Denoiser:
    """A Denoiser from a local diffusers folder: a pipeline (model_index.json, unet/ or transformer/, scheduler/)
    or a bare network folder with a scheduler config beside it. Networks: UNet2DModel (unconditional or with a
    class embedding) and DiTTransformer2DModel (class-conditional); schedulers: the β-schedule ones and
    FlowMatchEulerDiscreteScheduler (flow models). Weights are read with safetensors only."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder")
    net_dir = next((path / d for d in ("unet", "transformer") if (path / d).is_dir()), path)
    sched_file = next((p for p in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json")
                       if p.is_file()), None)
    if not (net_dir / "config.json").is_file():
        raise UsageError(f"{path} is not a diffusers model folder (no unet/config.json or config.json)")
    if sched_file is None:
        raise UsageError(f"{path} has no scheduler config (scheduler/scheduler_config.json)")
    weights = net_dir / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{net_dir} has no diffusion_pytorch_model.safetensors (pickled .bin weights "
                              "are refused: ddim never unpickles)")
    net_cfg = read_json(net_dir / "config.json")
    cls_name = net_cfg.get("_class_name", "UNet2DModel")
    if cls_name not in NETWORKS:
        raise UsageError(f"{net_dir}: supported networks are {', '.join(NETWORKS)}; found {cls_name}")
    import diffusers

    from .checkpoint import load_state_into

    kwargs = {k: v for k, v in net_cfg.items() if not k.startswith("_")}
    try:
        net = getattr(diffusers, cls_name)(**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UsageError(f"{net_dir}/config.json does not describe a {cls_name}: {e}") from None
    load_state_into(net, weights)
    net.eval()
    c_in = net.config.in_channels
    size = net.config.sample_size
    size = size if isinstance(size, int) else size[0]
    conditioning = None
    if cls_name == "DiTTransformer2DModel":
        out_c = net.config.out_channels or 2 * c_in
        model: torch.nn.Module = _FirstChannels(net, c_in) if out_c != c_in else net
        k = net.config.num_embeds_ada_norm
        conditioning = ClassLabels(int(k), null=int(k)) if k else None  # DiT's label table has a CFG row
    else:
        model = net
        if net.config.num_class_embeds:  # a class-conditional UNet from elsewhere: no known null class
            conditioning = ClassLabels(int(net.config.num_class_embeds), null=None)
    den = denoiser_from_config(model, sched_file, sample_shape=(c_in, size, size))
    if (path / "conditioning.json").is_file():
        from .runs import conditioning_from_json

        f = path / "conditioning.json"
        conditioning = conditioning_from_json(read_json(f), str(f))
    den.conditioning = conditioning
    return den
