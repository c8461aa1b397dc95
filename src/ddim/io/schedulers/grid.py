"""Drop-in DDIM, DDPM, LCM and TCD schedulers: grid-time steps x_prev = a·x + b·x̂0 + c·ε̂ + σ·z whose
coefficients come from the core's first-order plans (`ddim_plan`, `ddpm_plan`, `lcm_plan`, `tcd_plan`).

DDIM takes ᾱ_prev from the actual next entry of the list (right for every spacing, where diffusers' fixed
stride is wrong for `linspace`); every plan is float64 and computed once per list.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
from diffusers.schedulers.scheduling_lcm import LCMSchedulerOutput
from diffusers.schedulers.scheduling_tcd import TCDSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ...core.errors import UsageError
from ...core.prediction import Denoiser
from ...core.samplers.base import FirstOrderPlan, first_order_update
from ...core.samplers.consistency import lcm_boundary, lcm_plan, tcd_plan
from ...core.samplers.ddim import ddim_plan
from ...core.samplers.ddpm import ddpm_plan
from .base import DropIn, check_choice, diffusers_tables, refuse, schedule_of, spaced


class _GridFamily(DropIn):
    """ᾱ table, our Denoiser on it, add_noise / get_velocity / _get_variance, and the list bookkeeping."""

    def _setup_grid(self, set_alpha_to_one: bool = True, spacing: str | None = None) -> None:
        cfg = self.config
        check_choice("prediction_type", cfg.prediction_type, ("epsilon", "sample", "v_prediction"))
        if not 0.0 <= float(self.own("dynamic_thresholding_ratio", 0.995)) <= 1.0:
            refuse("dynamic_thresholding_ratio", "must lie in [0, 1]")
        self.betas, self.alphas, self.alphas_cumprod = diffusers_tables(self.own_config(), zero_snr_floor=False)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.one = torch.tensor(1.0)
        self.schedule = schedule_of(self.alphas_cumprod, set_alpha_to_one=set_alpha_to_one,
                                    steps_offset=self.own("steps_offset", 0), spacing=spacing or "leading")
        clip = float(cfg.clip_sample_range) if self.own("clip_sample") else None
        self._den = Denoiser(None, self.schedule, prediction_type=cfg.prediction_type, clip_sample=clip,
                             thresholding=bool(self.own("thresholding", False)),
                             dynamic_thresholding_ratio=float(self.own("dynamic_thresholding_ratio", 0.995)),
                             sample_max_value=float(self.own("sample_max_value", 1.0)))
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        T = cfg.num_train_timesteps
        self.timesteps = torch.from_numpy(np.arange(0, T)[::-1].copy().astype(np.int64))
        self.custom_timesteps = False
        self._index: dict[int, int] = {}
        self._step_index = self._begin_index = None

    def _set_list(self, ts: np.ndarray | torch.Tensor, device: Any) -> torch.Tensor:
        ts = torch.as_tensor(np.asarray(ts), dtype=torch.int64)
        self._ts = ts
        self._index = {t: i for i, t in enumerate(ts.tolist())}
        self.num_inference_steps = len(ts)
        self.timesteps = ts.to(device) if device is not None else ts
        self._step_index = self._begin_index = None
        return ts

    def _position(self, timestep: int | torch.Tensor) -> int:
        """The list index of `timestep` (the step index when a pipeline counts steps)."""
        self._require_timesteps()
        t = int(timestep)
        if t not in self._index:
            raise UsageError(f"timestep {t} is not in this scheduler's list (call set_timesteps first)")
        return self._index[t]

    def _custom(self, timesteps: Any) -> np.ndarray:
        ts = np.array(timesteps, dtype=np.int64)
        T = self.config.num_train_timesteps
        if ts.ndim != 1 or len(ts) < 1 or not (np.diff(ts) < 0).all() or ts[-1] < 0 or ts[0] >= T:
            refuse("timesteps", f"must be a strictly decreasing list of integers in 0..{T - 1}")
        return ts

    def previous_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The next entry of the list (−1 after the last): where a step from `timestep` lands."""
        i = self._position(timestep)
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else torch.tensor(-1)

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        """DDPM's posterior variance β̃ between two grid steps: (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)."""
        a_t = self.alphas_cumprod[timestep]
        a_p = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        return (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)

    def _abar_at(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)[timesteps.to(like.device).long()]
        return a.flatten().reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
                  ) -> torch.Tensor:
        """q(x_t | x_0): sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε."""
        a = self._abar_at(timesteps, original_samples)
        return a**0.5 * original_samples + (1 - a) ** 0.5 * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target sqrt(ᾱ) ε − sqrt(1 − ᾱ) x_0 (Salimans & Ho 2022)."""
        a = self._abar_at(timesteps, sample)
        return a**0.5 * noise - (1 - a) ** 0.5 * sample

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    def _plan_step(self, plan: FirstOrderPlan, i: int, model_output: torch.Tensor, sample: torch.Tensor,
                   noise: torch.Tensor | None, use_clipped: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_prev, x̂0) of step i of a first-order plan, through the core's update."""
        prev, x0 = first_order_update(self._den, plan, i, sample, model_output, noise, use_clipped)
        if x0 is None:
            x0 = self._den.x0_from_output(sample, plan.t[i], model_output)
        return prev, x0


