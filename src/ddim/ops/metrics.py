"""Sample-quality metrics: sliced Wasserstein, MMD, log-likelihood under a known mixture, Fréchet distance."""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import UsageError
from ..models.mixture import GaussianMixture


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).double()


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance: sqrt of the mean over random directions of W2² of the 1-D projections.

    Unequal sample sizes are compared at common quantile levels.
    """
    x, y = _flat(x), _flat(y)
    if x.shape[1] != y.shape[1]:
        raise UsageError(f"dimension mismatch: {x.shape[1]} vs {y.shape[1]}")
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
        raise UsageError("MMD needs at least two samples on each side")
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


def frechet_distance_features(real: torch.Tensor, fake: torch.Tensor, real_weights: torch.Tensor | None = None,
                              fake_weights: torch.Tensor | None = None) -> float:
    """Fréchet distance between two feature sets (N, F), optionally weighted."""
    return frechet_distance(*gaussian_stats(real, real_weights), *gaussian_stats(fake, fake_weights))


@torch.no_grad()
def extract(extractor: torch.nn.Module | object, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Features of x in batches: `extractor.features(x)` when it has one, else `extractor(x)`."""
    fn = getattr(extractor, "features", extractor)
    return torch.cat([fn(x[i: i + batch]).reshape(min(batch, x.shape[0] - i), -1) for i in range(0, x.shape[0], batch)])


def load_feature_extractor(path: str) -> torch.nn.Module:
    """A TorchScript feature extractor from disk (e.g. an Inception network exported with torch.jit.save),
    for FID on your own images. TorchScript archives hold code and tensors; no arbitrary unpickling."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no feature extractor at {p}")
    try:
        return torch.jit.load(str(p), map_location="cpu").eval()
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"{p} is not a TorchScript archive: {str(e).splitlines()[0]}") from None


def class_coverage(pred: torch.Tensor, n_classes: int = 10) -> dict[str, float | list[float]]:
    """Histogram of predicted classes, its total-variation distance to uniform, and the smallest share."""
    counts = torch.bincount(pred.long(), minlength=n_classes).double()
    frac = counts / counts.sum()
    return {"fractions": frac.tolist(), "tv_to_uniform": float(0.5 * (frac - 1 / n_classes).abs().sum()),
            "min_fraction": float(frac.min())}


def class_balanced_weights(pred: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """Weights 1/count(predicted class), so each class contributes equally to a weighted Fréchet distance."""
    counts = torch.bincount(pred.long(), minlength=n_classes).double()
    return 1.0 / counts[pred.long()]


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): the share of fake samples inside the real
    k-NN manifold, and of real samples inside the fake one."""
    real, fake = _flat(real), _flat(fake)

    def radii(a: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(a, a)
        return d.kthvalue(k + 1, dim=1).values  # +1: the point itself

    def inside(points: torch.Tensor, ref: torch.Tensor, r: torch.Tensor) -> float:
        d = torch.cdist(points, ref)
        return float((d <= r[None]).any(1).double().mean())

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))
