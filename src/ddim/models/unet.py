"""Image models: diffusers' UNet2DModel (the field's standard), in small configurations for tiny images."""

from __future__ import annotations

from typing import Any

import torch

from ..core.errors import UsageError


def unet_config(image_size: int = 8, channels: int = 1) -> dict[str, Any]:
    """A small UNet2DModel config for 8×8 / 16×16 / 32×32 inputs (attention only at the lowest resolution)."""
    if image_size not in (8, 16, 32):
        raise UsageError(f"small UNet configs exist for 8, 16 and 32 pixels, not {image_size}")
    if image_size == 8:
        blocks = (32, 64)
    elif image_size == 16:
        blocks = (32, 64, 64)
    else:
        blocks = (32, 64, 64, 128)
    down = ["DownBlock2D"] * (len(blocks) - 1) + ["AttnDownBlock2D"]
    up = ["AttnUpBlock2D"] + ["UpBlock2D"] * (len(blocks) - 1)
    return {"sample_size": image_size, "in_channels": channels, "out_channels": channels,
            "layers_per_block": 1, "block_out_channels": list(blocks), "down_block_types": down,
            "up_block_types": up, "norm_num_groups": 8, "attention_head_dim": 8}


def small_unet(image_size: int = 8, channels: int = 1, **overrides: Any) -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(**{**unet_config(image_size, channels), **overrides})