class DDIMScheduler(_GridFamily):
    """ddim's DDIM step (eq. 12, any η) behind diffusers' scheduler interface."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        self._setup_grid(set_alpha_to_one, timestep_spacing)
        self._plans: dict[Any, FirstOrderPlan] = {}

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int | np.integer) or \
                not 1 <= num_inference_steps <= self.config.num_train_timesteps:
            refuse("num_inference_steps", f"must be an integer in 1..{self.config.num_train_timesteps}, "
                                          f"got {num_inference_steps!r}")
        self._set_list(self.schedule.timesteps(int(num_inference_steps), self.config.timestep_spacing), device)
        self._plans = {}

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True
             ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step (eq. 12) from `timestep` to the next entry of the list: the same plan and update as
        `ddim.sample(sampler="ddim")`. A timestep off the list (another scheduler driving this one, e.g. UniPC's
        solver_p) steps to t − T//n, as diffusers does for every step."""
        self._require_timesteps()
        if generator is not None and variance_noise is not None:
            raise UsageError("pass either generator or variance_noise, not both")
        t = int(timestep)
        if t in self._index:
            i, key, ts = self._index[t], float(eta), self._ts
        else:
            prev = t - self.config.num_train_timesteps // self.num_inference_steps
            i, key, ts = 0, (float(eta), t), torch.tensor([t, prev] if prev >= 0 else [t])
        plan = self._plans.get(key)
        if plan is None:  # once per η and list, not per step
            plan = self._plans[key] = ddim_plan(self._den, ts, float(eta))
        z = None
        if plan.sigma[i] > 0:
            z = variance_noise if variance_noise is not None else randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
        prev, x0 = self._plan_step(plan, i, model_output, sample, z, use_clipped_model_output)
        if t in self._index:
            self._step_index = i + 1
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev, x0)


class DDPMScheduler(_GridFamily):
    """DDPM ancestral sampling (Ho et al. 2020) on any sub-list, through the core's `ddpm_plan`."""

    _VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range")

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        if variance_type == "fixed_large_log":
            refuse("variance_type", "'fixed_large_log' gives NaN in diffusers (the square root of a log "
                                    "variance); use 'fixed_large'")
        check_choice("variance_type", variance_type, self._VARIANCES)
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        self._setup_grid(True, timestep_spacing)
        self.variance_type = variance_type

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[int] | None = None) -> None:
        if (num_inference_steps is None) == (timesteps is None):
            raise UsageError("set_timesteps: pass exactly one of num_inference_steps or timesteps")
        cfg = self.config
        if timesteps is not None:
            ts = self._custom(timesteps)
            self.custom_timesteps = True
        else:
            if not 1 <= num_inference_steps <= cfg.num_train_timesteps:
                refuse("num_inference_steps", f"must be in 1..{cfg.num_train_timesteps}, got {num_inference_steps}")
            ts = spaced(num_inference_steps, cfg.timestep_spacing, cfg.num_train_timesteps, cfg.steps_offset)
            ts = ts.round().astype(np.int64) if cfg.timestep_spacing != "linspace" else \
                np.linspace(0, cfg.num_train_timesteps - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
            self.custom_timesteps = False
        ts = self._set_list(ts, device)
        vt = "fixed_large" if self.variance_type == "fixed_large" else "fixed_small"
        self._plan = ddpm_plan(self._den, ts, vt)

    def _learned_std(self, i: int, predicted: torch.Tensor) -> torch.Tensor:
        """The std of a learned (Nichol & Dhariwal 2021) variance: the output itself, or exp(½ log-interpolation)
        between β̃ and β."""
        a_t = float(self._ts[i])
        prev = int(self._ts[i + 1]) if i + 1 < len(self._ts) else -1
        var = max(float(self._get_variance(int(a_t), prev)), 1e-20)
        if self.variance_type == "learned":
            return predicted**0.5
        a = self.alphas_cumprod[int(a_t)]
        a_p = self.alphas_cumprod[prev] if prev >= 0 else self.one
        frac = (predicted + 1) / 2
        log_var = frac * float(torch.log(1 - a / a_p)) + (1 - frac) * float(np.log(var))
        return torch.exp(0.5 * log_var)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True
             ) -> DDPMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """x_prev ~ q(x_prev | x_t, x̂0) (DDPM eq. 6–7) onto the next entry of the list."""
        i = self._position(timestep)
        learned = self.variance_type in ("learned", "learned_range")
        predicted = None
        if learned and model_output.shape[1] == sample.shape[1] * 2:
            model_output, predicted = torch.split(model_output, sample.shape[1], dim=1)
        z = None
        if int(timestep) > 0:  # diffusers draws noise whenever t > 0 (same generator use)
            z = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
        noise = None if (learned or i == len(self._ts) - 1) else z
        prev, x0 = self._plan_step(self._plan, i, model_output, sample, noise)
        if learned and z is not None:
            if predicted is None:
                refuse("variance_type", f"{self.variance_type!r} needs a model output with twice the sample's channels")
            prev = prev + self._learned_std(i, predicted) * z
        self._step_index = i + 1
        return DDPMSchedulerOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev, x0)


