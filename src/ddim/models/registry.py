"""Network specs ({"type", "config"}) ⇄ networks: what a run folder records and how it is rebuilt; the one
place a diffusers network class is built from a config."""

from __future__ import annotations

import importlib
from typing import Any

import torch

from ..core.errors import CheckpointError, UsageError


def model_spec(kind: str, sample_shape: tuple[int, ...], hidden: int = 128, depth: int = 3,
               num_classes: int | None = None, interval: bool = False) -> dict[str, Any]:
    """The network's type and constructor config, derived from the data shape; `num_classes` adds a class
    embedding with one extra (null) class for classifier-free guidance, `interval` a second timestep embedding
    for MeanFlow's interval t − r (UNet only)."""
    if kind == "auto":
        kind = "mlp" if len(sample_shape) == 1 else "unet"
    if kind == "mlp":
        if num_classes is not None or interval:
            raise UsageError("class-conditional and meanflow training take images and the UNet (e.g. --data digits)")
        if len(sample_shape) != 1:
            raise UsageError(f"the MLP takes vectors, the data has sample shape {sample_shape}")
        return {"type": "mlp", "config": {"dim": sample_shape[0], "hidden": hidden, "depth": depth}}
    if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
        raise UsageError(f"the UNet takes square images (C, H, W), the data has sample shape {sample_shape}")
    from .unet import unet_config

    cfg = unet_config(sample_shape[1], sample_shape[0])
    if num_classes is not None:
        cfg["num_class_embeds"] = num_classes + 1  # diffusers' class embedding; the last index is the null class
    if interval:
        cfg["class_embed_type"] = "timestep"  # diffusers' second timestep embedding: MeanFlow's interval input
    return {"type": "unet", "config": cfg}


def build_model(spec: Any) -> torch.nn.Module:
    """The network a spec describes; a malformed spec (e.g. from a run folder's config.json) is a CheckpointError."""
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        raise CheckpointError(f"model spec must be an object with 'type' and 'config', got {str(spec)[:60]}")
    try:
        return _build(spec)
    except (TypeError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"model spec {spec.get('type')!r} has an invalid config: {msg}") from None


def _build(spec: dict[str, Any]) -> torch.nn.Module:
    if spec.get("type") == "mlp":
        from .mlp import MLP

        return MLP(**spec["config"])
    if spec.get("type") == "unet":
        return build_diffusers("UNet2DModel", spec["config"], "run config")
    raise CheckpointError(f"unknown model type {spec.get('type')!r} in run config")


def diffusers_class(name: str) -> type:
    """A diffusers model class by name, imported from its own module (not all of diffusers: start-up time)."""
    modules = {
        "UNet2DModel": "diffusers.models.unets.unet_2d",
        "UNet2DConditionModel": "diffusers.models.unets.unet_2d_condition",
        "AutoencoderKL": "diffusers.models.autoencoders.autoencoder_kl",
        "DiTTransformer2DModel": "diffusers.models.transformers.dit_transformer_2d",
    }
    try:
        if name in modules:
            from .diffusers_import import import_class

            return import_class(modules[name], name)
        return getattr(importlib.import_module("diffusers"), name)
    except (ImportError, AttributeError):
        raise UsageError(f"diffusers has no model class {name!r}") from None


def build_diffusers(name: str, config: dict[str, Any], where: str) -> torch.nn.Module:
    """A diffusers network of class `name` from its config (keys starting with `_` are bookkeeping)."""
    cls = diffusers_class(name)
    try:
        return cls(**{k: v for k, v in config.items() if not k.startswith("_")})  # unknown keys: TypeError
    except (TypeError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{where} does not describe a {name}: {msg}") from None

