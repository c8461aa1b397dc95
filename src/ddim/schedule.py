"""NoiseSchedule: the VP forward process q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I), t = 0..T-1.

ᾱ is kept in float64; samplers derive their coefficients from it once per call. Timesteps are integer
indices into ᾱ; a sampler walks a strictly decreasing list and the step after the last one lands on
`final_alpha_cumprod` (ᾱ_{-1}, 1.0 by default). ᾱ[T] is never indexed.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Spacings accepted by `NoiseSchedule.timesteps`. The default is "trailing": it is the only one of
#: diffusers' spacings whose first step is t = T-1 for every step count, so the first network call sees
#: the noise level x_T ~ N(0, I) was drawn for (Lin et al. 2024, "Common Diffusion Noise Schedules and
#: Sample Steps are Flawed"); "leading" with 50 steps starts at t = 980 and "linspace" rounds.
SPACINGS = ("trailing", "leading", "linspace", "uniform", "quadratic", "logsnr", "karras", "time_quadratic")
DEFAULT_SPACING = "trailing"

# Keys of a diffusers scheduler config that are not part of the noise schedule but are understood
# elsewhere (Denoiser options, sampler options, bookkeeping); they are not warned about.
_NON_SCHEDULE_KEYS = {
    "_class_name", "_diffusers_version", "prediction_type", "clip_sample", "clip_sample_range",
    "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "variance_type", "skip_prk_steps",
    "solver_order", "algorithm_type", "solver_type", "lower_order_final", "use_karras_sigmas",
    "predict_x0", "disable_corrector", "solver_p", "euler_at_final", "final_sigmas_type",
    "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas",
    "lambda_min_clipped", "flow_shift", "shift", "time_shift_type",
}
_SCHEDULE_KEYS = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "set_alpha_to_one", "steps_offset", "rescale_betas_zero_snr", "timestep_spacing",
}


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


class NoiseSchedule:
    """ᾱ_t for t = 0..T-1 (float64) plus the timestep-list rules that go with it."""

    def __init__(
        self,
        alphas_cumprod: Sequence[float] | np.ndarray | torch.Tensor,
        *,
        final_alpha_cumprod: float = 1.0,
        steps_offset: int = 0,
        spacing: str = DEFAULT_SPACING,
        description: str = "custom",
        config: dict[str, Any] | None = None,
    ) -> None:
        abar = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64), dtype=torch.float64).flatten()
        if abar.numel() < 1:
            raise ValueError("a noise schedule needs at least one timestep")
        if not bool(torch.isfinite(abar).all()):
            raise ValueError("alphas_cumprod contains NaN or inf")
        if bool((abar < 0).any()) or bool((abar > 1).any()):
            raise ValueError("alphas_cumprod must lie in [0, 1]")
        if abar.numel() > 1 and bool((abar[1:] > abar[:-1]).any()):
            raise ValueError("alphas_cumprod must be non-increasing in t")
        if not 0.0 <= final_alpha_cumprod <= 1.0:
            raise ValueError(f"final_alpha_cumprod must lie in [0, 1], got {final_alpha_cumprod}")
        if spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
        self.alphas_cumprod: torch.Tensor = abar
        self.final_alpha_cumprod: float = float(final_alpha_cumprod)
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
            raise ValueError("betas must be a non-empty 1-D sequence")
        if np.any(b < 0) or np.any(b > 1) or not np.all(np.isfinite(b)):
            raise ValueError("betas must lie in [0, 1]")
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

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any] | str | Path) -> NoiseSchedule:
        """Build from a diffusers scheduler config (dict or path to scheduler_config.json).

        Missing keys take diffusers' DDIMScheduler defaults; unknown keys are ignored with a warning.
        """
        if not isinstance(config, dict):
            path = Path(config)
            if path.is_dir():
                path = path / "scheduler_config.json"
            try:
                config = json.loads(path.read_text())
            except FileNotFoundError:
                raise ValueError(f"no scheduler config at {path}") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from None
            if not isinstance(config, dict):
                raise ValueError(f"{path} does not hold a JSON object")
        unknown = sorted(set(config) - _SCHEDULE_KEYS - _NON_SCHEDULE_KEYS)
        if unknown:
            warnings.warn(f"ignoring unknown scheduler config keys: {', '.join(unknown)}", stacklevel=2)
        T = int(config.get("num_train_timesteps", 1000))
        beta_start = float(config.get("beta_start", 0.0001))
        beta_end = float(config.get("beta_end", 0.02))
        kind = config.get("beta_schedule", "linear")
        rescale = bool(config.get("rescale_betas_zero_snr", False))
        spacing = config.get("timestep_spacing", "leading")
        kw = {"steps_offset": int(config.get("steps_offset", 0)), "spacing": spacing}
        if config.get("trained_betas") is not None:
            betas = np.asarray(config["trained_betas"], dtype=np.float64)
            sched = cls._from_betas_rescaled(betas, rescale, {"trained_betas": betas.tolist()}, "trained_betas",
                                             **kw)
        elif kind == "linear":
            sched = cls.linear(T, beta_start, beta_end, rescale_zero_terminal_snr=rescale, **kw)
        elif kind == "scaled_linear":
            sched = cls.scaled_linear(T, beta_start, beta_end, rescale_zero_terminal_snr=rescale, **kw)
        elif kind == "squaredcos_cap_v2":
            sched = cls.cosine(T, rescale_zero_terminal_snr=rescale, **kw)
        else:
            raise ValueError(f"unsupported beta_schedule {kind!r} (linear, scaled_linear, squaredcos_cap_v2)")
        if not bool(config.get("set_alpha_to_one", True)):
            sched.final_alpha_cumprod = sched._abar_list[0]
        sched.config.update({"set_alpha_to_one": bool(config.get("set_alpha_to_one", True)),
                             "steps_offset": sched.steps_offset, "timestep_spacing": spacing})
        return sched

    def to_diffusers_config(self) -> dict[str, Any]:
        """A scheduler config diffusers' schedulers accept (betas written out when not a named schedule)."""
        cfg = {k: v for k, v in self.config.items() if k in _SCHEDULE_KEYS}
        if "beta_schedule" not in cfg and "trained_betas" not in cfg:
            cfg["trained_betas"] = self.betas.tolist()
        cfg["num_train_timesteps"] = self.T
        cfg["set_alpha_to_one"] = self.final_alpha_cumprod == 1.0
        cfg["steps_offset"] = self.steps_offset
        cfg["timestep_spacing"] = self.spacing if self.spacing in ("leading", "trailing", "linspace") else "trailing"
        return cfg

    # ------------------------------------------------------------------------------------ properties
    @property
    def T(self) -> int:
        return int(self.alphas_cumprod.numel())

    @property
    def betas(self) -> torch.Tensor:
        abar = self.alphas_cumprod
        prev = torch.cat([abar.new_ones(1), abar[:-1]])
        return 1.0 - abar / prev.clamp_min(1e-300)

    def log_snr(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """λ_t = log(ᾱ_t / (1 - ᾱ_t)) (float64, -inf where ᾱ = 0)."""
        a = self.alphas_cumprod if t is None else self.alphas_cumprod[t]
        return torch.log(a) - torch.log1p(-a)

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t as a Python float; t = -1 means the value after the last step."""
        return self.final_alpha_cumprod if t < 0 else self._abar_list[t]

    # ------------------------------------------------------------------------- continuous time
    # Between grid points ᾱ is defined by interpolating the log-SNR linearly in t: exact on the grid,
    # smooth enough for solvers that evaluate between grid points (DPM-Solver-2S, RK4).
    def alpha_bar_at(self, t: float) -> float:
        if t < 0 or t > self.T - 1:
            raise ValueError(f"continuous timestep {t} outside [0, {self.T - 1}]")
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

    def t_at_log_snr(self, lam: float) -> float:
        """The continuous timestep whose log-SNR log(ᾱ/(1-ᾱ)) is `lam` (inverse of the interpolation)."""
        grid = np.asarray(self._lam_list())
        ok = np.isfinite(grid)
        ts = np.arange(self.T, dtype=np.float64)[ok]
        return float(np.interp(-lam, -grid[ok], ts))

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
        or quadratically in time, mapped to the nearest grid index.
        """
        if isinstance(num_steps, torch.Tensor) or not isinstance(num_steps, int | np.integer):
            return self.validate_timesteps(num_steps)
        S = int(num_steps)
        T = self.T
        if isinstance(num_steps, bool) or S < 1 or S > T:
            raise ValueError(f"steps must be between 1 and T={T}, got {num_steps}")
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
        elif spacing in ("logsnr", "karras", "time_quadratic"):
            ts = self._continuous_spacing(S, spacing)
        else:
            raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
        uniq = np.unique(ts)
        if uniq.size < ts.size:
            warnings.warn(f"{spacing} spacing with {S} steps repeats timesteps; using {uniq.size} distinct steps "
                          "(a repeated step is a no-op that costs a network call)", stacklevel=2)
        if uniq.size and (uniq[0] < 0 or uniq[-1] > T - 1):
            raise ValueError(f"{spacing} spacing with {S} steps and steps_offset={self.steps_offset} gives "
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
            raise ValueError("timesteps must be a non-empty 1-D list of integers")
        if arr.is_floating_point():
            if not bool(torch.equal(arr, arr.round())):
                raise ValueError("timesteps must be integers (indices into alphas_cumprod)")
        elif arr.dtype == torch.bool or arr.is_complex():
            raise ValueError("timesteps must be integers")
        arr = arr.to(torch.int64)
        if int(arr.min()) < 0 or int(arr.max()) > self.T - 1:
            raise ValueError(f"timesteps must lie in 0..{self.T - 1}, got range {int(arr.min())}..{int(arr.max())}")
        if arr.numel() > 1 and not bool((arr[1:] < arr[:-1]).all()):
            raise ValueError("timesteps must be strictly decreasing (a sampler walks from noise to data)")
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
        raise ValueError(f"T must be a positive integer, got {T!r}")
