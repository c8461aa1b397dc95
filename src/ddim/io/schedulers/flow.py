"""Drop-in flow-matching Euler and Heun schedulers (SD3, Flux, …): x_σ = (1 − σ) x0 + σ ε, velocity u = ε − x0.

The σ list is the core's `FlowShift` (diffusers' own list to the bit: static shift, resolution-dependent μ,
shift_terminal), optionally re-spaced by Karras / exponential / beta or inverted. The Euler step
x' = x + (σ' − σ) u is the exact DDIM η = 0 step on the flow path; Heun averages the velocities at both ends
(Karras Alg. 1 in flow variables, `core.samplers.heun`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ...core.errors import UsageError
from ...core.path import FlowShift
from .base import FLOW_COMPATIBLES, DropIn, check_choice, converted_sigmas, refuse, sigma_kind, two_stage_lists


class _FlowFamily(DropIn):
    """Training σ, shift, step index and `scale_noise` shared by the flow drop-ins."""

    _compatibles = FLOW_COMPATIBLES

    def _setup_flow(self, shift: float, dynamic: bool) -> None:
        N = self.config.num_train_timesteps
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            refuse("num_train_timesteps", f"must be an integer >= 1, got {N!r}")
        if isinstance(shift, bool) or not isinstance(shift, int | float) or not (shift > 0 and math.isfinite(shift)):
            refuse("shift", f"must be a positive number, got {shift!r}")
        t = torch.from_numpy(np.linspace(1, N, N, dtype=np.float32)[::-1].copy())
        sig = t / N
        if not dynamic:
            sig = shift * sig / (1 + (shift - 1) * sig)
        self.timesteps = sig * N
        self.sigmas = sig
        self.sigma_min, self.sigma_max = self.sigmas[-1].item(), self.sigmas[0].item()
        self._shift = float(shift)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self._step_index = self._begin_index = None

    @property
    def shift(self) -> float:
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = float(shift)

    def _sigma_to_t(self, sigma: Any) -> Any:
        return sigma * self.config.num_train_timesteps

    def _check_timestep_type(self, timestep: Any) -> None:
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise UsageError(f"{type(self).__name__}.step takes one of scheduler.timesteps, not an integer index")

    def scale_model_input(self, sample: torch.Tensor, timestep: float | None = None) -> torch.Tensor:
        return sample

    def scale_noise(self, sample: torch.Tensor, timestep: float | torch.Tensor,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_σ = σ ε + (1 − σ) x0 at each timestep's σ (a batch of timesteps, or the begin index once set)."""
        if noise is None:
            raise UsageError("scale_noise needs noise")
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)
        ts = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        sched = self.timesteps.to(sample.device)
        if self._begin_index is None:
            idx = [self.index_for_timestep(t, sched) for t in ts]
        else:
            idx = [self._step_index if self._step_index is not None else self._begin_index] * ts.shape[0]
        sigma = sigmas[idx].flatten().reshape(-1, *([1] * (sample.ndim - 1)))
        return sigma * noise + (1.0 - sigma) * sample


