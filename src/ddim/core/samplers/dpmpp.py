"""DPM-Solver++ (Lu et al. 2022b): exponential integrators of the data-prediction ODE in log-SNR time.

With α, σ the path's levels, λ = log(α/σ), h = λ_next - λ and φ = e^{-h} - 1, the first-order step
x_next = (σ_next/σ) x - α_next φ x̂0 is DDIM (η = 0); the multistep variants add finite differences of
earlier x̂0 (paper Alg. 2 and diffusers' 3M), the single-step 2S an evaluation at the λ midpoint.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import UsageError
from ..noise import NoiseLike, noise_fn
from ..path import Levels, NoisePath
from ..prediction import Denoiser
from ..run import Callback, StepInfo, Tracked
from .base import cached_plan, lincomb, register

MultistepStep = tuple[float, list[tuple[float, int]]]


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


DPM_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
SOLVER_TYPES = ("midpoint", "heun")


def _differences(lv: Levels, i: int, order: int, h: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """D0, D1, D2 as weights over (m_i, m_{i-1}, m_{i-2}): the finite differences of the multistep solvers
    (Lu et al. 2022b, Alg. 2 and its third-order extension), D1 ≈ h m', D2 ≈ h² m''/2."""
    d0 = np.array([1.0, 0.0, 0.0])
    zero = np.zeros(3)
    if order < 2:
        return d0, zero, zero
    r0 = (lv.lam[i] - lv.lam[i - 1]) / h
    d1_0 = np.array([1.0, -1.0, 0.0]) / r0
    if order == 2:
        return d0, d1_0, zero
    r1 = (lv.lam[i - 1] - lv.lam[i - 2]) / h
    d1_1 = np.array([0.0, 1.0, -1.0]) / r1
    return d0, d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)


def _check(order: int, algorithm: str, solver_type: str) -> None:
    if algorithm not in DPM_ALGORITHMS:
        raise UsageError(f"unknown DPM-Solver algorithm {algorithm!r}; choose one of {', '.join(DPM_ALGORITHMS)}")
    if solver_type not in SOLVER_TYPES:
        raise UsageError(f"unknown DPM-Solver solver_type {solver_type!r}; choose one of {', '.join(SOLVER_TYPES)}")
    if order not in (1, 2, 3) or (order == 3 and algorithm == "sde-dpmsolver"):
        raise UsageError(f"DPM-Solver order must be 1, 2 or 3 (1 or 2 for sde-dpmsolver), got {order}")


def _weights(lv: Levels, b: int, e: int, order: int, algorithm: str, heun: bool
             ) -> tuple[float, float, float, float, float]:
    """(A, w0, w1, w2, g): x_e = A x_b + w0 D0 + w1 D1 + w2 D2 + g z for a step from level b to level e, with
    h = λ_e − λ_b, φ = e^{-h} − 1, ψ = e^{h} − 1 and D1 ≈ h m', D2 ≈ h² m''/2 (Taylor weights: the integral of
    each term of m's expansion in the exact solution of the linear part)."""
    a1, s1, a0, s0 = lv.alpha[e], lv.sigma[e], lv.alpha[b], lv.sigma[b]
    h = lv.lam[e] - lv.lam[b]
    g = w2 = 0.0
    if algorithm == "dpmsolver++":
        phi = _phi(h)
        A, w0 = s1 / s0, -a1 * phi
        w1 = a1 * (phi / h + 1.0) if heun else 0.5 * w0
        if order == 3:
            w2 = a1 * (1.0 - 2.0 * (phi + h) / h**2)
    elif algorithm == "sde-dpmsolver++":
        e2 = -math.expm1(-2.0 * h) if not math.isinf(h) else 1.0  # 1 − e^{-2h}
        A, w0 = (s1 / s0 * math.exp(-h) if not math.isinf(h) else 0.0), a1 * e2
        w1 = a1 * (e2 / (-2.0 * h) + 1.0) if heun else 0.5 * w0
        if order == 3:
            w2 = a1 * ((e2 - 2.0 * h) / (2.0 * h * h) + 1.0)
        g = s1 * math.sqrt(max(e2, 0.0))
    else:
        psi = math.expm1(h)
        k = 2.0 if algorithm == "sde-dpmsolver" else 1.0
        A, w0 = a1 / a0, -k * s1 * psi
        w1 = -k * s1 * (psi / h - 1.0) if heun else 0.5 * w0
        if order == 3:
            w2 = -2.0 * s1 * ((psi - h) / h**2 - 0.5)
        if algorithm == "sde-dpmsolver":
            g = s1 * math.sqrt(max(math.expm1(2.0 * h), 0.0))
    return A, w0, w1, w2, g


