"""DPM-Solver++ (Lu et al. 2022b): exponential integrators of the data-prediction ODE in log-SNR time.

With α = sqrt(ᾱ), σ = sqrt(1-ᾱ), λ = log(α/σ), h = λ_next - λ and φ = e^{-h} - 1, the first-order step
x_next = (σ_next/σ) x - α_next φ x̂0 is DDIM (η = 0); the multistep variants add finite differences of
earlier x̂0 (paper Alg. 2 and diffusers' 3M), the single-step 2S an evaluation at the λ midpoint.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..denoiser import Denoiser
from ..noise import NoiseLike
from .base import Callback, Levels, cached_plan, lincomb, register


def _phi(h: float) -> float:
    return -1.0 if math.isinf(h) else math.expm1(-h)


def multistep_orders(n: int, order: int, final_zero: bool = True) -> list[int]:
    """Order per step: warm-up from 1; the last step first order when it lands on σ = 0 or with fewer than
    15 steps, and then the one before at most second order (diffusers' `lower_order_final`)."""
    out = []
    for i in range(n):
        o = min(order, i + 1)
        if i == n - 1 and (final_zero or n < 15):
            o = 1
        elif i == n - 2 and n < 15:
            o = min(o, 2)
        out.append(o)
    return out


def dpmpp_coefficients(lv: Levels, i: int, order: int) -> tuple[float, list[float]]:
    """(A, [c_0, c_1, c_2]) with x_{i+1} = A x_i + Σ_k c_k x̂0_{i-k} (DPM-Solver++ 1/2M/3M, midpoint 2M)."""
    a_next, s_next, s_cur = lv.alpha[i + 1], lv.sigma[i + 1], lv.sigma[i]
    h = lv.lam[i + 1] - lv.lam[i]
    phi = _phi(h)
    A = s_next / s_cur
    d0 = np.array([1.0, 0.0, 0.0])
    c = -a_next * phi * d0
    if order >= 2 and not math.isinf(h) and h != 0.0:
        r0 = (lv.lam[i] - lv.lam[i - 1]) / h
        d1_0 = np.array([1.0, -1.0, 0.0]) / r0
        if order == 2:
            c = c - 0.5 * a_next * phi * d1_0
        else:
            r1 = (lv.lam[i - 1] - lv.lam[i - 2]) / h
            d1_1 = np.array([0.0, 1.0, -1.0]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            c = c + a_next * (phi / h + 1) * d1 + a_next * (1 - 2 * (phi + h) / h**2) * d2
    return A, c.tolist()


def sample_dpmpp_multistep(denoiser: Denoiser, x: torch.Tensor, timesteps: torch.Tensor, *,
                           generator: NoiseLike = None, callback: Callback | None = None,
                           order: int = 2) -> torch.Tensor:
    """DPM-Solver++(1/2M/3M); order 1 is DDIM with η = 0."""
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ multistep order must be 1, 2 or 3, got {order}")
    def build() -> tuple[list[int], list]:
        lv = Levels(denoiser, timesteps)
        orders = multistep_orders(len(lv), order, final_zero=lv.sigma[-1] == 0.0)
        plan = [dpmpp_coefficients(lv, i, o) for i, o in enumerate(orders)]
        return lv.t, [(A, [(c[k], k) for k in range(3) if c[k] != 0.0]) for A, c in plan]

    t_list, plan = cached_plan(denoiser.schedule, ("dpmpp", tuple(timesteps.tolist()), order), build)
    hist: list[torch.Tensor] = []
    for i, t in enumerate(t_list):
        x0 = denoiser.denoise(x, t)
        hist.insert(0, x0)
        del hist[3:]
        A, terms = plan[i]
        x = x * A
        for c, k in terms:
            x.add_(hist[k], alpha=c)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x


@register("dpmpp_2m")
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M): second order, one network call per step."""
    return sample_dpmpp_multistep(denoiser, x, timesteps, callback=callback, order=2)


@register("dpmpp_3m")
def sample_dpmpp_3m(denoiser: Denoiser, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(3M): third order, one network call per step."""
    return sample_dpmpp_multistep(denoiser, x, timesteps, callback=callback, order=3)


@register("dpmpp_2s", nfe_per_step=2, nfe_offset=-1)
def sample_dpmpp_2s(denoiser: Denoiser, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2S) (paper Alg. 1, r = 1/2): an extra evaluation at the log-SNR midpoint of each step,
    a fractional timestep; the last step onto σ = 0 is first order. NFE = 2S - 1."""
    lv = Levels(denoiser, timesteps)
    sched = denoiser.schedule
    for i, t in enumerate(lv.t):
        _, x0 = denoiser(x, t)
        h = lv.lam[i + 1] - lv.lam[i]
        if math.isinf(h) or h == 0.0:
            x = lincomb([(lv.sigma[i + 1] / lv.sigma[i], x), (-lv.alpha[i + 1] * _phi(h), x0)])
        else:
            lam_mid = lv.lam[i] + h / 2
            t_mid = sched.t_at_log_snr(2 * lam_mid)
            a_mid = math.sqrt(sched.alpha_bar_at(t_mid))
            s_mid = math.sqrt(1 - a_mid**2)
            lam_mid = math.log(a_mid / s_mid)  # the λ actually reached on the interpolated schedule
            r = (lam_mid - lv.lam[i]) / h
            x_mid = lincomb([(s_mid / lv.sigma[i], x), (-a_mid * _phi(r * h), x0)])
            _, x0_mid = denoiser(x_mid, t_mid)
            # D = (1 - 1/(2r)) x̂0 + 1/(2r) x̂0_mid
            d = lincomb([(1 - 1 / (2 * r), x0), (1 / (2 * r), x0_mid)])
            x = lincomb([(lv.sigma[i + 1] / lv.sigma[i], x), (-lv.alpha[i + 1] * _phi(h), d)])
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x
