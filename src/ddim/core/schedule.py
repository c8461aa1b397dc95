"""NoiseSchedule: the grid-time VP path q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I), t = 0..T-1.

ᾱ is kept in float64. Timesteps are integer indices into ᾱ; a sampler walks a strictly decreasing list and
the step after the last one lands on `final_alpha_cumprod` (ᾱ_{-1}, 1.0 by default). ᾱ[T] is never indexed.
Between grid points (for solvers that evaluate there) λ is interpolated linearly in t.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import UsageError
from .path import NoisePath

#: Spacings accepted by `NoiseSchedule.timesteps`. The default is "trailing": it is the only one of
#: diffusers' spacings whose first step is t = T-1 for every step count, so the first network call sees
#: the noise level x_T ~ N(0, I) was drawn for (Lin et al. 2024, "Common Diffusion Noise Schedules and
#: Sample Steps are Flawed"); "leading" with 50 steps starts at t = 980 and "linspace" rounds.
SPACINGS = ("trailing", "leading", "linspace", "uniform", "quadratic", "logsnr", "karras", "time_quadratic", "lcm",
            "ays")
#: Align Your Steps (Sabour et al. 2024): the 10-step list published for Stable Diffusion 1.5 (scaled-linear β)
AYS_SD15 = (999, 850, 736, 645, 545, 455, 343, 233, 124, 24)
DEFAULT_SPACING = "trailing"

def _cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal (2021) eq. 17, discretised as diffusers' `squaredcos_cap_v2`."""

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return np.array([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)], dtype=np.float64)