def _usable_order(lv: Levels, i: int, order: int, b: int, e: int) -> int:
    """Lower the order onto σ = 0, for a zero-length step, or where two of the levels used coincide."""
    h = lv.lam[e] - lv.lam[b]
    if math.isinf(h) or h == 0.0:
        return 1
    while order > 1 and len({lv.lam[i - k] for k in range(order)}) < order:
        order -= 1
    return order


def dpm_solver_coefficients(lv: Levels, i: int, order: int, algorithm: str = "dpmsolver++",
                            solver_type: str = "midpoint") -> tuple[float, list[float], float]:
    """(A, [c_0, c_1, c_2], g) with x_{i+1} = A x_i + Σ_k c_k m_{i-k} + g z for one multistep DPM-Solver step.

    m is x̂0 for the data-prediction algorithms (dpmsolver++, sde-dpmsolver++) and ε̂ for the noise-prediction
    ones (dpmsolver, sde-dpmsolver); the weights of D0, D1, D2 (`_weights`) are
      dpmsolver++:      A = σ'/σ,          −α'φ,      −α'φ/2 (midpoint) or α'(φ/h + 1) (heun)
      sde-dpmsolver++:  A = σ'/σ e^{-h},   α'(1−e^{-2h}), half that or α'((1−e^{-2h})/(−2h) + 1), g = σ' sqrt(1−e^{-2h})
      dpmsolver:        A = α'/α,          −σ'ψ,      −σ'ψ/2 or −σ'(ψ/h − 1)
      sde-dpmsolver:    A = α'/α,          −2σ'ψ,     −σ'ψ or −2σ'(ψ/h − 1),  g = σ' sqrt(e^{2h} − 1)
    Third order uses the heun D1 weight and the Taylor-correct D2 weight, twice diffusers' multistep one (its
    D2 ≈ h² m''/2 takes the weight of h² m''); its sde-dpmsolver++ weight also has −1/2 for +1/2 (O(1) instead
    of O(h), which diverges).
    """
    _check(order, algorithm, solver_type)
    order = _usable_order(lv, i, order, i, i + 1)
    d0, d1, d2 = _differences(lv, i, order, lv.lam[i + 1] - lv.lam[i])
    A, w0, w1, w2, g = _weights(lv, i, i + 1, order, algorithm, solver_type == "heun" or order == 3)
    return A, (w0 * d0 + w1 * d1 + w2 * d2).tolist(), g


def dpm_singlestep_coefficients(lv: Levels, i: int, order: int, algorithm: str = "dpmsolver++",
                                solver_type: str = "midpoint") -> tuple[float, list[float], float]:
    """(A, [c_0, c_1, c_2], g) with x_{i+1} = A x_b + Σ_k c_k m_{i-k} + g z for the last stage of a singlestep
    DPM-Solver step of `order` (Lu et al. 2022a, Alg. 1/2 with the list's levels as the intermediate points):
    the step starts at b = i − order + 1, whose x and m are D0; the later m give D1 (and D2 at third order,
    or, with the midpoint solver type, D1 from the last point alone as the paper's DPM-Solver-3)."""
    _check(order, algorithm, solver_type)
    b = i - order + 1
    order = _usable_order(lv, i, order, b, i + 1)
    b = i - order + 1
    h = lv.lam[i + 1] - lv.lam[b]
    d0 = np.eye(3)[order - 1]
    d1 = d2 = np.zeros(3)
    if order == 2:
        d1 = (np.eye(3)[0] - d0) / ((lv.lam[i] - lv.lam[b]) / h)
    elif order == 3:
        r0, r1 = (lv.lam[i] - lv.lam[b]) / h, (lv.lam[i - 1] - lv.lam[b]) / h
        d1_0, d1_1 = (np.eye(3)[1] - d0) / r1, (np.eye(3)[0] - d0) / r0
        if solver_type == "heun":
            d1, d2 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1), (d1_1 - d1_0) / (r0 - r1)
        else:
            d1 = d1_1
    A, w0, w1, w2, g = _weights(lv, b, i + 1, order, algorithm, solver_type == "heun" or order == 3)
    return A, (w0 * d0 + w1 * d1 + w2 * d2).tolist(), g


