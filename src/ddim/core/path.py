"""The one noise-level model: a path x_t = α_t x_0 + σ_t ε, with λ_t = log(α_t/σ_t) (the log-SNR is 2λ).

Every sampler, inversion and the likelihood read α, σ and λ from a `NoisePath`, in float64. A path comes in
two explicit kinds: grid time (`NoiseSchedule`: integer t indexes a table of ᾱ, the DDPM-trained nets) and
continuous time (`ContinuousPath`: t real, α and σ by formula: flow matching α = 1 − σ, variance exploding
α = 1, cosine VP). DDIM's η = 0 step x_s = (σ_s/σ_t) x_t + α_s (1 − e^{−h}) x̂0, h = λ_s − λ_t, is the exact
solution of the linear part of the probability-flow ODE on every path, so a new family is a new path.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from .errors import UsageError


def lam_of(alpha: float, sigma: float) -> float:
    """λ = log(α/σ): +inf at σ = 0 (clean data), −inf at α = 0 (pure noise)."""
    if sigma == 0:
        return math.inf
    if alpha == 0:
        return -math.inf
    return math.log(alpha) - math.log(sigma)


class NoisePath(ABC):
    """α(t), σ(t), λ(t) for the network's time variable t, and the decreasing lists a sampler walks."""

    #: True for integer grid time (t indexes a table), False for continuous time
    grid: bool = True
    #: (α, σ) of the level after the last step (the data end)
    final: tuple[float, float] = (1.0, 0.0)

    @abstractmethod
    def alpha_sigma(self, t: float) -> tuple[float, float]:
        """(α_t, σ_t) as Python floats (float64) at any t in the path's range."""

    @abstractmethod
    def t_at_lambda(self, lam: float) -> float:
        """The t whose λ_t = log(α_t/σ_t) equals `lam` (for solvers that evaluate between list entries)."""

    @abstractmethod
    def timesteps(self, num_steps: int | Sequence[float] | torch.Tensor, spacing: str | None = None
                  ) -> torch.Tensor:
        """A strictly decreasing list of `num_steps` levels, or a validated explicit list."""

    @abstractmethod
    def time_input(self, t: float, batch: int, device: torch.device) -> torch.Tensor:
        """What the network is given as its time argument for level t, shape (batch,)."""

    @property
    @abstractmethod
    def t_range(self) -> tuple[float, float]:
        """(lowest, highest) level of the path's time variable (grid: 0 and T − 1)."""

    def lam(self, t: float) -> float:
        return lam_of(*self.alpha_sigma(t))

    def levels(self, timesteps: torch.Tensor) -> Levels:
        return Levels(self, timesteps)


class Levels:
    """Float64 α, σ, λ = log(α/σ) and σ_e = σ/α (EDM's sigma) for a list of levels plus the final level.

    `t` has the list's n entries; `alpha`, `sigma`, `lam`, `sigma_e` have n + 1 (the last is `path.final`).
    """

    def __init__(self, path: NoisePath, timesteps: torch.Tensor) -> None:
        self.t: list = timesteps.tolist()
        pairs = [path.alpha_sigma(t) for t in self.t] + [path.final]
        self.alpha = [a for a, _ in pairs]
        self.sigma = [s for _, s in pairs]
        self.lam = [lam_of(a, s) for a, s in pairs]
        self.sigma_e = [s / a if a > 0 else math.inf for a, s in pairs]

    def __len__(self) -> int:
        return len(self.t)


CONTINUOUS_KINDS = ("flow", "ve", "vp_cosine")
CONTINUOUS_SPACINGS = ("uniform", "logsnr", "karras")