class _ConsistencyFamily(_GridFamily):
    """LCM's and TCD's list: `num_inference_steps` evenly spaced entries of the distillation grid of
    `original_inference_steps` steps (its first `strength` fraction for img2img), or custom timesteps."""

    _origin_all = False  # TCD: original_inference_steps passed to set_timesteps means every training step

    def _setup_consistency(self) -> None:
        cfg = self.config
        orig = cfg.original_inference_steps
        if isinstance(orig, bool) or not isinstance(orig, int) or orig < 1:
            refuse("original_inference_steps", f"must be a positive integer, got {orig!r}")
        check_choice("timestep_spacing", cfg.timestep_spacing, ("linspace", "leading", "trailing"))
        self._setup_grid(cfg.set_alpha_to_one, "leading")

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      original_inference_steps: int | None = None, timesteps: list[int] | None = None,
                      strength: float = 1.0) -> None:
        if (num_inference_steps is None) == (timesteps is None):
            raise UsageError("set_timesteps: pass exactly one of num_inference_steps or timesteps")
        if not 0.0 < strength <= 1.0:
            refuse("strength", f"must lie in (0, 1], got {strength}")
        T = self.config.num_train_timesteps
        orig = original_inference_steps if original_inference_steps is not None else \
            self.config.original_inference_steps
        if self._origin_all and original_inference_steps is not None:
            origin = np.arange(0, int(T * strength))
        else:
            if orig > T:
                refuse("original_inference_steps", f"{orig} exceeds num_train_timesteps={T}")
            origin = np.arange(1, int(orig * strength) + 1) * (T // orig) - 1
        if timesteps is not None:
            ts = self._custom(timesteps)
            n = len(ts)
            self.custom_timesteps = True
            keep = min(int(n * strength), n)
            ts = ts[max(n - keep, 0):]
            self._set_list(ts, device)
            self.num_inference_steps = n
        else:
            n = num_inference_steps
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= min(T, len(origin), orig):
                refuse("num_inference_steps", f"must be in 1..{min(T, len(origin), orig)} for "
                                              f"original_inference_steps={orig} and strength={strength}, got {n!r}")
            origin = origin[::-1].copy()
            ts = origin[np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)]
            self.custom_timesteps = False
            self._set_list(ts, device)
        self._plans: dict[float, FirstOrderPlan] = {}

    def _last(self, i: int) -> bool:
        return i == self.num_inference_steps - 1


