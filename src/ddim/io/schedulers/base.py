"""What every drop-in scheduler shares: diffusers' config contract, its float32 β/ᾱ tables, the step-index
bookkeeping pipelines rely on, and diffusers' timestep and σ-list constructions.

The contract: every constructor key of the diffusers class of the same name (0.42) is honoured or refused with a
one-line `ValueError` naming it; `from_config` accepts keys of the other schedulers (switching schedulers on a
pipeline's config, as diffusers) and refuses keys no scheduler knows, instead of dropping them.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, FrozenDict
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ...core.errors import UsageError
from ...core.prediction import affine_coefficients, dynamic_threshold
from ...core.schedule import NoiseSchedule, _cosine_betas

#: every scheduler a drop-in takes the config of (diffusers' Karras family, the consistency and flow ones)
SCHEDULER_NAMES = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler", "EDMEulerScheduler",
    "LCMScheduler", "TCDScheduler", "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
)
KARRAS_COMPATIBLES = [n for n in SCHEDULER_NAMES if not n.startswith("FlowMatch")]
FLOW_COMPATIBLES = ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"]
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("linspace", "leading", "trailing")


@functools.cache
def _known_keys() -> frozenset[str]:
    """Every constructor key of the schedulers in SCHEDULER_NAMES (those diffusers can import here)."""
    import diffusers

    keys: set[str] = set()
    for name in SCHEDULER_NAMES:
        try:
            cls = getattr(diffusers, name)
            keys |= set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
        except (ImportError, AttributeError):  # e.g. DPMSolverSDEScheduler without torchsde
            continue
    return frozenset(keys)


def refuse(key: str, why: str) -> None:
    raise UsageError(f"{key}: {why}")


def check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise UsageError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")


@functools.cache
def _own_keys(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__init__).parameters) - {"self"}


class DropIn(SchedulerMixin, ConfigMixin):
    """The shared part of the contract: strict `from_config`, step and begin index, `__len__`."""

    _compatibles = KARRAS_COMPATIBLES
    order = 1

    def own(self, key: str, default: Any = None) -> Any:
        """A value of one of this scheduler's own keys; a key another scheduler's config brought along (kept in
        `config` by diffusers' from_config) is not read, as diffusers' class of this name does not read it."""
        return self.config.get(key, default) if key in _own_keys(type(self)) else default

    def own_config(self) -> FrozenDict:
        """The config restricted to this scheduler's own keys."""
        return FrozenDict({k: v for k, v in self.config.items() if k in _own_keys(type(self))})

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """diffusers' from_config, but a key that neither this scheduler nor any other knows is refused by name."""
        given = {**(dict(config) if config is not None else {}), **kwargs}
        own = set(inspect.signature(cls.__init__).parameters)
        unknown = sorted(k for k in given if not k.startswith("_") and k not in own and k not in _known_keys())
        if unknown:
            raise UsageError(f"{cls.__name__} config: unknown key(s) {', '.join(unknown)} (not a key of this or any "
                             "other diffusers scheduler; refusing rather than ignoring)")
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # ------------------------------------------------------------------ step index (diffusers' semantics)
    _step_index: int | None = None
    _begin_index: int | None = None

    @property
    def step_index(self) -> int | None:
        """Index of the next step in `timesteps` (None until the first step or scale_model_input)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The first step's index, set by pipelines that start mid-list (img2img) through `set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep: Any, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Where `timestep` is in the list; when it appears twice, the second (diffusers' rule, so a mid-list
        start never skips a level)."""
        sched = self.timesteps if schedule_timesteps is None else schedule_timesteps
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(sched.device)
        idx = (sched == timestep).nonzero()
        if len(idx) == 0:
            return self._missing_timestep(timestep)
        return int(idx[1 if len(idx) > 1 else 0])

    def _missing_timestep(self, timestep: Any) -> int:
        raise UsageError(f"timestep {float(timestep):g} is not in this scheduler's list (call set_timesteps and "
                         "pass one of scheduler.timesteps)")

    def _init_step_index(self, timestep: Any) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise UsageError("call set_timesteps before step")

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding with this config's ratio and maximum (core.prediction.dynamic_threshold)."""
        return dynamic_threshold(sample, float(self.own("dynamic_thresholding_ratio", 0.995)),
                                 float(self.own("sample_max_value", 1.0)))

    def __len__(self) -> int:
        return self.config.num_train_timesteps


# ------------------------------------------------------------------------------------------- tables
def diffusers_tables(cfg: Any, zero_snr_floor: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(betas, alphas, alphas_cumprod) as float32 tensors, computed as diffusers does for the same config, so
    a drop-in starts from diffusers' ᾱ to the bit. `zero_snr_floor`: ᾱ_T = 2⁻²⁴ under zero terminal SNR (the
    σ-based schedulers) instead of 0 (DDIM, DDPM, LCM, TCD)."""
    T = cfg.num_train_timesteps
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise UsageError(f"num_train_timesteps must be an integer >= 1, got {T!r}")
    trained = cfg.get("trained_betas")
    if trained is not None:
        try:
            betas = torch.tensor(np.asarray(trained, dtype=np.float64), dtype=torch.float32)
        except (TypeError, ValueError):
            raise UsageError("trained_betas must be a list or array of numbers") from None
        if betas.ndim != 1 or len(betas) != T or not bool(((betas > 0) & (betas < 1)).all()):
            raise UsageError(f"trained_betas must be {T} numbers in (0, 1) (num_train_timesteps), "
                             f"got shape {tuple(betas.shape)}")
    else:
        kind = cfg.beta_schedule
        check_choice("beta_schedule", kind, BETA_SCHEDULES)
        b0, b1 = cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02)
        if kind == "linear":
            betas = torch.linspace(b0, b1, T, dtype=torch.float32)
        elif kind == "scaled_linear":
            betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float32) ** 2
        else:
            betas = torch.tensor(_cosine_betas(T).tolist(), dtype=torch.float32)
    if cfg.get("rescale_betas_zero_snr", False):
        betas = _rescale_zero_snr_f32(betas)
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    if cfg.get("rescale_betas_zero_snr", False) and zero_snr_floor:
        alphas_cumprod[-1] = 2**-24
    return betas, alphas, alphas_cumprod


def _rescale_zero_snr_f32(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024 (Alg. 1): shift and scale sqrt(ᾱ) so ᾱ_T = 0, in float32 as diffusers."""
    abar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt**2
    return 1 - torch.cat([abar[0:1], abar[1:] / abar[:-1]])


def schedule_of(alphas_cumprod: torch.Tensor, **kw: Any) -> NoiseSchedule:
    """Our noise path on the drop-in's own float32 ᾱ table (float64 from there on)."""
    return NoiseSchedule.from_alphas_cumprod(alphas_cumprod.double(), **kw)


# ------------------------------------------------------------------------------------ σ lists
def spaced(n: int, spacing: str, T: int, steps_offset: int, points: int | None = None,
           dtype: type = np.float32) -> np.ndarray:
    """diffusers' integer-or-float timestep lists for n steps (decreasing); `points` = n + 1 for the
    DPM-Solver family, which spaces n + 1 points and drops the last (t = 0); `dtype` of the float lists
    (DPMSolverSDEScheduler computes them in float64, the others in float32)."""
    check_choice("timestep_spacing", spacing, SPACINGS)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"num_inference_steps must be an integer >= 1, got {n!r}")
    if points is None:
        if spacing == "linspace":
            return np.linspace(0, T - 1, n, dtype=dtype)[::-1].copy()
        if spacing == "leading":
            return (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(dtype) + steps_offset
        return np.arange(T, 0, -T / n).round().copy().astype(dtype) - 1
    last = points  # the DPM family's last timestep (T unless λ is clipped)
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    return np.arange(last, 0, -T / n).round().copy().astype(np.int64) - 1


def two_stage_lists(timesteps: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lists of a two-call-per-step scheduler (Heun, DPMSolverSDE): every level but the first twice, in
    `timesteps` (n entries → 2n − 1) and `sigmas` (n + 1 with the final level → 2n)."""
    return (torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)]),
            torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]]))


def train_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """EDM's σ = sqrt((1 − ᾱ)/ᾱ) of every training step (float32, as diffusers)."""
    return np.array(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional training step of each σ: linear interpolation in log σ between its neighbours."""
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)


def converted_sigmas(kind: str, in_sigmas: np.ndarray, n: int, sigma_min: float | None = None,
                     sigma_max: float | None = None) -> np.ndarray:
    """n σ from σ_max down to σ_min: Karras et al. 2022 (ρ = 7), exponential (log-uniform) or the beta
    schedule of Lee et al. 2024 (α = β = 0.6); bounds from the config or the ends of `in_sigmas`."""
    lo = float(in_sigmas[-1]) if sigma_min is None else sigma_min
    hi = float(in_sigmas[0]) if sigma_max is None else sigma_max
    if kind == "karras":
        rho = 7.0
        ramp = np.linspace(0, 1, n)
        return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    if kind == "exponential":
        return np.exp(np.linspace(math.log(hi), math.log(lo), n))
    import scipy.stats

    return np.array([lo + ppf * (hi - lo) for ppf in scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6)])


def sigma_kind(cfg: Any) -> str | None:
    """Which of use_karras/exponential/beta_sigmas is set (at most one, as diffusers requires)."""
    kinds = [k for k in ("karras", "exponential", "beta") if cfg.get(f"use_{k}_sigmas")]
    if len(kinds) > 1:
        raise UsageError("use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas: set at most one")
    if kinds == ["beta"]:
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise UsageError("use_beta_sigmas needs scipy (pip install scipy)") from None
    return kinds[0] if kinds else None


def x0_weights(prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
    """(k1, k2) with x̂0 = k1 x + k2 out for x = α x0 + σ ε (core.prediction's conversions)."""
    k1, k2, _, _ = affine_coefficients(prediction_type, alpha, sigma)
    return k1, k2


def vp_pair(sigma_e: float) -> tuple[float, float]:
    """(α, σ) of the VP path at EDM σ: α = 1/sqrt(σ² + 1)."""
    a = 1.0 / math.sqrt(sigma_e * sigma_e + 1.0)
    return a, sigma_e * a