class ContinuousPath(NoisePath):
    """A continuous-time path: flow matching (α = 1 − t, σ = t, t ∈ [0, 1]), variance exploding / EDM
    (α = 1, σ = t) or cosine VP (α = cos(πt/2), σ = sin(πt/2)). The network sees t · time_scale."""

    grid = False

    def __init__(self, kind: str, t_max: float | None = None, t_min: float = 0.0, time_scale: float = 1.0) -> None:
        if kind not in CONTINUOUS_KINDS:
            raise UsageError(f"unknown path kind {kind!r}; choose one of {', '.join(CONTINUOUS_KINDS)}")
        t_max = {"flow": 1.0, "ve": 80.0, "vp_cosine": 1.0}[kind] if t_max is None else float(t_max)
        upper = 1.0 if kind in ("flow", "vp_cosine") else math.inf
        if not (0.0 <= t_min < t_max <= upper) or not all(map(math.isfinite, (t_min, t_max))):
            raise UsageError(f"a {kind} path needs 0 <= t_min < t_max <= {upper}, got t_min={t_min}, t_max={t_max}")
        if not (time_scale > 0 and math.isfinite(time_scale)):
            raise UsageError(f"time_scale must be a positive number, got {time_scale}")
        self.kind, self.t_min, self.t_max, self.time_scale = kind, float(t_min), float(t_max), float(time_scale)

    @property
    def t_range(self) -> tuple[float, float]:
        return self.t_min, self.t_max

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        t = float(t)
        if self.kind == "flow":
            return 1.0 - t, t
        if self.kind == "ve":
            return 1.0, t
        return math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)

    def t_at_lambda(self, lam: float) -> float:
        if self.kind == "flow":  # (1-t)/t = e^λ
            return 1.0 / (1.0 + math.exp(lam))
        if self.kind == "ve":  # 1/t = e^λ
            return math.exp(-lam)
        return 2.0 / math.pi * math.atan(math.exp(-lam))  # cot(πt/2) = e^λ

    def time_input(self, t: float, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch,), float(t) * self.time_scale, dtype=torch.float32, device=device)

    def timesteps(self, num_steps: int | Sequence[float] | torch.Tensor, spacing: str | None = None
                  ) -> torch.Tensor:
        """`uniform` in t, uniform in λ (`logsnr`) or Karras' ρ = 7 in σ/α (`karras`), from t_max down to
        t_min (or to t_max/n when t_min = 0, the last level before the data)."""
        if isinstance(num_steps, torch.Tensor) or not isinstance(num_steps, int | np.integer):
            return self.validate_timesteps(num_steps)
        n = int(num_steps)
        if isinstance(num_steps, bool) or n < 1:
            raise UsageError(f"steps must be a positive integer, got {num_steps}")
        spacing = spacing or "uniform"
        lo = self.t_min if self.t_min > 0 else self.t_max / n
        if n == 1:
            return torch.tensor([self.t_max], dtype=torch.float64)
        if spacing == "uniform":
            ts = np.linspace(self.t_max, lo, n)
        elif spacing == "logsnr":
            ts = np.array([self.t_at_lambda(v) for v in np.linspace(self.lam(self.t_max), self.lam(lo), n)])
        elif spacing == "karras":
            smax, smin = (1.0 / math.exp(self.lam(t)) for t in (self.t_max, lo))
            ramp = np.linspace(0, 1, n)
            rho = 7.0
            s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
            ts = np.array([self.t_at_lambda(-math.log(v)) for v in s])
        else:
            raise UsageError(f"unknown spacing {spacing!r} for a continuous path; choose one of "
                             f"{', '.join(CONTINUOUS_SPACINGS)}")
        ts = np.clip(ts, lo, self.t_max)  # λ → t round trips may step a hair outside the range
        ts[0] = self.t_max
        return self.validate_timesteps(ts)

    def validate_timesteps(self, timesteps: Sequence[float] | torch.Tensor | np.ndarray) -> torch.Tensor:
        """A non-empty, strictly decreasing float64 list inside [t_min, t_max] (exclusive of the final level)."""
        arr = torch.as_tensor(np.asarray(timesteps, dtype=np.float64))
        if arr.ndim != 1 or arr.numel() < 1:
            raise UsageError("timesteps must be a non-empty 1-D list of numbers")
        if not bool(torch.isfinite(arr).all()):
            raise UsageError("timesteps contain NaN or inf")
        if float(arr.max()) > self.t_max or float(arr.min()) < self.t_min or float(arr.min()) <= 0:
            raise UsageError(f"timesteps must lie in ({self.t_min:g}, {self.t_max:g}] for this {self.kind} path")
        if arr.numel() > 1 and not bool((arr[1:] < arr[:-1]).all()):
            raise UsageError("timesteps must be strictly decreasing (a sampler walks from noise to data)")
        return arr.contiguous()

    def __repr__(self) -> str:
        return f"ContinuousPath({self.kind!r}, t_max={self.t_max:g}, t_min={self.t_min:g})"
