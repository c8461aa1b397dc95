"""DDPM ancestral sampling (Ho et al. 2020) on any decreasing sub-sequence of a VP path's levels."""

from __future__ import annotations

import math

import torch

from ..errors import UsageError
from ..noise import NoiseLike
from ..path import Levels
from ..prediction import Denoiser
from ..run import Callback, Tracked
from .base import FirstOrderPlan, cached_plan, first_order_plan, register, run_first_order

VARIANCE_TYPES = ("fixed_small", "fixed_large")


def ddpm_plan(den: Denoiser, timesteps: torch.Tensor, variance_type: str = "fixed_small") -> FirstOrderPlan:
    """x_prev ~ q(x_prev | x_t, x̂0) (DDPM eq. 6-7) with β_t := 1 − ᾱ_t/ᾱ_prev for a sub-sequence.

    fixed_small uses σ² = β̃_t = (1−ᾱ_prev)/(1−ᾱ_t) β_t, fixed_large σ² = β_t (the DDIM paper's σ̂).
    The last step (onto the final level) adds no noise.
    """
    if variance_type not in VARIANCE_TYPES:
        raise UsageError(f"unknown variance_type {variance_type!r}; choose one of {VARIANCE_TYPES}")

    def build() -> FirstOrderPlan:
        lv = Levels(den.path, timesteps)
        n = len(lv)
        c_xt, c_x0, sig = [], [], []
        for i in range(n):
            a, ap = lv.alpha[i] ** 2, lv.alpha[i + 1] ** 2
            beta = 1 - a / ap if ap > 0 else 1.0
            # posterior mean μ̃ = sqrt(ᾱ_prev) β / (1-ᾱ) x̂0 + sqrt(1-β) (1-ᾱ_prev) / (1-ᾱ) x_t  (DDPM eq. 7)
            c_x0.append(math.sqrt(ap) * beta / (1 - a) if a < 1 else 0.0)
            c_xt.append(math.sqrt(max(1 - beta, 0.0)) * (1 - ap) / (1 - a) if a < 1 else 1.0)
            var = (1 - ap) / (1 - a) * beta if variance_type == "fixed_small" and a < 1 else beta
            sig.append(math.sqrt(max(var, 0.0)) if i < n - 1 else 0.0)
        return first_order_plan(den, lv.t, c_xt, c_x0, [0.0] * n, sig)

    return cached_plan(den, ("ddpm", tuple(timesteps.tolist()), variance_type), build)


@register("ddpm", ddim_type=True)
def sample_ddpm(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                callback: Callback | None = None, variance_type: str = "fixed_small") -> torch.Tensor:
    """DDPM ancestral sampling over the list (η = 1 DDIM with fixed_small)."""
    return run_first_order(model, x, ddpm_plan(model.den, timesteps, variance_type), generator, callback)
