"""What every sampler shares: the registry, input validation, and the per-call coefficient plan."""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import torch

from ..denoiser import Denoiser
from ..noise import NoiseLike, noise_fn

Callback = Callable[[dict[str, Any]], None]


class Sampler(Protocol):
    """The one signature: (denoiser, x_T, decreasing timesteps, *, generator, callback, **options) -> x0."""

    def __call__(self, denoiser: Denoiser, x: torch.Tensor, timesteps: torch.Tensor, *,
                 generator: NoiseLike = None, callback: Callback | None = None, **options: Any) -> torch.Tensor:
        ...


SAMPLERS: dict[str, Sampler] = {}
#: network evaluations per step (for equal-NFE comparisons); a sampler's exact count is measured anyway
NFE_PER_STEP: dict[str, int] = {}
#: extra evaluations beyond steps · NFE_PER_STEP (negative: the last step is a single evaluation)
NFE_OFFSET: dict[str, int] = {}


def nfe_of(sampler: str, steps: int) -> int:
    """Network evaluations of `sampler` with `steps` steps."""
    return NFE_PER_STEP[sampler] * steps + NFE_OFFSET[sampler]


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """The most steps whose NFE fits the budget (at least 1)."""
    return max(1, (nfe - NFE_OFFSET[sampler]) // NFE_PER_STEP[sampler])


def register(name: str, nfe_per_step: int = 1, nfe_offset: int = 0
             ) -> Callable[[Callable[..., torch.Tensor]], Sampler]:
    """Register a sampler under `name` and wrap it with validation and the NaN guard."""

    def wrap(fn: Callable[..., torch.Tensor]) -> Sampler:
        @functools.wraps(fn)
        def run(denoiser: Denoiser, x: torch.Tensor, timesteps: Any, *, generator: NoiseLike = None,
                callback: Callback | None = None, **options: Any) -> torch.Tensor:
            if not isinstance(denoiser, Denoiser):
                raise TypeError("samplers take a ddim.Denoiser (wrap the network: Denoiser(net, schedule))")
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                raise ValueError("x must be a floating-point tensor (batch first)")
            if x.ndim < 2:
                raise ValueError(f"x must have a batch dimension and at least one data dimension, got {tuple(x.shape)}")
            ts = denoiser.schedule.validate_timesteps(timesteps)
            denoiser.begin(x)
            start = denoiser.nfe
            out = fn(denoiser, x, ts, generator=generator, callback=callback, **options)
            denoiser.finish()
            denoiser.last_nfe = denoiser.nfe - start
            return out

        SAMPLERS[name] = run
        NFE_PER_STEP[name] = nfe_per_step
        NFE_OFFSET[name] = nfe_offset
        return run

    return wrap


def check_eta(eta: float) -> float:
    eta = float(eta)
    if math.isnan(eta) or eta < 0 or math.isinf(eta):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    return eta


def alpha_pairs(denoiser: Denoiser, ts: torch.Tensor) -> tuple[list[int], list[float], list[float]]:
    """(timesteps, ᾱ_t, ᾱ_prev) as Python lists; ᾱ_prev is the next list entry's, then ᾱ_{-1}."""
    sched = denoiser.schedule
    t_list = ts.tolist()
    a_t = [sched.alpha_bar(t) for t in t_list]
    a_prev = [*a_t[1:], sched.final_alpha_cumprod]
    return t_list, a_t, a_prev


def first_order_steps(denoiser: Denoiser, x: torch.Tensor, t_list: list[int], a: list[float], b: list[float],
                      c: list[float], sigma: list[float], generator: NoiseLike, callback: Callback | None,
                      use_clipped_model_output: bool = False) -> torch.Tensor:
    """Run x_prev = a·x + b·x̂0 + c·ε̂ + σ·z over the list (DDIM and DDPM are both of this form).

    When x̂0 and ε̂ are affine in the network output (no clipping), each step is folded into
    x_prev = P·x + Q·out: two tensor ops, with P, Q precomputed here in float64.
    """
    noise = noise_fn(generator, x) if any(s > 0 for s in sigma) else None
    fast = denoiser.is_affine
    if fast:
        pq = [denoiser.combine(t, a[i], b[i], c[i]) for i, t in enumerate(t_list)]
    for i, t in enumerate(t_list):
        if fast:
            out = denoiser.raw(x, t)
            x0 = denoiser.x0_from_output(x, t, out) if callback is not None else None
            p, q = pq[i]
            x = torch.add(x * p, out, alpha=q)
        else:
            eps, x0 = denoiser(x, t)
            if use_clipped_model_output:
                eps = denoiser.eps_from_x0(x, t, x0)
            x = torch.add(x0 * b[i], eps, alpha=c[i]) if a[i] == 0.0 else torch.add(x * a[i], x0, alpha=b[i]).add_(
                eps, alpha=c[i])
        if sigma[i] > 0.0:
            x.add_(noise(), alpha=sigma[i])
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x


class Levels:
    """Per-level float64 quantities for a timestep list plus the final level ᾱ_{-1}:
    α = sqrt(ᾱ), σ = sqrt(1-ᾱ), λ = log(α/σ) (+inf where σ = 0), σ_e = σ/α (EDM's sigma)."""

    def __init__(self, denoiser: Denoiser, ts: torch.Tensor) -> None:
        sched = denoiser.schedule
        self.t: list[int] = ts.tolist()
        self.abar = [sched.alpha_bar(t) for t in self.t] + [sched.final_alpha_cumprod]
        self.alpha = [math.sqrt(a) for a in self.abar]
        self.sigma = [math.sqrt(max(1 - a, 0.0)) for a in self.abar]
        self.lam = [_log_snr_half(a, s) for a, s in zip(self.alpha, self.sigma)]
        self.sigma_e = [s / a if a > 0 else math.inf for a, s in zip(self.alpha, self.sigma)]

    def __len__(self) -> int:
        return len(self.t)


def _log_snr_half(alpha: float, sigma: float) -> float:
    if sigma == 0:
        return math.inf
    if alpha == 0:
        return -math.inf
    return math.log(alpha) - math.log(sigma)


def lincomb(terms: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """Σ c·v over (c, v) pairs, skipping zero coefficients: one mul then one fused add per term."""
    out = None
    for c, v in terms:
        if c == 0.0:
            continue
        if out is None:
            out = v * c
        else:
            out.add_(v, alpha=c)
    return out if out is not None else torch.zeros_like(terms[0][1])


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_plan(schedule: object, key: tuple, build: Callable[[], Any]) -> Any:
    """Per-schedule memo of a sampler's precomputed coefficient plan (key: timesteps and options), so that
    sampling many batches on one schedule pays the float64 coefficient work once."""
    per = _PLANS.setdefault(schedule, {})
    full = (getattr(schedule, "final_alpha_cumprod", None), *key)
    plan = per.get(full)
    if plan is None:
        if len(per) > 64:
            per.clear()
        plan = per[full] = build()
    return plan


def solve_small(R: list[list[float]], b: list[float]) -> list[float]:
    """Solve a tiny dense system (order ≤ 4) by Gaussian elimination with partial pivoting, in float64
    Python floats: far cheaper than numpy at this size, and exact enough for solver coefficients."""
    n = len(b)
    M = [[*row, bi] for row, bi in zip(R, b)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(M[r][col]))
        M[col], M[piv] = M[piv], M[col]
        for r in range(col + 1, n):
            f = M[r][col] / M[col][col]
            for k in range(col, n + 1):
                M[r][k] -= f * M[col][k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (M[r][n] - sum(M[r][k] * x[k] for k in range(r + 1, n))) / M[r][r]
    return x
