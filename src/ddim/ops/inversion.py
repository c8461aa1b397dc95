"""DDIM inversion: run the deterministic sampler forward in time, data → noise, and back.

The η = 0 step from level t down to s is x_s = p·x_t + q·out(x_t, t), with (p, q) from the same DDIM plan
the sampler runs. Inverting it needs out at the unknown x_t. Naive inversion uses out(x_s, t) (ε at the
wrong point: it drifts); `refine=k` then solves x_t = (x_s − q·out(x_t, t)) / p by k fixed-point
iterations, which inverts the S-step decoder itself, so encode → decode round trips are far tighter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import UsageError
from ..core.guidance import Guidance, bind
from ..core.prediction import Denoiser
from ..core.run import Callback, RunStats, StepInfo, Tracked
from ..core.sample import resolve_timesteps, sample
from ..core.samplers.ddim import ddim_plan


def _checked(denoiser: Denoiser, x0: torch.Tensor, steps: int, spacing: str | None,
             timesteps: Sequence[float] | torch.Tensor | None, eta: float, refine: int) -> torch.Tensor:
    if eta != 0:
        raise UsageError("inversion is defined for the deterministic sampler (eta = 0); "
                         f"eta={eta} adds fresh noise that cannot be undone")
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise UsageError(f"refine must be an integer >= 0, got {refine!r}")
    if not denoiser.is_affine:
        raise UsageError("inversion needs an invertible step: no x̂0 clipping or thresholding, and no cfg++ "
                         "guidance (its ε and x̂0 come from different branches)")
    denoiser.check_input(x0)
    return resolve_timesteps(denoiser, steps, spacing, timesteps)


@torch.no_grad()
def invert(denoiser: Denoiser, x0: torch.Tensor, steps: int = 50, spacing: str | None = None,
           timesteps: Sequence[float] | torch.Tensor | None = None, refine: int = 0, eta: float = 0.0,
           callback: Callback | None = None, return_stats: bool = False, condition: Any = None,
           guidance: Guidance | float | None = None, uncond: Any = None) -> Any:
    """Encode x0 to x_T with DDIM run forward in time over the sampler's own levels (ascending).

    `sample(denoiser, x_T=invert(...), same steps/spacing)` reconstructs x0. NFE = steps · (1 + refine) per
    branch; with `return_stats` the result is (x_T, RunStats). Under a condition and guidance the step
    inverted is the guided one (naive: drifts at high guidance; `refine` inverts the guided decoder itself).
    """
    denoiser = bind(denoiser, condition, guidance, uncond)
    ts = _checked(denoiser, x0, steps, spacing, timesteps, eta, refine)
    plan = ddim_plan(denoiser, ts, 0.0)
    stats = RunStats()
    model = Tracked(denoiser.for_run(), stats)
    x = x0
    try:
        for k, i in enumerate(range(len(plan.t) - 1, -1, -1)):  # from the data end up to the top level
            t, p, q = plan.t[i], plan.p[i], plan.q[i]
            out = model.raw(x, t)  # naive: the output at the known point x_s
            x_t = torch.add(x, out, alpha=-q).div_(p)
            x_t = _solve_fixed_point(lambda z, t=t, p=p, q=q, xs=x: torch.add(xs, model.raw(z, t), alpha=-q).div_(p),
                                     x, x_t, refine)
            x = x_t
            if callback is not None:
                callback(StepInfo(k, t, x, None))
    finally:
        model.finish()
    return (x, stats) if return_stats else x


def _solve_fixed_point(g, x_prev: torch.Tensor, x_next: torch.Tensor, iters: int) -> torch.Tensor:
    """Iterate z = g(z) from z_1 = g(x_prev) with per-sample Anderson(1) mixing (a secant step on the
    residual f = g(z) - z), which converges far faster than plain iteration on stiff early steps. Under strong
    guidance the map can expand, so each sample returns its iterate with the smallest residual (safeguard)."""
    if iters == 0:
        return x_next
    z, gz = x_prev, x_next  # z_0 = x_s, g(z_0) = the naive estimate
    f_old = gz - z
    g_old = gz
    z = gz
    dims = tuple(range(1, z.ndim))
    best, best_r = z, None
    for _ in range(iters):
        gz = g(z)
        f = gz - z
        r = (f * f).sum(dims, keepdim=True)
        if best_r is None:
            best, best_r = gz, r
        else:
            better = r < best_r
            best, best_r = torch.where(better, gz, best), torch.where(better, r, best_r)
        df = f - f_old
        denom = (df * df).sum(dims, keepdim=True)
        gamma = torch.where(denom > 0, (f * df).sum(dims, keepdim=True) / denom.clamp_min(1e-300),
                            torch.zeros_like(denom))
        z_new = gz - gamma * (gz - g_old)
        f_old, g_old, z = f, gz, z_new
    return best


@torch.no_grad()
def reconstruct(denoiser: Denoiser, x0: torch.Tensor, steps: int = 50, spacing: str | None = None,
                timesteps: Sequence[float] | torch.Tensor | None = None, refine: int = 0, condition: Any = None,
                guidance: Guidance | float | None = None, uncond: Any = None) -> torch.Tensor:
    """decode(encode(x0)) with the same timesteps (and the same condition and guidance)."""
    denoiser = bind(denoiser, condition, guidance, uncond)
    ts = resolve_timesteps(denoiser, steps, spacing, timesteps)
    return sample(denoiser, x_T=invert(denoiser, x0, timesteps=ts, refine=refine), timesteps=ts)


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
        z_n, st_n = invert(denoiser, x0, s, spacing, return_stats=True)
        r_n = sample(denoiser, x_T=z_n, steps=s, spacing=spacing)
        z_r, st_r = invert(denoiser, x0, s, spacing, refine=refine, return_stats=True)
        r_r = sample(denoiser, x_T=z_r, steps=s, spacing=spacing)
        rows.append(ReconstructionRow(s, float((r_n - x0).pow(2).mean()), float((r_r - x0).pow(2).mean()),
                                      st_n.nfe + s, st_r.nfe + s, normality(z_n), normality(z_r)))
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
