"""Run folders → networks and Denoisers: the one place a run's config.json is read and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError
from ..core.guidance import ClassLabels
from ..core.prediction import PREDICTION_ALIASES, PREDICTION_TYPES, Denoiser
from ..models.registry import build_model
from . import checkpoint as ck
from .config import schedule_from_config
from .networks import cast


def load_run(run: str | Path, use_ema: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a run folder (EMA weights by default) and its config."""
    run = Path(run)
    cfg = check_run_config(ck.read_json(run / "config.json"), str(run / "config.json"))
    latest = ck.latest_checkpoint(run)
    if latest is None:
        raise CheckpointError(f"{run} has no complete checkpoint yet")
    net = build_model(cfg.get("model"))
    ck.load_state_into(net, latest / ("ema.safetensors" if use_ema else "model.safetensors"))
    return net.eval(), cfg


def check_run_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Types of the keys a run folder's config.json must hold, each a one-line error naming the key."""
    if cfg.get("format_version") != ck.FORMAT_VERSION:
        raise CheckpointError(f"{where} was written by an incompatible version "
                              f"(format {cfg.get('format_version')}, expected {ck.FORMAT_VERSION})")
    shape = cfg.get("sample_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise CheckpointError(f"{where}: sample_shape must be a list of positive integers, got {shape!r}")
    if cfg.get("prediction_type") not in (*PREDICTION_TYPES, *PREDICTION_ALIASES):
        raise CheckpointError(f"{where}: prediction_type must be one of {PREDICTION_TYPES}, "
                              f"got {cfg.get('prediction_type')!r}")
    if not isinstance(cfg.get("schedule"), dict):
        raise CheckpointError(f"{where}: schedule must be an object (a diffusers scheduler config)")
    return cfg


def load_run_denoiser(run: str | Path, use_ema: bool = True, device: torch.device | str = "cpu",
                      dtype: torch.dtype | None = None) -> tuple[Denoiser, dict[str, Any]]:
    """The Denoiser of a run folder (EMA weights, its schedule, prediction type and sample shape) and its config,
    its network on `device` in `dtype`."""
    net, cfg = load_run(run, use_ema)
    sched = schedule_from_config(cfg["schedule"])
    den = Denoiser(cast(net, device, dtype), sched, prediction_type=cfg["prediction_type"],
                   sample_shape=tuple(cfg["sample_shape"]), net_dtype=dtype,
                   conditioning=conditioning_from_json(cfg.get("conditioning"), str(Path(run) / "config.json")))
    return den, cfg


def conditioning_from_json(d: Any, where: str) -> ClassLabels | None:
    """A model's recorded conditioning (None: unconditional), each malformed field a one-line error."""
    if d is None:
        return None
    if not isinstance(d, dict) or d.get("type") != "class":
        raise CheckpointError(f"{where}: conditioning must be an object with type 'class'")
    k, null = d.get("num_classes"), d.get("null")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or not (null is None or isinstance(null, int)):
        raise CheckpointError(f"{where}: conditioning needs num_classes >= 1 and an integer or null 'null'")
    return ClassLabels.from_json(d)
