"""Adaptive step allocation: the timesteps for a given NFE budget that minimise the error against a fine
reference on a small calibration batch (coordinate descent on the step positions)."""

from __future__ import annotations

import itertools
import math
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
    return sample(denoiser, x_T=x_T, steps=denoiser.path.T, sampler="unipc", order=3, spacing="trailing")


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).double().pow(2).mean().sqrt())


def schedule_error(denoiser: Denoiser, sampler: str, timesteps: torch.Tensor, x_T: torch.Tensor,
                   ref: torch.Tensor, **options: Any) -> float:
    return _rmse(sample(denoiser, x_T=x_T, timesteps=timesteps, sampler=sampler, **options), ref)


def optimize_timesteps(denoiser: Denoiser, nfe: int, sampler: str = "dpmpp_2m", x_cal: torch.Tensor | None = None,
                       *, n_cal: int = 64, sample_shape: Sequence[int] | None = None, start: str | None = None,
                       rounds: int = 6, reference: torch.Tensor | None = None, progress: bool = False,
                       condition: Any = None, guidance: Guidance | float | None = None, uncond: Any = None,
                       init: torch.Tensor | None = None, **options: Any) -> OptimizedSchedule:
    """Coordinate descent on the interior step positions (the first step stays at T-1, where x_T lives).

    Starts from the best fixed spacing on the calibration batch (or `start`), tries moving each timestep
    up and down by δ grid indices keeping the list strictly decreasing, keeps moves that lower the RMSE to
    the reference, and halves δ when a round brings nothing. Never returns a schedule worse than its start
    on the calibration batch.
    """
    denoiser = bind(denoiser, condition, guidance, uncond)
    sched = denoiser.path
    steps = get_sampler(sampler).steps_for_nfe(nfe)
    x_cal = calibration_batch(denoiser, x_cal, n_cal, sample_shape)
    ref = reference if reference is not None else reference_solution(denoiser, x_cal)
    evals = 0

    def err(ts: torch.Tensor) -> float:
        nonlocal evals
        evals += 1
        return schedule_error(denoiser, sampler, ts, x_cal, ref, **options)

    candidates = [start] if start else list(FIXED_SPACINGS)
    best_sp, best_ts, best_e = None, None, float("inf")
    for sp in ([init] if init is not None else candidates):
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ts = sched.timesteps(steps, sp) if isinstance(sp, str) else sched.validate_timesteps(sp).long()
            sp = sp if isinstance(sp, str) else "given"
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
    for _ in _bar(range(rounds), f"optimising {steps} steps", progress):
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


def calibration_batch(denoiser: Denoiser, x_cal: torch.Tensor | None, n_cal: int,
                      sample_shape: Sequence[int] | None) -> torch.Tensor:
    """The given calibration x_T, or n_cal per-sample seeded ones (seeds 10⁶ + i) in the network's precision."""
    if x_cal is not None:
        return x_cal
    shape = sample_shape or denoiser.sample_shape
    if shape is None:
        raise UsageError("give x_cal or sample_shape")
    return SeededNoise(range(10**6, 10**6 + n_cal), shape, dtype=torch.float64 if _is64(denoiser) else
                       torch.float32).initial()


def _is64(denoiser: Denoiser) -> bool:
    params = getattr(denoiser.net, "parameters", None)
    if callable(params):
        for p in params():
            return p.dtype == torch.float64
    return True


@torch.no_grad()
def gits_timesteps(denoiser: Denoiser, nfe: int, sampler: str = "dpmpp_2m", x_cal: torch.Tensor | None = None, *,
                   n_cal: int = 64, sample_shape: Sequence[int] | None = None, candidates: int = 100,
                   condition: Any = None, guidance: Guidance | float | None = None, uncond: Any = None,
                   progress: bool = False) -> OptimizedSchedule:
    """GITS (Chen et al. 2024, §4): dynamic programming over a fine candidate grid for the step list whose summed
    local error of one DDIM step against the teacher trajectory (here UniPC-3 through ~8× finer levels) is
    smallest; the path has the sampler's step count for `nfe`. One network call per candidate level."""
    denoiser = bind(denoiser, condition, guidance, uncond)
    path = denoiser.path
    steps = get_sampler(sampler).steps_for_nfe(nfe)
    x_cal = calibration_batch(denoiser, x_cal, n_cal, sample_shape)
    cand = path.timesteps(candidates, "logsnr").tolist()
    if len(cand) <= steps:
        raise UsageError(f"{len(cand)} candidate levels cannot hold {steps} steps; raise candidates")
    fine = sorted(set(cand) | set(path.timesteps(8 * candidates, "logsnr").tolist()), reverse=True)
    # the teacher's state at every candidate level (and at the data end)
    states: dict[float, torch.Tensor] = {fine[0]: x_cal}
    keep = set(cand)
    fine_t = torch.tensor(fine, dtype=torch.float64)

    def grab(info: Any) -> None:
        nxt = fine[info.i + 1] if info.i + 1 < len(fine) else None
        if nxt in keep:
            states[nxt] = info.x

    final = sample(denoiser, x_T=x_cal, timesteps=fine_t, sampler="unipc", order=3, callback=grab)
    from ..core.samplers.ddim import ddim_plan

    m = len(cand)
    cost = [[float("inf")] * (m + 1) for _ in range(m)]  # cost[i][j]: one DDIM step cand[i] → cand[j] (m = data)
    for i in _bar(range(m), "GITS costs", progress):
        x_i = states[cand[i]]
        out = denoiser.call_net(x_i, cand[i])
        for j in range(i + 1, m + 1):
            ts = torch.tensor([cand[i]] + ([cand[j]] if j < m else []), dtype=torch.float64)
            plan = ddim_plan(denoiser, ts, 0.0)
            x_j = torch.add(x_i * plan.p[0], out, alpha=plan.q[0])
            target = states[cand[j]] if j < m else final
            cost[i][j] = _rmse(x_j, target)
    nodes = _cheapest_path(cost, steps)
    ts = torch.tensor([cand[i] for i in nodes], dtype=torch.int64 if path.grid else torch.float64)
    ref = reference_solution(denoiser, x_cal) if path.grid else final
    return _judged(denoiser, sampler, nfe, ts, x_cal, ref, "gits", m)


