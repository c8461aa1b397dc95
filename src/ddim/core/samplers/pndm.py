"""PLMS, the pseudo linear multistep method of PNDM (Liu et al. 2022): Adams–Bashforth on ε̂, applied
through the DDIM transfer x_next = α_next (x - σ ε')/α + σ_next ε'. The first step uses the pseudo
improved Euler (one extra call), then AB2, AB3 and AB4. NFE = S + 1.
"""

from __future__ import annotations

import torch

from ..noise import NoiseLike
from ..path import Levels
from ..run import Callback, StepInfo, Tracked
from .base import lincomb, register

_AB = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


@register("pndm", nfe_offset=1)
def sample_pndm(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                callback: Callback | None = None) -> torch.Tensor:
    lv = Levels(model.schedule, timesteps)
    n = len(lv)
    hist: list[torch.Tensor] = []

    def transfer(x_: torch.Tensor, e: torch.Tensor, i: int) -> torch.Tensor:
        a, a_next = lv.alpha[i], lv.alpha[i + 1]
        return lincomb([(a_next / a, x_), (lv.sigma[i + 1] - a_next * lv.sigma[i] / a, e)])

    for i, t in enumerate(lv.t):
        eps, x0 = model(x, t)
        if not hist and n > 1:
            x_pred = transfer(x, eps, i)
            eps_next, _ = model(x_pred, lv.t[i + 1])
            e_prime = lincomb([(0.5, eps), (0.5, eps_next)])
        else:
            coef = _AB[min(len(hist) + 1, 4)]
            e_prime = lincomb([(c, e) for c, e in zip(coef, [eps, *hist])])
        hist = [eps, *hist[:2]]
        x = transfer(x, e_prime, i)
        if callback is not None:
            callback(StepInfo(i, t, x, x0))
    return x