def dpmpp_coefficients(lv: Levels, i: int, order: int) -> tuple[float, list[float]]:
    """(A, [c_0, c_1, c_2]) with x_{i+1} = A x_i + Σ_k c_k x̂0_{i-k} (DPM-Solver++ 1/2M/3M, midpoint 2M)."""
    A, c, _ = dpm_solver_coefficients(lv, i, order)
    return A, c


def step_tables(path: NoisePath, timesteps: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The coefficients of every step of a list at one order as tensors (A (n,), C (n, 3)), with
    x_{i+1} = A[i] x_i + Σ_k C[i, k] x̂0_{i−k}; order 1 is DDIM (η = 0). Step 0 is first order (no history).
    For batches whose samples walk different stretches of one list (distillation's teacher): gather rows."""
    lv = Levels(path, timesteps)
    rows = [dpmpp_coefficients(lv, i, min(order, i + 1)) for i in range(len(lv))]
    return (torch.tensor([a for a, _ in rows], dtype=torch.float32),
            torch.tensor([c for _, c in rows], dtype=torch.float32))


def dpmpp_plan(den: Denoiser, timesteps: torch.Tensor, order: int) -> tuple[list, list[MultistepStep]]:
    """(levels, per-step (A, [(c_k, k)...])) for DPM-Solver++(order M): x_{i+1} = A x_i + Σ c_k x̂0_{i-k}."""
    if order not in (1, 2, 3):
        raise UsageError(f"DPM-Solver++ multistep order must be 1, 2 or 3, got {order}")

    def build() -> tuple[list, list[MultistepStep]]:
        lv = Levels(den.path, timesteps)
        orders = multistep_orders(len(lv), order, final_zero=lv.sigma[-1] == 0.0)
        plan = [dpmpp_coefficients(lv, i, o) for i, o in enumerate(orders)]
        return lv.t, [(A, [(c[k], k) for k in range(3) if c[k] != 0.0]) for A, c in plan]

    return cached_plan(den, ("dpmpp", tuple(timesteps.tolist()), order), build)


def multistep_update(x: torch.Tensor, hist: list[torch.Tensor], step: MultistepStep) -> torch.Tensor:
    """x_next = A x + Σ c_k hist[k] (hist[0] the newest x̂0): the step the loop and the drop-in scheduler share."""
    A, terms = step
    x = x * A
    for c, k in terms:
        x.add_(hist[k], alpha=c)
    return x


def run_dpmpp_multistep(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, callback: Callback | None,
                        order: int) -> torch.Tensor:
    """DPM-Solver++(1/2M/3M) loop; order 1 is DDIM with η = 0."""
    t_list, plan = dpmpp_plan(model.den, timesteps, order)
    hist: list[torch.Tensor] = []
    for i, t in enumerate(t_list):
        x0 = model.denoise(x, t)
        hist.insert(0, x0)
        del hist[3:]
        x = multistep_update(x, hist, plan[i])
        if callback is not None:
            callback(StepInfo(i, t, x, x0))
    return x


@register("dpmpp_2m")
def sample_dpmpp_2m(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M): second order, one network call per step."""
    return run_dpmpp_multistep(model, x, timesteps, callback, order=2)


@register("dpmpp_3m")
def sample_dpmpp_3m(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(3M): third order, one network call per step."""
    return run_dpmpp_multistep(model, x, timesteps, callback, order=3)


@register("dpmpp_2s", nfe_per_step=2, nfe_offset=-1)
def sample_dpmpp_2s(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2S) (paper Alg. 1, r = 1/2): an extra evaluation at the log-SNR midpoint of each step,
    a fractional timestep; the last step onto σ = 0 is first order. NFE = 2S - 1."""
    lv = Levels(model.path, timesteps)
    path = model.path
    for i, t in enumerate(lv.t):
        _, x0 = model(x, t)
        h = lv.lam[i + 1] - lv.lam[i]
        if math.isinf(h) or h == 0.0:
            x = lincomb([(lv.sigma[i + 1] / lv.sigma[i], x), (-lv.alpha[i + 1] * _phi(h), x0)])
        else:
            lam_mid = lv.lam[i] + h / 2
            t_mid = path.t_at_lambda(lam_mid)
            a_mid, s_mid = path.alpha_sigma(t_mid)
            lam_mid = path.lam(t_mid)  # the λ actually reached (a grid path interpolates)
            r = (lam_mid - lv.lam[i]) / h
            x_mid = lincomb([(s_mid / lv.sigma[i], x), (-a_mid * _phi(r * h), x0)])
            _, x0_mid = model(x_mid, t_mid)
            # D = (1 - 1/(2r)) x̂0 + 1/(2r) x̂0_mid
            d = lincomb([(1 - 1 / (2 * r), x0), (1 / (2 * r), x0_mid)])
            x = lincomb([(lv.sigma[i + 1] / lv.sigma[i], x), (-lv.alpha[i + 1] * _phi(h), d)])
        if callback is not None:
            callback(StepInfo(i, t, x, x0))
    return x


# ------------------------------------------------------------------------------------- SDE variants
SdeStep = tuple[float, list[tuple[float, int]], float]


def dpmpp_sde_coefficients(lv: Levels, i: int, order: int) -> tuple[float, list[float], float]:
    """(A, [c_0, c_1], g) with x_{i+1} = A x_i + Σ c_k x̂0_{i-k} + g z: SDE-DPM-Solver++ (Lu et al. 2022b,
    the data-prediction SDE solver; order 1, or 2M with the midpoint D1 weight, as diffusers)."""
    A, c, g = dpm_solver_coefficients(lv, i, order, "sde-dpmsolver++")
    return A, c[:2], g


def dpmpp_sde_plan(den: Denoiser, timesteps: torch.Tensor, order: int) -> tuple[list, list[SdeStep]]:
    def build() -> tuple[list, list[SdeStep]]:
        lv = Levels(den.path, timesteps)
        orders = multistep_orders(len(lv), order, final_zero=lv.sigma[-1] == 0.0)
        plan = [dpmpp_sde_coefficients(lv, i, o) for i, o in enumerate(orders)]
        return lv.t, [(A, [(c[k], k) for k in range(2) if c[k] != 0.0], g) for A, c, g in plan]

    return cached_plan(den, ("dpmpp_sde", tuple(timesteps.tolist()), order), build)


def run_dpmpp_sde(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, generator: NoiseLike,
                  callback: Callback | None, order: int) -> torch.Tensor:
    t_list, plan = dpmpp_sde_plan(model.den, timesteps, order)
    noise = noise_fn(generator, x)
    hist: list[torch.Tensor] = []
    for i, t in enumerate(t_list):
        x0 = model.denoise(x, t)
        hist.insert(0, x0)
        del hist[2:]
        A, terms, g = plan[i]
        x = multistep_update(x, hist, (A, terms))
        if g > 0.0:
            x.add_(noise(), alpha=g)
        if callback is not None:
            callback(StepInfo(i, t, x, x0))
    return x


@register("dpmpp_2m_sde")
def sample_dpmpp_2m_sde(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                        callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) SDE: second-order multistep on the data-prediction SDE, fresh noise each step from the
    per-sample seeds (same bits at any batch size); diffusers' algorithm_type="sde-dpmsolver++", midpoint."""
    return run_dpmpp_sde(model, x, timesteps, generator, callback, order=2)


@register("dpmpp_sde")
def sample_dpmpp_sde(model: Tracked, x: torch.Tensor, timesteps: torch.Tensor, *, generator: NoiseLike = None,
                     callback: Callback | None = None) -> torch.Tensor:
    """SDE-DPM-Solver++(1): the first-order stochastic step x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) x̂0
    + σ_t sqrt(1 − e^{−2h}) z (the η = 1-like counterpart of DDIM on the log-SNR grid)."""
    return run_dpmpp_sde(model, x, timesteps, generator, callback, order=1)
