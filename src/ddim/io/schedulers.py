"""diffusers-compatible DDIM, DPM-Solver++ and flow-matching Euler schedulers built on ddim's core
(drop-in: `pipe.scheduler = DDIMScheduler(...)`).

It keeps diffusers' config keys and scheduler contract but takes the previous timestep from the actual
next entry of the list (right for every spacing, where diffusers' fixed stride is wrong for `linspace`),
clamps radicands (no NaN at η = 1 on zero-terminal-SNR schedules) and computes coefficients in float64.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..core.errors import UsageError
from ..core.noise import noise_fn
from ..core.path import FlowShift
from ..core.samplers.base import FirstOrderPlan, first_order_update
from ..core.samplers.ddim import ddim_plan
from ..core.samplers.dpmpp import dpmpp_plan, multistep_update
from ..core.schedule import NoiseSchedule
from .config import denoiser_from_config


class _CoreScheduler(SchedulerMixin, ConfigMixin):
    """What both schedulers share: the schedule built from the config, and the trivial parts of the contract."""

    order = 1

    def _setup(self, clip: bool = True) -> None:
        cfg = dict(self.config) if clip else {**dict(self.config), "clip_sample": False}
        self._den = denoiser_from_config(None, cfg)
        self.schedule: NoiseSchedule = self._den.path
        self.alphas_cumprod = self.schedule.alphas_cumprod.float()
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = self.schedule.timesteps(self.config.num_train_timesteps, "trailing")

    def _step_index(self, timestep: int | torch.Tensor) -> int:
        if self.num_inference_steps is None:
            raise UsageError("call set_timesteps before step")
        t = int(timestep)
        if t not in self._index:
            raise UsageError(f"timestep {t} is not in this scheduler's list (call set_timesteps first)")
        return self._index[t]

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): sqrt(ᾱ_t) x_0 + sqrt(1-ᾱ_t) ε."""
        a = self.schedule.alphas_cumprod.to(original_samples.device)[timesteps.long()].to(original_samples.dtype)
        a = a.reshape(-1, *([1] * (original_samples.ndim - 1)))
        return a.sqrt() * original_samples + (1 - a).sqrt() * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class DDIMScheduler(_CoreScheduler):
    """ddim's DDIM step behind diffusers' scheduler interface."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
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
        self._setup()
        self._index: dict[int, int] = {}

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        ts = self.schedule.timesteps(num_inference_steps, self.config.timestep_spacing)
        self.num_inference_steps = len(ts)
        self._ts = ts
        self._plans: dict[float, FirstOrderPlan] = {}
        self._index = {t: i for i, t in enumerate(ts.tolist())}
        self.timesteps = ts.to(device) if device is not None else ts

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True
             ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step (eq. 12) from `timestep` to the next entry of the list set by `set_timesteps`: the same
        plan and update as `ddim.sample(sampler="ddim")`."""
        i = self._step_index(timestep)
        if generator is not None and variance_noise is not None:
            raise UsageError("pass either generator or variance_noise, not both")
        plan = self._plans.get(float(eta))
        if plan is None:  # once per η and list, not per step
            plan = self._plans[float(eta)] = ddim_plan(self._den, self._ts, float(eta))
        z = None
        if plan.sigma[i] > 0:
            z = variance_noise if variance_noise is not None else noise_fn(generator, model_output)()
        prev_sample, x0 = first_order_update(self._den, plan, i, sample, model_output, z, use_clipped_model_output)
        if x0 is None:
            x0 = self._den.x0_from_output(sample, plan.t[i], model_output)
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)



