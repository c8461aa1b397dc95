"""Heun's method on the probability-flow ODE in EDM's variables (Karras et al. 2022, Alg. 1, deterministic).

With x_e = x/α and σ_e = σ/α the ODE is dx_e/dσ_e = ε̂; Euler in these variables is DDIM (η = 0).
Heun corrects each step with ε̂ at the next grid timestep; the last step onto σ = 0 is Euler. NFE = 2S - 1.
"""

from __future__ import annotations

import torch

from ..noise import NoiseLike
from ..path import Levels
from ..run import Callback, StepInfo, Tracked
from .base import lincomb, register


@register("heun", nfe_per_step=2, nfe_offset=-1)
def sample_heun(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                callback: Callback | None = None) -> torch.Tensor:
    lv = Levels(model.schedule, timesteps)
    n = len(lv)
    for i, t in enumerate(lv.t):
        eps, x0 = model(x, t)
        a, a_next = lv.alpha[i], lv.alpha[i + 1]
        ds = lv.sigma_e[i + 1] - lv.sigma_e[i]
        # Euler: x_e' = x/α + Δσ_e ε̂, back to x' = α_next x_e'
        x_euler = lincomb([(a_next / a, x), (a_next * ds, eps)])
        if i == n - 1 or lv.sigma[i + 1] == 0:
            x = x_euler
        else:
            eps2, _ = model(x_euler, lv.t[i + 1])
            x = lincomb([(a_next / a, x), (0.5 * a_next * ds, eps), (0.5 * a_next * ds, eps2)])
        if callback is not None:
            callback(StepInfo(i, t, x, x0))
    return x
