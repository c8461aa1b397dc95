"""Gaussian mixtures with an exact noise predictor: ground truth with no training.

Under the VP forward process the noised marginal at t is again a mixture, with means sqrt(ᾱ) μ_k and
covariances ᾱ Σ_k + (1-ᾱ) I, so ε*(x, t) = -sqrt(1-ᾱ) ∇log p_t(x) is known in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import UsageError
from ..core.guidance import ClassLabels
from ..core.path import NoisePath
from ..core.prediction import output_from
from ..core.schedule import NoiseSchedule


class GaussianMixture:
    """p(x) = Σ_k w_k N(x; μ_k, Σ_k), with exact log-density and sampling."""

    def __init__(self, weights: Sequence[float] | torch.Tensor, means: Sequence[Sequence[float]] | torch.Tensor,
                 covariances: Sequence[Sequence[Sequence[float]]] | torch.Tensor) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covariances, dtype=torch.float64)
        if w.ndim != 1 or mu.ndim != 2 or cov.ndim != 3:
            raise UsageError("weights (K,), means (K, D) and covariances (K, D, D) expected")
        K, D = mu.shape
        if w.shape[0] != K or cov.shape != (K, D, D):
            raise UsageError(f"inconsistent shapes: weights {tuple(w.shape)}, means {tuple(mu.shape)}, "
                             f"covariances {tuple(cov.shape)}")
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise UsageError("weights must be non-negative with a positive sum")
        if not torch.allclose(cov, cov.transpose(1, 2)):
            raise UsageError("covariances must be symmetric")
        lam, U = torch.linalg.eigh(cov)
        if bool((lam <= 0).any()):
            raise UsageError("covariances must be positive definite")
        self.weights = w / w.sum()
        self.means = mu
        self.covariances = cov
        self._lam = lam  # (K, D) eigenvalues of Σ_k
        self._U = U  # (K, D, D) eigenvectors

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def _noised_terms(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """Per-component quantities of p_t at x for x_t = α x0 + σ ε: log-terms and C_k^{-1}(x - α μ_k)."""
        dt = x.dtype
        al = alpha.to(dt).reshape(-1, 1, 1)  # (B, 1, 1)
        sg = sigma.to(dt).reshape(-1, 1, 1)
        mu, lam, U = self.means.to(x.device, dt), self._lam.to(x.device, dt), self._U.to(x.device, dt)
        diff = x[:, None, :] - al * mu[None]  # (B, K, D)
        var = al * al * lam[None] + sg * sg  # (B, K, D) eigenvalues of C_k = α² Σ_k + σ² I
        proj = torch.einsum("bkd,kde->bke", diff, U)  # coordinates in Σ_k's eigenbasis
        maha = (proj * proj / var).sum(-1)
        logdet = var.log().sum(-1)
        logw = self.weights.to(x.device, dt).log()[None]
        logterm = logw - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))  # (B, K)
        cinv_diff = torch.einsum("bke,kde->bkd", proj / var, U)  # C_k^{-1}(x - sqrt(ᾱ) μ_k)
        return logterm, cinv_diff

    def log_prob(self, x: torch.Tensor, abar: float | torch.Tensor = 1.0) -> torch.Tensor:
        """log p_t(x) of the noised marginal (ᾱ = 1: the data density itself)."""
        x = _as_2d(x, self.dim)
        a = torch.as_tensor(abar, dtype=torch.float64, device=x.device).expand(x.shape[0])
        logterm, _ = self._noised_terms(x, a.sqrt(), (1 - a).clamp_min(0).sqrt())
        return torch.logsumexp(logterm, dim=1)

    def score(self, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """∇_x log p_t(x) on the VP path (α = sqrt(ᾱ), σ = sqrt(1-ᾱ))."""
        return self.score_at(x, abar.sqrt(), (1 - abar).clamp_min(0).sqrt())

    def score_at(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """∇_x log p_t(x) = -Σ_k r_k(x) C_k^{-1}(x - α μ_k) for x_t = α x0 + σ ε, any path."""
        logterm, cinv_diff = self._noised_terms(x, alpha, sigma)
        r = torch.softmax(logterm, dim=1)
        return -(r[..., None] * cinv_diff).sum(1)

    def posterior_mean_at(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] = Σ_k r_k(x) (μ_k + α Σ_k C_k^{-1}(x − α μ_k)): finite at pure noise (α = 0)."""
        logterm, _ = self._noised_terms(x, alpha, sigma)
        dt = x.dtype
        al = alpha.to(dt).reshape(-1, 1, 1)
        sg = sigma.to(dt).reshape(-1, 1, 1)
        mu, lam, U = self.means.to(x.device, dt), self._lam.to(x.device, dt), self._U.to(x.device, dt)
        proj = torch.einsum("bkd,kde->bke", x[:, None, :] - al * mu[None], U)
        shrink = torch.einsum("bke,kde->bkd", proj * lam[None] / (al * al * lam[None] + sg * sg), U)
        r = torch.softmax(logterm, dim=1)
        return (r[..., None] * (mu[None] + al * shrink)).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples (float64)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        L = torch.linalg.cholesky(self.covariances)
        return self.means[k] + torch.einsum("nij,nj->ni", L[k], z)

    def eps_model(self, schedule: NoisePath, prediction_type: str = "epsilon") -> MixtureEpsilon:
        """The exact network for this mixture on a noise path (grid or continuous): ε*(x, t) by default, or
        the exact x0 / v / flow-velocity output for `prediction_type`."""
        return MixtureEpsilon(self, schedule, prediction_type)