class DPMSolverMultistepScheduler(_CoreScheduler):
    """ddim's DPM-Solver++ (2M / 3M, data prediction) behind diffusers' scheduler interface.

    Coefficients for the whole list are computed in float64 at `set_timesteps`; `step` keeps the x̂0
    history. Third order uses the Taylor-correct D2 weight (see ddim.samplers.dpmpp).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "trailing",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        if solver_order not in (1, 2, 3):
            raise UsageError(f"solver_order must be 1, 2 or 3, got {solver_order}")
        self._setup(clip=False)
        self._plan: list = []
        self._hist: list[torch.Tensor] = []
        self._index: dict[int, int] = {}

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        ts = self.schedule.timesteps(num_inference_steps, self.config.timestep_spacing)
        self._plan = dpmpp_plan(self._den, ts, self.config.solver_order)[1]
        self._index = {t: i for i, t in enumerate(ts.tolist())}
        self._hist = []
        self.num_inference_steps = len(ts)
        self.timesteps = ts.to(device) if device is not None else ts

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True, **_: object
             ) -> DDIMSchedulerOutput | tuple[torch.Tensor]:
        """One DPM-Solver++ step from `timestep` to the next entry of the list: the same plan and update as
        `ddim.sample(sampler="dpmpp_2m")` (extra pipeline kwargs such as `eta` are ignored: it is deterministic)."""
        i = self._step_index(timestep)
        if i == 0:
            self._hist = []
        x0 = self._den.x0_from_output(sample, int(timestep), model_output)
        self._hist = [x0, *self._hist[:2]]
        prev = multistep_update(sample, self._hist, self._plan[i])
        if not return_dict:
            return (prev,)
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)


class FlowMatchEulerDiscreteScheduler(SchedulerMixin, ConfigMixin):
    """ddim's flow Euler step (DDIM η = 0 on the flow path) behind diffusers' FlowMatchEulerDiscreteScheduler
    interface: the same constructor, `set_timesteps(n, mu=…)` and σ list to the bit.

    Differences: a one-step list with `shift_terminal` is [1.0] (diffusers divides by zero and returns NaN);
    coefficients are float64; `timesteps=` without sigmas is refused (diffusers shifts the σ derived from them
    but keeps the unshifted timesteps, so the two disagree): pass `sigmas`.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int | None = 256,
        max_image_seq_len: int | None = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
    ) -> None:
        cfg = {**dict(self.config), "_class_name": "FlowMatchEulerDiscreteScheduler"}
        self._den = denoiser_from_config(None, cfg)
        self._shift = float(shift)
        N = num_train_timesteps
        train = self._den.path.flow_shift.sigmas(N) if not use_dynamic_shifting else \
            torch.linspace(1, N, N, dtype=torch.float32).flip(0).double().numpy() / N
        self.sigmas = torch.from_numpy(train).float()
        self.timesteps = self.sigmas * N
        self.sigma_min, self.sigma_max = float(self.sigmas[-1]), float(self.sigmas[0])
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def shift(self) -> float:
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = float(shift)

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def _flow_shift(self) -> FlowShift:
        fs = self._den.path.flow_shift
        return dataclasses.replace(fs, shift=self._shift)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: list[float] | None = None, mu: float | None = None,
                      timesteps: list[float] | None = None) -> None:
        """diffusers' σ list (shifted, stretched to shift_terminal) for n steps, or the given σ (shifted, as
        diffusers does), then a final 0."""
        fs = self._flow_shift()
        if fs.dynamic and mu is None:
            raise UsageError("mu must be passed when use_dynamic_shifting is set")
        if sigmas is not None:
            sig = torch.from_numpy(fs.shift_list(np.asarray(sigmas, dtype=np.float32), mu))
        elif timesteps is not None:
            raise UsageError("pass sigmas= (timesteps= alone gives inconsistent σ in diffusers' scheduler)")
        else:
            if num_inference_steps is None:
                raise UsageError("give num_inference_steps, sigmas or timesteps")
            sig = torch.from_numpy(fs.sigmas(int(num_inference_steps), mu))
        self._ts = self._den.path.validate_timesteps(sig)
        self._plan = ddim_plan(self._den, self._ts, 0.0)
        self.num_inference_steps = len(self._ts)
        s32 = self._ts.float()
        self.timesteps = (s32 * self.config.num_train_timesteps).to(device)
        self.sigmas = torch.cat([s32, torch.zeros(1)]).to(device)
        self._step_index = None
        self._begin_index = None

    def scale_model_input(self, sample: torch.Tensor, timestep: float | None = None) -> torch.Tensor:
        return sample

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor | float,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_σ = σ ε + (1 − σ) x0 at the σ of `timestep` (its place in the list)."""
        i = self._index_of(timestep)
        s = float(self._ts[i])
        return s * noise + (1.0 - s) * sample

    def _index_of(self, timestep: torch.Tensor | float) -> int:
        if self.num_inference_steps is None:
            raise UsageError("call set_timesteps before step")
        if (isinstance(timestep, int) and not isinstance(timestep, bool)) or (
                isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise UsageError("pass one of scheduler.timesteps as the timestep, not an integer index")
        if self._step_index is not None:
            return self._step_index
        if self._begin_index is not None:
            return self._begin_index
        t = float(timestep)
        diffs = (self.timesteps.double().cpu() - t).abs()
        return int(diffs.argmin())

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, per_token_timesteps: torch.Tensor | None = None,
             return_dict: bool = True) -> FlowMatchEulerDiscreteSchedulerOutput | tuple[torch.Tensor]:
        """One flow Euler step x' = x + (σ' − σ) u, through the same plan and update as `ddim.sample`."""
        if per_token_timesteps is not None:
            raise UsageError("per-token timesteps are not supported")
        i = self._index_of(timestep)
        x = sample.to(torch.float32)
        if self.config.stochastic_sampling:
            x0 = self._den.x0_from_output(x, self._plan.t[i], model_output.to(torch.float32))
            s_next = float(self.sigmas[i + 1])
            prev = (1.0 - s_next) * x0 + s_next * noise_fn(generator, x)()
        else:
            prev, _ = first_order_update(self._den, self._plan, i, x, model_output.to(torch.float32))
        self._step_index = i + 1
        prev = prev.to(model_output.dtype)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
