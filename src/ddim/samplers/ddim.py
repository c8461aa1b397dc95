"""DDIM (Song et al. 2021): the q_σ family of non-Markovian reverse steps, any η ≥ 0."""

from __future__ import annotations

import math

import torch

from ..denoiser import Denoiser
from ..noise import NoiseLike
from .base import Callback, alpha_pairs, check_eta, first_order_steps, register


def ddim_sigmas(a_t: list[float], a_prev: list[float], eta: float) -> list[float]:
    """σ_t = η sqrt((1-ᾱ_prev)/(1-ᾱ_t)) sqrt(1-ᾱ_t/ᾱ_prev)  (DDIM eq. 16), radicands clamped at 0."""
    out = []
    for a, ap in zip(a_t, a_prev):
        if eta == 0.0 or ap == 0.0 or a == 1.0:
            out.append(0.0)
            continue
        var = max((1 - ap) / (1 - a), 0.0) * max(1 - a / ap, 0.0)
        out.append(eta * math.sqrt(var))
    return out


@register("ddim")
def sample_ddim(denoiser: Denoiser, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                callback: Callback | None = None, eta: float = 0.0, use_clipped_model_output: bool = False
                ) -> torch.Tensor:
    """x_prev = sqrt(ᾱ_prev) x̂0 + sqrt(1 - ᾱ_prev - σ²) ε̂ + σ z  (DDIM eq. 12); ᾱ_prev from the next list entry."""
    eta = check_eta(eta)
    t_list, a_t, a_prev = alpha_pairs(denoiser, timesteps)
    c_x0, c_eps, sig = ddim_coefficients(a_t, a_prev, eta)
    return first_order_steps(denoiser, x, t_list, [0.0] * len(t_list), c_x0, c_eps, sig, generator, callback,
                             use_clipped_model_output)


def ddim_coefficients(a_t: list[float], a_prev: list[float], eta: float
                      ) -> tuple[list[float], list[float], list[float]]:
    """Per step (sqrt(ᾱ_prev), sqrt(1 - ᾱ_prev - σ²), σ) of DDIM eq. 12, in float64."""
    sig = ddim_sigmas(a_t, a_prev, eta)
    c_x0 = [math.sqrt(ap) for ap in a_prev]
    c_eps = [math.sqrt(max(1 - ap - s * s, 0.0)) for ap, s in zip(a_prev, sig)]
    return c_x0, c_eps, sig
