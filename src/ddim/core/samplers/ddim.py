"""DDIM (Song et al. 2021): the q_σ family of non-Markovian reverse steps, any η ≥ 0, on any noise path."""

from __future__ import annotations

import math

import torch

from ..noise import NoiseLike
from ..path import Levels
from ..prediction import Denoiser
from ..run import Callback, Tracked
from .base import FirstOrderPlan, cached_plan, check_eta, first_order_plan, register, run_first_order


def ddim_plan(den: Denoiser, timesteps: torch.Tensor, eta: float = 0.0) -> FirstOrderPlan:
    """Per step x_prev = α_prev x̂0 + sqrt(σ_prev² − s²) ε̂ + s z  (DDIM eq. 12, written for x = α x0 + σ ε),
    with s = η σ_prev sqrt(1 − α_t² σ_prev² / (α_prev² σ_t²))  (eq. 16: the posterior std on
    any path); radicands clamped at 0.
    On a VP path (α² + σ² = 1) s is eq. 16 verbatim; at η = 0 the step is the exact solution of the
    linear part of the PF-ODE on every path. ᾱ_prev comes from the next list entry, then the final level."""
    eta = check_eta(eta)

    def build() -> FirstOrderPlan:
        lv = Levels(den.path, timesteps, ddim_final=True)
        n = len(lv)
        b, c, sig = [], [], []
        for i in range(n):
            a_t, s_t, a_p, s_p = lv.alpha[i], lv.sigma[i], lv.alpha[i + 1], lv.sigma[i + 1]
            s = 0.0
            if eta > 0.0 and a_p > 0.0 and s_t > 0.0:
                ratio = (a_t * s_p) / (a_p * s_t)
                s = eta * s_p * math.sqrt(max(1.0 - ratio * ratio, 0.0))
            b.append(a_p)
            c.append(math.sqrt(max(s_p * s_p - s * s, 0.0)))
            sig.append(s)
        return first_order_plan(den, lv.t, [0.0] * n, b, c, sig)

    return cached_plan(den, ("ddim", tuple(timesteps.tolist()), eta), build)


@register("ddim", ddim_type=True)
def sample_ddim(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                callback: Callback | None = None, eta: float = 0.0, use_clipped_model_output: bool = False
                ) -> torch.Tensor:
    """DDIM eq. 12 over the list; η = 0 is deterministic, η = 1 the DDPM posterior variance."""
    return run_first_order(model, x, ddim_plan(model.den, timesteps, eta), generator, callback,
                           use_clipped_model_output)
