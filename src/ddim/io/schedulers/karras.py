"""Drop-in Euler, Euler-ancestral and Heun schedulers: steps in EDM's variables (Karras et al. 2022).

The sample is y = x/α (the VE path y = x0 + σ ε, σ = sqrt((1 − ᾱ)/ᾱ)); `scale_model_input` gives the
network x = y/sqrt(σ² + 1). x̂0 comes from core.prediction's conversions at the level's (α, σ); the Euler step
y' = y + (σ' − σ̂) (y − x̂0)/σ̂ is DDIM's η = 0 step in these variables (the exact solution of the ODE's linear
part), Heun (Karras Alg. 1) averages the slopes at both ends, the ancestral step splits σ' with
`core.samplers.ancestral`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ...core.errors import UsageError
from ...core.samplers.ancestral import ancestral_split
from .base import (
    DropIn,
    check_choice,
    converted_sigmas,
    diffusers_tables,
    refuse,
    sigma_kind,
    sigma_to_t,
    spaced,
    train_sigmas,
    two_stage_lists,
    vp_pair,
    x0_weights,
)


class _SigmaFamily(DropIn):
    """σ list, input scaling, x̂0 conversion, step index and add_noise shared by the EDM-variable drop-ins."""

    _predictions: tuple[str, ...] = ("epsilon", "v_prediction", "sample")

    def _setup_sigmas(self) -> None:
        cfg = self.config
        check_choice("prediction_type", cfg.prediction_type, self._predictions)
        check_choice("timestep_spacing", cfg.timestep_spacing, ("linspace", "leading", "trailing"))
        self._kind = sigma_kind(self.own_config())
        self.betas, self.alphas, self.alphas_cumprod = diffusers_tables(self.own_config(), zero_snr_floor=True)
        base = torch.from_numpy(train_sigmas(self.alphas_cumprod)).flip(0)
        T = cfg.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, T - 1, T, dtype=float)[::-1].copy()).float()
        self.sigmas = torch.cat([base, torch.zeros(1)])
        self.num_inference_steps: int | None = None
        self.is_scale_input_called = False
        self._step_index = self._begin_index = None

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """The std of x_T in the sample's variables: σ_max (or sqrt(σ_max² + 1) for leading spacing, as diffusers)."""
        m = self.sigmas.max()
        return m if self.config.timestep_spacing in ("linspace", "trailing") else (m**2 + 1) ** 0.5

    _list_dtype: type = np.float32  # the dtype diffusers builds this class's timestep list in

    def _spaced(self, n: int, T: int | None = None) -> np.ndarray:
        cfg = self.config
        return spaced(n, cfg.timestep_spacing, T or cfg.num_train_timesteps, cfg.steps_offset, dtype=self._list_dtype)

    def _from_timesteps(self, ts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, σ) for a float timestep list: σ interpolated linearly in t, then Karras/exponential/beta."""
        base = train_sigmas(self.alphas_cumprod)
        sig = np.interp(ts, np.arange(0, len(base)), base)
        if self._kind:
            sig = converted_sigmas(self._kind, sig, n, self.config.get("sigma_min"), self.config.get("sigma_max"))
            ts = np.array([sigma_to_t(s, np.log(base)) for s in sig])
        return ts, sig

    def _check_custom(self, timesteps: Any) -> np.ndarray:
        if self._kind:
            refuse("timesteps", f"cannot be combined with use_{self._kind}_sigmas (it defines its own list)")
        ts = np.array(timesteps, dtype=np.float32)
        if ts.ndim != 1 or len(ts) < 1 or not (np.diff(ts) < 0).all():
            refuse("timesteps", "must be a strictly decreasing list of numbers")
        return ts

    def _store(self, ts: np.ndarray, sig: np.ndarray, device: Any) -> None:
        self.sigmas = torch.from_numpy(np.asarray(sig, dtype=np.float32))
        self.timesteps = torch.from_numpy(np.asarray(ts).astype(np.float32)).to(device=device)
        self._step_index = self._begin_index = None
        s64 = self.sigmas.double().tolist()
        self._s = s64  # Python floats: no tensor indexing or host reads per step
        self._x0w = [self._weights(s) for s in s64]
        self._in = [1.0 / math.sqrt(s * s + 1.0) for s in s64]

    def _weights(self, s: float) -> tuple[float, float]:
        """(k1, k2) with x̂0 = k1 y + k2 out at EDM σ = s (x = α y on the VP path)."""
        if self.config.prediction_type == "sample" or s == 0.0:
            return 0.0, 1.0
        a, sv = vp_pair(s)
        k1, k2 = x0_weights(self.config.prediction_type, a, sv)
        return k1 * a, k2

    def _x0(self, out: torch.Tensor, y: torch.Tensor, i: int) -> torch.Tensor:
        k1, k2 = self._x0w[i]
        x0 = out if (k1 == 0.0 and k2 == 1.0) else torch.add(y * k1, out, alpha=k2)
        if self.own("clip_sample"):
            r = float(self.config.clip_sample_range)
            x0 = x0.clamp(-r, r)
        return x0

    def _check_timestep_type(self, timestep: Any) -> None:
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise UsageError(f"{type(self).__name__}.step takes one of scheduler.timesteps, not an integer index")

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """x = y/sqrt(σ² + 1): the network's input for the sample in EDM variables."""
        if self._step_index is None:
            self._init_step_index(timestep)
        self.is_scale_input_called = True
        if self.num_inference_steps is None:  # before set_timesteps: the training list
            sigma = self.sigmas[self._step_index]
            return sample / ((sigma**2 + 1) ** 0.5)
        return sample * self._in[self._step_index]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
                  ) -> torch.Tensor:
        """x0 + σ ε at the list entries of `timesteps` (the begin index once a pipeline set it)."""
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        sched = self.timesteps.to(original_samples.device)
        timesteps = timesteps.to(original_samples.device)
        if self._begin_index is None:
            idx = [self.index_for_timestep(t, sched) for t in timesteps]
        elif self._step_index is not None:
            idx = [self._step_index] * timesteps.shape[0]
        else:
            idx = [self._begin_index] * timesteps.shape[0]
        sigma = sigmas[idx].flatten().reshape(-1, *([1] * (original_samples.ndim - 1)))
        return original_samples + noise * sigma


    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v target sqrt(ᾱ) ε − sqrt(1 − ᾱ) x_0 at each timestep's level, ᾱ = 1/(1 + σ²) (diffusers indexes
        its ᾱ table by the list position instead)."""
        sched = self.timesteps.to(sample.device)
        sig = self.sigmas.double()[[self.index_for_timestep(t, sched) for t in timesteps.to(sample.device)]]
        abar = (1.0 / (1.0 + sig**2)).to(sample.dtype).reshape(-1, *([1] * (sample.ndim - 1)))
        return abar**0.5 * noise - (1 - abar) ** 0.5 * sample


class EulerDiscreteScheduler(_SigmaFamily):
    """Euler on the probability-flow ODE (Karras Alg. 2 with churn γ, EDM variables)."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ) -> None:
        check_choice("interpolation_type", interpolation_type, ("linear", "log_linear"))
        check_choice("timestep_type", timestep_type, ("discrete", "continuous"))
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        self._setup_sigmas()
        if self._continuous():
            self.timesteps = torch.tensor([0.25 * math.log(s) for s in self.sigmas[:-1].tolist()])

    def _continuous(self) -> bool:
        return self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[float] | None = None, sigmas: list[float] | None = None) -> None:
        """diffusers' σ list for n steps, given timesteps, or given σ (the last the final level)."""
        given = [v for v in (num_inference_steps, timesteps, sigmas) if v is not None]
        if len(given) != 1:
            raise UsageError("set_timesteps: pass exactly one of num_inference_steps, timesteps or sigmas")
        base = train_sigmas(self.alphas_cumprod)
        if sigmas is not None:
            sig = np.array(sigmas).astype(np.float32)
            if sig.ndim != 1 or len(sig) < 2:
                refuse("sigmas", "must be a list of at least two numbers (the last is the final level)")
            ts = np.array([sigma_to_t(s, np.log(base)) for s in sig[:-1]])
            self.num_inference_steps = len(sig) - 1
        else:
            if timesteps is not None:
                if self._continuous():
                    refuse("timesteps", "cannot be given with timestep_type='continuous' and v_prediction")
                ts = self._check_custom(timesteps)
                n = len(ts)
            else:
                n = num_inference_steps
                ts = self._spaced(n)
            self.num_inference_steps = n
            if self.config.interpolation_type == "log_linear":
                sig = torch.linspace(np.log(base[-1]), np.log(base[0]), n + 1).exp().numpy()
                if self._kind:
                    sig = converted_sigmas(self._kind, sig, n, self.config.sigma_min, self.config.sigma_max)
                    ts = np.array([sigma_to_t(s, np.log(base)) for s in sig])
            else:
                ts, sig = self._from_timesteps(ts, n)
            last = float(base[0]) if self.config.final_sigmas_type == "sigma_min" else 0.0
            sig = np.concatenate([sig, [last]]).astype(np.float32)
        self._store(ts, sig, device)
        if self._continuous():
            self.timesteps = torch.tensor([0.25 * math.log(s) for s in self.sigmas[:-1].tolist()]).to(device)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, return_dict: bool = True
             ) -> EulerDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One Euler step; with s_churn > 0 the level is first raised to σ̂ = (1 + γ) σ with fresh noise."""
        self._check_timestep_type(timestep)
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        y = sample.to(torch.float32)
        sigma = self._s[i]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            z = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                             generator=generator)
            y = y + z * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        if self.config.prediction_type == "epsilon":  # ε̂ at the raised level: y' = y + (σ' − σ̂) ε̂
            x0 = torch.add(y, model_output, alpha=-sigma_hat)
            prev = torch.add(y, model_output, alpha=self._s[i + 1] - sigma_hat)
        else:
            x0 = self._x0(model_output, y, i)
            prev = torch.add(y, torch.sub(y, x0), alpha=(self._s[i + 1] - sigma_hat) / sigma_hat)
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return prev, x0
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)


class EulerAncestralDiscreteScheduler(_SigmaFamily):
    """Euler with ancestral noise (k-diffusion's sample_euler_ancestral, η = 1)."""

    _predictions = ("epsilon", "v_prediction")

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._setup_sigmas()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        self.num_inference_steps = num_inference_steps
        ts, sig = self._from_timesteps(self._spaced(num_inference_steps), num_inference_steps)
        self._store(ts, np.concatenate([sig, [0.0]]).astype(np.float32), device)
        s = self.sigmas.double().tolist()
        self._split = [ancestral_split(s[i], s[i + 1]) for i in range(len(s) - 1)]

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True
             ) -> EulerDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Euler to σ_down, then noise of std σ_up."""
        self._check_timestep_type(timestep)
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        y = sample.to(torch.float32)
        x0 = self._x0(model_output, y, i)
        sigma = self._s[i]
        down, up = self._split[i]
        prev = torch.add(y, torch.sub(y, x0), alpha=(down - sigma) / sigma)
        z = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator)
        prev = prev.add_(z, alpha=up).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev, x0
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)


class HeunDiscreteScheduler(_SigmaFamily):
    """Heun's second-order method (Karras Alg. 1): each level but the first appears twice in `timesteps`; the
    second call corrects the Euler step with the slope at its end. The last step onto σ = 0 is Euler."""

    order = 2

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._setup_sigmas()
        self._first: tuple[torch.Tensor, torch.Tensor, float] | None = None

    @property
    def state_in_first_order(self) -> bool:
        return self._first is None

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      num_train_timesteps: int | None = None, timesteps: list[float] | None = None) -> None:
        if (num_inference_steps is None) == (timesteps is None):
            raise UsageError("set_timesteps: pass exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            ts = self._check_custom(timesteps)
        else:
            ts = self._spaced(num_inference_steps, num_train_timesteps)
        n = len(ts)
        self.num_inference_steps = n
        ts, sig = self._from_timesteps(ts, n)
        t, sig = two_stage_lists(torch.from_numpy(np.asarray(ts).astype(np.float32)),
                                 torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32)))
        self._store(t.numpy(), sig.numpy(), device)
        self._first = None

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             return_dict: bool = True) -> EulerDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """First call of a level: the Euler step (kept); second: Heun's average slope from the kept sample."""
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        x0 = self._x0(model_output, sample, i)
        if self._first is None:
            sigma, sigma_next = self._s[i], self._s[i + 1]
            d = torch.sub(sample, x0).div_(sigma)
            self._first = (sample, d, sigma_next - sigma)
            prev = torch.add(sample, d, alpha=sigma_next - sigma)
        else:
            y0, d0, dt = self._first
            d = torch.sub(sample, x0).div_(self._s[i])
            prev = torch.add(y0, d0.add_(d), alpha=0.5 * dt)
            self._first = None
        self._step_index += 1
        if not return_dict:
            return prev, x0
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)


