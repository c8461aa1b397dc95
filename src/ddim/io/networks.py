"""The one place diffusers and transformers networks are built: from a config dict, or from a local folder
(config.json + safetensors weights; pickled weights are refused), moved and cast once, in eval mode."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError, UsageError
from ..models.registry import build_diffusers
from .checkpoint import load_state_into, read_json


def load_diffusers(folder: Path, expected: tuple[str, ...], device: torch.device | str = "cpu",
                   dtype: torch.dtype | None = None, weights: Path | None = None) -> torch.nn.Module:
    """The diffusers network saved in `folder` (one of the `expected` classes), with its weights (or those of
    `weights`: a distilled student shares its teacher's config)."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise UsageError(f"{folder} has no config.json")
    cfg = read_json(cfg_file)
    name = cfg.get("_class_name", expected[0])
    if name not in expected:
        raise UsageError(f"{folder}: expected {' or '.join(expected)}, found {name}")
    weights = weights or folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{weights.parent} has no diffusion_pytorch_model.safetensors (pickled .bin weights are "
                              "refused: ddim never unpickles)")
    net = build_diffusers(name, cfg, str(cfg_file))
    load_state_into(net, weights)
    return cast(net, device, dtype).eval()


def cast(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype | None) -> torch.nn.Module:
    """The module on `device`, and in `dtype` when one is given (diffusers warns on any dtype argument)."""
    module = module.to(device)
    return module.to(dtype) if dtype is not None else module


def require_transformers() -> Any:
    """The transformers package, or a one-line error naming the extra that brings it."""
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise UsageError("text-to-image folders need transformers: pip install 'ddim[text]'") from None


def load_text_encoder(folder: Path, architectures: tuple[str, ...] = ("CLIPTextModel",),
                      device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A transformers text encoder saved in `folder` (config.json + model.safetensors)."""
    transformers = require_transformers()
    cfg_file, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_file.is_file():
        raise UsageError(f"{folder} has no config.json")
    if not weights.is_file():
        raise CheckpointError(f"{folder} has no model.safetensors (pickled weights are refused)")
    cfg = read_json(cfg_file)
    arch = (cfg.get("architectures") or [architectures[0]])[0]
    if arch not in architectures:
        raise UsageError(f"{folder}: supported text encoders are {', '.join(architectures)}, found {arch}")
    cls = getattr(transformers, arch)
    try:
        model = cls(cls.config_class(**{k: v for k, v in cfg.items() if not k.startswith("_")}))
    except (TypeError, ValueError) as e:
        raise UsageError(f"{cfg_file} does not describe a {arch}: {str(e).splitlines()[0]}") from None
    tied = getattr(model, "_tied_weights_keys", None)
    load_state_into(model, weights, tied if isinstance(tied, dict) else None)
    return cast(model, device, dtype).eval()