class FlowMatchEulerDiscreteScheduler(_FlowFamily):
    """Euler on the flow ODE (or its stochastic re-noising variant) behind diffusers' interface."""

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
        check_choice("time_shift_type", time_shift_type, ("exponential", "linear"))
        self._kind = sigma_kind(self.own_config())
        self._fs = FlowShift(float(shift), bool(use_dynamic_shifting), None, shift_terminal, time_shift_type,
                             num_train_timesteps)
        self._setup_flow(shift, use_dynamic_shifting)

    def time_shift(self, mu: float, sigma: float, t: Any) -> Any:
        """Flux's resolution shift e^μ/(e^μ + (1/t − 1)^σ) (or μ/(μ + (1/t − 1)^σ) for time_shift_type=linear)."""
        if self.config.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
        return mu / (mu + (1 / t - 1) ** sigma)

    def stretch_shift_to_terminal(self, t: Any) -> Any:
        """Stretch a σ list so its last entry is `shift_terminal` (LTX-Video)."""
        one_minus = 1 - t
        return 1 - one_minus / (one_minus[-1] / (1 - self.config.shift_terminal))

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: list[float] | None = None, mu: float | None = None,
                      timesteps: list[float] | None = None) -> None:
        """diffusers' σ list (shifted, stretched, re-spaced, inverted as configured), then the final level."""
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            refuse("mu", "must be passed when use_dynamic_shifting is set (e.g. from calculate_shift)")
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            refuse("sigmas", "and timesteps must have the same length")
        if num_inference_steps is None:
            if sigmas is None and timesteps is None:
                raise UsageError("set_timesteps: give num_inference_steps, sigmas or timesteps")
            num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
        elif any(v is not None and len(v) != num_inference_steps for v in (sigmas, timesteps)):
            refuse("num_inference_steps", "must equal the length of the given sigmas / timesteps")
        n = int(num_inference_steps)
        if n < 1:
            refuse("num_inference_steps", f"must be >= 1, got {n}")
        self.num_inference_steps = n
        given_t = None if timesteps is None else np.array(timesteps).astype(np.float32)
        if given_t is not None and sigmas is None:
            warnings.warn("timesteps given without sigmas: σ are derived from them and shifted, while the "
                          "network sees the given timesteps (diffusers' behaviour); pass sigmas to keep them "
                          "consistent", stacklevel=2)
        if sigmas is None:
            t = given_t if given_t is not None else \
                np.linspace(self._sigma_to_t(self.sigma_max), self._sigma_to_t(self.sigma_min), n)
            raw = t / cfg.num_train_timesteps
        else:
            raw = np.array(sigmas).astype(np.float32)
        fs = FlowShift(self._shift, self._fs.dynamic, None, self._fs.shift_terminal, self._fs.time_shift_type,
                       self._fs.num_train_timesteps)
        sig = fs.shift_list(raw, mu, f32=False)
        if self._kind:
            sig = converted_sigmas(self._kind, sig, n)
        s32 = torch.from_numpy(np.asarray(sig)).to(dtype=torch.float32, device=device)
        ts = torch.from_numpy(given_t).to(device=device) if given_t is not None else s32 * cfg.num_train_timesteps
        if cfg.invert_sigmas:
            s32 = 1.0 - s32
            ts = s32 * cfg.num_train_timesteps
            s32 = torch.cat([s32, torch.ones(1, device=s32.device)])
        else:
            s32 = torch.cat([s32, torch.zeros(1, device=s32.device)])
        self.timesteps, self.sigmas = ts, s32
        self._s = s32.tolist()  # Python floats for the steps (σ stay a CPU tensor, as diffusers')
        self._step_index = self._begin_index = None

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, per_token_timesteps: torch.Tensor | None = None,
             return_dict: bool = True) -> FlowMatchEulerDiscreteSchedulerOutput | tuple[torch.Tensor]:
        """x' = x + (σ' − σ) u; per-token timesteps step each token from its own σ to the next lower list level;
        stochastic_sampling re-noises x̂0 = x − σ u to σ' with fresh noise. (s_churn, s_tmin, s_tmax and s_noise
        are accepted for diffusers' signature; its flow Euler step does not use them either.)"""
        self._check_timestep_type(timestep)
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        x = sample.to(torch.float32)
        if per_token_timesteps is not None:
            tok = per_token_timesteps / self.config.num_train_timesteps
            levels = self.sigmas[:, None, None]
            lower = ((levels < tok[None] - 1e-6) * levels).max(dim=0)[0]
            cur, nxt = tok[..., None], lower[..., None]
            dt = cur - nxt
        else:
            i = self._step_index
            cur, nxt = self._s[i], self._s[i + 1]
            dt = nxt - cur
        if self.config.stochastic_sampling:
            x0 = x - cur * model_output
            z = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            prev = (1.0 - nxt) * x0 + nxt * z
        elif per_token_timesteps is None:
            prev = torch.add(x, model_output, alpha=dt)
        else:
            prev = x + dt * model_output
        self._step_index += 1
        if per_token_timesteps is None:
            prev = prev.to(model_output.dtype)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev) if return_dict else (prev,)


class FlowMatchHeunDiscreteScheduler(_FlowFamily):
    """Heun on the flow ODE: each level but the first appears twice in `timesteps`; the last step is Euler."""

    order = 2

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0) -> None:
        self._setup_flow(shift, False)
        self._first: tuple[torch.Tensor, torch.Tensor, float] | None = None

    @property
    def state_in_first_order(self) -> bool:
        return self._first is None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        cfg = self.config
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            refuse("num_inference_steps", f"must be an integer >= 1, got {num_inference_steps!r}")
        self.num_inference_steps = num_inference_steps
        fs = FlowShift(float(cfg.shift), num_train_timesteps=cfg.num_train_timesteps)
        t = np.linspace(self._sigma_to_t(self.sigma_max), self._sigma_to_t(self.sigma_min), num_inference_steps)
        sig = torch.from_numpy(fs.shift_list(t / cfg.num_train_timesteps, f32=False)).to(torch.float32)
        ts, self.sigmas = two_stage_lists(sig * cfg.num_train_timesteps, torch.cat([sig, torch.zeros(1)]))
        self.timesteps = ts.to(device=device)
        self._s = self.sigmas.tolist()
        self._first = None
        self._step_index = self._begin_index = None

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, return_dict: bool = True
             ) -> FlowMatchEulerDiscreteSchedulerOutput | tuple[torch.Tensor]:
        """First call of a level: Euler (with churn γ: raised to σ̂ = (1 + γ)σ with fresh noise); second: the
        average of both velocities from the kept sample."""
        self._check_timestep_type(timestep)
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        x = sample.to(torch.float32)
        first = self._first is None
        sigma = self._s[i] if first else self._s[i - 1]
        sigma_next = self._s[i + 1] if first else self._s[i]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            z = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                             generator=generator)
            x = x + z * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        if first:  # the velocity u = (x − x̂0)/σ̂ with x̂0 = x − σ u (diffusers' arithmetic, kept for its bits)
            d = (x - (x - model_output * sigma)) / sigma_hat
            self._first = (x, d, sigma_next - sigma_hat)
            prev = torch.add(x, d, alpha=sigma_next - sigma_hat)
        else:
            x_start, d0, dt = self._first
            d = (x - (x - model_output * sigma_next)) / sigma_next
            prev = torch.add(x_start, d0.add_(d), alpha=0.5 * dt)
            self._first = None
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev) if return_dict else (prev,)
