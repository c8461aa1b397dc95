"""Samplers: plain functions sharing one signature, and `sample`, the front door that picks one by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..denoiser import Denoiser
from ..noise import SeededNoise
from . import ddim as _ddim  # noqa: F401  (registers)
from . import ddpm as _ddpm  # noqa: F401
from . import dpmpp as _dpmpp  # noqa: F401
from . import heun as _heun  # noqa: F401
from . import pndm as _pndm  # noqa: F401
from . import rk4 as _rk4  # noqa: F401
from . import unipc as _unipc  # noqa: F401
from .base import NFE_PER_STEP, SAMPLERS, Callback, Sampler, check_eta, nfe_of, register, steps_for_nfe
from .ddim import sample_ddim
from .ddpm import sample_ddpm

__all__ = ["NFE_PER_STEP", "SAMPLERS", "Sampler", "nfe_of", "register", "sample", "sample_ddim", "sample_ddpm",
           "steps_for_nfe"]


def _resolve_seeds(n: int | None, seed: int, seeds: Sequence[int] | None) -> list[int]:
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if n is not None and len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds given for a batch of {n}")
        return seeds
    if n is None:
        raise ValueError("give shape, x_T or seeds")
    return list(range(int(seed), int(seed) + n))


def sample(
    denoiser: Denoiser,
    shape: Sequence[int] | None = None,
    *,
    x_T: torch.Tensor | None = None,
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    spacing: str | None = None,
    timesteps: Sequence[int] | torch.Tensor | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    return_trajectory: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    callback: Callback | None = None,
    early_exit_tol: float | None = None,
    **options: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Draw samples: x_T from per-sample seeds (or given), then the named sampler over the timesteps.

    `shape` is the full batch shape (N, *dims); sample i uses seed `seed + i` (or `seeds[i]`) for its x_T
    and all its fresh noise, so it does not change with the batch around it. Runs on the device and dtype
    of x_T when given. With `return_trajectory`, also returns the stacked states (x_T, then after each step).
    The NFE of the run is `denoiser.last_nfe`. With `early_exit_tol`, sampling stops once the change still
    to come in x̂0, extrapolated linearly from its last change over the steps that remain, is below that
    fraction of x̂0's RMS, and returns that x̂0; `denoiser.early_exit_step` says where (None: ran to the end).
    It reads two numbers per step on the host (a sync): use it where network calls dominate.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(sorted(SAMPLERS))}")
    fn = SAMPLERS[sampler]
    eta = check_eta(eta)
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point():
            raise ValueError("x_T must be a floating-point tensor")
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)} was asked for")
        seed_list = _resolve_seeds(x_T.shape[0], seed, seeds)
        streams = SeededNoise(seed_list, x_T.shape[1:], dtype=x_T.dtype, device=x_T.device)
        streams.initial()  # skip the x_T draw: fresh noise is the same whether x_T was given or drawn
        x = x_T
    else:
        if shape is None:
            raise ValueError("give shape=(N, *dims) or x_T")
        shape = tuple(int(d) for d in shape)
        if len(shape) < 2 or any(d < 1 for d in shape):
            raise ValueError(f"shape must be (N, *dims) with positive sizes, got {shape}")
        seed_list = _resolve_seeds(shape[0], seed, seeds)
        dev = torch.device(device) if device is not None else _net_device(denoiser)
        streams = SeededNoise(seed_list, shape[1:], dtype=dtype, device=dev)
        x = streams.initial()
    if timesteps is not None:
        ts = denoiser.schedule.validate_timesteps(timesteps)
    else:
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"steps must be an integer, got {steps!r}")
        ts = denoiser.schedule.timesteps(steps, spacing)
    if sampler in ("ddim",):
        options["eta"] = eta
    elif eta != 0.0:
        raise ValueError(f"eta applies to the ddim sampler, not {sampler!r}")

    traj: list[torch.Tensor] = [x] if return_trajectory else []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ts), desc=f"{sampler} {len(ts)} steps", leave=False)

    def cb(info: dict[str, Any]) -> None:
        if return_trajectory:
            traj.append(info["x"])
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(info)

    prev: list[torch.Tensor] = []
    if early_exit_tol is not None:
        if not early_exit_tol > 0:
            raise ValueError(f"early_exit_tol must be > 0, got {early_exit_tol}")
        inner = cb

        def cb(info: dict[str, Any]) -> None:
            inner(info)
            d = info["denoised"]
            if d is None:
                return
            remaining = len(ts) - 1 - info["i"]
            if prev and remaining > 0 and remaining * float((d - prev[0]).pow(2).mean().sqrt()) <= (
                    early_exit_tol * float(d.pow(2).mean().sqrt().clamp_min(1e-12))):
                raise _EarlyExit(info["i"], d)
            prev[:] = [d]

    use_cb = return_trajectory or bar is not None or callback is not None or early_exit_tol is not None
    denoiser.early_exit_step = None
    start = denoiser.nfe
    try:
        with torch.no_grad():
            out = fn(denoiser, x, ts, generator=streams, callback=cb if use_cb else None, **options)
    except _EarlyExit as stop:
        denoiser.finish()
        denoiser.last_nfe = denoiser.nfe - start
        denoiser.early_exit_step = stop.step
        out = stop.x0
    finally:
        if bar is not None:
            bar.close()
    if return_trajectory:
        return out, torch.stack(traj)
    return out


class _EarlyExit(Exception):
    def __init__(self, step: int, x0: torch.Tensor) -> None:
        super().__init__(f"early exit at step {step}")
        self.step, self.x0 = step, x0


def _net_device(denoiser: Denoiser) -> torch.device:
    params = getattr(denoiser.net, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")
