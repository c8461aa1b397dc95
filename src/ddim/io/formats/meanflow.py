"""A MeanFlow model folder (`ddim train --objective meanflow`): a UNet2DModel folder whose second timestep
embedding takes the interval t − r, marked by meanflow.json. `--steps n` (1–8) samples n uniform Euler steps of
the average velocity at h = 1/n; any other sampler, spacing or step count runs on the instantaneous velocity
(h = 0) like a flow model."""

from __future__ import annotations

from pathlib import Path

import torch

from ...core.errors import CheckpointError
from ...core.prediction import Denoiser
from ...models.contract import Model
from ...models.meanflow import MEANFLOW_FILE, interval_views, is_meanflow_unet
from ._folder import model_from_denoiser
from .unet_folder import load_unet, net_folder

NAME = "meanflow"


def detect(spec: str, path: Path | None) -> bool:
    return path is not None and (path / MEANFLOW_FILE).is_file()


def meanflow_model(spec: str, fmt: str, den: Denoiser, folder: Path) -> Model:
    """The Model of a MeanFlow denoiser: the h = 0 view as its own, the h = 1/n views as its n-step students."""
    if not is_meanflow_unet(den.net) or den.prediction_type != "flow_prediction":
        raise CheckpointError(f"{folder}: a MeanFlow model is a flow UNet2DModel with class_embed_type 'timestep'")
    base, views = interval_views(den)
    return model_from_denoiser(spec, fmt, base, folder, views, student_sampler="ddim", student_spacing="uniform",
                               students_only=False)


def load(spec: str, path: Path, device: torch.device, dtype: torch.dtype | None) -> Model:
    return meanflow_model(spec, NAME, load_unet(path, net_folder(path), device, dtype), path)
