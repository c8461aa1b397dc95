"""A result on disk: the main array as .npy (written atomically) and its picture beside it, the same way for
every front end; a finished sharded run's shard folder is removed once the merged file is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..core.errors import UsageError
from .run import Result

#: tasks whose main output is a picture (`--out X.png`; the array is written beside it as X.npy)
PICTURE_TASKS = ("edit", "interpolate")


def check_out(task: str, out: str | Path) -> Path:
    """The output path a task writes, with the suffix it needs."""
    path = Path(out)
    want = (".png", ".npy") if task in PICTURE_TASKS else (".npy",)
    if path.suffix not in want:
        raise UsageError(f"--out must end in {' or '.join(want)} for {task}, got {path}")
    return path


def title(result: Result) -> str:
    plan, req = result.provenance["plan"], result.provenance["request"]
    eta = f", eta={req['options']['eta']}" if "eta" in req.get("options", {}) else ""
    return f"{result.provenance['model']['name']}: {plan['sampler']}{eta} {plan['steps']} steps"


def save_result(result: Result, out: str | Path, *, shards: Path | None = None, keep_shards: bool = False
                ) -> list[Path]:
    """Write the result's main array and its picture(s); returns the paths written."""
    from ..io import plots
    from ..io.checkpoint import atomic_save_npy

    out = check_out(result.task, out)
    if not result.arrays:  # another torchrun rank
        return []
    npy = out.with_suffix(".npy")
    atomic_save_npy(npy, result.main)
    if shards is not None and not keep_shards and shards.is_dir():
        shutil.rmtree(shards, ignore_errors=True)
    a = {k: torch.from_numpy(v) for k, v in result.arrays.items()}
    t, png = result.task, out.with_suffix(".png")
    if t == "sample" or t == "img2img":
        return [npy, plots.save_samples_figure(a["samples"], png, title(result))]
    if t in ("invert", "reconstruct"):
        req = result.provenance["request"]
        return [npy, plots.save_pairs_figure(a["inputs"], a["reconstruction"], png,
                                             f"encode ({req['steps']} steps, refine={req['refine']}) → decode")]
    if t == "edit":
        labels = [float(s) for s in result.labels] if "direction" in result.summary else result.labels
        return [npy, plots.save_edit_grid(a["grid"], labels, png)]
    if t == "interpolate":
        req = result.provenance["request"]
        strip = plots.save_strip(a["frames"], png, f"{req['method']} in noise space, {req['n']} points, DDIM "
                                                   f"{result.provenance['plan']['steps']} steps")
        return [npy, strip, plots.save_animation(a["frames"], out.with_suffix(".gif"))]
    return [npy]