@torch.no_grad()
def ays_timesteps(denoiser: Denoiser, nfe: int, sampler: str = "dpmpp_2m", x_data: torch.Tensor | None = None, *,
                  n_cal: int = 64, candidates: int = 100, condition: Any = None,
                  guidance: Guidance | float | None = None, uncond: Any = None, progress: bool = False
                  ) -> OptimizedSchedule:
    """Align Your Steps (Sabour et al. 2024): the step list that minimises the KL upper bound between the reverse
    SDE and its discretisation with the denoiser held at each step's start, Σᵢ ∫ σ̃⁻³ E‖D(x_σ̃) − D(x_σ̃ᵢ)‖² dσ̃
    (σ̃ = σ/α, x_σ̃ = x0 + σ̃ε from data x0, one ε per sample), over the σ̃ range of a fine candidate grid. The
    KLUB is additive over steps, so dynamic programming finds its exact minimum on the grid (the paper iterates
    local updates). One network call per candidate level on `x_data` (n_cal data samples)."""
    denoiser = bind(denoiser, condition, guidance, uncond)
    path = denoiser.path
    steps = get_sampler(sampler).steps_for_nfe(nfe)
    if x_data is None:
        raise UsageError("Align Your Steps needs data samples (x_data): the data the model was trained on")
    if denoiser.sample_shape is not None and tuple(x_data.shape[1:]) != tuple(denoiser.sample_shape):
        raise UsageError(f"data samples have shape {tuple(x_data.shape[1:])}; the model takes "
                         f"{tuple(denoiser.sample_shape)}")
    pick = torch.randperm(len(x_data), generator=torch.Generator().manual_seed(0))[:n_cal]  # a seeded subset
    x0 = x_data[pick].to(denoiser.device(), torch.float64 if _is64(denoiser) else torch.float32)
    eps = SeededNoise(range(2 * 10**6, 2 * 10**6 + len(x0)), x0.shape[1:], dtype=x0.dtype).initial().to(x0.device)
    cand = path.timesteps(candidates, "logsnr").tolist()
    if len(cand) <= steps:
        raise UsageError(f"{len(cand)} candidate levels cannot hold {steps} steps; raise candidates")
    klub = klub_matrix(denoiser, x0, eps, cand, progress)
    m = len(cand)
    cost = [[float("inf")] * (m + 1) for _ in range(m)]
    for i in range(m):
        for j in range(i + 1, m):
            cost[i][j] = float(klub[i, j])
        cost[i][m] = float(klub[i, m - 1])  # the last step runs to the grid's lowest level, then to the data
    ts = torch.tensor([cand[i] for i in _cheapest_path(cost, steps)],
                      dtype=torch.int64 if path.grid else torch.float64)
    x_cal = calibration_batch(denoiser, None, len(x0), x0.shape[1:])
    ref = reference_solution(denoiser, x_cal) if path.grid else sample(
        denoiser, x_T=x_cal, steps=8 * candidates, sampler="unipc", order=3, spacing="logsnr")
    return _judged(denoiser, sampler, nfe, ts, x_cal, ref, "ays", m)


def _judged(denoiser: Denoiser, sampler: str, nfe: int, ts: torch.Tensor, x_cal: torch.Tensor, ref: torch.Tensor,
            method: str, evaluations: int) -> OptimizedSchedule:
    """A searched step list with its calibration error and the best fixed spacing's, against the reference."""
    path = denoiser.path
    e_opt = schedule_error(denoiser, sampler, ts, x_cal, ref)
    e_fixed = min(schedule_error(denoiser, sampler, path.timesteps(len(ts), sp), x_cal, ref)
                  for sp in _spacings(path, len(ts)))
    return OptimizedSchedule(ts, sampler, nfe, method, e_fixed, e_opt, evaluations)


