"""Sampling many seeds in shards: resumable, bound to their exact run, and spread over `torchrun` ranks.

Seeds seed..seed+n-1 are cut into chunks of `batch`; chunk k goes to rank k mod world and is written
atomically as its own .npy shard, so an interrupted run resumes from the shards already on disk. The folder's
`manifest.json` records everything that determines the samples (model fingerprint, sampler, steps, spacing,
options, seeds, batch, dtype): shards of a different run are never reused — the folder is restarted, with a
warning. A damaged shard is verified as damaged and redone. Rank 0 gathers the shards in seed order; sample i
depends only on its seed, so the gathered output equals the single-process one bit for bit.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import UsageError
from ..core.prediction import Denoiser
from ..core.run import RunStats
from ..core.sample import sample
from ..models.contract import denoiser_fingerprint
from .checkpoint import atomic_save_npy, atomic_write_json
from .distributed import DistInfo

MANIFEST = "manifest.json"


def shard_path(folder: Path, start: int, end: int) -> Path:
    return folder / f"shard-{start:09d}-{end:09d}.npy"


def model_fingerprint(den: Denoiser) -> str:
    """sha256 over the network's weights, its prediction options and its noise levels: a denoiser's identity."""
    return denoiser_fingerprint(den)


def _load_shard(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The shard's array, or None when it is damaged (unreadable, wrong shape, non-finite)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if arr.shape != shape or not np.isfinite(arr).all():
        return None
    return arr


def _prepare(folder: Path, manifest: dict[str, Any], dist: DistInfo) -> None:
    """Create the folder, or restart it when its manifest belongs to another run (saying so)."""
    if dist.is_main:
        path = folder / MANIFEST
        if folder.exists():
            try:
                old = json.loads(path.read_text()) if path.is_file() else None
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                old = None
            if old != manifest:
                shards = list(folder.glob("shard-*.npy"))
                if shards:
                    why = "it has no valid manifest" if old is None else "they were made by a different run: " + \
                        ", ".join(k for k in manifest if old.get(k) != manifest[k])
                    warnings.warn(f"{folder}: discarding {len(shards)} shards ({why}); sampling afresh", stacklevel=3)
                    for s in shards:
                        s.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, manifest)
    dist.barrier()


def sample_sharded(den: Denoiser, sample_shape: tuple[int, ...], n: int, *, batch: int, seed: int, folder: Path,
                   dist: DistInfo | None = None, on_chunk: Callable[[int, int], None] | None = None,
                   stats: RunStats | None = None, callback: Callable | None = None, **sample_kw: Any
                   ) -> np.ndarray | None:
    """Every rank samples its chunks (skipping finished, intact shards of this run); rank 0 gathers them."""
    dist = dist or DistInfo()
    if batch < 1:
        raise UsageError("batch must be >= 1")
    manifest = {"model": model_fingerprint(den), "chunk": den.fixed_rows, "net_dtype": str(den.net_dtype),
                "n": n, "batch": batch, "seed": seed,
                "sample_shape": list(sample_shape),
                "sampling": json.loads(json.dumps(sample_kw, default=_jsonable, sort_keys=True))}
    _prepare(folder, manifest, dist)
    chunks = [(s, min(s + batch, n)) for s in range(0, n, batch)]
    for k, (a, b) in enumerate(chunks):
        if k % dist.world_size != dist.rank:
            continue
        path = shard_path(folder, seed + a, seed + b)
        if path.is_file() and _load_shard(path, (b - a, *sample_shape)) is not None:
            continue  # done by an earlier, interrupted run with the same manifest
        kw = {k: (_rows(v, a, b, n) if k in ("condition", "uncond") else v) for k, v in sample_kw.items()}
        x, st = sample(den, (b - a, *sample_shape), seeds=range(seed + a, seed + b), return_stats=True,
                       callback=callback, **kw)
        if stats is not None:
            stats.nfe = st.nfe
        atomic_save_npy(path, x.detach().cpu().numpy())
        if on_chunk is not None:
            on_chunk(a, b)
    dist.barrier()
    if not dist.is_main:
        return None
    parts = []
    for a, b in chunks:
        path = shard_path(folder, seed + a, seed + b)
        arr = _load_shard(path, (b - a, *sample_shape))
        if arr is None:
            path.unlink(missing_ok=True)
            raise UsageError(f"shard {path} is missing or damaged and was removed; rerun the same command to redo it")
        parts.append(arr)
    return np.concatenate(parts)


def _jsonable(o: Any) -> Any:
    return o.tolist() if isinstance(o, torch.Tensor) else str(o)


def _rows(cond: Any, a: int, b: int, n: int) -> Any:
    """Rows a..b of a per-sample condition (labels, or a dict of batch-first tensors); one-for-all stays."""
    if isinstance(cond, dict):
        return {k: _rows(v, a, b, n) for k, v in cond.items()}
    if isinstance(cond, torch.Tensor | list | tuple) and len(cond) == n and n > 1:
        return cond[a:b]
    return cond


def draw(den: Denoiser, sample_shape: tuple[int, ...], n: int, *, batch: int, seed: int, shard_folder: Path,
         dist: DistInfo | None = None, progress: bool = True, callback: Callable | None = None, **sample_kw: Any
         ) -> tuple[np.ndarray | None, RunStats]:
    """n samples as an array: in one batch, or — above `batch` or under torchrun — as resumable shards in
    `shard_folder`. Returns (array on rank 0, None elsewhere; the run's stats per batch)."""
    dist = dist or DistInfo()
    stats = RunStats()
    if not (dist.active or n > batch):
        x, stats = sample(den, (n, *sample_shape), seed=seed, progress=progress, return_stats=True,
                          callback=callback, **sample_kw)
        return x.cpu().numpy(), stats
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"rank {dist.rank} samples", disable=not dist.is_main)
    try:
        arr = sample_sharded(den, sample_shape, n, batch=batch, seed=seed, folder=shard_folder, dist=dist,
                             on_chunk=(lambda a, b: bar.update((b - a) * dist.world_size)) if bar else None,
                             stats=stats, callback=callback, **sample_kw)
    finally:
        if bar is not None:
            bar.close()
    return arr, stats

