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
from dataclasses import dataclass
from typing import Any

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
    #: (α, σ) of the level after the last step (the data end unless a schedule says otherwise)
    final: tuple[float, float] = (1.0, 0.0)

    @property
    def ddim_final(self) -> tuple[float, float]:
        """The last level for DDIM-type steps: diffusers' `set_alpha_to_one=False` puts it at ᾱ_0 for DDIM and
        PNDM only (their other schedulers end on the data)."""
        return self.final
    #: ODE variables of the ε-form solvers (heun, midpoint, pndm, rk4): y = x/c, s = σ/c with c = α (EDM's
    #: variables, dy/ds = ε̂) or, when True, c = α + σ (flow variables: y = x, s = σ on the flow path,
    #: dy/ds = ε̂ − x̂0, finite at pure noise α = 0)
    flow_variables: bool = False

    def with_shift(self, shift: float) -> NoisePath:
        """The path with a static flow σ-list shift: flow paths only."""
        raise UsageError("a shift applies to flow models only; this model has a grid (β-schedule) path")

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

    `t` has the list's n entries; `alpha`, `sigma`, `lam`, `sigma_e` have n + 1 (the last is the data, or
    `path.final` for DDIM-type steps: `ddim_final=True`).
    """

    def __init__(self, path: NoisePath, timesteps: torch.Tensor, ddim_final: bool = False) -> None:
        t = timesteps.tolist()
        pairs = [path.alpha_sigma(ti) for ti in t] + [path.ddim_final if ddim_final else path.final]
        self._fill(t, pairs, path.flow_variables)

    @classmethod
    def from_pairs(cls, t: list, pairs: list[tuple[float, float]], flow_variables: bool = False) -> Levels:
        """Levels of an explicit list: n times and n + 1 (α, σ) pairs, the last the final level (what the
        drop-in schedulers build from diffusers' σ lists)."""
        if len(pairs) != len(t) + 1:
            raise UsageError(f"Levels.from_pairs needs {len(t) + 1} (alpha, sigma) pairs, got {len(pairs)}")
        lv = cls.__new__(cls)
        lv._fill(list(t), [(float(a), float(s)) for a, s in pairs], flow_variables)
        return lv

    def _fill(self, t: list, pairs: list[tuple[float, float]], flow_variables: bool) -> None:
        self.t = t
        self.alpha = [a for a, _ in pairs]
        self.sigma = [s for _, s in pairs]
        self.lam = [lam_of(a, s) for a, s in pairs]
        self.sigma_e = [s / a if a > 0 else math.inf for a, s in pairs]
        #: the ε-form solvers' variables (see NoisePath.flow_variables): y = x/c, s = σ/c, dy/ds = ε̂ − κ x̂0
        self.kappa = 1.0 if flow_variables else 0.0
        self.c = [a + s for a, s in pairs] if flow_variables else self.alpha
        self.s = [s / c if c > 0 else math.inf for (_, s), c in zip(pairs, self.c)]

    def __len__(self) -> int:
        return len(self.t)


CONTINUOUS_KINDS = ("flow", "ve", "vp_cosine")
TIME_SHIFT_TYPES = ("exponential", "linear")


@dataclass(frozen=True)
class FlowShift:
    """The σ list of diffusers' FlowMatchEulerDiscreteScheduler, reproduced to the bit: σ from 1 down to the
    (shifted) training σ_min, then a static shift σ' = sσ/(1 + (s − 1)σ) (SD3, Esser et al. 2024 eq. 23) or a
    resolution-dependent one σ' = e^μ/(e^μ + (1/σ − 1)) (Flux; μ from the token count), then optionally a
    stretch so the last σ equals `shift_terminal` (LTX-Video)."""

    shift: float = 1.0
    dynamic: bool = False
    mu: float | None = None  # default μ for dynamic shifting (set from the sample size when a model is loaded)
    shift_terminal: float | None = None
    time_shift_type: str = "exponential"
    num_train_timesteps: int = 1000
    #: dynamic shifting: (base_seq_len, max_seq_len, base_shift, max_shift, patch) — μ follows the sample size
    mu_line: tuple[int, int, float, float, int] | None = None
    #: the σ grid before shifting: "scheduler" (FlowMatchEuler's set_timesteps: 1 … σ_min) or "pipeline"
    #: (linspace(1, 1/n, n), what FluxPipeline passes as `sigmas`)
    grid: str = "scheduler"

    def __post_init__(self) -> None:
        if isinstance(self.shift, bool) or not (isinstance(self.shift, int | float) and self.shift > 0
                                                 and math.isfinite(self.shift)):
            raise UsageError(f"shift must be a positive number, got {self.shift!r}")
        if self.shift_terminal is not None and not 0 < self.shift_terminal < 1:
            raise UsageError(f"shift_terminal must lie in (0, 1), got {self.shift_terminal}")
        if self.time_shift_type not in TIME_SHIFT_TYPES:
            raise UsageError(f"time_shift_type must be one of {TIME_SHIFT_TYPES}, got {self.time_shift_type!r}")
        if self.num_train_timesteps < 1:
            raise UsageError("num_train_timesteps must be >= 1")
        if self.mu is not None and not math.isfinite(self.mu):
            raise UsageError(f"mu must be a finite number, got {self.mu}")
        if self.grid not in ("scheduler", "pipeline"):
            raise UsageError(f"grid must be 'scheduler' or 'pipeline', got {self.grid!r}")

    def at_shape(self, shape: Sequence[int]) -> FlowShift:
        """The shift for samples of `shape` (C, H, W): μ from its token count under dynamic shifting, else self."""
        import dataclasses

        if not self.dynamic or self.mu_line is None or len(shape) != 3:
            return self
        base, top, lo, hi, patch = self.mu_line
        return dataclasses.replace(self, mu=calculate_shift((shape[-2] // patch) * (shape[-1] // patch), base, top,
                                                            lo, hi))

    def _shifted(self, sig: np.ndarray, mu: float | None) -> np.ndarray:
        if self.dynamic:
            if mu is None:
                raise UsageError("this flow schedule shifts by resolution: give mu (e.g. from calculate_shift)")
            if self.time_shift_type == "exponential":
                return math.exp(mu) / (math.exp(mu) + (1 / sig - 1) ** 1.0)
            return mu / (mu + (1 / sig - 1) ** 1.0)
        return self.shift * sig / (1 + (self.shift - 1) * sig)

    def sigmas(self, n: int, mu: float | None = None) -> np.ndarray:
        """n decreasing σ (float64 holding diffusers' float32 values; the final 0 not included)."""
        if self.grid == "pipeline":
            return self.shift_list(np.linspace(1.0, 1 / n, n), mu)
        N = self.num_train_timesteps
        train = torch.from_numpy(np.linspace(1, N, N, dtype=np.float32)[::-1].copy()) / N  # float32, as diffusers
        if not self.dynamic:
            train = self.shift * train / (1 + (self.shift - 1) * train)
        s_max, s_min = train[0].item(), train[-1].item()
        return self.shift_list(np.linspace(s_max * N, s_min * N, n) / N, mu)

    def shift_list(self, sig: np.ndarray, mu: float | None = None, f32: bool = True) -> np.ndarray:
        """The shift (static, or dynamic with μ) and the shift_terminal stretch applied to a σ list, rounded to
        float32 as diffusers stores it (returned as float64; `f32=False`: not rounded)."""
        sig = self._shifted(np.asarray(sig, dtype=np.float64), self.mu if mu is None else mu)
        if self.shift_terminal and sig[-1] < 1:  # (diffusers divides by zero for a one-step list: NaN)
            one_minus = 1 - sig
            sig = 1 - one_minus / (one_minus[-1] / (1 - self.shift_terminal))
        if not f32:
            return np.asarray(sig, dtype=np.float64)
        return torch.from_numpy(np.asarray(sig)).to(torch.float32).double().numpy()

    def to_json(self) -> dict[str, Any]:
        return {"shift": self.shift, "use_dynamic_shifting": self.dynamic, "shift_terminal": self.shift_terminal,
                "time_shift_type": self.time_shift_type, "num_train_timesteps": self.num_train_timesteps}


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """Flux's μ: linear in the token count between (base_seq_len, base_shift) and (max_seq_len, max_shift)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)
CONTINUOUS_SPACINGS = ("uniform", "logsnr", "karras", "flow_shift", "flow")  # "flow": flow_shift's earlier name


class ContinuousPath(NoisePath):
    """A continuous-time path: flow matching (α = 1 − t, σ = t, t ∈ [0, 1]), variance exploding / EDM
    (α = 1, σ = t) or cosine VP (α = cos(πt/2), σ = sin(πt/2)). The network sees t · time_scale."""

    grid = False

    def __init__(self, kind: str, t_max: float | None = None, t_min: float = 0.0, time_scale: float = 1.0,
                 flow_shift: FlowShift | None = None) -> None:
        if kind not in CONTINUOUS_KINDS:
            raise UsageError(f"unknown path kind {kind!r}; choose one of {', '.join(CONTINUOUS_KINDS)}")
        t_max = {"flow": 1.0, "ve": 80.0, "vp_cosine": 1.0}[kind] if t_max is None else float(t_max)
        upper = 1.0 if kind in ("flow", "vp_cosine") else math.inf
        if not (0.0 <= t_min < t_max <= upper) or not all(map(math.isfinite, (t_min, t_max))):
            raise UsageError(f"a {kind} path needs 0 <= t_min < t_max <= {upper}, got t_min={t_min}, t_max={t_max}")
        if not (time_scale > 0 and math.isfinite(time_scale)):
            raise UsageError(f"time_scale must be a positive number, got {time_scale}")
        if flow_shift is not None and kind != "flow":
            raise UsageError("a flow shift applies to the flow path only")
        self.kind, self.t_min, self.t_max, self.time_scale = kind, float(t_min), float(t_max), float(time_scale)
        self.flow_variables = kind == "flow"
        #: diffusers' FlowMatchEuler σ list (spacing "flow_shift", the default when set)
        self.flow_shift = flow_shift

    def at_shape(self, shape: Sequence[int]) -> ContinuousPath:
        """The path for samples of `shape`: the same one unless its flow shift follows the size (Flux's μ)."""
        fs = self.flow_shift.at_shape(shape) if self.flow_shift is not None else None
        if fs is self.flow_shift:
            return self
        return ContinuousPath("flow", self.t_max, self.t_min, self.time_scale, fs)

    def with_shift(self, shift: float) -> ContinuousPath:
        """The same flow path with a static σ-list shift s (SD3's shift; replaces dynamic shifting)."""
        import dataclasses

        if self.kind != "flow":
            raise UsageError(f"a shift applies to flow models only; this model has a {self.kind} path")
        fs = self.flow_shift or FlowShift(num_train_timesteps=int(self.time_scale))
        return ContinuousPath("flow", self.t_max, self.t_min, self.time_scale,
                              dataclasses.replace(fs, shift=shift, dynamic=False, mu=None))
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
        t_min (or to t_max/n when t_min = 0, the last level before the data); on a flow path with a
        `flow_shift`, `flow_shift` (the default there; also called `flow`) is diffusers' FlowMatchEuler σ list with its
        shift."""
        if isinstance(num_steps, torch.Tensor) or not isinstance(num_steps, int | np.integer):
            return self.validate_timesteps(num_steps)
        n = int(num_steps)
        if isinstance(num_steps, bool) or n < 1:
            raise UsageError(f"steps must be a positive integer, got {num_steps}")
        spacing = spacing or ("flow_shift" if self.flow_shift is not None else "uniform")
        if spacing in ("flow_shift", "flow"):
            if self.flow_shift is None:
                raise UsageError(f"spacing {spacing!r} needs a flow path with a flow shift (a flow-matching model)")
            return self.validate_timesteps(self.flow_shift.sigmas(n))
        lo = self.t_min if self.t_min > 0 else self.t_max / n
        if n == 1:
            return torch.tensor([self.t_max], dtype=torch.float64)
        if spacing not in ("uniform", "logsnr", "karras"):
            raise UsageError(f"unknown spacing {spacing!r} for a continuous path; choose one of "
                             f"{', '.join(CONTINUOUS_SPACINGS)}")
        if spacing != "uniform" and math.isinf(self.lam(self.t_max)):
            # pure noise (α = 0, a flow path's t = 1) has no finite λ: it stays the first level, and the others
            # are spaced from the next uniform level down
            hi = self.t_max - (self.t_max - lo) / (n - 1)
            ts = np.concatenate([[self.t_max], self._spaced(n - 1, spacing, hi, lo)])
        else:
            ts = self._spaced(n, spacing, self.t_max, lo)
        ts = np.clip(ts, lo, self.t_max)  # λ → t round trips may step a hair outside the range
        ts[0] = self.t_max
        return self.validate_timesteps(ts)

    def _spaced(self, n: int, spacing: str, hi: float, lo: float) -> np.ndarray:
        """n levels from hi down to lo: uniform in t, uniform in λ, or Karras' ρ = 7 in σ/α."""
        if n == 1:
            return np.array([hi])
        if spacing == "uniform":
            return np.linspace(hi, lo, n)
        if spacing == "logsnr":
            return np.array([self.t_at_lambda(v) for v in np.linspace(self.lam(hi), self.lam(lo), n)])
        smax, smin = (1.0 / math.exp(self.lam(t)) for t in (hi, lo))
        ramp = np.linspace(0, 1, n)
        rho = 7.0
        s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        return np.array([self.t_at_lambda(-math.log(v)) for v in s])

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
        extra = f", flow_shift={self.flow_shift}" if self.flow_shift is not None else ""
        return f"ContinuousPath({self.kind!r}, t_max={self.t_max:g}, t_min={self.t_min:g}{extra})"
