"""Sampling many seeds in shards: resumable, and spread over `torchrun` ranks.

Seeds seed..seed+n-1 are cut into chunks of `batch`; chunk k goes to rank k mod world and is written
atomically as its own .npy shard, so an interrupted run resumes from the shards already on disk. Rank 0
gathers the shards in seed order. Sample i depends only on its seed and its chunk's batch, which is the
same single-process or distributed, so the gathered output equals the single-process one bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import atomic_save_npy
from .denoiser import Denoiser
from .distributed import DistInfo
from .samplers import sample


def shard_path(folder: Path, start: int, end: int) -> Path:
    return folder / f"shard-{start:09d}-{end:09d}.npy"


def sample_sharded(den: Denoiser, sample_shape: tuple[int, ...], n: int, *, batch: int, seed: int, folder: Path,
                   dist: DistInfo | None = None, on_chunk: Callable[[int, int], None] | None = None,
                   **sample_kw: Any) -> np.ndarray | None:
    """Every rank samples its chunks (skipping finished shards); rank 0 returns the gathered array."""
    dist = dist or DistInfo()
    if batch < 1:
        raise ValueError("batch must be >= 1")
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(s, min(s + batch, n)) for s in range(0, n, batch)]
    for k, (a, b) in enumerate(chunks):
        if k % dist.world_size != dist.rank:
            continue
        path = shard_path(folder, seed + a, seed + b)
        if path.is_file():
            continue
        x = sample(den, (b - a, *sample_shape), seeds=range(seed + a, seed + b), **sample_kw)
        atomic_save_npy(path, x.detach().cpu().numpy())
        if on_chunk is not None:
            on_chunk(a, b)
    dist.barrier()
    if not dist.is_main:
        return None
    parts = []
    for a, b in chunks:
        path = shard_path(folder, seed + a, seed + b)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"shard {path} is missing or corrupt ({e}); rerun to resume") from None
        if arr.shape != (b - a, *sample_shape):
            raise ValueError(f"shard {path} has shape {arr.shape}, expected {(b - a, *sample_shape)}")
        parts.append(arr)
    return np.concatenate(parts)
