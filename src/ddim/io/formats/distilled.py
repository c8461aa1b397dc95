"""A distilled model folder (`ddim distill`): a UNet2DModel folder plus distilled.json naming one student per
step count. Each student is its own Denoiser, loaded once: sampling at 1 step and at 4 steps at the same time
never swaps weights in a shared network."""

from __future__ import annotations

from pathlib import Path

import torch

from ...core.errors import CheckpointError
from ...models.contract import Model
from ..checkpoint import read_json
from ._folder import model_from_denoiser
from .unet_folder import load_unet, net_folder

NAME = "distilled"


def detect(spec: str, path: Path | None) -> bool:
    return path is not None and (path / "distilled.json").is_file()


def load(spec: str, path: Path, device: torch.device, dtype: torch.dtype | None) -> Model:
    f = path / "distilled.json"
    d = read_json(f)
    table = d.get("steps")
    if not isinstance(table, dict) or not table:
        raise CheckpointError(f"{f}: steps must map step counts to student folders")
    students = {}
    for k, sub in sorted(table.items(), key=lambda kv: int(kv[0])):
        folder = (path / sub).resolve()
        if not folder.is_relative_to(path.resolve()):
            raise CheckpointError(f"{f}: student {sub!r} lies outside the model folder")
        students[int(k)] = load_unet(path, net_folder(path), device, dtype,
                                     folder / "diffusion_pytorch_model.safetensors")
    base = students[max(students)]
    return model_from_denoiser(spec, NAME, base, path, students, student_sampler=d.get("sampler", "ddim"),
                               student_spacing=d.get("spacing"))
