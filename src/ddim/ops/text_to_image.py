"""Prompts → images with a latent pipeline (any object with `denoiser`, `latent_shape`, `condition(prompts)`,
`encode(images)`, `decode(latents)`, e.g. `ddim.io.text2image.LatentDiffusion`): text-to-image, prompt-
conditioned inversion, prompt swapping and img2img (SDEdit), all through the ordinary samplers.

Classifier-free guidance follows StableDiffusionPipeline: ε = ε_neg + w (ε_prompt − ε_neg), with the empty
prompt as the default negative; latents start from per-sample seeds (sample i is the same whatever the batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..core.errors import UsageError
from ..core.guidance import Guidance
from ..core.sample import sample
from .editing import SwapResult, sdedit, swap_condition


def _prompts(prompt: str | Sequence[str], n: int) -> list[str]:
    """One prompt for all, or a list cycled over the n samples."""
    ps = [prompt] if isinstance(prompt, str) else list(prompt)
    if not ps or not all(isinstance(p, str) for p in ps):
        raise UsageError("prompts must be strings")
    return [ps[i % len(ps)] for i in range(n)]


def _guided(pipe: Any, prompts: list[str], negative: str | Sequence[str] | None, guidance: Guidance | float
            ) -> dict[str, Any]:
    cond = pipe.condition(prompts)
    uncond = pipe.condition(_prompts(negative, len(prompts))) if negative is not None else None
    return {"condition": cond, "uncond": uncond, "guidance": guidance}


def text_to_image(pipe: Any, prompt: str | Sequence[str], n: int = 1, *, negative_prompt: str | Sequence[str] | None
                  = None, guidance: Guidance | float = 7.5, steps: int = 50, sampler: str = "ddim",
                  spacing: str | None = None, seed: int = 0, seeds: Sequence[int] | None = None,
                  latents: torch.Tensor | None = None, return_latents: bool = False, **options: Any) -> Any:
    """n images (N, C, H, W) in [-1, 1]; with `return_latents` also the final latents."""
    prompts = _prompts(prompt, n if latents is None else latents.shape[0])
    kw = _guided(pipe, prompts, negative_prompt, guidance)
    shape = None if latents is not None else (len(prompts), *pipe.latent_shape)
    z = sample(pipe.denoiser, shape, x_T=latents, steps=steps, sampler=sampler, spacing=spacing, seed=seed,
               seeds=seeds, **kw, **options)
    images = pipe.decode(z)
    return (images, z) if return_latents else images


def edit_images(pipe: Any, images: torch.Tensor, source_prompt: str | Sequence[str], target_prompt: str |
                Sequence[str], *, steps: int = 50, guidance: Guidance | float = 7.5, inversion: str = "refined",
                refine: int = 3) -> SwapResult:
    """Encode real images with the VAE, invert the latents under the source prompt, decode under the target
    (naive / refined / negative-prompt inversion, as `swap_condition`). Returns decoded images."""
    z0 = pipe.encode(images)
    n = z0.shape[0]
    r = swap_condition(pipe.denoiser, z0, pipe.condition(_prompts(source_prompt, n)),
                       pipe.condition(_prompts(target_prompt, n)), steps=steps, guidance=guidance,
                       inversion=inversion, refine=refine)
    return SwapResult(r.latent, pipe.decode(r.reconstruction), pipe.decode(r.edited))


def img2img(pipe: Any, images: torch.Tensor, prompt: str | Sequence[str], strength: float, *,
            negative_prompt: str | Sequence[str] | None = None, guidance: Guidance | float = 7.5, steps: int = 50,
            sampler: str = "ddim", seed: int = 0, **options: Any) -> torch.Tensor:
    """SDEdit on latents: noise the encoded images to `strength`, denoise under the prompt, decode."""
    z0 = pipe.encode(images)
    kw = _guided(pipe, _prompts(prompt, z0.shape[0]), negative_prompt, guidance)
    return pipe.decode(sdedit(pipe.denoiser, z0, strength, steps=steps, sampler=sampler, seed=seed, **kw,
                              **options))