@torch.no_grad()
def klub_matrix(denoiser: Denoiser, x0: torch.Tensor, eps: torch.Tensor, levels: Sequence[float],
                progress: bool = False) -> torch.Tensor:
    """AYS's KLUB of every step between `levels` (decreasing noise): entry [i, j] (j > i) is
    ∫_{σ̃_j}^{σ̃_i} σ̃⁻³ E‖D(x_σ̃, σ̃) − D(x_σ̃ᵢ, σ̃ᵢ)‖² dσ̃ per element, x_σ̃ = x0 + σ̃ε (trapezoid on the levels)."""
    path = denoiser.path
    den, tilde = [], []
    for t in _bar(levels, "AYS denoiser calls", progress):
        a, sg = path.alpha_sigma(t)
        x = a * x0 + sg * eps
        den.append(denoiser.x0_from_output(x, t, denoiser.call_net(x, t)).flatten(1).double())
        tilde.append(sg / a if a > 0 else math.inf)
    d = torch.stack(den)  # (m, n, dims): D at every level
    m = len(levels)
    e = torch.stack([(d - d[i]).pow(2).mean((1, 2)) for i in range(m)])  # e[i, g] = E‖D_g − D_i‖² per element
    inv2 = torch.tensor([0.0 if math.isinf(v) else v ** -2 for v in tilde], dtype=torch.float64)
    seg = 0.5 * (inv2[1:] - inv2[:-1]) * 0.5 * (e[:, :-1] + e[:, 1:])  # ∫ σ̃⁻³ dσ̃ on [σ̃_{g+1}, σ̃_g] × mean e
    cum = torch.cat([torch.zeros(m, 1, dtype=torch.float64), seg.cumsum(1)], 1)
    return cum - cum.diagonal()[:, None]


def _bar(it: Any, desc: str, progress: bool) -> Any:
    """`it` with a tqdm bar when `progress`."""
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


def _cheapest_path(cost: list[list[float]], steps: int) -> list[int]:
    """Dynamic programming: the nodes 0 = i_0 < i_1 < … < i_{steps-1} of the cheapest path from node 0 to the
    last node (m, the data) with exactly `steps` edges, where cost[i][j] is the edge i → j."""
    m = len(cost)
    inf = float("inf")
    best = [[inf] * (m + 1) for _ in range(steps + 1)]
    back = [[-1] * (m + 1) for _ in range(steps + 1)]
    best[0][0] = 0.0
    for k in range(1, steps + 1):
        for j in range(1, m + 1):
            for i in range(j):
                v = best[k - 1][i] + cost[i][j]
                if v < best[k][j]:
                    best[k][j], back[k][j] = v, i
    nodes, j = [], m
    for k in range(steps, 0, -1):
        j = back[k][j]
        nodes.append(j)
    return nodes[::-1]


def _spacings(path: Any, steps: int) -> list[str]:
    """The fixed spacings that give `steps` distinct levels on this path."""
    import warnings

    out = []
    names = FIXED_SPACINGS if path.grid else ("uniform", "logsnr", "karras")
    for sp in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if len(path.timesteps(steps, sp)) == steps:
                    out.append(sp)
        except ValueError:
            continue
    return out


SEARCH_METHODS = ("gits", "coordinate", "gits+cd", "ays")


def search_schedule(denoiser: Denoiser, nfe: int, sampler: str = "unipc", *, method: str = "gits+cd",
                    n_cal: int = 512, progress: bool = False, **kw: Any) -> OptimizedSchedule:
    """A step list for `nfe` evaluations of `sampler`: GITS, coordinate descent from the best fixed spacing,
    GITS refined by coordinate descent on the sampler's own error (the calibration batch: seeds 10⁶ + i), or
    Align Your Steps' KLUB (needs `x_data`, samples of the training data)."""
    if method not in SEARCH_METHODS:
        raise UsageError(f"unknown schedule search {method!r}; choose one of {', '.join(SEARCH_METHODS)}")
    if method == "coordinate":
        return optimize_timesteps(denoiser, nfe, sampler, n_cal=n_cal, progress=progress, **kw)
    if method == "ays":
        return ays_timesteps(denoiser, nfe, sampler, n_cal=n_cal, progress=progress, **kw)
    g = gits_timesteps(denoiser, nfe, sampler, n_cal=n_cal, progress=progress, **kw)
    if method == "gits" or not denoiser.path.grid:
        return g
    r = optimize_timesteps(denoiser, nfe, sampler, n_cal=n_cal, progress=progress, init=g.timesteps, **kw)
    return OptimizedSchedule(r.timesteps, sampler, nfe, "gits+cd", g.error_start, r.error_optimized,
                             g.evaluations + r.evaluations, r.history)
