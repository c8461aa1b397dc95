"""PLMS, the pseudo linear multistep method of PNDM (Liu et al. 2022): Adams–Bashforth on the ODE slope in
the path's variables (`Levels`: ε̂ in EDM variables, which is PNDM's DDIM transfer
x_next = α_next (x − σ ε')/α + σ_next ε'; the velocity ε̂ − x̂0 in flow variables). The first step uses the
pseudo improved Euler (one extra call), then AB2, AB3 and AB4. NFE = S + 1.
"""

from __future__ import annotations

import torch

from ..noise import NoiseLike
from ..path import Levels
from ..run import Callback, StepInfo, Tracked
from .base import lincomb, register
from .heun import slope

_AB = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


@register("pndm", nfe_offset=1)
def sample_pndm(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                callback: Callback | None = None) -> torch.Tensor:
    lv = Levels(model.path, timesteps, ddim_final=True)
    n = len(lv)
    hist: list[torch.Tensor] = []

    def transfer(x_: torch.Tensor, d: torch.Tensor, i: int) -> torch.Tensor:
        c, c_next = lv.c[i], lv.c[i + 1]
        return lincomb([(c_next / c, x_), (c_next * (lv.s[i + 1] - lv.s[i]), d)])

    for i, t in enumerate(lv.t):
        eps, x0 = model(x, t)
        d = slope(lv, eps, x0)
        if not hist and n > 1:
            x_pred = transfer(x, d, i)
            eps_next, x0_next = model(x_pred, lv.t[i + 1])
            d_prime = lincomb([(0.5, d), (0.5, slope(lv, eps_next, x0_next))])
        else:
            coef = _AB[min(len(hist) + 1, 4)]
            d_prime = lincomb([(c, e) for c, e in zip(coef, [d, *hist])])
        hist = [d, *hist[:2]]
        x = transfer(x, d_prime, i)
        if callback is not None:
            callback(StepInfo(i, t, x, x0))
    return x
