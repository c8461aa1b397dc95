"""The ancestral split of an EDM step (Karras et al. 2022; k-diffusion's `get_ancestral_step`): going from σ to
σ' with fresh noise, take the deterministic step to σ_down and add noise of std σ_up, where
σ_up = η sqrt(σ'² (σ² − σ'²)/σ²) (capped at σ') and σ_down = sqrt(σ'² − σ_up²), so the marginal at σ' is kept.
η = 1 is DDPM-like ancestral sampling, η = 0 the ODE step.
"""

from __future__ import annotations

import math


def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) for a step σ → σ' (EDM σ, float64)."""
    if sigma_next == 0.0 or eta == 0.0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(max(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.0)))
    return math.sqrt(max(sigma_next**2 - up**2, 0.0)), up
