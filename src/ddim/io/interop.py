"""diffusers interoperability: load a local pipeline / UNet folder as a Denoiser."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import CheckpointError, UsageError
from ..core.prediction import Denoiser
from .checkpoint import read_json
from .config import denoiser_from_config


def load(path: str | Path) -> Denoiser:
    """A Denoiser from a local diffusers folder: a pipeline (model_index.json, unet/, scheduler/) or a bare
    UNet2DModel folder with a scheduler config beside it. Weights are read with safetensors only."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder")
    unet_dir = path / "unet" if (path / "unet").is_dir() else path
    sched_file = next((p for p in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json")
                       if p.is_file()), None)
    if not (unet_dir / "config.json").is_file():
        raise UsageError(f"{path} is not a diffusers model folder (no unet/config.json or config.json)")
    if sched_file is None:
        raise UsageError(f"{path} has no scheduler config (scheduler/scheduler_config.json)")
    weights = unet_dir / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{unet_dir} has no diffusion_pytorch_model.safetensors (pickled .bin weights "
                              "are refused: ddim never unpickles)")
    unet_cfg = read_json(unet_dir / "config.json")
    if unet_cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UsageError(f"{unet_dir}: only UNet2DModel is supported, found {unet_cfg.get('_class_name')}")
    from diffusers import UNet2DModel

    from .checkpoint import load_state_into

    kwargs = {k: v for k, v in unet_cfg.items() if not k.startswith("_")}
    try:
        net = UNet2DModel(**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UsageError(f"{unet_dir}/config.json does not describe a UNet2DModel: {e}") from None
    load_state_into(net, weights)
    size = net.config.sample_size
    size = size if isinstance(size, int) else size[0]
    den = denoiser_from_config(net.eval(), sched_file, sample_shape=(net.config.in_channels, size, size))
    if (path / "conditioning.json").is_file():
        from .runs import conditioning_from_json

        f = path / "conditioning.json"
        den.conditioning = conditioning_from_json(read_json(f), str(f))
    elif net.config.num_class_embeds:  # a class-conditional UNet from elsewhere: no known null class
        from ..core.guidance import ClassLabels

        den.conditioning = ClassLabels(int(net.config.num_class_embeds), null=None)
    return den