class LCMScheduler(_ConsistencyFamily):
    """Latent Consistency Model multistep sampling (Luo et al. 2023) on the core's `lcm_plan`."""


    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: np.ndarray | list[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._setup_consistency()

    def get_scalings_for_boundary_condition_discrete(self, timestep: int) -> tuple[float, float]:
        """(c_skip, c_out) of the consistency parameterisation at `timestep` (core.samplers.consistency)."""
        return lcm_boundary(float(timestep) * float(self.config.timestep_scaling))

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True
             ) -> LCMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """The consistency function's boundary-conditioned x̂0, re-noised to the next entry (the last: x̂0)."""
        i = self._position(timestep)
        plan = self._plans.get(0.0)
        if plan is None:
            plan = self._plans[0.0] = lcm_plan(self._den, self._ts, float(self.config.timestep_scaling))
        last = self._last(i)
        z = None if last else randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                           dtype=model_output.dtype)
        c_skip, c_out = lcm_boundary(float(self._ts[i]) * float(self.config.timestep_scaling))
        denoised = self._den.x0_from_output(sample, plan.t[i], model_output) * c_out + sample * c_skip
        if last:
            prev = denoised
        elif i + 1 < len(self._ts):
            prev, _ = self._plan_step(plan, i, model_output, sample, z)
        else:  # a custom list cut by strength: diffusers re-noises to the same timestep
            a = float(self.alphas_cumprod[int(timestep)])
            prev = denoised * a**0.5 + z * (1 - a) ** 0.5
        self._step_index = i + 1
        return LCMSchedulerOutput(prev_sample=prev, denoised=denoised) if return_dict else (prev, denoised)


class TCDScheduler(_ConsistencyFamily):
    """Trajectory Consistency Distillation's strategic stochastic sampling (Zheng et al. 2024) on `tcd_plan`."""

    _origin_all = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: np.ndarray | list[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._setup_consistency()

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.3,
             generator: torch.Generator | None = None, return_dict: bool = True
             ) -> TCDSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """DDIM to s = ⌊(1 − γ) t'⌋, then forward noise from s to t' (γ = eta; the last step ends on s)."""
        if not 0.0 <= eta <= 1.0:
            refuse("eta", f"(TCD's γ) must lie in [0, 1], got {eta}")
        i = self._position(timestep)
        plan = self._plans.get(float(eta))
        if plan is None:
            plan = self._plans[float(eta)] = tcd_plan(self._den, self._ts, float(eta))
        z = None
        if eta > 0 and not self._last(i):
            z = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
        prev, _ = self._plan_step(plan, i, model_output, sample, z)
        t_next = int(self._ts[i + 1]) if i + 1 < len(self._ts) else 0
        a_s, s_s = self.schedule.alpha_sigma(int(np.floor((1 - eta) * t_next)))
        eps, x0 = self._den.split(sample, plan.t[i], model_output)
        noised = torch.add(x0 * a_s, eps, alpha=s_s)  # x_s, before the forward noise
        self._step_index = i + 1
        return TCDSchedulerOutput(prev_sample=prev, pred_noised_sample=noised) if return_dict else (prev, noised)


