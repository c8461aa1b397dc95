"""High-accuracy reference solutions of the probability-flow ODE for the exact mixture.

In EDM's variables x_e = x/α, σ_e = σ/α the PF-ODE is dx_e/dσ_e = ε*(α x_e; ᾱ) with ᾱ = 1/(1+σ_e²):
it depends on the schedule only through the start level, so every sampler on every schedule approximates
the same solution. Integrated with SciPy's DOP853 at tight tolerances (needs scipy, a test extra).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..core.errors import UsageError
from ..models.mixture import GaussianMixture


def pf_ode_reference(mixture: GaussianMixture | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     x_T: torch.Tensor, abar_start: float, abar_end: float = 1.0,
                     rtol: float = 1e-11, atol: float = 1e-11) -> torch.Tensor:
    """Solve the PF-ODE from x_T at ᾱ = abar_start down to ᾱ = abar_end (1.0: the data), float64.

    `mixture` gives the score ∇log p_t(x) on the VP path at (x, ᾱ): a GaussianMixture, or any function
    score(x, ᾱ) such as a guided conditional score s_u + w (s_c − s_u)."""
    score = mixture.score if isinstance(mixture, GaussianMixture) else mixture
    try:
        from scipy.integrate import solve_ivp
    except ImportError as e:  # pragma: no cover - scipy ships with the test extra
        raise RuntimeError("the reference ODE solver needs scipy (pip install scipy)") from e
    if not 0 < abar_start < 1 or not 0 < abar_end <= 1 or abar_end <= abar_start:
        raise UsageError("need 0 < abar_start < abar_end <= 1")
    shape = x_T.shape
    x = x_T.detach().double().reshape(shape[0], -1)
    s0 = math.sqrt((1 - abar_start) / abar_start)
    s1 = math.sqrt((1 - abar_end) / abar_end)

    def rhs(sig: float, y: np.ndarray) -> np.ndarray:
        abar = 1.0 / (1.0 + sig * sig)
        xe = torch.from_numpy(y).reshape(x.shape)
        a = torch.full((x.shape[0],), abar, dtype=torch.float64)
        eps = -math.sqrt(1 - abar) * score(xe * math.sqrt(abar), a)
        return eps.reshape(-1).numpy()

    y0 = (x / math.sqrt(abar_start)).reshape(-1).numpy()
    sol = solve_ivp(rhs, (s0, s1), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference ODE solve failed: {sol.message}")
    y1 = torch.from_numpy(sol.y[:, -1]).reshape(x.shape) * math.sqrt(abar_end)
    return y1.reshape(shape)
