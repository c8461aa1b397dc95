"""Reflow (rectified flow, Liu et al. 2023, Alg. 1): couple noise with the flow model's own ODE samples, then
fine-tune the model on straight paths between each pair, so that few Euler steps suffice."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import UsageError
from ..core.noise import SeededNoise
from ..core.sample import sample
from ..io.checkpoint import atomic_write_bytes
from .config import TrainConfig
from .train import train


@torch.no_grad()
def make_pairs(den: Any, n: int, *, steps: int = 20, sampler: str = "dpmpp_2m", seed: int = 0, batch: int = 1000,
               progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, x0 = ODE(z)) for n per-sample seeded noises: the deterministic coupling reflow straightens."""
    shape = den.sample_shape
    if shape is None:
        raise UsageError("the model has no known sample shape")
    zs, xs = [], []
    it = range(0, n, batch)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="reflow pairs")
    for a in it:
        b = min(n, a + batch)
        z = SeededNoise(range(seed + a, seed + b), shape).initial()
        zs.append(z)
        xs.append(sample(den, x_T=z, steps=steps, sampler=sampler, seeds=range(seed + a, seed + b)))
    return torch.cat(zs), torch.cat(xs)


def reflow(model: str | Path, out: str | Path, *, n_pairs: int = 20000, pair_steps: int = 20,
           pair_sampler: str = "dpmpp_2m", train_config: TrainConfig | None = None, progress: bool = True,
           init_from: str | Path | None = None, log: Any = print) -> Path:
    """Write OUT/pairs.npz (kept when present: an interrupted reflow resumes), then fine-tune a copy of the flow
    model (or of `init_from`, a flow model with the same network) on them in OUT/run (resumable like any run).
    Returns the run folder."""
    from ..io.loader import load_model

    out = Path(out)
    den = load_model(model).denoiser
    if den.prediction_type != "flow_prediction":
        raise UsageError(f"reflow needs a flow-matching model (prediction_type flow), {model} predicts "
                         f"{den.prediction_type}")
    if init_from is not None and (p := load_model(init_from).denoiser.prediction_type) != "flow_prediction":
        raise UsageError(f"init_from {init_from} predicts {p}; reflow fine-tunes a flow-matching model")
    pairs = out / "pairs.npz"
    if not pairs.is_file():
        z, x0 = make_pairs(den, n_pairs, steps=pair_steps, sampler=pair_sampler, progress=progress)
        out.mkdir(parents=True, exist_ok=True)
        import io

        buf = io.BytesIO()
        np.savez(buf, noise=z.numpy(), x0=x0.numpy())
        atomic_write_bytes(pairs, buf.getvalue())
        log(f"wrote {n_pairs} (noise, sample) pairs from {pair_sampler} {pair_steps} steps to {pairs}")
    cfg = dataclasses.replace(train_config or TrainConfig(), data="pairs", objective="flow_matching",
                              prediction_type="flow_prediction", pairs=str(pairs), init_from=str(init_from or model))
    run = out / "run"
    return train(None, run, resume=True) if (run / "latest").exists() else train(cfg, run, progress=progress)