class _BrownianNoise:
    """Normalised Brownian increments W(σ, σ')/sqrt|σ' − σ| from one torchsde Brownian interval per seed, built as
    diffusers' (k-diffusion's) BrownianTreeNoiseSampler builds them, so the same seed gives the same bits."""

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seed: int | list[int] | None) -> None:
        try:
            import torchsde
        except ImportError:
            raise UsageError("DPMSolverSDEScheduler draws Brownian-tree noise with torchsde: "
                             "pip install 'ddim[sde]'") from None
        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()
        w0 = torch.zeros_like(x)
        self.batched = isinstance(seed, list | tuple)
        if self.batched:
            if len(seed) != x.shape[0]:
                refuse("noise_sampler_seed", f"a list needs one seed per sample ({x.shape[0]}), got {len(seed)}")
            w0 = w0[0]
        seeds = list(seed) if self.batched else [seed]
        self.trees = [torchsde.BrownianInterval(t0=t0, t1=t1, size=w0.shape, dtype=w0.dtype, device=w0.device,
                                                entropy=s, tol=1e-6, pool_size=24, halfway_tree=True)
                      for s in seeds]

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        with warnings.catch_warnings():  # torchsde notes float32 query points one ulp outside its interval
            warnings.simplefilter("ignore", UserWarning)
            w = torch.stack([tree(lo, hi) for tree in self.trees]) * sign
        w = w if self.batched else w[0]
        return w / (b - a).abs().sqrt()


