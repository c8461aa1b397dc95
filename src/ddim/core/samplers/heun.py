"""Heun's method and the explicit midpoint method on the probability-flow ODE (Karras et al. 2022, Alg. 1,
deterministic), in the path's ODE variables y = x/c, s = σ/c (`Levels`): EDM's (c = α, dy/ds = ε̂; Euler is
DDIM η = 0) or, on a flow path, the flow variables (c = α + σ = 1: y = x, s = σ, dy/ds = ε̂ − x̂0 = u, the
velocity; Euler is the flow Euler step). The last step onto σ = 0 is Euler. NFE = 2S − 1.
"""

from __future__ import annotations

import math

import torch

from ..noise import NoiseLike
from ..path import Levels
from ..run import Callback, StepInfo, Tracked
from .base import lincomb, register


def slope(lv: Levels, eps: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """dy/ds = ε̂ − κ x̂0 in the path's ODE variables."""
    return eps if lv.kappa == 0.0 else torch.sub(eps, x0)


@register("heun", nfe_per_step=2, nfe_offset=-1)
def sample_heun(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                callback: Callback | None = None) -> torch.Tensor:
    lv = Levels(model.path, timesteps)
    n = len(lv)
    for i, t in enumerate(lv.t):
        eps, x0 = model(x, t)
        c, c_next = lv.c[i], lv.c[i + 1]
        ds = lv.s[i + 1] - lv.s[i]
        d = slope(lv, eps, x0)
        x_euler = lincomb([(c_next / c, x), (c_next * ds, d)])  # y' = y + Δs·d, x' = c' y'
        if i == n - 1 or lv.sigma[i + 1] == 0:
            x = x_euler
        else:
            eps2, x02 = model(x_euler, lv.t[i + 1])
            x = lincomb([(c_next / c, x), (0.5 * c_next * ds, d), (0.5 * c_next * ds, slope(lv, eps2, x02))])
        if callback is not None:
            callback(StepInfo(i, t, x, x0))
    return x


@register("midpoint", nfe_per_step=2, nfe_offset=-1)
def sample_midpoint(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                    callback: Callback | None = None) -> torch.Tensor:
    """Explicit midpoint (RK2): the slope at the half step decides the whole step. The half step is the
    log-SNR midpoint in EDM variables (s_mid = sqrt(s s')) and the σ midpoint in flow variables."""
    lv = Levels(model.path, timesteps)
    path = model.path
    n = len(lv)
    for i, t in enumerate(lv.t):
        eps, x0 = model(x, t)
        c, c_next = lv.c[i], lv.c[i + 1]
        s0, s1 = lv.s[i], lv.s[i + 1]
        d = slope(lv, eps, x0)
        if i == n - 1 or lv.sigma[i + 1] == 0:
            x = lincomb([(c_next / c, x), (c_next * (s1 - s0), d)])
        else:
            s_m = 0.5 * (s0 + s1) if lv.kappa else math.sqrt(s0 * s1)
            lam_m = math.log((1 - s_m) / s_m) if lv.kappa else -math.log(s_m)  # λ at s_m in these variables
            t_m = path.t_at_lambda(lam_m)
            a_m, g_m = path.alpha_sigma(t_m)
            c_m = a_m + g_m if lv.kappa else a_m
            s_m = g_m / c_m  # the level actually reached (a grid path interpolates)
            x_m = lincomb([(c_m / c, x), (c_m * (s_m - s0), d)])
            eps_m, x0_m = model(x_m, t_m)
            x = lincomb([(c_next / c, x), (c_next * (s1 - s0), slope(lv, eps_m, x0_m))])
        if callback is not None:
            callback(StepInfo(i, t, x, x0))
    return x
