"""A time-conditioned MLP noise predictor for low-dimensional data."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017; DDPM's U-Net)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class MLP(nn.Module):
    """ε_θ(x, t) for x of shape (B, dim): sinusoidal t embedding, SiLU residual blocks."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 32) -> None:
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "emb_dim": emb_dim}
        self.emb_dim = emb_dim
        self.inp = nn.Linear(dim + emb_dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        emb = timestep_embedding(t, self.emb_dim).to(x.dtype)
        h = self.inp(torch.cat([x, emb], dim=-1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)
