"""Classical Runge–Kutta (RK4) on the probability-flow ODE in log-SNR time.

With x_e = x/α and σ_e = e^{-λ}: dx_e/dλ = -σ_e ε̂(α x_e, t(λ)). Stages at the λ midpoint use the
path's continuous extension (t at a given λ). The last step onto σ = 0 (λ = ∞) is a DDIM step.
NFE = 4(S - 1) + 1.
"""

from __future__ import annotations

import math

import torch

from ..noise import NoiseLike
from ..path import Levels
from ..run import Callback, StepInfo, Tracked
from .base import lincomb, register


@register("rk4", nfe_per_step=4, nfe_offset=-3)
def sample_rk4(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
               callback: Callback | None = None) -> torch.Tensor:
    lv = Levels(model.schedule, timesteps)
    path = model.schedule

    def f(y: torch.Tensor, lam: float, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        a = path.alpha_sigma(t)[0]
        eps, x0 = model(y * a, t)
        return eps * (-math.exp(-lam)), x0

    n = len(lv)
    for i, t in enumerate(lv.t):
        if i == n - 1 or math.isinf(lv.lam[i + 1]):
            eps, x0 = model(x, t)
            x = lincomb([(lv.alpha[i + 1], x0), (lv.sigma[i + 1], eps)])  # DDIM onto the final level
        else:
            lam0, lam1 = lv.lam[i], lv.lam[i + 1]
            h = lam1 - lam0
            lam_m = lam0 + h / 2
            t_m = path.t_at_lambda(lam_m)
            lam_m = path.lam(t_m)  # the λ actually reached (a grid path interpolates)
            y = x / lv.alpha[i]
            k1, x0 = f(y, lam0, t)
            k2, _ = f(y + (h / 2) * k1, lam_m, t_m)
            k3, _ = f(y + (h / 2) * k2, lam_m, t_m)
            k4, _ = f(y + h * k3, lam1, lv.t[i + 1])
            y = lincomb([(1.0, y), (h / 6, k1), (h / 3, k2), (h / 3, k3), (h / 6, k4)])
            x = y * lv.alpha[i + 1]
        if callback is not None:
            callback(StepInfo(i, t, x, x0))
    return x
