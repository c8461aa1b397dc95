"""Classical Runge–Kutta (RK4) on the probability-flow ODE in log-SNR time.

With x_e = x/α and σ_e = e^{-λ}: dx_e/dλ = -σ_e ε̂(α x_e, t(λ)). Stages at the λ midpoint use the
schedule's continuous-time interpolation. The last step onto σ = 0 (λ = ∞) is a DDIM step.
NFE = 4(S - 1) + 1.
"""

from __future__ import annotations

import math

import torch

from ..denoiser import Denoiser
from ..noise import NoiseLike
from .base import Callback, Levels, lincomb, register


@register("rk4", nfe_per_step=4, nfe_offset=-3)
def sample_rk4(denoiser: Denoiser, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
               callback: Callback | None = None) -> torch.Tensor:
    lv = Levels(denoiser, timesteps)
    sched = denoiser.schedule

    def f(y: torch.Tensor, lam: float, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        a = math.sqrt(sched.alpha_bar(t) if isinstance(t, int) else sched.alpha_bar_at(t))
        eps, x0 = denoiser(y * a, t)
        return eps * (-math.exp(-lam)), x0

    n = len(lv)
    for i, t in enumerate(lv.t):
        if i == n - 1 or math.isinf(lv.lam[i + 1]):
            eps, x0 = denoiser(x, t)
            x = lincomb([(lv.alpha[i + 1], x0), (lv.sigma[i + 1], eps)])  # DDIM onto the final level
        else:
            lam0, lam1 = lv.lam[i], lv.lam[i + 1]
            h = lam1 - lam0
            lam_m = lam0 + h / 2
            t_m = sched.t_at_log_snr(2 * lam_m)
            lam_m = 0.5 * math.log(sched.alpha_bar_at(t_m) / (1 - sched.alpha_bar_at(t_m)))
            y = x / lv.alpha[i]
            k1, x0 = f(y, lam0, t)
            k2, _ = f(y + (h / 2) * k1, lam_m, t_m)
            k3, _ = f(y + (h / 2) * k2, lam_m, t_m)
            k4, _ = f(y + h * k3, lam1, lv.t[i + 1])
            y = lincomb([(1.0, y), (h / 6, k1), (h / 3, k2), (h / 3, k3), (h / 6, k4)])
            x = y * lv.alpha[i + 1]
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x
