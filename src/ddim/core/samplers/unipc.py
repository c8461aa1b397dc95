"""UniPC (Zhao et al. 2023): a unified predictor–corrector for the data-prediction ODE.

UniP-p predicts x_next from x̂0 at the current and p-1 earlier levels; UniC re-uses the network call at
the predicted point (no extra NFE) to correct it, raising the order by one. B(h) = h ("bh1") or
e^h - 1 ("bh2"). Orders warm up from 1 and step down near the end (`lower_order_final`).
"""

from __future__ import annotations

import math

import torch

from ..errors import UsageError
from ..noise import NoiseLike
from ..path import Levels
from ..run import Callback, StepInfo, Tracked
from .base import cached_plan, register, solve_small


def unipc_terms(lv: Levels, i: int, order: int, variant: str, corrector: bool, predict_x0: bool = True
                ) -> tuple[float, float, list[float], float]:
    """Coefficients for the step from level i to i+1 using the model outputs m at levels i, i-1, ..., i-order+1
    (m = x̂0, or ε̂ for the noise-prediction form `predict_x0=False`).

    Predictor:  x_{i+1} = A x_i + c0 m_i + Σ_k ck (m_{i-k} - m_i)            (k = 1..order-1)
    Corrector:  the same, plus cT (m_{i+1} - m_i), with the corrector's own ρ (order+1 accurate).
    Returns (A, c0, [c_k...], cT); cT is 0 for the predictor.
    """
    a_next, s_next, s_cur = lv.alpha[i + 1], lv.sigma[i + 1], lv.sigma[i]
    h = lv.lam[i + 1] - lv.lam[i]
    A = s_next / s_cur if predict_x0 else a_next / lv.alpha[i]
    if math.isinf(h):  # onto σ = 0: x = α_next x̂0
        return A, a_next, [], 0.0
    if h == 0.0:  # a zero-length step (e.g. onto a final level equal to the last one)
        return 1.0, 0.0, [], 0.0
    while order > 1 and any(lv.lam[i - k] == lv.lam[i] for k in range(1, order)):  # a repeated level: no slope
        order -= 1
    # pure noise (a flow's t = 1, λ = −∞) as the oldest level: the two-level formulas take their finite limit
    # (its term vanishes), higher orders have none, so they drop that level
    while order > 2 and math.isinf(lv.lam[i - order + 1]):
        order -= 1
    hh = -h if predict_x0 else h
    scale = a_next if predict_x0 else s_next
    h_phi_1 = math.expm1(hh)
    B_h = hh if variant == "bh1" else math.expm1(hh)
    rks = [(lv.lam[i - k] - lv.lam[i]) / h for k in range(1, order)] + [1.0]
    R = [[r ** (j - 1) for r in rks] for j in range(1, order + 1)]
    b = []
    h_phi_k = h_phi_1 / hh - 1
    fact = 1
    for j in range(1, order + 1):
        b.append(h_phi_k * fact / B_h)
        fact *= j + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    c0 = -scale * h_phi_1
    if corrector:
        rhos = [0.5] if order == 1 else solve_small(R, b)
        ck = [-scale * B_h * rhos[k - 1] / rks[k - 1] for k in range(1, order)]
        return A, c0, ck, -scale * B_h * rhos[-1]
    if order == 1:
        return A, c0, [], 0.0
    rhos_p = [0.5] if order == 2 else solve_small([row[:-1] for row in R[:-1]], b[:-1])
    ck = [-scale * B_h * rhos_p[k - 1] / rks[k - 1] for k in range(1, order)]
    return A, c0, ck, 0.0


def flatten_terms(terms: tuple[float, float, list[float], float]) -> tuple[float, list[tuple[float, int]], float]:
    """(A, [(coefficient, history index)...] without zeros, c_new) from (A, c0, [c_k], cT)."""
    A, c0, ck, cT = terms
    lin = [(c0 - sum(ck) - cT, 0)] + [(c, k + 1) for k, c in enumerate(ck)]
    return A, [(c, k) for c, k in lin if c != 0.0], cT


def apply_terms(plan: tuple[float, list[tuple[float, int]], float], x: torch.Tensor, hist: list[torch.Tensor],
           m_new: torch.Tensor | None) -> torch.Tensor:
    A, lin, cT = plan
    out = x * A
    for c, k in lin:
        out.add_(hist[k], alpha=c)
    if cT != 0.0 and m_new is not None:
        out.add_(m_new, alpha=cT)
    return out


@register("unipc")
def sample_unipc(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                 callback: Callback | None = None, order: int = 2, variant: str = "bh2",
                 corrector: bool = True) -> torch.Tensor:
    """UniPC (bh1/bh2, order 1-3, corrector on/off); one network call per step."""
    if order not in (1, 2, 3):
        raise UsageError(f"UniPC order must be 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise UsageError(f"UniPC variant must be bh1 or bh2, got {variant!r}")
    t_key = tuple(timesteps.tolist())

    def build() -> tuple[list[int], list, list]:
        lv = Levels(model.path, timesteps)
        n = len(lv)
        orders = [min(order, n - i, i + 1) for i in range(n)]
        pred = [flatten_terms(unipc_terms(lv, i, orders[i], variant, False)) for i in range(n)]
        corr = [flatten_terms(unipc_terms(lv, i, orders[i], variant, True)) if corrector else None for i in range(n)]
        return lv.t, pred, corr

    t_list, pred, corr = cached_plan(model.den, ("unipc", t_key, order, variant, corrector), build)
    hist: list[torch.Tensor] = []
    x_last: torch.Tensor | None = None
    for i, t in enumerate(t_list):
        m = model.denoise(x, t)
        if corrector and i > 0 and x_last is not None:
            # UniC for the step i-1 → i, re-using the call at the predicted point
            x = apply_terms(corr[i - 1], x_last, hist, m)
        hist.insert(0, m)
        del hist[order:]
        x_last = x
        x = apply_terms(pred[i], x, hist, None)
        if callback is not None:
            callback(StepInfo(i, t, x, m))
    return x