class PNDMScheduler(_GridFamily):
    """PNDM (Liu et al. 2022): pseudo Runge–Kutta warm-up (PRK, 4 calls per step for 3 steps) then the pseudo
    linear multistep method (PLMS: Adams–Bashforth 2–4 on ε̂), each step the DDIM transfer
    x' = (α'/α) x + (σ' − α'σ/α) ε' (core.samplers.pndm's transfer in EDM variables). `skip_prk_steps` starts
    PLMS with the pseudo improved Euler step instead (Stable Diffusion's config). A step lands on the next
    entry of the list (diffusers: a fixed stride T // n, the same for `leading` spacing)."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ) -> None:
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction"))
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        self._setup_grid(set_alpha_to_one, timestep_spacing)
        self.pndm_order = 4
        self.cur_model_output: Any = 0
        self.counter = 0
        self.cur_sample: torch.Tensor | None = None
        self.ets: list[torch.Tensor] = []
        self.prk_timesteps = np.array([])
        self.plms_timesteps = np.array([])

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """diffusers' PRK and PLMS timestep lists (the PLMS list repeats its second entry when PRK is skipped)."""
        cfg = self.config
        n, T = num_inference_steps, cfg.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= T:
            refuse("num_inference_steps", f"must be an integer in 2..{T} for PNDM, got {n!r}")
        if not cfg.skip_prk_steps and n < 4:
            refuse("num_inference_steps", "PRK warm-up needs at least 4 steps (or skip_prk_steps=True)")
        base = spaced(n, cfg.timestep_spacing, T, cfg.steps_offset)[::-1].copy()
        base = base.round().astype(np.int64) if cfg.timestep_spacing != "linspace" else \
            np.linspace(0, T - 1, n).round().astype(np.int64)
        self._base = base[::-1].copy()  # the n levels, decreasing
        if cfg.skip_prk_steps:
            self.prk_timesteps = np.array([])
            self.plms_timesteps = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].copy()
        else:
            prk = np.array(base[-self.pndm_order:]).repeat(2) + np.tile(np.array([0, T // n // 2]), self.pndm_order)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = base[:-3][::-1].copy()
        ts = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.timesteps = torch.from_numpy(ts).to(device)
        self.num_inference_steps = n
        self._next = {int(t): int(s) for t, s in zip(self._base[:-1], self._base[1:])}
        self._up = {v: k for k, v in self._next.items()}
        self.ets, self.counter, self.cur_model_output, self.cur_sample = [], 0, 0, None

    def _eps(self, out: torch.Tensor, x: torch.Tensor, t: int) -> torch.Tensor:
        return self._den.eps_from_output(x, t, out)

    def _transfer(self, x: torch.Tensor, t: int, t_prev: int | float, eps: torch.Tensor) -> torch.Tensor:
        """The DDIM (η = 0) transfer from level t to t_prev with the slope ε'."""
        if t_prev == t:
            return x
        a, s = self.schedule.alpha_sigma(t)
        a_p, s_p = self.schedule.alpha_sigma(t_prev) if t_prev >= 0 else self.schedule.ddim_final
        return torch.add(x * (a_p / a), eps, alpha=s_p - a_p * s / a)

    def _prev(self, t: int) -> int:
        return self._next.get(int(t), -1)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             return_dict: bool = True) -> Any:
        """PRK while its warm-up list lasts (unless skipped), then PLMS; state advances per call, as diffusers'."""
        self._require_timesteps()
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self.step_prk(model_output, timestep, sample, return_dict)
        return self.step_plms(model_output, timestep, sample, return_dict)

    def step_prk(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
                 return_dict: bool = True) -> Any:
        """RK4 weights 1/6, 1/3, 1/3, 1/6 on ε̂ at the start, twice at the midpoint and at the end of a step (the
        half step is T // n // 2, as diffusers)."""
        from diffusers.schedulers.scheduling_utils import SchedulerOutput

        t = int(timestep)
        half = self.config.num_train_timesteps // self.num_inference_steps // 2
        target = t - (0 if self.counter % 2 else half)
        start = int(self.prk_timesteps[self.counter // 4 * 4])
        eps = self._eps(model_output, sample, t)
        k = self.counter % 4
        if k == 0:
            self.cur_model_output = eps / 6
            self.ets.append(eps)
            self.cur_sample = sample
        elif k in (1, 2):
            self.cur_model_output = self.cur_model_output + eps / 3
        else:
            eps = self.cur_model_output + eps / 6
            self.cur_model_output = 0
        prev = self._transfer(self.cur_sample if self.cur_sample is not None else sample, start, target, eps)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def step_plms(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
                  return_dict: bool = True) -> Any:
        """Adams–Bashforth 2–4 on the kept ε̂ (the first step: the pseudo improved Euler average, whose second
        call is the repeated list entry)."""
        from diffusers.schedulers.scheduling_utils import SchedulerOutput

        if not self.config.skip_prk_steps and len(self.ets) < 3:
            refuse("step", "PNDM needs the PRK warm-up steps first (call step on every entry of timesteps)")
        t = int(timestep)
        eps_now = self._eps(model_output, sample, t)
        if self.counter != 1:
            self.ets = [*self.ets[-3:], eps_now]
            start, prev = t, self._prev(t)
        else:  # the corrector call of the first (improved Euler) step: from the level before this one
            start, prev = self._up.get(t, t), t
        x = sample
        if len(self.ets) == 1 and self.counter == 0:
            eps = eps_now
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            eps = (eps_now + self.ets[-1]) / 2
            x = self.cur_sample
            self.cur_sample = None
        elif len(self.ets) == 2:
            eps = (3 * self.ets[-1] - self.ets[-2]) / 2
        elif len(self.ets) == 3:
            eps = (23 * self.ets[-1] - 16 * self.ets[-2] + 5 * self.ets[-3]) / 12
        else:
            eps = (55 * self.ets[-1] - 59 * self.ets[-2] + 37 * self.ets[-3] - 9 * self.ets[-4]) / 24
        out = self._transfer(x, start, prev, eps)
        self.counter += 1
        return SchedulerOutput(prev_sample=out) if return_dict else (out,)
