"""DDPM ancestral sampling (Ho et al. 2020) on any decreasing sub-sequence of timesteps."""

from __future__ import annotations

import math

import torch

from ..denoiser import Denoiser
from ..noise import NoiseLike
from .base import Callback, alpha_pairs, first_order_steps, register

VARIANCE_TYPES = ("fixed_small", "fixed_large")


@register("ddpm")
def sample_ddpm(denoiser: Denoiser, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                callback: Callback | None = None, variance_type: str = "fixed_small") -> torch.Tensor:
    """x_prev ~ q(x_prev | x_t, x̂0) (DDPM eq. 6-7), with β_t := 1 - ᾱ_t/ᾱ_prev for a sub-sequence.

    fixed_small uses σ² = β̃_t = (1-ᾱ_prev)/(1-ᾱ_t) β_t, fixed_large σ² = β_t (the DDIM paper's σ̂).
    The last step (onto ᾱ_{-1}) adds no noise.
    """
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance_type {variance_type!r}; choose one of {VARIANCE_TYPES}")
    t_list, a_t, a_prev = alpha_pairs(denoiser, timesteps)
    n = len(t_list)
    c_x0, c_xt, sig = [], [], []
    for i, (a, ap) in enumerate(zip(a_t, a_prev)):
        beta = 1 - a / ap if ap > 0 else 1.0
        # posterior mean μ̃ = sqrt(ᾱ_prev) β / (1-ᾱ) x̂0 + sqrt(1-β) (1-ᾱ_prev) / (1-ᾱ) x_t  (DDPM eq. 7)
        c_x0.append(math.sqrt(ap) * beta / (1 - a) if a < 1 else 0.0)
        c_xt.append(math.sqrt(max(1 - beta, 0.0)) * (1 - ap) / (1 - a) if a < 1 else 1.0)
        var = (1 - ap) / (1 - a) * beta if variance_type == "fixed_small" and a < 1 else beta
        sig.append(math.sqrt(max(var, 0.0)) if i < n - 1 else 0.0)
    return first_order_steps(denoiser, x, t_list, c_xt, c_x0, [0.0] * n, sig, generator, callback)
