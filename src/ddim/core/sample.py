"""`sample`, the front door: per-sample seeded x_T, a timestep list, a named sampler, optional early exit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import UsageError
from .guidance import Guidance, bind
from .noise import SeededNoise
from .prediction import Denoiser
from .run import Callback, RunStats, StepInfo
from .samplers import get_sampler

#: rows per network call in batch-invariant mode (measured: `ddim bench overhead`, docs/benchmarks.md)
BATCH_INVARIANT_CHUNK = 16


def invariant(denoiser: Denoiser, batch_invariant: bool | int) -> Denoiser:
    """The denoiser in batch-invariant mode (a view with fixed-size network calls), or itself when off."""
    if batch_invariant is False or batch_invariant is None:
        return denoiser
    chunk = BATCH_INVARIANT_CHUNK if batch_invariant is True else batch_invariant
    return denoiser if denoiser.fixed_rows == chunk else denoiser.replace(chunk=chunk)


def resolve_seeds(n: int | None, seed: int, seeds: Sequence[int] | None) -> list[int]:
    """Per-sample seeds: `seeds` as given, or seed, seed+1, ..., seed+n-1."""
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if n is not None and len(seeds) != n:
            raise UsageError(f"{len(seeds)} seeds given for a batch of {n}")
        return seeds
    if n is None:
        raise UsageError("give shape, x_T or seeds")
    return list(range(int(seed), int(seed) + n))


def resolve_timesteps(denoiser: Denoiser, steps: int, spacing: str | None,
                      timesteps: Sequence[float] | torch.Tensor | None) -> torch.Tensor:
    """The validated decreasing list: explicit `timesteps`, or `steps` levels with the given spacing."""
    if timesteps is not None:
        return denoiser.path.validate_timesteps(timesteps)
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise UsageError(f"steps must be an integer, got {steps!r}")
    return denoiser.path.timesteps(steps, spacing)


def sample(
    denoiser: Denoiser,
    shape: Sequence[int] | None = None,
    *,
    x_T: torch.Tensor | None = None,
    steps: int = 50,
    sampler: str = "ddim",
    spacing: str | None = None,
    timesteps: Sequence[float] | torch.Tensor | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    return_trajectory: bool = False,
    return_stats: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    callback: Callback | None = None,
    early_exit_tol: float | None = None,
    condition: Any = None,
    guidance: Guidance | float | None = None,
    uncond: Any = None,
    batch_invariant: bool | int = False,
    **options: Any,
) -> Any:
    """Draw samples: x_T from per-sample seeds (or given), then the named sampler over the levels.

    `shape` is the full batch shape (N, *dims); sample i uses seed `seed + i` (or `seeds[i]`) for its x_T
    and all its fresh noise, so it does not change with the batch around it. Runs on the device and dtype
    of x_T when given. `options` are the sampler's own (e.g. `eta` for ddim; `ddim.SAMPLERS[name].options`).
    Returns x0; with `return_trajectory` also the stacked states (x_T, then after each step); with
    `return_stats` also a `RunStats` (NFE, early-exit step) last. With `early_exit_tol`, sampling stops once
    the change still to come in x̂0, extrapolated linearly from its last change over the steps that remain,
    is below that fraction of x̂0's RMS, and returns that x̂0. It reads two numbers per step on the host (a
    sync): use it where network calls dominate. `condition` (class labels or network keyword arguments, one
    per sample or one for all), `guidance` (a scale w or a `Guidance`) and `uncond` (the negative condition)
    bind as in `ddim.core.guidance.bind`. `batch_invariant` (True, or a chunk size): every network call has
    the same number of rows (`BATCH_INVARIANT_CHUNK`, the last chunk padded), so each sample's bits do not
    depend on the batch around it (same device, dtype and package versions).
    """
    denoiser = bind(invariant(denoiser, batch_invariant), condition, guidance, uncond)
    spec = get_sampler(sampler)
    spec.check_options(options)
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point():
            raise UsageError("x_T must be a floating-point tensor")
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise UsageError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)} was asked for")
        streams = SeededNoise(resolve_seeds(x_T.shape[0], seed, seeds), x_T.shape[1:], dtype=x_T.dtype,
                              device=x_T.device)
        streams.initial()  # skip the x_T draw: fresh noise is the same whether x_T was given or drawn
        if not bool(torch.isfinite(x_T).all()):  # one check per run, not per step
            raise UsageError("x_T contains NaN or inf")
        x = x_T
    else:
        if shape is None:
            raise UsageError("give shape=(N, *dims) or x_T")
        shape = tuple(int(d) for d in shape)
        if len(shape) < 2 or any(d < 1 for d in shape):
            raise UsageError(f"shape must be (N, *dims) with positive sizes, got {shape}")
        dev = torch.device(device) if device is not None else denoiser.device()
        streams = SeededNoise(resolve_seeds(shape[0], seed, seeds), shape[1:], dtype=dtype, device=dev)
        x = streams.initial()
    ts = resolve_timesteps(denoiser, steps, spacing, timesteps)
    if early_exit_tol is not None and not early_exit_tol > 0:
        raise UsageError(f"early_exit_tol must be > 0, got {early_exit_tol}")

    stats = RunStats()
    traj: list[torch.Tensor] = [x] if return_trajectory else []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ts), desc=f"{sampler} {len(ts)} steps", leave=False)
    watcher = _EarlyExitWatch(early_exit_tol, len(ts)) if early_exit_tol is not None else None

    def cb(info: StepInfo) -> None:
        if return_trajectory:
            traj.append(info.x)
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(info)
        if watcher is not None:
            watcher(info)

    use_cb = return_trajectory or bar is not None or callback is not None or watcher is not None
    try:
        with torch.no_grad():
            out = spec(denoiser, x, ts, generator=streams, callback=cb if use_cb else None, stats=stats, **options)
    except _EarlyExit as stop:
        stats.early_exit_step = stop.step
        out = stop.x0
    finally:
        if bar is not None:
            bar.close()
    result: tuple = (out,)
    if return_trajectory:
        result += (torch.stack(traj),)
    if return_stats:
        result += (stats,)
    return result if len(result) > 1 else out


class _EarlyExit(Exception):
    def __init__(self, step: int, x0: torch.Tensor) -> None:
        super().__init__(f"early exit at step {step}")
        self.step, self.x0 = step, x0


class _EarlyExitWatch:
    """Stops a run (by raising _EarlyExit) once the extrapolated remaining change of x̂0 is below tol · RMS(x̂0)."""

    def __init__(self, tol: float, n: int) -> None:
        self.tol, self.n, self.prev = tol, n, None

    def __call__(self, info: StepInfo) -> None:
        d = info.denoised
        if d is None:
            return
        remaining = self.n - 1 - info.i
        if self.prev is not None and remaining > 0 and remaining * float((d - self.prev).pow(2).mean().sqrt()) <= (
                self.tol * float(d.pow(2).mean().sqrt().clamp_min(1e-12))):
            raise _EarlyExit(info.i, d)
        self.prev = d
