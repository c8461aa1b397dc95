"""Adaptive step allocation: the timesteps for a given NFE budget that minimise the error against a fine
reference on a small calibration batch (coordinate descent on the step positions)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.errors import UsageError
from ..core.guidance import Guidance, bind
from ..core.noise import SeededNoise
from ..core.prediction import Denoiser
from ..core.sample import sample
from ..core.samplers import get_sampler

FIXED_SPACINGS = ("trailing", "logsnr", "karras", "time_quadratic", "linspace", "leading", "uniform")


@dataclass
class OptimizedSchedule:
    timesteps: torch.Tensor
    sampler: str
    nfe: int
    start_spacing: str
    error_start: float
    error_optimized: float
    evaluations: int
    history: list[float] = field(default_factory=list)


def reference_solution(denoiser: Denoiser, x_T: torch.Tensor) -> torch.Tensor:
    """A fine solution of the PF-ODE from x_T: UniPC-3 on every grid timestep (T steps)."""
    return sample(denoiser, x_T=x_T, steps=denoiser.schedule.T, sampler="unipc", order=3, spacing="trailing")


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).double().pow(2).mean().sqrt())


def schedule_error(denoiser: Denoiser, sampler: str, timesteps: torch.Tensor, x_T: torch.Tensor,
                   ref: torch.Tensor, **options: Any) -> float:
    return _rmse(sample(denoiser, x_T=x_T, timesteps=timesteps, sampler=sampler, **options), ref)


def optimize_timesteps(denoiser: Denoiser, nfe: int, sampler: str = "dpmpp_2m", x_cal: torch.Tensor | None = None,
                       *, n_cal: int = 64, sample_shape: Sequence[int] | None = None, start: str | None = None,
                       rounds: int = 6, reference: torch.Tensor | None = None, progress: bool = False,
                       condition: Any = None, guidance: Guidance | float | None = None, uncond: Any = None,
                       **options: Any) -> OptimizedSchedule:
    """Coordinate descent on the interior step positions (the first step stays at T-1, where x_T lives).

    Starts from the best fixed spacing on the calibration batch (or `start`), tries moving each timestep
    up and down by δ grid indices keeping the list strictly decreasing, keeps moves that lower the RMSE to
    the reference, and halves δ when a round brings nothing. Never returns a schedule worse than its start
    on the calibration batch.
    """
    denoiser = bind(denoiser, condition, guidance, uncond)
    sched = denoiser.schedule
    steps = get_sampler(sampler).steps_for_nfe(nfe)
    if x_cal is None:
        shape = sample_shape or denoiser.sample_shape
        if shape is None:
            raise UsageError("give x_cal or sample_shape")
        x_cal = SeededNoise(range(10**6, 10**6 + n_cal), shape, dtype=torch.float64 if _is64(denoiser) else
                            torch.float32).initial()
    ref = reference if reference is not None else reference_solution(denoiser, x_cal)
    evals = 0

    def err(ts: torch.Tensor) -> float:
        nonlocal evals
        evals += 1
        return schedule_error(denoiser, sampler, ts, x_cal, ref, **options)

    candidates = [start] if start else list(FIXED_SPACINGS)
    best_sp, best_ts, best_e = None, None, float("inf")
    for sp in candidates:
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ts = sched.timesteps(steps, sp)
        except ValueError:
            continue
        if len(ts) != steps or int(ts[0]) != sched.T - 1:
            continue
        e = err(ts)
        if e < best_e:
            best_sp, best_ts, best_e = sp, ts, e
    if best_ts is None:
        raise UsageError(f"no fixed spacing gives {steps} steps starting at t={sched.T - 1}")
    cur = best_ts.tolist()
    cur_e = best_e
    history = [cur_e]
    gaps = [a - b for a, b in itertools.pairwise(cur)]
    delta = max(1, (min(gaps) if gaps else 1) // 2)
    it = range(rounds)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"optimising {steps} steps", leave=False)
    for _ in it:
        improved = False
        for j in range(1, len(cur)):
            for move in (delta, -delta):
                cand = list(cur)
                cand[j] += move
                lo = cand[j + 1] if j + 1 < len(cand) else -1
                if not lo < cand[j] < cand[j - 1]:
                    continue
                e = err(torch.tensor(cand))
                if e < cur_e:
                    cur, cur_e, improved = cand, e, True
                    break
        history.append(cur_e)
        if not improved:
            if delta == 1:
                break
            delta = max(1, delta // 2)
    return OptimizedSchedule(torch.tensor(cur, dtype=torch.int64), sampler, nfe, best_sp, best_e, cur_e, evals,
                             history)


def _is64(denoiser: Denoiser) -> bool:
    params = getattr(denoiser.net, "parameters", None)
    if callable(params):
        for p in params():
            return p.dtype == torch.float64
    return True
