"""What every sampler shares: the registry with each sampler's declared options, the coefficient-plan cache,
and the first-order update that DDIM, DDPM, inversion and the drop-in schedulers all use.

A sampler is a plan (float64 coefficients for the whole list, built once and cached per schedule) plus a
step (pure tensor arithmetic). Its function has the one signature
`fn(model, x, timesteps, *, generator, callback, **options)`; the keyword arguments after `callback` are the
options it declares, with their defaults.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UsageError
from ..guidance import GUIDANCE_RULES
from ..noise import NoiseLike, noise_fn
from ..prediction import Denoiser
from ..run import Callback, RunStats, StepInfo, Tracked

_RESERVED = ("generator", "callback")


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: its function, the options it declares (name → default) and its NFE per step."""

    name: str
    fn: Callable[..., torch.Tensor]
    options: dict[str, Any] = field(default_factory=dict)
    nfe_per_step: int = 1
    nfe_offset: int = 0  # extra evaluations beyond steps · nfe_per_step (negative: last step is a single call)
    ddim_type: bool = False  # a step of the form a·x + b·x̂0 + c·ε̂ (+ noise): takes CFG++'s separate ε


    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            takes = ", ".join(self.options) if self.options else "no options"
            raise UsageError(f"sampler {self.name!r} takes {takes}; got {', '.join(unknown)}")
        return options

    def nfe(self, steps: int) -> int:
        """Network evaluations of this sampler with `steps` steps."""
        return self.nfe_per_step * steps + self.nfe_offset

    def steps_for_nfe(self, nfe: int) -> int:
        """The most steps whose NFE fits the budget (at least 1)."""
        return max(1, (nfe - self.nfe_offset) // self.nfe_per_step)

    def check_guidance_rule(self, rule: str) -> None:
        """Some guidance rules (CFG++) are defined for DDIM-type steps only."""
        if GUIDANCE_RULES[rule].ddim_type_only and not self.ddim_type:
            ok = ", ".join(n for n, s in SAMPLERS.items() if s.ddim_type)
            raise UsageError(f"{rule} guidance is defined for DDIM-type steps ({ok}), not {self.name!r}")

    def __call__(self, denoiser: Denoiser, x: torch.Tensor, timesteps: Any, *, generator: NoiseLike = None,
                 callback: Callback | None = None, stats: RunStats | None = None, **options: Any) -> torch.Tensor:
        """Run the sampler from x over a decreasing list of levels; counts go to `stats` when given."""
        if not isinstance(denoiser, Denoiser):
            raise TypeError("samplers take a ddim.Denoiser (wrap the network: Denoiser(net, schedule))")
        denoiser.check_input(x)
        guidance = getattr(denoiser, "guidance", None)
        if guidance is not None:
            self.check_guidance_rule(guidance.rule)
        ts = denoiser.path.validate_timesteps(timesteps)
        model = Tracked(denoiser.for_run(), stats)
        try:
            return self.fn(model, x, ts, generator=generator, callback=callback, **self.check_options(options))
        finally:
            model.finish()  # NaN/inf in any recorded output wins over early exit or a later error


SAMPLERS: dict[str, Sampler] = {}


def register(name: str, nfe_per_step: int = 1, nfe_offset: int = 0, ddim_type: bool = False
             ) -> Callable[[Callable[..., torch.Tensor]], Sampler]:
    """Register a sampler function under `name`; its keyword-only arguments after `callback` are its options."""

    def wrap(fn: Callable[..., torch.Tensor]) -> Sampler:
        params = inspect.signature(fn).parameters.values()
        opts = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _RESERVED}
        s = Sampler(name, fn, opts, nfe_per_step, nfe_offset, ddim_type)
        SAMPLERS[name] = s
        return s

    return wrap


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose one of {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def check_eta(eta: float) -> float:
    eta = float(eta)
    if math.isnan(eta) or eta < 0 or math.isinf(eta):
        raise UsageError(f"eta must be a finite number >= 0, got {eta}")
    return eta


# ----------------------------------------------------------------------------- first-order family
@dataclass(frozen=True)
class FirstOrderPlan:
    """x_prev = a·x + b·x̂0 + c·ε̂ + sigma·z per step (DDIM and DDPM are of this form), in float64.

    `p`, `q` fold the deterministic part into x_prev = p·x + q·out for the raw network output (None when
    clipping makes x̂0 non-affine in the output).
    """

    t: list
    a: list[float]
    b: list[float]
    c: list[float]
    sigma: list[float]
    p: list[float] | None
    q: list[float] | None


def first_order_plan(den: Denoiser, t: list, a: list[float], b: list[float], c: list[float],
                     sigma: list[float]) -> FirstOrderPlan:
    p = q = None
    if den.is_affine:
        pq = [den.combine(ti, a[i], b[i], c[i]) for i, ti in enumerate(t)]
        p, q = [v for v, _ in pq], [v for _, v in pq]
    return FirstOrderPlan(t, a, b, c, sigma, p, q)


def first_order_update(den: Denoiser, plan: FirstOrderPlan, i: int, x: torch.Tensor, out: torch.Tensor,
                       noise: torch.Tensor | None = None, use_clipped_model_output: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step i of a first-order plan from a network output: (x_prev, x̂0 — None on the folded fast path)."""
    t = plan.t[i]
    if plan.p is not None:
        x_prev = torch.add(x * plan.p[i], out, alpha=plan.q[i])
        x0 = None
    else:
        eps, x0 = den.split(x, t, out)
        if use_clipped_model_output:
            eps = den.eps_from_x0(x, t, x0)
        a, b, c = plan.a[i], plan.b[i], plan.c[i]
        x_prev = torch.add(x0 * b, eps, alpha=c) if a == 0.0 else torch.add(x * a, x0, alpha=b).add_(eps, alpha=c)
    if plan.sigma[i] > 0.0 and noise is not None:
        x_prev.add_(noise, alpha=plan.sigma[i])
    return x_prev, x0


def run_first_order(model: Tracked, x: torch.Tensor, plan: FirstOrderPlan, generator: NoiseLike,
                    callback: Callback | None, use_clipped_model_output: bool = False) -> torch.Tensor:
    """The loop of a first-order plan: one network call and one update per step."""
    den = model.den
    noise = noise_fn(generator, x) if any(s > 0 for s in plan.sigma) else None
    for i, t in enumerate(plan.t):
        out = model.raw(x, t)
        z = noise() if noise is not None and plan.sigma[i] > 0.0 else None
        x_new, x0 = first_order_update(den, plan, i, x, out, z, use_clipped_model_output)
        if callback is not None:
            callback(StepInfo(i, t, x_new, x0 if x0 is not None else den.x0_from_output(x, t, out)))
        x = x_new
    return x


# ------------------------------------------------------------------------------------ plan cache
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_plan(den: Denoiser, key: tuple, build: Callable[[], Any]) -> Any:
    """Per-path memo of a sampler's coefficient plan (key: sampler, timesteps, options; plus the prediction
    options that enter folded coefficients), so sampling many batches pays the float64 work once."""
    path = den.path
    per = _PLANS.setdefault(path, {})
    full = (getattr(path, "final", None), getattr(path, "ddim_final", None), den.prediction_type, den.is_affine, *key)
    plan = per.get(full)
    if plan is None:
        if len(per) > 64:
            per.clear()
        plan = per[full] = build()
    return plan


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