class MixtureEpsilon(nn.Module):
    """net(x, t) = ε*(x, t) = -σ_t ∇log p_t(x), computed in x's dtype (t: the path's time input); for other
    prediction types the same exact posterior, through E[x0 | x_t] (finite at α = 0 for velocity models)."""

    def __init__(self, mixture: GaussianMixture, schedule: NoisePath, prediction_type: str = "epsilon") -> None:
        super().__init__()
        self.mixture = mixture
        self.schedule = schedule
        self.prediction_type = prediction_type

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        al, sg = _levels(self.schedule, t, shape[0], x.device)
        x2 = x.reshape(shape[0], -1)
        if self.prediction_type == "epsilon":
            return (-sg.to(x.dtype)[:, None] * self.mixture.score_at(x2, al, sg)).reshape(shape)
        x0 = self.mixture.posterior_mean_at(x2, al, sg)
        a, g = al.to(x.dtype)[:, None], sg.to(x.dtype)[:, None]
        eps = (x2 - a * x0) / g
        return output_from(self.prediction_type, a, g, eps, x0).reshape(shape)

    def eps_at(self, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """ε* at given ᾱ values (B,), for points x (B, D): no timestep grid involved."""
        return -(1 - abar.to(x.dtype)).sqrt()[:, None] * self.mixture.score(x, abar)


def _as_2d(x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.ndim != 2 or x.shape[1] != dim:
        raise UsageError(f"expected points of shape (N, {dim}), got {tuple(x.shape)}")
    return x


def mog3() -> GaussianMixture:
    """The tutorial's 3-cluster mixture in 2-D (well separated, anisotropic clusters)."""
    return GaussianMixture(
        weights=[0.35, 0.35, 0.30],
        means=[[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0]],
        covariances=[
            [[0.30, 0.10], [0.10, 0.20]],
            [[0.30, -0.10], [-0.10, 0.20]],
            [[0.15, 0.00], [0.00, 0.35]],
        ],
    )


class ConditionalMixture:
    """p(x | c) a GaussianMixture per class c, p(c) the class weights: exact conditional, unconditional and
    CFG-guided scores. The exact network takes `class_labels`; label `num_classes` is the null class (p(x))."""

    def __init__(self, classes: Sequence[GaussianMixture], weights: Sequence[float] | None = None) -> None:
        if not classes or len({m.dim for m in classes}) != 1:
            raise UsageError("a conditional mixture needs at least one class, all of one dimension")
        w = torch.ones(len(classes), dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        if w.shape != (len(classes),) or bool((w <= 0).any()):
            raise UsageError("class weights must be positive, one per class")
        self.classes = list(classes)
        self.class_weights = w / w.sum()
        self.marginal = GaussianMixture(
            torch.cat([p * m.weights for p, m in zip(self.class_weights, classes)]),
            torch.cat([m.means for m in classes]), torch.cat([m.covariances for m in classes]))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def dim(self) -> int:
        return self.marginal.dim

    def component(self, label: int) -> GaussianMixture:
        """The mixture of one class, or the marginal for the null label."""
        return self.marginal if label == self.num_classes else self.classes[label]

    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): n exact samples with their classes (drawn from p(c) unless `labels` are given)."""
        y = torch.multinomial(self.class_weights, n, replacement=True, generator=generator) if labels is None \
            else labels.long()
        x = torch.empty(len(y), self.dim, dtype=torch.float64)
        for c in range(self.num_classes):
            idx = (y == c).nonzero().flatten()
            if len(idx):
                x[idx] = self.classes[c].sample(len(idx), generator=generator)
        return x, y

    def score_at(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor,
                 guidance: float = 1.0) -> torch.Tensor:
        """s_u + w (s_c − s_u) per sample (w = 1: the conditional score; null labels: the unconditional one)."""
        out = torch.empty_like(x)
        s_u = self.marginal.score_at(x, alpha, sigma) if guidance != 1.0 else None
        for c in labels.unique().tolist():
            idx = (labels == c).nonzero().flatten()
            s_c = self.component(c).score_at(x[idx], alpha[idx], sigma[idx])
            out[idx] = s_c if s_u is None else s_u[idx] + guidance * (s_c - s_u[idx])
        return out

    def eps_model(self, schedule: NoisePath) -> ConditionalMixtureEpsilon:
        return ConditionalMixtureEpsilon(self, schedule)

    @property
    def conditioning(self) -> ClassLabels:
        """How a Denoiser passes labels to the exact network (null label = num_classes)."""
        return ClassLabels(self.num_classes, null=self.num_classes)


class ConditionalMixtureEpsilon(nn.Module):
    """net(x, t, class_labels) = −σ_t ∇log p_t(x | c), exact (null label: the unconditional ε)."""

    def __init__(self, mixture: ConditionalMixture, schedule: NoisePath) -> None:
        super().__init__()
        self.mixture = mixture
        self.schedule = schedule

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(shape[0], -1)
        labels = (torch.full((shape[0],), self.mixture.num_classes, dtype=torch.long) if class_labels is None
                  else class_labels.reshape(-1).long().cpu())
        al, sg = _levels(self.schedule, t, shape[0], x.device)
        return (-sg.to(x.dtype)[:, None] * self.mixture.score_at(x2, al, sg, labels.to(x.device))).reshape(shape)


def _levels(schedule: NoisePath, t: torch.Tensor, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, σ) per sample in float64 for a network time input t (grid: ᾱ table; continuous: one level)."""
    if isinstance(schedule, NoiseSchedule):
        a = schedule.alpha_bar_tensor(t.to(device)).expand(n).double()
        return a.sqrt(), (1 - a).clamp_min(0).sqrt()
    al, sg = schedule.alpha_sigma(float(t.reshape(-1)[0]) / schedule.time_scale)
    return (torch.full((n,), al, dtype=torch.float64, device=device),
            torch.full((n,), sg, dtype=torch.float64, device=device))


def cmog() -> ConditionalMixture:
    """Three classes in 2-D, each two anisotropic components, overlapping enough that guidance matters."""
    def cls(m1, m2, c1, c2) -> GaussianMixture:
        return GaussianMixture([0.5, 0.5], [m1, m2], [c1, c2])

    return ConditionalMixture([
        cls([-1.5, 0.0], [-0.5, 1.0], [[0.20, 0.05], [0.05, 0.10]], [[0.10, 0.0], [0.0, 0.25]]),
        cls([1.5, 0.0], [0.5, 1.0], [[0.20, -0.05], [-0.05, 0.10]], [[0.10, 0.0], [0.0, 0.25]]),
        cls([0.0, -1.2], [0.0, 0.3], [[0.30, 0.0], [0.0, 0.08]], [[0.15, 0.0], [0.0, 0.15]]),
    ], weights=[0.4, 0.35, 0.25])


def mog3d() -> GaussianMixture:
    """A 3-D mixture of four strongly anisotropic, rotated components (schedule-search benchmark)."""
    def rot(a: float, b: float) -> torch.Tensor:
        ca, sa, cb, sb = math.cos(a), math.sin(a), math.cos(b), math.sin(b)
        rz = torch.tensor([[ca, -sa, 0.0], [sa, ca, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, cb, -sb], [0.0, sb, cb]], dtype=torch.float64)
        return rz @ rx

    scales = [(1.0, 0.05, 0.2), (0.6, 0.02, 0.3), (0.03, 0.8, 0.1), (0.4, 0.4, 0.01)]
    angles = [(0.3, 0.5), (1.2, -0.4), (-0.7, 1.1), (2.0, 0.2)]
    covs = []
    for s, (a, b) in zip(scales, angles):
        r = rot(a, b)
        covs.append((r @ torch.diag(torch.tensor(s, dtype=torch.float64) ** 2) @ r.T).tolist())
    return GaussianMixture([0.3, 0.25, 0.25, 0.2], [[-1.5, 0.0, 0.5], [1.5, 0.5, -0.5], [0.0, -1.5, 0.0],
                                                    [0.0, 1.5, 1.0]], covs)
