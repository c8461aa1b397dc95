"""DDIM inversion: run the deterministic sampler forward in time, data → noise, and back.

The η=0 step from t down to s is x_s = P·x_t + Q·out(x_t, t) (see `Denoiser.combine`). Inverting it
needs out at the unknown x_t. Naive inversion uses out(x_s, t) (ε at the wrong point: it drifts);
`refine=k` then solves x_t = (x_s - Q·out(x_t, t)) / P by k fixed-point iterations, which inverts the
S-step decoder itself, so encode → decode round trips are far tighter at the same step count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .denoiser import Denoiser
from .samplers import sample
from .samplers.base import Callback


def _checked(denoiser: Denoiser, x0: torch.Tensor, steps: int, spacing: str | None,
             timesteps: Sequence[int] | torch.Tensor | None, eta: float, refine: int) -> torch.Tensor:
    if eta != 0:
        raise ValueError("inversion is defined for the deterministic sampler (eta = 0); "
                         f"eta={eta} adds fresh noise that cannot be undone")
    if not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine must be an integer >= 0, got {refine!r}")
    if not denoiser.is_affine:
        raise ValueError("inversion needs a denoiser without x̂0 clipping or thresholding (they are not invertible)")
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.ndim < 2:
        raise ValueError("x0 must be a floating-point tensor with a batch dimension")
    if denoiser.sample_shape is not None and tuple(x0.shape[1:]) != denoiser.sample_shape:
        dims = ", ".join(map(str, denoiser.sample_shape))
        raise ValueError(f"x0 has shape {tuple(x0.shape)}; this model takes (N, {dims})")
    if timesteps is not None:
        return denoiser.schedule.validate_timesteps(timesteps)
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"steps must be an integer, got {steps!r}")
    return denoiser.schedule.timesteps(steps, spacing)


@torch.no_grad()
def invert(denoiser: Denoiser, x0: torch.Tensor, steps: int = 50, spacing: str | None = None,
           timesteps: Sequence[int] | torch.Tensor | None = None, refine: int = 0, eta: float = 0.0,
           callback: Callback | None = None) -> torch.Tensor:
    """Encode x0 to x_T with DDIM run forward in time over the sampler's own timesteps (ascending).

    `sample(denoiser, x_T=invert(...), same steps/spacing)` reconstructs x0. NFE = steps · (1 + refine),
    left in `denoiser.last_nfe`.
    """
    ts = _checked(denoiser, x0, steps, spacing, timesteps, eta, refine)
    sched = denoiser.schedule
    desc = ts.tolist()
    asc = desc[::-1]  # t_0 < t_1 < ... < t_top
    prev_levels = [-1, *asc[:-1]]  # the level each inversion step starts from (-1: ᾱ_{-1}, the data)
    start = denoiser.nfe
    denoiser.begin(x0)
    x = x0
    for i, (s, t) in enumerate(zip(prev_levels, asc)):
        a_s = sched.alpha_bar(s)
        # decode step t → s: x_s = sqrt(ᾱ_s) x̂0 + sqrt(1-ᾱ_s) ε̂ = P x_t + Q out  (DDIM eq. 12, η = 0)
        p, q = denoiser.combine(t, 0.0, a_s**0.5, (1 - a_s) ** 0.5)
        out = denoiser.raw(x, t)  # naive: the output at the known point x_s
        x_t = torch.add(x, out, alpha=-q).div_(p)
        x_t = _solve_fixed_point(lambda z, t=t, p=p, q=q, xs=x: torch.add(xs, denoiser.raw(z, t), alpha=-q).div_(p),
                                 x, x_t, refine)
        x = x_t
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": None})
    denoiser.finish()
    denoiser.last_nfe = denoiser.nfe - start
    return x


def _solve_fixed_point(g, x_prev: torch.Tensor, x_next: torch.Tensor, iters: int) -> torch.Tensor:
    """Iterate z = g(z) from z_1 = g(x_prev) with per-sample Anderson(1) mixing (a secant step on the
    residual f = g(z) - z), which converges far faster than plain iteration on stiff early steps."""
    if iters == 0:
        return x_next
    z, gz = x_prev, x_next  # z_0 = x_s, g(z_0) = the naive estimate
    f_old = gz - z
    g_old = gz
    z = gz
    dims = tuple(range(1, z.ndim))
    for _ in range(iters):
        gz = g(z)
        f = gz - z
        df = f - f_old
        denom = (df * df).sum(dims, keepdim=True)
        gamma = torch.where(denom > 0, (f * df).sum(dims, keepdim=True) / denom.clamp_min(1e-300),
                            torch.zeros_like(denom))
        z_new = gz - gamma * (gz - g_old)
        f_old, g_old, z = f, gz, z_new
    return z


@torch.no_grad()
def reconstruct(denoiser: Denoiser, x0: torch.Tensor, steps: int = 50, spacing: str | None = None,
                timesteps: Sequence[int] | torch.Tensor | None = None, refine: int = 0) -> torch.Tensor:
    """decode(encode(x0)) with the same timesteps."""
    x_T = invert(denoiser, x0, steps, spacing, timesteps, refine)
    ts = timesteps if timesteps is not None else denoiser.schedule.timesteps(steps, spacing)
    return sample(denoiser, x_T=x_T, timesteps=ts)


def normality(z: torch.Tensor) -> dict[str, float]:
    """How Gaussian encodings are: mean, variance, and the Kolmogorov–Smirnov statistic of all
    coordinates pooled against N(0, 1) (≈ 1.36/sqrt(n) is the 5% critical value)."""
    v = z.detach().double().flatten()
    s, _ = torch.sort(v)
    n = s.numel()
    cdf = torch.special.ndtr(s)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())
    return {"mean": float(v.mean()), "var": float(v.var()), "ks": ks, "ks_crit_5pct": 1.36 / n**0.5}


@dataclass
class ReconstructionRow:
    steps: int
    mse_naive: float
    mse_refined: float
    nfe_naive: int
    nfe_refined: int
    enc_naive: dict[str, float]
    enc_refined: dict[str, float]


def reconstruction_table(denoiser: Denoiser, x0: torch.Tensor, steps_list: Sequence[int] = (10, 20, 50, 100),
                         refine: int = 3, spacing: str | None = None, progress: bool = False
                         ) -> list[ReconstructionRow]:
    """Per-dimension MSE of encode → decode, naive vs refined, with the encodings' normality (DDIM Table 2)."""
    rows = []
    it = steps_list
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(steps_list, desc="reconstruction", leave=False)
    for s in it:
        z_n = invert(denoiser, x0, s, spacing)
        nfe_n = denoiser.last_nfe
        r_n = sample(denoiser, x_T=z_n, steps=s, spacing=spacing)
        z_r = invert(denoiser, x0, s, spacing, refine=refine)
        nfe_r = denoiser.last_nfe
        r_r = sample(denoiser, x_T=z_r, steps=s, spacing=spacing)
        rows.append(ReconstructionRow(s, float((r_n - x0).pow(2).mean()), float((r_r - x0).pow(2).mean()),
                                      nfe_n + s, nfe_r + s, normality(z_n), normality(z_r)))
    return rows


def format_reconstruction(rows: list[ReconstructionRow], refine: int) -> str:
    lines = [f"| steps S | MSE naive | MSE refined (k={refine}) | NFE naive | NFE refined "
             "| enc. mean / var / KS (naive) | enc. mean / var / KS (refined) |", "|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        en, er = r.enc_naive, r.enc_refined
        lines.append(f"| {r.steps} | {r.mse_naive:.3e} | {r.mse_refined:.3e} | {r.nfe_naive} | {r.nfe_refined} | "
                     f"{en['mean']:+.3f} / {en['var']:.3f} / {en['ks']:.3f} | "
                     f"{er['mean']:+.3f} / {er['var']:.3f} / {er['ks']:.3f} |")
    return "\n".join(lines)
