"""Log-likelihood through the probability-flow ODE (Song et al. 2021, "instantaneous change of variables").

In EDM variables x_e = x/α, σ_e = σ/α = e^{−λ} the PF-ODE of any path is dx_e/dσ_e = f = ε̂(α x_e, t(λ)), and
    log p_0(x) = log p_T(x_T) + D log α_T + ∫ div_{x_e} f dσ_e − D log α_0  (from the lowest to the highest level),
the log α terms converting densities on x to x_e coordinates at both ends. The divergence is exact
(D backward passes) in low dimension, Hutchinson's estimator with fixed Rademacher probes otherwise.
Integrated with SciPy's adaptive RK45 (scipy comes with scikit-learn).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..core.errors import UsageError
from ..core.guidance import Guidance, bind
from ..core.prediction import Denoiser

EXACT_DIVERGENCE_MAX_DIM = 16


def _eps_fn(denoiser: Denoiser) -> Callable[[torch.Tensor, float], tuple[torch.Tensor, float]]:
    """f(x_e, σ_e) = ε̂(α x_e, t) at the level whose σ/α is σ_e, and that level's α."""
    path = denoiser.path

    def eps(xe: torch.Tensor, sig_e: float) -> tuple[torch.Tensor, float]:
        t = path.t_at_lambda(-math.log(sig_e))
        a = path.alpha_sigma(t)[0]
        x = xe * a
        return denoiser.eps_from_output(x, t, denoiser.call_net(x, t)), a

    return eps


def log_likelihood(denoiser: Denoiser, x: torch.Tensor, *, exact: bool | None = None, probes: int = 4,
                   rtol: float = 1e-5, atol: float = 1e-5, seed: int = 0,
                   prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   bits_per_dim: bool = False, condition: Any = None, guidance: Guidance | float | None = None,
                   uncond: Any = None) -> torch.Tensor:
    """Per-sample log-likelihood (nats; bits/dim on request) of data x under the model's PF-ODE.

    Integrates from the lowest level of the path (grid t = 0; a continuous path's t_min) to the highest
    (t = T-1; t_max); `prior` is log p_T at the top (default N(0, (α² + σ²) I): standard normal on a VP path,
    unit-variance data elsewhere). Data are taken as the lowest level (σ = 0.01 for DDPM's schedule).
    """
    from scipy.integrate import solve_ivp

    denoiser = bind(denoiser, condition, guidance, uncond).for_run()  # guided: the guided PF-ODE's density
    denoiser.check_input(x)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise UsageError(f"probes must be an integer >= 1, got {probes!r}")
    path = denoiser.path
    n = x.shape[0]
    shape = x.shape
    D = int(np.prod(shape[1:]))
    exact = D <= EXACT_DIVERGENCE_MAX_DIM if exact is None else exact
    eps = _eps_fn(denoiser)
    (al_lo, sg_lo), (al_hi, sg_hi) = (path.alpha_sigma(t) for t in path.t_range)
    if sg_lo <= 0 or al_hi <= 0:
        raise UsageError("the likelihood integrates between levels with 0 < σ and 0 < α; give a path whose range "
                         "excludes pure data and pure noise")
    s_lo, s_hi = sg_lo / al_lo, sg_hi / al_hi
    dtype = x.dtype
    g = torch.Generator().manual_seed(seed)
    z = (torch.randint(0, 2, (probes, *shape), generator=g) * 2 - 1).to(dtype)

    def rhs(sig: float, y: np.ndarray) -> np.ndarray:
        xe = torch.from_numpy(y[: n * D]).to(dtype).reshape(shape).requires_grad_(True)
        with torch.enable_grad():
            f, _ = eps(xe, sig)
            if exact:
                flat = f.reshape(n, D)
                div = torch.zeros(n, dtype=dtype)
                for d in range(D):
                    (gd,) = torch.autograd.grad(flat[:, d].sum(), xe, retain_graph=d < D - 1)
                    div = div + gd.reshape(n, D)[:, d]
            else:
                div = torch.zeros(n, dtype=dtype)
                for k in range(probes):
                    (gk,) = torch.autograd.grad(f, xe, grad_outputs=z[k], retain_graph=k < probes - 1)
                    div = div + (gk * z[k]).reshape(n, -1).sum(1) / probes
        return np.concatenate([f.detach().reshape(-1).double().numpy(), div.detach().double().numpy()])

    y0 = np.concatenate([(x.detach().double() / al_lo).reshape(-1).numpy(), np.zeros(n)])
    sol = solve_ivp(rhs, (s_lo, s_hi), y0, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise UsageError(f"likelihood ODE solve failed: {sol.message}")
    yT = sol.y[:, -1]
    x_T = torch.from_numpy(yT[: n * D]).reshape(shape) * al_hi
    integral = torch.from_numpy(yT[n * D:])
    if prior is None:
        var = al_hi * al_hi + sg_hi * sg_hi
        logp_T = -0.5 * (x_T.reshape(n, -1) ** 2).sum(1) / var - 0.5 * D * math.log(2 * math.pi * var)
    else:
        logp_T = prior(x_T)
    # x_e = x/α at both ends: log p_x(x0) = log p_xe(x0/α_0) - D log α_0, log p_xe(top) = log p_x(top) + D log α_T
    ll = logp_T + D * math.log(al_hi) + integral - D * math.log(al_lo)
    if bits_per_dim:
        return -ll / (D * math.log(2))
    return ll
