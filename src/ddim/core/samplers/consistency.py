"""Multistep consistency sampling: LCM (Luo et al. 2023) and TCD (Zheng et al. 2024), as first-order plans.

LCM, per step t → t' (t' the next level): x̂0 with the boundary condition, D = c_skip(t) x + c_out(t) x̂0
(c_skip = σ_d²/((10t)² + σ_d²), c_out = 10t/sqrt((10t)² + σ_d²), σ_d = 0.5), then re-noise to t' with fresh
noise: x' = α' D + σ' z; the last step returns D. TCD with γ: jump by DDIM to s = ⌊(1 − γ) t'⌋, then add
noise forward from s to t': x' = sqrt(ᾱ'/ᾱ_s) x_s + sqrt(1 − ᾱ'/ᾱ_s) z (γ = 0: DDIM; the last step ends on
s = 0). Both are a·x + b·x̂0 + c·ε̂ + σ·z per step, so they run through the first-order loop and take the
per-sample seeded noise of every sampler. Spacing `lcm` gives their timestep lists.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import UsageError
from ..noise import NoiseLike
from ..prediction import Denoiser
from ..run import Callback, Tracked
from .base import FirstOrderPlan, cached_plan, first_order_plan, register, run_first_order

SIGMA_DATA = 0.5


def lcm_boundary(st: Any) -> tuple[Any, Any]:
    """LCM's boundary-condition coefficients (c_skip, c_out) at scaled network time st (a float or a tensor):
    c_skip = σ_d²/(st² + σ_d²), c_out = st/sqrt(st² + σ_d²), so f(x, 0) = x (Luo et al. 2023, eq. 9)."""
    d = st * st + SIGMA_DATA**2
    return SIGMA_DATA**2 / d, st / (d.sqrt() if isinstance(d, torch.Tensor) else math.sqrt(d))


def lcm_plan(den: Denoiser, timesteps: torch.Tensor, timestep_scaling: float) -> FirstOrderPlan:
    def build() -> FirstOrderPlan:
        path = den.path
        t = timesteps.tolist()
        a, b, c, sig = [], [], [], []
        for i, ti in enumerate(t):
            st = float(path.time_input(ti, 1, torch.device("cpu"))[0]) * timestep_scaling
            c_skip, c_out = lcm_boundary(st)
            if i == len(t) - 1:
                al, sg = 1.0, 0.0
            else:
                al, sg = path.alpha_sigma(t[i + 1])
            a.append(al * c_skip)
            b.append(al * c_out)
            c.append(0.0)
            sig.append(sg)
        return first_order_plan(den, t, a, b, c, sig)

    return cached_plan(den, ("lcm", tuple(timesteps.tolist()), timestep_scaling), build)


def tcd_plan(den: Denoiser, timesteps: torch.Tensor, gamma: float) -> FirstOrderPlan:
    if not 0.0 <= gamma <= 1.0:
        raise UsageError(f"gamma must lie in [0, 1], got {gamma}")

    def build() -> FirstOrderPlan:
        path = den.path
        t = timesteps.tolist()
        a, b, c, sig = [], [], [], []
        for i in range(len(t)):
            t_next = t[i + 1] if i + 1 < len(t) else 0
            s = math.floor((1 - gamma) * t_next) if path.grid else (1 - gamma) * t_next
            a_s, s_s = path.alpha_sigma(s)
            if gamma > 0 and i + 1 < len(t):
                a_n = path.alpha_sigma(t_next)[0]
                r = a_n / a_s  # sqrt(ᾱ'/ᾱ_s)
                noise = math.sqrt(max(1.0 - r * r, 0.0))
            else:
                r, noise = 1.0, 0.0
            a.append(0.0)
            b.append(r * a_s)
            c.append(r * s_s)
            sig.append(noise)
        return first_order_plan(den, t, a, b, c, sig)

    return cached_plan(den, ("tcd", tuple(timesteps.tolist()), gamma), build)


@register("lcm", ddim_type=True)
def sample_lcm(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
               callback: Callback | None = None, timestep_scaling: float = 10.0) -> torch.Tensor:
    """Latent Consistency Model multistep sampling (diffusers' LCMScheduler): 1–8 steps of a consistency model."""
    return run_first_order(model, x, lcm_plan(model.den, timesteps, float(timestep_scaling)), generator, callback)


@register("tcd", ddim_type=True)
def sample_tcd(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
               callback: Callback | None = None, gamma: float = 0.3) -> torch.Tensor:
    """Trajectory Consistency Distillation's strategic stochastic sampling (diffusers' TCDScheduler, γ = eta)."""
    return run_first_order(model, x, tcd_plan(model.den, timesteps, float(gamma)), generator, callback)
