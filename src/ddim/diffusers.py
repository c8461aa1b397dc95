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

from .denoiser import Denoiser
from .noise import noise_fn
from .samplers.ddim import ddim_coefficients
from .schedule import NoiseSchedule


class _CoreScheduler(SchedulerMixin, ConfigMixin):
    """What both schedulers share: the schedule built from the config, and the trivial parts of the contract."""

    order = 1

    def _setup(self, clip: bool = True) -> None:
        cfg = dict(self.config) if clip else {**dict(self.config), "clip_sample": False}
        self._den = Denoiser.from_diffusers_config(None, cfg)
        self.schedule: NoiseSchedule = self._den.schedule
        self.alphas_cumprod = self.schedule.alphas_cumprod.float()
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = self.schedule.timesteps(self.config.num_train_timesteps, "trailing")

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
        self._next: dict[int, int] = {}

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        ts = self.schedule.timesteps(num_inference_steps, self.config.timestep_spacing)
        self.num_inference_steps = len(ts)
        lst = ts.tolist()
        self._next = {t: (lst[i + 1] if i + 1 < len(lst) else -1) for i, t in enumerate(lst)}
        self.timesteps = ts.to(device) if device is not None else ts

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True
             ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step (eq. 12) from `timestep` to the next entry of the list set by `set_timesteps`."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        t = int(timestep)
        if t not in self._next:
            raise ValueError(f"timestep {t} is not in this scheduler's list (call set_timesteps first)")
        if generator is not None and variance_noise is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        prev = self._next[t]
        sched = self.schedule
        (c_x0,), (c_eps,), (sig,) = ddim_coefficients([sched.alpha_bar(t)], [sched.alpha_bar(prev)], float(eta))
        eps, x0 = self._den.split(sample, t, model_output)
        if use_clipped_model_output:
            eps = self._den.eps_from_x0(sample, t, x0)
        prev_sample = torch.add(x0 * c_x0, eps, alpha=c_eps)
        if sig > 0:
            z = variance_noise if variance_noise is not None else noise_fn(generator, model_output)()
            prev_sample = prev_sample + sig * z
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
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order}")
        self._setup(clip=False)
        self._plan: list[tuple[float, list[float]]] = []
        self._hist: list[torch.Tensor] = []
        self._index: dict[int, int] = {}

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        from .samplers.base import Levels
        from .samplers.dpmpp import dpmpp_coefficients, multistep_orders

        ts = self.schedule.timesteps(num_inference_steps, self.config.timestep_spacing)
        lv = Levels(self._den, ts)
        orders = multistep_orders(len(lv), self.config.solver_order, final_zero=lv.sigma[-1] == 0.0)
        self._plan = [dpmpp_coefficients(lv, i, o) for i, o in enumerate(orders)]
        self._index = {t: i for i, t in enumerate(lv.t)}
        self._hist = []
        self.num_inference_steps = len(ts)
        self.timesteps = ts.to(device) if device is not None else ts

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True, **_: object
             ) -> DDIMSchedulerOutput | tuple[torch.Tensor]:
        """One DPM-Solver++ step from `timestep` to the next entry of the list (extra pipeline kwargs such
        as `eta` are ignored: the solver is deterministic)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        t = int(timestep)
        if t not in self._index:
            raise ValueError(f"timestep {t} is not in this scheduler's list (call set_timesteps first)")
        i = self._index[t]
        if i == 0:
            self._hist = []
        _, x0 = self._den.split(sample, t, model_output)
        self._hist = [x0, *self._hist[:2]]
        A, c = self._plan[i]
        prev = sample * A
        for k, h in enumerate(self._hist):
            if c[k] != 0.0:
                prev = prev + c[k] * h
        if not return_dict:
            return (prev,)
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
