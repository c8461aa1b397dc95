"""Latent-space operations on DDIM encodings: slerp, lerp, interpolation paths and edits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import UsageError
from ..core.guidance import Guidance, bind

if TYPE_CHECKING:
    from ..core.prediction import Denoiser


def lerp(a: torch.Tensor, b: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """(1-w) a + w b."""
    _same_shape(a, b)
    return torch.lerp(a, b, torch.as_tensor(w, dtype=a.dtype, device=a.device))


def slerp(a: torch.Tensor, b: torch.Tensor, w: float | torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation per sample (rows of a batch, flattened), Shoemake (1985).

    sin((1-w)θ)/sin θ · a + sin(wθ)/sin θ · b with θ the angle between a and b. Norms are interpolated
    linearly, so equal-norm endpoints keep their norm. Nearly parallel vectors fall back to lerp;
    antiparallel ones (θ ≈ π, the great circle is not unique) rotate through a fixed orthogonal direction.
    """
    _same_shape(a, b)
    shape = a.shape
    a2 = a.reshape(shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
    b2 = b.reshape(shape[0], -1) if b.ndim > 1 else b.reshape(1, -1)
    w_t = torch.as_tensor(w, dtype=a2.dtype, device=a2.device).reshape(-1, 1)
    na, nb = a2.norm(dim=1, keepdim=True), b2.norm(dim=1, keepdim=True)
    ua, ub = a2 / na.clamp_min(1e-30), b2 / nb.clamp_min(1e-30)
    cos = (ua * ub).sum(1, keepdim=True).clamp(-1, 1)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    norm = (1 - w_t) * na + w_t * nb
    near_par = cos > 1 - eps
    near_anti = cos < -1 + eps
    # antiparallel: pick a direction orthogonal to ua (Gram-Schmidt on the basis vector least aligned)
    idx = ua.abs().argmin(dim=1, keepdim=True)
    e = torch.zeros_like(ua).scatter_(1, idx, 1.0)
    perp = e - (e * ua).sum(1, keepdim=True) * ua
    perp = perp / perp.norm(dim=1, keepdim=True).clamp_min(1e-30)
    safe_sin = torch.where(near_par | near_anti, torch.ones_like(sin), sin)
    u_slerp = (torch.sin((1 - w_t) * theta) * ua + torch.sin(w_t * theta) * ub) / safe_sin
    u_anti = torch.cos(w_t * torch.pi) * ua + torch.sin(w_t * torch.pi) * perp
    u_lerp = (1 - w_t) * ua + w_t * ub
    u = torch.where(near_par, u_lerp / u_lerp.norm(dim=1, keepdim=True).clamp_min(1e-30),
                    torch.where(near_anti, u_anti, u_slerp))
    out = u * norm
    # exact endpoints
    out = torch.where(w_t == 0, a2, torch.where(w_t == 1, b2, out))
    return out.reshape(shape)


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise UsageError(f"endpoints must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def path(a: torch.Tensor, b: torch.Tensor, n: int, method: str = "slerp") -> torch.Tensor:
    """n points from a to b (inclusive) for single samples a, b of shape (1, ...) or (...): returns (n, ...)."""
    if n < 2:
        raise UsageError("an interpolation path needs n >= 2 points")
    if method not in ("slerp", "lerp"):
        raise UsageError(f"unknown interpolation method {method!r} (slerp or lerp)")
    a1 = a.reshape(1, -1)
    b1 = b.reshape(1, -1)
    _same_shape(a1, b1)
    ws = torch.linspace(0, 1, n, dtype=a.dtype, device=a.device)
    A, B = a1.expand(n, -1), b1.expand(n, -1)
    out = slerp(A, B, ws) if method == "slerp" else A + ws[:, None] * (B - A)
    inner = a.shape[1:] if a.ndim > 1 and a.shape[0] == 1 else a.shape
    return out.reshape(n, *inner)


def interpolate(denoiser: Denoiser, a: torch.Tensor, b: torch.Tensor, n: int, method: str = "slerp",
                encode: bool = True, steps: int = 50, refine: int = 3, condition: Any = None,
                guidance: Guidance | float | None = None, uncond: Any = None,
                timesteps: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Decoded path between two endpoints: data (encoded first, `encode=True`) or noise. Returns (n, ...).
    A condition (one for all) and guidance apply to the encoding and the decoding alike."""
    from ..core.sample import sample
    from .inversion import invert

    denoiser = bind(denoiser, condition, guidance, uncond)
    _same_shape(a, b)
    if a.ndim < 2 or a.shape[0] != 1:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    if encode:
        z = invert(denoiser, torch.cat([a, b]), steps, refine=refine, timesteps=timesteps)
        a, b = z[:1], z[1:]
    zs = path(a, b, n, method)
    return sample(denoiser, x_T=zs, steps=steps, timesteps=timesteps)


def edit(denoiser: Denoiser, x0: torch.Tensor, direction: torch.Tensor, scales: Sequence[float], steps: int = 50,
         refine: int = 3, condition: Any = None, guidance: Guidance | float | None = None,
         uncond: Any = None, timesteps: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Encode x0 (N, ...), move along `direction` (broadcast to x0's sample shape) by each scale, decode.

    Returns (len(scales), N, ...); scale 0 is the reconstruction.
    """
    from ..core.sample import sample
    from .inversion import invert

    denoiser = bind(denoiser, condition, guidance, uncond)
    if direction.shape != x0.shape[1:] and direction.shape != x0.shape[:1] + x0.shape[1:]:
        raise UsageError(f"direction has shape {tuple(direction.shape)}, expected {tuple(x0.shape[1:])}")
    z = invert(denoiser, x0, steps, refine=refine, timesteps=timesteps)
    outs = [sample(denoiser, x_T=z + float(s) * direction, steps=steps, timesteps=timesteps) for s in scales]
    return torch.stack(outs)


def direction_from_examples(denoiser: Denoiser, positive: torch.Tensor, negative: torch.Tensor, steps: int = 50,
                            refine: int = 3, timesteps: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """A latent direction: mean encoding of `positive` minus mean encoding of `negative` (e.g. two classes)."""
    from .inversion import invert

    if positive.shape[1:] != negative.shape[1:]:
        raise UsageError("the two example sets must have the same sample shape")
    return (invert(denoiser, positive, steps, refine=refine, timesteps=timesteps).mean(0)
            - invert(denoiser, negative, steps, refine=refine, timesteps=timesteps).mean(0))