def _rescale_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Lin et al. (2024) Alg. 1: shift/scale sqrt(ᾱ) so that ᾱ_{T-1} = 0 and ᾱ_0 is unchanged."""
    s = np.sqrt(alphas_cumprod)
    s0, sT = s[0], s[-1]
    s = (s - sT) * s0 / (s0 - sT)
    return s**2


class NoiseSchedule(NoisePath):
    """ᾱ_t for t = 0..T-1 (float64) plus the timestep-list rules that go with it: the grid-time path."""

    grid = True

    def __init__(
        self,
        alphas_cumprod: Sequence[float] | np.ndarray | torch.Tensor,
        *,
        final_alpha_cumprod: float = 1.0,
        steps_offset: int = 0,
        spacing: str = DEFAULT_SPACING,
        description: str = "custom",
        config: dict[str, Any] | None = None,
        set_alpha_to_one: bool = True,
        original_inference_steps: int = 50,
    ) -> None:
        abar = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64), dtype=torch.float64).flatten()
        if abar.numel() < 1:
            raise UsageError("a noise schedule needs at least one timestep")
        if not bool(torch.isfinite(abar).all()):
            raise UsageError("alphas_cumprod contains NaN or inf")
        if bool((abar < 0).any()) or bool((abar > 1).any()):
            raise UsageError("alphas_cumprod must lie in [0, 1]")
        if abar.numel() > 1 and bool((abar[1:] > abar[:-1]).any()):
            raise UsageError("alphas_cumprod must be non-increasing in t")
        if not 0.0 <= final_alpha_cumprod <= 1.0:
            raise UsageError(f"final_alpha_cumprod must lie in [0, 1], got {final_alpha_cumprod}")
        if spacing not in SPACINGS:
            raise UsageError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
        self.alphas_cumprod: torch.Tensor = abar
        self.final_alpha_cumprod: float = float(final_alpha_cumprod)
        #: LCM/TCD configs: the distillation grid the `lcm` spacing takes its steps from
        self.original_inference_steps = int(original_inference_steps)
        #: diffusers' set_alpha_to_one: False ends DDIM-type steps at ᾱ_0 (`ddim_final`), not on the data
        self.set_alpha_to_one = bool(set_alpha_to_one)
        self.steps_offset: int = int(steps_offset)
        self.spacing: str = spacing
        self.description: str = description
        self.config: dict[str, Any] = dict(config or {})
        self._abar_list: list[float] = abar.tolist()

    # ----------------------------------------------------------------------------------- constructors
    @classmethod
    def from_betas(cls, betas: Sequence[float] | np.ndarray | torch.Tensor, **kw: Any) -> NoiseSchedule:
        b = np.asarray(torch.as_tensor(np.asarray(betas, dtype=np.float64)), dtype=np.float64)
        if b.ndim != 1 or b.size < 1:
            raise UsageError("betas must be a non-empty 1-D sequence")
        if np.any(b < 0) or np.any(b > 1) or not np.all(np.isfinite(b)):
            raise UsageError("betas must lie in [0, 1]")
        kw.setdefault("description", "from_betas")
        kw.setdefault("config", {"trained_betas": b.tolist(), "num_train_timesteps": int(b.size)})
        return cls(np.cumprod(1.0 - b), **kw)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Sequence[float] | np.ndarray | torch.Tensor,
                            **kw: Any) -> NoiseSchedule:
        kw.setdefault("description", "from_alphas_cumprod")
        return cls(alphas_cumprod, **kw)

    @classmethod
    def _from_betas_rescaled(cls, betas: np.ndarray, rescale_zero_terminal_snr: bool, config: dict[str, Any],
                             description: str, **kw: Any) -> NoiseSchedule:
        abar = np.cumprod(1.0 - betas)
        if rescale_zero_terminal_snr:
            abar = _rescale_zero_terminal_snr(abar)
            description += "+zero_terminal_snr"
        config = {**config, "rescale_betas_zero_snr": bool(rescale_zero_terminal_snr)}
        return cls(abar, description=description, config=config, **kw)

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2, *,
               rescale_zero_terminal_snr: bool = False, **kw: Any) -> NoiseSchedule:
        """DDPM's schedule (Ho et al. 2020): β linear from beta_start to beta_end."""
        _check_T(T)
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
        cfg = {"num_train_timesteps": T, "beta_start": beta_start, "beta_end": beta_end, "beta_schedule": "linear"}
        return cls._from_betas_rescaled(betas, rescale_zero_terminal_snr, cfg, "linear", **kw)

    @classmethod
    def scaled_linear(cls, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012, *,
                      rescale_zero_terminal_snr: bool = False, **kw: Any) -> NoiseSchedule:
        """Latent diffusion's schedule: sqrt(β) linear."""
        _check_T(T)
        betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
        cfg = {"num_train_timesteps": T, "beta_start": beta_start, "beta_end": beta_end,
               "beta_schedule": "scaled_linear"}
        return cls._from_betas_rescaled(betas, rescale_zero_terminal_snr, cfg, "scaled_linear", **kw)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, *, rescale_zero_terminal_snr: bool = False,
               **kw: Any) -> NoiseSchedule:
        """Improved DDPM's cosine schedule, β capped at 0.999 (diffusers' `squaredcos_cap_v2`)."""
        _check_T(T)
        cfg = {"num_train_timesteps": T, "beta_schedule": "squaredcos_cap_v2"}
        return cls._from_betas_rescaled(_cosine_betas(T, s), rescale_zero_terminal_snr, cfg, "cosine", **kw)

    # ------------------------------------------------------------------------------------ properties
    @property
    def T(self) -> int:
        return int(self.alphas_cumprod.numel())

    @property
    def t_range(self) -> tuple[float, float]:
        return 0, self.T - 1

    @property
    def betas(self) -> torch.Tensor:
        abar = self.alphas_cumprod
        prev = torch.cat([abar.new_ones(1), abar[:-1]])
        return 1.0 - abar / prev.clamp_min(1e-300)

    def alpha_bar(self, t: float) -> float:
        """ᾱ_t as a Python float at a grid index or, interpolated, between grid points."""
        return self._abar_list[t] if isinstance(t, int) else self.alpha_bar_at(t)

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        a = self.alpha_bar(t)
        return math.sqrt(a), math.sqrt(max(1.0 - a, 0.0))

    @property
    def final(self) -> tuple[float, float]:  # type: ignore[override]
        a = self.final_alpha_cumprod
        return math.sqrt(a), math.sqrt(max(1.0 - a, 0.0))

    @property
    def ddim_final(self) -> tuple[float, float]:
        if self.set_alpha_to_one:
            return self.final
        a = self.alpha_bar(0)
        return math.sqrt(a), math.sqrt(max(1.0 - a, 0.0))

    def time_input(self, t: float, batch: int, device: torch.device) -> torch.Tensor:
        """int64 grid indices for grid timesteps; float32 for the fractional ones some solvers evaluate."""
        if float(t).is_integer():
            return torch.full((batch,), int(t), dtype=torch.int64, device=device)
        return torch.full((batch,), float(t), dtype=torch.float32, device=device)

    # ------------------------------------------------------------------------- continuous time
    # Between grid points ᾱ is defined by interpolating the log-SNR linearly in t: exact on the grid,
    # smooth enough for solvers that evaluate between grid points (DPM-Solver-2S, RK4).
    def alpha_bar_at(self, t: float) -> float:
        """ᾱ at a continuous timestep: log-SNR interpolated linearly between grid points."""
        if t < 0 or t > self.T - 1:
            raise UsageError(f"continuous timestep {t} outside [0, {self.T - 1}]")
        i = math.floor(t)
        f = t - i
        if f == 0.0:
            return self._abar_list[i]
        lam = self._lam_list()
        lo, hi = lam[i], lam[i + 1]
        if math.isinf(hi) or math.isinf(lo):
            return (1 - f) * self._abar_list[i] + f * self._abar_list[i + 1]
        x = (1 - f) * lo + f * hi
        return 1.0 / (1.0 + math.exp(-x))

    def alpha_bar_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ at integer or fractional timesteps (float64 tensor), with the same interpolation."""
        abar = self.alphas_cumprod.to(t.device)
        if not t.is_floating_point():
            return abar[t.long()]
        t = t.double().clamp(0, self.T - 1)
        i = t.floor().long().clamp(max=self.T - 2) if self.T > 1 else t.floor().long()
        f = t - i
        lam = torch.log(abar) - torch.log1p(-abar)
        x = (1 - f) * lam[i] + f * lam[(i + 1).clamp(max=self.T - 1)]
        return torch.where(f == 0, abar[i], torch.sigmoid(x))

    def t_at_lambda(self, lam: float) -> float:
        """The continuous timestep whose λ = log(α/σ) is `lam` (the inverse of the interpolation)."""
        grid = np.asarray(self._lam_list())
        ok = np.isfinite(grid)
        ts = np.arange(self.T, dtype=np.float64)[ok]
        t = float(np.interp(-2.0 * lam, -grid[ok], ts))
        return float(round(t)) if abs(t - round(t)) < 1e-9 else t

    def _lam_list(self) -> list[float]:
        if not hasattr(self, "_lam_cache"):
            a = self.alphas_cumprod
            self._lam_cache = (torch.log(a) - torch.log1p(-a)).tolist()
        return self._lam_cache

    def __repr__(self) -> str:
        return (f"NoiseSchedule({self.description}, T={self.T}, final_alpha_cumprod={self.final_alpha_cumprod}, "
                f"spacing={self.spacing!r})")

    # ------------------------------------------------------------------------------------- timesteps
    def timesteps(self, num_steps: int | Sequence[int] | torch.Tensor, spacing: str | None = None
                  ) -> torch.Tensor:
        """A strictly decreasing int64 list of `num_steps` timesteps, or a validated explicit list.

        leading/trailing/linspace reproduce diffusers' `set_timesteps` (steps_offset applies to leading,
        as there). uniform is the DDIM reference code's `range(0, T, T//S)` cut to exactly S steps;
        quadratic is its `int(linspace(0, sqrt(0.8 T), S)**2)` with repeats removed (a warning says so).
        logsnr / karras / time_quadratic place steps uniformly in log-SNR, in Karras' ρ=7 sigma grid,
        or quadratically in time, mapped to the nearest grid index. lcm is LCMScheduler's (and TCD's) list: S
        evenly spaced entries of the skip grid of `original_inference_steps` (50) steps. ays is Align Your
        Steps' published SD 1.5 10-step list, interpolated log-linearly in σ for other step counts (tuned for SD's
        schedule: on other models a heuristic, not an optimised list — use `ddim schedule` for that).
        """
        if isinstance(num_steps, torch.Tensor) or not isinstance(num_steps, int | np.integer):
            return self.validate_timesteps(num_steps)
        S = int(num_steps)
        T = self.T
        if isinstance(num_steps, bool) or S < 1 or S > T:
            raise UsageError(f"steps must be between 1 and T={T}, got {num_steps}")
        spacing = self.spacing if spacing is None else spacing
        if spacing == "leading":
            ts = np.arange(S, dtype=np.int64) * (T // S) + self.steps_offset
        elif spacing == "trailing":
            ts = np.round(T - np.arange(S, dtype=np.float64) * (T / S)).astype(np.int64) - 1
            ts = ts[::-1]
        elif spacing == "linspace":
            ts = np.linspace(0, T - 1, S).round().astype(np.int64)
        elif spacing == "uniform":
            ts = np.arange(S, dtype=np.int64) * (T // S)
        elif spacing == "quadratic":
            ts = (np.linspace(0, math.sqrt(T * 0.8), S) ** 2).astype(np.int64)
        elif spacing in ("logsnr", "karras", "time_quadratic", "ays"):
            ts = self._continuous_spacing(S, spacing)
        elif spacing == "lcm":  # LCMScheduler / TCDScheduler: S of the `original_inference_steps` skip grid
            orig = self.original_inference_steps
            if S > orig:
                raise UsageError(f"the lcm spacing takes at most original_inference_steps={orig} steps, got {S}")
            origin = (np.arange(1, orig + 1, dtype=np.int64) * (T // orig) - 1)[::-1]
            ts = origin[np.floor(np.linspace(0, orig, num=S, endpoint=False)).astype(np.int64)][::-1]
        else:
            raise UsageError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
        uniq = np.unique(ts)
        if uniq.size < ts.size:
            warnings.warn(f"{spacing} spacing with {S} steps repeats timesteps; using {uniq.size} distinct steps "
                          "(a repeated step is a no-op that costs a network call)", stacklevel=2)
        if uniq.size and (uniq[0] < 0 or uniq[-1] > T - 1):
            raise UsageError(f"{spacing} spacing with {S} steps and steps_offset={self.steps_offset} gives "
                             f"timesteps outside 0..{T - 1}")
        return torch.from_numpy(uniq[::-1].copy())

    def _continuous_spacing(self, S: int, spacing: str) -> np.ndarray:
        """Spacings defined by a continuous quantity, mapped to the nearest index of the grid."""
        T = self.T
        if S == 1:
            return np.array([T - 1])
        abar = self.alphas_cumprod.numpy()
        lo, hi = abar[-1], abar[0]  # ᾱ at the top (noisiest) and bottom
        lam = np.log(abar) - np.log1p(-abar)
        lam_hi = np.log(hi) - np.log1p(-hi)
        lam_lo = np.log(max(lo, 1e-12)) - np.log1p(-max(lo, 1e-12))
        if spacing == "time_quadratic":
            u = np.linspace(0.0, 1.0, S) ** 2
            return _spread(np.round(u * (T - 1)).astype(np.int64), T)
        if spacing == "logsnr":
            targets = np.linspace(lam_hi, lam_lo, S)
        elif spacing == "ays":  # Align Your Steps' published SD 1.5 list, log-linear in σ for other step counts
            base = np.round(np.array(AYS_SD15) * (T / 1000)).astype(np.int64).clip(0, T - 1)
            log_sig = -lam[base] / 2  # log σ_e = −(log-SNR)/2, increasing with t
            log_sig = np.interp(np.linspace(0, 1, S), np.linspace(0, 1, len(base)), log_sig[::-1])
            targets = -2 * log_sig
        else:  # karras: sigma = sqrt((1-ᾱ)/ᾱ), rho = 7, from sigma_min to sigma_max
            rho = 7.0
            smin, smax = math.exp(-lam_hi / 2), math.exp(-lam_lo / 2)
            ramp = np.linspace(0, 1, S)
            sig = (smin ** (1 / rho) + ramp * (smax ** (1 / rho) - smin ** (1 / rho))) ** rho
            targets = -2 * np.log(sig)
        # λ is decreasing in t: nearest grid index to each target log-SNR
        idx = np.searchsorted(-lam, -targets)
        idx = np.clip(idx, 0, T - 1)
        left = np.clip(idx - 1, 0, T - 1)
        pick_left = np.abs(lam[left] - targets) < np.abs(lam[idx] - targets)
        return _spread(np.sort(np.where(pick_left, left, idx).astype(np.int64)), T)

    def validate_timesteps(self, timesteps: Sequence[int] | torch.Tensor | np.ndarray) -> torch.Tensor:
        """Check an explicit list: integers in 0..T-1, strictly decreasing, non-empty."""
        arr = torch.as_tensor(np.asarray(timesteps))
        if arr.ndim != 1 or arr.numel() < 1:
            raise UsageError("timesteps must be a non-empty 1-D list of integers")
        if arr.is_floating_point():
            if not bool(torch.equal(arr, arr.round())):
                raise UsageError("timesteps must be integers (indices into alphas_cumprod)")
        elif arr.dtype == torch.bool or arr.is_complex():
            raise UsageError("timesteps must be integers")
        arr = arr.to(torch.int64)
        if int(arr.min()) < 0 or int(arr.max()) > self.T - 1:
            raise UsageError(f"timesteps must lie in 0..{self.T - 1}, got range {int(arr.min())}..{int(arr.max())}")
        if arr.numel() > 1 and not bool((arr[1:] < arr[:-1]).all()):
            raise UsageError("timesteps must be strictly decreasing (a sampler walks from noise to data)")
        return arr.contiguous()


def _spread(idx: np.ndarray, T: int) -> np.ndarray:
    """Make sorted grid indices distinct with the least movement: where the discrete grid is coarser than
    the continuous spacing, neighbours are pushed one index apart (up from 0, then down from T-1)."""
    idx = idx.copy()
    for i in range(1, idx.size):
        idx[i] = max(idx[i], idx[i - 1] + 1)
    idx[-1] = min(idx[-1], T - 1)
    for i in range(idx.size - 2, -1, -1):
        idx[i] = min(idx[i], idx[i + 1] - 1)
    return idx


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise UsageError(f"T must be a positive integer, got {T!r}")