class DPMSolverSDEScheduler(_SigmaFamily):
    """DPM-Solver++(2S) SDE (k-diffusion's sample_dpmpp_sde, r = 1/2): each step an ancestral DDIM (η = 0)
    step to the log-σ midpoint with Brownian noise, then one from the start with the midpoint's x̂0; the noise is
    a torchsde Brownian tree seeded by `noise_sampler_seed` (the `ddim[sde]` extra)."""

    order = 2
    _predictions = ("epsilon", "v_prediction")
    _list_dtype = np.float64

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        noise_sampler_seed: int | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._setup_sigmas()
        self.noise_sampler: _BrownianNoise | None = None
        self.sample: torch.Tensor | None = None
        self.mid_point_sigma: float | None = None

    @property
    def state_in_first_order(self) -> bool:
        return self.sample is None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      num_train_timesteps: int | None = None) -> None:
        """diffusers' list: each level but the first twice, the second time at the log-σ midpoint's timestep."""
        n = num_inference_steps
        self.num_inference_steps = n
        ts, sig = self._from_timesteps(self._spaced(n, num_train_timesteps), n)
        log_sigmas = np.log(train_sigmas(self.alphas_cumprod))
        lam = -np.log(sig)
        mid = np.array([sigma_to_t(s, log_sigmas) for s in np.exp(-(lam[:-1] + np.diff(lam) * 0.5))])
        t, s32 = two_stage_lists(torch.from_numpy(np.asarray(ts, dtype=np.float64)),
                                 torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32)))
        t[1::2] = torch.from_numpy(mid)
        self._store(t.numpy(), s32.numpy(), device)
        self.timesteps = t.to(device=device)  # float64, as diffusers keeps it
        self.sample, self.mid_point_sigma, self.noise_sampler = None, None, None

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        if self._step_index is None:
            self._init_step_index(timestep)
        s = self._s[self._step_index] if self.state_in_first_order else self.mid_point_sigma
        return sample / ((s * s + 1) ** 0.5)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             return_dict: bool = True, s_noise: float = 1.0
             ) -> EulerDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        if self.noise_sampler is None:
            pos = [s for s in self._s if s > 0]
            self.noise_sampler = _BrownianNoise(sample, min(pos), max(pos), self.config.noise_sampler_seed)
        i, first = self._step_index, self.state_in_first_order
        s_t, s_n = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        # the levels in float32 tensor arithmetic, as diffusers queries its Brownian tree: a Brownian path is
        # rough, so a query point one float32 ulp away gives a visibly different increment
        lam, lam_n = -s_t.log(), -s_n.log()
        mid_t = (-(lam + (lam_n - lam) * 0.5)).exp()
        sigma, sigma_next, mid = float(s_t), float(s_n), float(mid_t)
        at = sigma if first else mid
        a, sv = vp_pair(at)
        k1, k2 = x0_weights(self.config.prediction_type, a, sv)
        x0 = torch.add(sample * (k1 * a), model_output, alpha=k2)
        if sigma_next == 0:
            prev = torch.add(sample, torch.sub(sample, x0), alpha=-1.0)  # Euler onto σ = 0: x̂0
        else:
            start = sample if first else self.sample
            s_from = (-lam).exp()
            s_to = (-(lam + (lam_n - lam) * 0.5)).exp() if first else (-lam_n).exp()
            down, up = ancestral_split(float(s_from), float(s_to))
            prev = torch.add(start * (down / float(s_from)), x0, alpha=1.0 - down / float(s_from))
            prev = prev + self.noise_sampler(s_from, s_to) * (s_noise * up)
            self.sample, self.mid_point_sigma = (start, float(s_to)) if first else (None, None)
        self._step_index += 1
        if not return_dict:
            return prev, x0
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
