"""Sample-quality metrics: sliced Wasserstein, MMD, log-likelihood under a known mixture, Fréchet distance."""

from __future__ import annotations

import numpy as np
import torch

from .models.mixture import GaussianMixture


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).double()


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance: sqrt of the mean over random directions of W2² of the 1-D projections.

    Unequal sample sizes are compared at common quantile levels.
    """
    x, y = _flat(x), _flat(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: {x.shape[1]} vs {y.shape[1]}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ dirs, dim=0)
    py, _ = torch.sort(y @ dirs, dim=0)
    if px.shape[0] != py.shape[0]:
        m = max(px.shape[0], py.shape[0])
        q = (torch.arange(m, dtype=torch.float64) + 0.5) / m
        px = torch.quantile(px, q, dim=0)
        py = torch.quantile(py, q, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD² with an RBF kernel (bandwidth: median pairwise distance of the pooled sample)."""
    x, y = _flat(x), _flat(y)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("MMD needs at least two samples on each side")
    if bandwidth is None:
        z = torch.cat([x, y])[:2000]
        d = torch.cdist(z, z)
        bandwidth = float(d[d > 0].median())
    gamma = 1.0 / (2 * bandwidth**2)
    kxx = torch.exp(-gamma * torch.cdist(x, x) ** 2)
    kyy = torch.exp(-gamma * torch.cdist(y, y) ** 2)
    kxy = torch.exp(-gamma * torch.cdist(x, y) ** 2)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def mixture_loglik(mixture: GaussianMixture, x: torch.Tensor) -> float:
    """Average log-likelihood (nats) of points under a known mixture. Not higher-is-better for samplers:
    compare with the value of true samples (few-step samplers over-concentrate near the modes)."""
    return float(mixture.log_prob(x.double()).mean())


def gaussian_stats(features: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features (optionally weighted)."""
    f = features.double().cpu().numpy()
    if weights is None:
        return f.mean(0), np.cov(f, rowvar=False)
    w = weights.double().cpu().numpy()
    w = w / w.sum()
    mu = (w[:, None] * f).sum(0)
    d = f - mu
    cov = (w[:, None] * d).T @ d / (1 - (w**2).sum())
    return mu, cov


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """‖μ1-μ2‖² + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), with the square root from a symmetric eigen-decomposition."""
    from scipy import linalg

    diff = mu1 - mu2
    # (S1 S2)^{1/2} has the same trace as (sqrt(S1) S2 sqrt(S1))^{1/2}, which is symmetric PSD
    w1, v1 = linalg.eigh(s1)
    r1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    m = r1 @ s2 @ r1
    wm = linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = np.sqrt(np.clip(wm, 0, None)).sum()
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
