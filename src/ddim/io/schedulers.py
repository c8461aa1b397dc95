"""A diffusers-compatible DDIM scheduler built on ddim's core (drop-in: `pipe.scheduler = DDIMScheduler(...)`).

It keeps diffusers' config keys and scheduler contract but takes the previous timestep from the actual
next entry of the list (right for every spacing, where diffusers' fixed stride is wrong for `linspace`),
clamps radicands (no NaN at η = 1 on zero-terminal-SNR schedules) and computes coefficients in float64.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..core.errors import UsageError
from ..core.noise import noise_fn
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
        self.schedule: NoiseSchedule = self._den.schedule
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
