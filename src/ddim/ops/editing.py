"""Editing real data with a conditional model: swap the condition after inversion, and SDEdit.

`swap_condition` encodes x0 under its source condition and decodes the same latent under a target one
(DDIM's best-known use). Three inversions (Mokady et al. 2023 and Miyake et al. 2023 discuss why plain DDIM
inversion drifts under guidance):
  naive     DDIM inversion of the guided step (output at the known point): drifts as guidance grows;
  refined   fixed-point inversion of the guided step (inverts the guided decoder itself);
  negative  invert with the conditional branch only (w = 1), then decode with the source condition as the
            negative/unconditional branch: the reconstruction is the w = 1 round trip whatever w is, and
            the edit is guided away from the source (negative-prompt inversion, Miyake et al. 2023).
`sdedit` (Meng et al. 2022) noises x0 to a fraction `strength` of the way to noise and samples back under
the new condition: no inversion, a trade between faithfulness and the edit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import UsageError
from ..core.guidance import Guidance, bind
from ..core.noise import SeededNoise
from ..core.prediction import Denoiser
from ..core.sample import resolve_seeds, resolve_timesteps, sample
from .inversion import invert

INVERSIONS = ("naive", "refined", "negative")


@dataclass
class SwapResult:
    """The latent, the reconstruction under the source condition and the edit under the target."""

    latent: torch.Tensor
    reconstruction: torch.Tensor
    edited: torch.Tensor


def encode(denoiser: Denoiser, x0: torch.Tensor, source: Any, timesteps: torch.Tensor, *,
           guidance: Guidance | float | None = None, inversion: str = "refined", refine: int = 3
           ) -> tuple[torch.Tensor, dict[str, Any]]:
    """x0's latent under `source`, and the decoding arguments (condition, guidance, uncond) that reconstruct it."""
    if inversion not in INVERSIONS:
        raise UsageError(f"unknown inversion {inversion!r}; choose one of {', '.join(INVERSIONS)}")
    if inversion == "negative":
        return invert(denoiser, x0, timesteps=timesteps, refine=refine, condition=source), {"condition": source}
    z = invert(denoiser, x0, timesteps=timesteps, refine=refine if inversion == "refined" else 0, condition=source,
               guidance=guidance)
    return z, {"condition": source, "guidance": guidance}


def swap_condition(denoiser: Denoiser, x0: torch.Tensor, source: Any, target: Any, *, steps: int = 50,
                   spacing: str | None = None, guidance: Guidance | float | None = None, inversion: str = "refined",
                   refine: int = 3, timesteps: Sequence[float] | torch.Tensor | None = None) -> SwapResult:
    """Invert x0 under `source`, decode the same latent under `source` (reconstruction) and `target` (edit)."""
    ts = resolve_timesteps(denoiser, steps, spacing, timesteps)
    z, rec_kw = encode(denoiser, x0, source, ts, guidance=guidance, inversion=inversion, refine=refine)
    rec = sample(denoiser, x_T=z, timesteps=ts, **rec_kw)
    # negative: the source's network arguments become the unconditional branch of the guided edit
    unc = bind(denoiser, source).condition if inversion == "negative" else None
    edited = sample(denoiser, x_T=z, timesteps=ts, condition=target, guidance=guidance, uncond=unc)
    return SwapResult(z, rec, edited)


def guided_reconstruction(denoiser: Denoiser, x0: torch.Tensor, source: Any, scales: Sequence[float],
                          steps_list: Sequence[int], refine: int = 3) -> list[dict[str, Any]]:
    """Per-dimension MSE of decode(encode(x0)) under guidance w, for each inversion and step count."""
    rows = []
    for steps in steps_list:
        ts = resolve_timesteps(denoiser, steps, None, None)
        for w in scales:
            row: dict[str, Any] = {"steps": steps, "scale": w}
            for mode in INVERSIONS:
                z, kw = encode(denoiser, x0, source, ts, guidance=w, inversion=mode, refine=refine)
                row[mode] = float((sample(denoiser, x_T=z, timesteps=ts, **kw) - x0).pow(2).mean())
            rows.append(row)
    return rows


def sdedit(denoiser: Denoiser, x0: torch.Tensor, strength: float, *, condition: Any = None,
           guidance: Guidance | float | None = None, uncond: Any = None, steps: int = 50, spacing: str | None = None,
           sampler: str = "ddim", seed: int = 0, seeds: Sequence[int] | None = None,
           timesteps: Sequence[float] | torch.Tensor | None = None, **options: Any) -> Any:
    """Noise x0 to the level `strength` ∈ (0, 1] of the way along the step list (per-sample seeds), then sample
    the remaining steps under `condition`. strength 1 starts from (almost) pure noise. `options` go to
    `sample` (the sampler's own, `return_stats`, `callback`)."""
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0 < strength <= 1:
        raise UsageError(f"strength must lie in (0, 1], got {strength!r}")
    denoiser.check_input(x0)
    ts = resolve_timesteps(denoiser, steps, spacing, timesteps)
    k = max(1, round(strength * len(ts)))
    ts = ts[len(ts) - k:]
    al, sg = denoiser.path.alpha_sigma(float(ts[0]))
    seeds = resolve_seeds(x0.shape[0], seed, seeds)
    z = SeededNoise(seeds, x0.shape[1:], dtype=x0.dtype, device=x0.device).initial()
    x_t = x0 * al + z * sg  # q(x_t | x0) at the start level
    return sample(denoiser, x_T=x_t, timesteps=ts, sampler=sampler, seeds=seeds, condition=condition,
                  guidance=guidance, uncond=uncond, **options)
