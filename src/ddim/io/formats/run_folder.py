"""A ddim run folder (config.json + latest checkpoint): the EMA network of a `ddim train` run."""

from __future__ import annotations

from pathlib import Path

import torch

from ...models.contract import Model
from ..runs import load_run_denoiser
from ._folder import model_from_denoiser

NAME = "run_folder"


def detect(spec: str, path: Path | None) -> bool:
    return path is not None and (path / "config.json").is_file() and (path / "latest").is_file()


def load(spec: str, path: Path, device: torch.device, dtype: torch.dtype | None) -> Model:
    den, cfg = load_run_denoiser(path, device=device, dtype=dtype)
    if isinstance(cfg.get("train"), dict) and cfg["train"].get("objective") == "meanflow":
        from .meanflow import meanflow_model

        return meanflow_model(spec, NAME, den, path)
    return model_from_denoiser(spec, NAME, den, path)
