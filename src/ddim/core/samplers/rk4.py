"""Classical Runge–Kutta (RK4) on the probability-flow ODE.

EDM variables: x_e = x/α, σ_e = e^{-λ}, in log-SNR time: dx_e/dλ = -σ_e ε̂(α x_e, t(λ)). Flow variables
(a flow path, which starts at pure noise where λ = −∞): y = x, s = σ, in σ time: dy/ds = ε̂ − x̂0. Stages at
the half step use the path's continuous extension (t at a given λ). The last step onto σ = 0 is a DDIM step.
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
    lv = Levels(model.path, timesteps)
    path = model.path
    flow = lv.kappa != 0.0
    # the time variable τ of the integration and the slope dy/dτ, with y = x / c
    tau = lv.s if flow else lv.lam

    def f(y: torch.Tensor, tau_: float, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        a, g = path.alpha_sigma(t)
        c = a + g if flow else a
        eps, x0 = model(y * c, t)
        return (torch.sub(eps, x0) if flow else eps * (-math.exp(-tau_))), x0

    def level_at(tau_: float) -> tuple[float, float]:
        """(t, τ actually reached) for a wanted τ (a grid path interpolates)."""
        t_ = path.t_at_lambda(math.log((1 - tau_) / tau_) if flow else tau_)
        a, g = path.alpha_sigma(t_)
        return t_, (g / (a + g) if flow else path.lam(t_))

    n = len(lv)
    for i, t in enumerate(lv.t):
        if i == n - 1 or math.isinf(lv.lam[i + 1]):
            eps, x0 = model(x, t)
            x = lincomb([(lv.alpha[i + 1], x0), (lv.sigma[i + 1], eps)])  # DDIM onto the final level
        else:
            tau0, tau1 = tau[i], tau[i + 1]
            h = tau1 - tau0
            t_m, tau_m = level_at(tau0 + h / 2)
            y = x / lv.c[i]
            k1, x0 = f(y, tau0, t)
            k2, _ = f(y + (h / 2) * k1, tau_m, t_m)
            k3, _ = f(y + (h / 2) * k2, tau_m, t_m)
            k4, _ = f(y + h * k3, tau1, lv.t[i + 1])
            y = lincomb([(1.0, y), (h / 6, k1), (h / 3, k2), (h / 3, k3), (h / 6, k4)])
            x = y * lv.c[i + 1]
        if callback is not None:
            callback(StepInfo(i, t, x, x0))
    return x
