"""Drop-in DPM-Solver (multistep, all four algorithms) and UniPC schedulers on the core's λ-space coefficients
(`core.samplers.dpmpp.dpm_solver_coefficients`, `core.samplers.unipc`).

Both build diffusers' σ list for the config, turn it into `Levels` (α, σ, λ per entry, float64), take every
step's coefficients from the core at `set_timesteps`, and step as a linear combination of the sample and the
kept model outputs. Orders warm up from the first step taken (so a mid-list start works) as diffusers'.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ...core.errors import UsageError
from ...core.path import FlowShift, Levels
from ...core.prediction import dynamic_threshold
from ...core.samplers.dpmpp import DPM_ALGORITHMS, dpm_singlestep_coefficients, dpm_solver_coefficients
from ...core.samplers.unipc import flatten_terms, unipc_terms
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
    vp_pair,
    x0_weights,
)

PREDICTIONS = ("epsilon", "sample", "v_prediction", "flow_prediction")


class _LambdaMultistep(DropIn):
    """σ list, levels and model-output conversion shared by the DPM-Solver and UniPC drop-ins."""

    _round_karras = False  # the singlestep solver rounds Karras timesteps for every β schedule

    def _setup_common(self, solver_order: int, time_shifts: tuple[str, ...] = ("exponential",)) -> None:
        cfg = self.config
        check_choice("prediction_type", cfg.prediction_type, PREDICTIONS)
        if cfg.prediction_type == "flow_prediction" and not cfg.use_flow_sigmas:
            refuse("prediction_type", "flow_prediction needs use_flow_sigmas=True (the flow path)")
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            refuse("solver_order", f"must be 1, 2 or 3, got {solver_order!r}")
        check_choice("time_shift_type", cfg.time_shift_type, time_shifts)
        if cfg.final_sigmas_type not in ("zero", "sigma_min"):
            refuse("final_sigmas_type", f"must be 'zero' or 'sigma_min', got {cfg.final_sigmas_type!r}")
        if not 0.0 <= float(cfg.dynamic_thresholding_ratio) <= 1.0:
            refuse("dynamic_thresholding_ratio", "must lie in [0, 1]")
        self._kind = sigma_kind(self.own_config())
        self.betas, self.alphas, self.alphas_cumprod = diffusers_tables(self.own_config(), zero_snr_floor=True)
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = torch.from_numpy(train_sigmas(self.alphas_cumprod))
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        T = cfg.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, T - 1, T, dtype=np.float32)[::-1].copy())
        self._flow_shift = float(cfg.flow_shift)
        self.model_outputs: list[torch.Tensor | None] = [None] * solver_order
        self.lower_order_nums = 0
        self._step_index = self._begin_index = None

    # ------------------------------------------------------------------------------------ the list
    def _sigma_list(self, n: int | None, timesteps: Any, mu: float | None, sigmas: Any = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, σ with the final entry appended) exactly as diffusers builds them for this config."""
        cfg = self.config
        if mu is not None:
            if not (cfg.use_dynamic_shifting and cfg.time_shift_type == "exponential"):
                refuse("mu", "needs use_dynamic_shifting=True (and time_shift_type='exponential')")
            self._flow_shift = float(np.exp(mu))
        given = [k for k, v in (("num_inference_steps", n), ("timesteps", timesteps), ("sigmas", sigmas))
                 if v is not None]
        if len(given) != 1:
            raise UsageError("set_timesteps: pass exactly one of num_inference_steps, timesteps or sigmas")
        base = train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(base)
        flow = cfg.use_flow_sigmas
        if sigmas is not None:
            sig = np.asarray(sigmas, dtype=np.float64)
            if sig.ndim != 1 or len(sig) < 2:
                refuse("sigmas", "must be a list of at least two numbers (the last is the final level)")
            n = len(sig) - 1
            ts = sig[:-1] * cfg.num_train_timesteps if flow else np.array([sigma_to_t(s, log_sigmas) for s in sig[:-1]])
            return ts, sig.astype(np.float32)
        if timesteps is not None:
            if self._kind or self.own("use_lu_lambdas", False) or flow:
                refuse("timesteps", "cannot be combined with use_karras/exponential/beta_sigmas, use_lu_lambdas "
                                    "or use_flow_sigmas (they define their own list)")
            ts = np.array(timesteps).astype(np.int64)
            T = cfg.num_train_timesteps
            if ts.ndim != 1 or len(ts) < 1 or not (np.diff(ts) < 0).all() or ts.min() < 0 or ts.max() >= T:
                refuse("timesteps", f"must be a strictly decreasing list of integers in 0..{T - 1}")
            n = len(ts)
            sig = np.interp(ts, np.arange(0, len(base)), base)
        else:
            clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
            ts = spaced(n, self.own("timestep_spacing", "linspace"), cfg.num_train_timesteps,
                        self.own("steps_offset", 0), points=cfg.num_train_timesteps - clipped)
            sig = np.interp(ts, np.arange(0, len(base)), base)
            if self._kind:
                sig = converted_sigmas(self._kind, np.flip(base).copy(), n, cfg.get("sigma_min"), cfg.get("sigma_max"))
                ts = np.array([sigma_to_t(s, log_sigmas) for s in sig])
                if self._kind == "karras" and (cfg.beta_schedule != "squaredcos_cap_v2" or self._round_karras):
                    ts = ts.round()
            elif self.own("use_lu_lambdas", False):
                lam = np.flip(log_sigmas.copy())
                lam = lam[0] + np.linspace(0, 1, n) * (lam[-1] - lam[0])
                sig = np.exp(lam)
                ts = np.array([sigma_to_t(s, log_sigmas) for s in sig])
                if cfg.beta_schedule != "squaredcos_cap_v2":
                    ts = ts.round()
            elif flow:
                s = 1.0 - np.linspace(1, 1 / cfg.num_train_timesteps, n + 1)
                k = self._flow_shift
                sig = np.flip(k * s / (1 + (k - 1) * s))[:-1].copy()
                ts = (sig * cfg.num_train_timesteps).copy()
        last = 0.0
        if cfg.final_sigmas_type == "sigma_min":
            last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        return ts, np.concatenate([sig, [last]]).astype(np.float32)

    def _pair(self, sigma: float) -> tuple[float, float]:
        return (1.0 - sigma, sigma) if self.config.use_flow_sigmas else vp_pair(sigma)

    def _install(self, ts: np.ndarray, sig: np.ndarray, device: Any) -> Levels:
        """Store the list diffusers-style and return its float64 levels for the core's coefficients."""
        self.sigmas = torch.from_numpy(sig)
        self.timesteps = torch.from_numpy(np.asarray(ts)).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(ts)
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index = self._begin_index = None
        pairs = [self._pair(float(s)) for s in sig.tolist()]
        self._x0w = [x0_weights(self.config.prediction_type, a, s) for a, s in pairs[:-1]]
        return Levels.from_pairs(self.timesteps.tolist(), pairs)

    def _missing_timestep(self, timestep: Any) -> int:
        return len(self.timesteps) - 1  # diffusers' multistep schedulers take the last entry

    # ----------------------------------------------------------------------------- model outputs
    def _data(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x̂0 from the network output at the current step (thresholded as configured)."""
        if self.own("variance_type") in ("learned", "learned_range"):
            model_output = model_output[:, : sample.shape[1]]
        k1, k2 = self._x0w[self._step_index]
        x0 = model_output if (k1 == 0.0 and k2 == 1.0) else torch.add(sample * k1, model_output, alpha=k2)
        if self.config.thresholding:
            x0 = dynamic_threshold(x0, float(self.config.dynamic_thresholding_ratio),
                                   float(self.config.sample_max_value))
        return x0

    def scale_model_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
                  ) -> torch.Tensor:
        """α x0 + σ ε at the list entries of `timesteps` (the begin index once a pipeline set it)."""
        sched = self.timesteps.to(original_samples.device)
        if self._begin_index is None:
            idx = [self.index_for_timestep(t, sched) for t in timesteps.to(original_samples.device)]
        else:
            idx = [self._step_index if self._step_index is not None else self._begin_index] * timesteps.shape[0]
        pairs = [self._pair(float(self.sigmas[i])) for i in idx]
        shape = (-1, *([1] * (original_samples.ndim - 1)))
        a = torch.tensor([p[0] for p in pairs], dtype=original_samples.dtype, device=original_samples.device)
        s = torch.tensor([p[1] for p in pairs], dtype=original_samples.dtype, device=original_samples.device)
        return a.reshape(shape) * original_samples + s.reshape(shape) * noise

    def _check_variance_type(self) -> None:
        if self.config.variance_type not in (None, "learned", "learned_range"):
            refuse("variance_type", f"must be None, 'learned' or 'learned_range', got {self.config.variance_type!r}")


class DPMSolverMultistepScheduler(_LambdaMultistep):
    """DPM-Solver / DPM-Solver++ (Lu et al. 2022a, b) multistep, ODE or SDE, midpoint or Heun second order,
    on the core's coefficients. Third order uses the Taylor-correct D2 weight (twice diffusers')."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        self._init_dpm(solver_order, algorithm_type, solver_type, final_sigmas_type, use_flow_sigmas,
                       prediction_type)

    def _init_dpm(self, solver_order: int, algorithm_type: str, solver_type: str, final_sigmas_type: str,
                  use_flow_sigmas: bool, prediction_type: str) -> None:
        """The DPM-Solver key checks (and diffusers' DEIS / UniPC config mappings), then the shared set-up."""
        if algorithm_type == "deis":  # a DEIS config switched to DPM-Solver, as diffusers
            self.register_to_config(algorithm_type="dpmsolver++")
        if solver_type in ("logrho", "bh1", "bh2"):  # DEIS / UniPC configs
            self.register_to_config(solver_type="midpoint")
        check_choice("algorithm_type", self.config.algorithm_type, DPM_ALGORITHMS)
        check_choice("solver_type", self.config.solver_type, ("midpoint", "heun"))
        if self.config.algorithm_type in ("dpmsolver", "sde-dpmsolver") and final_sigmas_type == "zero":
            refuse("final_sigmas_type", f"'zero' is not defined for algorithm_type {algorithm_type!r} (ε at σ = 0); "
                                        "use 'sigma_min'")
        if self.config.algorithm_type == "sde-dpmsolver" and solver_order == 3:
            refuse("solver_order", "third order is not defined for sde-dpmsolver")
        if use_flow_sigmas and prediction_type != "flow_prediction":
            refuse("use_flow_sigmas", "needs prediction_type='flow_prediction'")
        self._setup_common(solver_order)
        self._check_variance_type()
        self._coef: list[list[tuple[float, list[float], float]]] = []

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      mu: float | None = None, timesteps: list[int] | None = None) -> None:
        """diffusers' list for the config (or the given integer timesteps); every step's coefficients at every
        order computed once here, in float64."""
        ts, sig = self._sigma_list(num_inference_steps, timesteps, mu)
        lv = self._install(ts, sig, device)
        alg, st = self.config.algorithm_type, self.config.solver_type
        n = len(lv)
        self._coef = [[dpm_solver_coefficients(lv, i, min(o, i + 1), alg, st) for i in range(n)]
                      for o in range(1, self.config.solver_order + 1)]

    def _order(self, i: int) -> int:
        """diffusers' order for step i: warm-up from the first step taken, first order at the end onto σ = 0
        (or with euler_at_final / fewer than 15 steps), at most second order one step before."""
        cfg, n = self.config, len(self.timesteps)
        o = min(cfg.solver_order, self.lower_order_nums + 1)
        if i == n - 1 and (cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero"):
            o = 1
        elif i == n - 2 and cfg.lower_order_final and n < 15:
            o = min(o, 2)
        return o

    def convert_model_output(self, model_output: torch.Tensor, *args: Any, sample: torch.Tensor | None = None,
                             **kwargs: Any) -> torch.Tensor:
        """What the algorithm integrates: x̂0 (dpmsolver++, sde-dpmsolver++) or ε̂ (dpmsolver, sde-dpmsolver)."""
        if sample is None:
            raise UsageError("convert_model_output: sample is required")
        x0 = self._data(model_output, sample)
        if self.config.algorithm_type.endswith("++"):
            return x0
        a, s = self._pair(float(self.sigmas[self._step_index]))
        if self.config.prediction_type == "epsilon" and not self.config.thresholding:
            return model_output[:, : sample.shape[1]] if self.own("variance_type") else model_output
        return torch.add(sample, x0, alpha=-a).div_(s)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True) -> SchedulerOutput | tuple[torch.Tensor]:
        """One step from the current list entry to the next; any entry may be the first (img2img)."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        o = self._order(i)
        m = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = [*self.model_outputs[1:], m]
        x = sample.to(torch.float32)
        A, c, g = self._coef[o - 1][i]
        out = x * A
        for k in range(o):
            if c[k] != 0.0:
                out.add_(self.model_outputs[-1 - k], alpha=c[k])
        if self.config.algorithm_type.startswith("sde"):
            z = (variance_noise.to(device=model_output.device, dtype=torch.float32) if variance_noise is not None
                 else randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                   dtype=torch.float32))
            if g > 0.0:
                out.add_(z, alpha=g)
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        prev = out.to(model_output.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)


class DPMSolverSinglestepScheduler(DPMSolverMultistepScheduler):
    """Singlestep DPM-Solver (Lu et al. 2022a): the list is cut into groups of 1, 2 or 3 levels (diffusers'
    `get_order_list`); each group is one higher-order step from its first level, whose later levels serve as the
    intermediate points. Coefficients from the core's `dpm_singlestep_coefficients`."""

    _round_karras = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        if algorithm_type == "sde-dpmsolver":
            refuse("algorithm_type", "'sde-dpmsolver' is not defined for the singlestep solver (diffusers' neither)")
        self._init_dpm(solver_order, algorithm_type, solver_type, final_sigmas_type, use_flow_sigmas,
                       prediction_type)
        self.sample: torch.Tensor | None = None
        self.order_list: list[int] = []

    def get_order_list(self, num_inference_steps: int) -> list[int]:
        """Orders of the steps: repeating groups [1, 2, 3] (or [1, 2]), ending lower with lower_order_final."""
        n, order = num_inference_steps, self.config.solver_order
        if self.config.lower_order_final:
            if order == 3:
                orders = [1, 2, 3] * (n // 3 - 1) + [1, 2] + [1] if n % 3 == 0 else \
                    [1, 2, 3] * (n // 3) + ([1] if n % 3 == 1 else [1, 2])
            elif order == 2:
                orders = [1, 2] * (n // 2 - 1) + [1, 1] if n % 2 == 0 else [1, 2] * (n // 2) + [1]
            else:
                orders = [1] * n
        else:
            orders = {3: [1, 2, 3] * (n // 3), 2: [1, 2] * (n // 2), 1: [1] * n}[order]
        if self.config.final_sigmas_type == "zero":
            orders[-1] = 1
        return orders

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      mu: float | None = None, timesteps: list[int] | None = None) -> None:
        ts, sig = self._sigma_list(num_inference_steps, timesteps, mu)
        lv = self._install(ts, sig, device)
        n = len(lv)
        cfg = self.config
        if not cfg.lower_order_final and (n % cfg.solver_order != 0 or cfg.final_sigmas_type == "zero"):
            self.register_to_config(lower_order_final=True)  # as diffusers (it warns)
        self.order_list = self.get_order_list(n)
        alg, st = cfg.algorithm_type, cfg.solver_type
        self._coef = [[dpm_singlestep_coefficients(lv, i, min(o, i + 1), alg, st) for i in range(n)]
                      for o in range(1, cfg.solver_order + 1)]
        self.sample = None

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True
             ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One stage: first order from a group's first level (kept), higher order from it at its later levels."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        m = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = [*self.model_outputs[1:], m]
        z = None
        if self.config.algorithm_type == "sde-dpmsolver++":
            z = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
        o = self.order_list[i]
        while self.model_outputs[-o] is None:
            o -= 1
        if o == 1:
            self.sample = sample
        A, c, g = self._coef[o - 1][i]
        out = self.sample * A
        for k in range(o):
            if c[k] != 0.0:
                out = out + self.model_outputs[-1 - k] * c[k]
        if z is not None and g > 0.0:
            out = out + z * g
        self._step_index += 1
        return SchedulerOutput(prev_sample=out) if return_dict else (out,)


class UniPCMultistepScheduler(_LambdaMultistep):
    """UniPC (Zhao et al. 2023): the UniP-p predictor and the UniC corrector (re-using the next call, no extra
    NFE), bh1/bh2, data or noise prediction, on the core's `unipc_terms`."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] = [],  # noqa: B006 (diffusers' signature)
        solver_p: Any = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
    ) -> None:
        if solver_type in ("midpoint", "heun", "logrho"):  # a DPM-Solver / DEIS config switched to UniPC
            self.register_to_config(solver_type="bh2")
        check_choice("solver_type", self.config.solver_type, ("bh1", "bh2"))
        if shift_terminal is not None and not use_flow_sigmas:
            refuse("shift_terminal", "is only defined with use_flow_sigmas=True")
        if not predict_x0 and final_sigmas_type == "zero":
            refuse("predict_x0", "False (noise prediction) has no step onto σ = 0; use final_sigmas_type='sigma_min'")
        if solver_p is not None and not hasattr(solver_p, "step"):
            refuse("solver_p", "must be a scheduler (UniC then corrects its steps)")
        bad = [i for i in disable_corrector if isinstance(i, bool) or not isinstance(i, int)]
        if bad:
            refuse("disable_corrector", f"must be a list of step indices, got {disable_corrector!r}")
        self._setup_common(solver_order, ("exponential", "linear"))
        self.predict_x0 = predict_x0
        self.disable_corrector = list(disable_corrector)
        self.solver_p = solver_p
        self.timestep_list: list[Any] = [None] * solver_order
        self.last_sample: torch.Tensor | None = None
        self.this_order = 1

    def _unipc_list(self, n: int | None, sigmas: Any, mu: float | None) -> tuple[np.ndarray, np.ndarray]:
        """diffusers' UniPC list: like DPM-Solver's, but the converted schedules end on their own last σ under
        final_sigmas_type='sigma_min', and flow σ take `sigmas`, a dynamic shift and shift_terminal."""
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            refuse("mu", "must be given when use_dynamic_shifting=True")
        if sigmas is not None:
            if not cfg.use_flow_sigmas:
                refuse("sigmas", "can only be given with use_flow_sigmas=True")
            n = len(sigmas)
        if n is None:
            raise UsageError("set_timesteps: pass num_inference_steps or sigmas")
        ts = spaced(n, cfg.timestep_spacing, cfg.num_train_timesteps, cfg.steps_offset, cfg.num_train_timesteps)
        base = train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(base)
        zero = cfg.final_sigmas_type == "zero"
        if self._kind:
            sig = converted_sigmas(self._kind, np.flip(base).copy(), n, cfg.sigma_min, cfg.sigma_max)
            if self._kind == "karras" and cfg.use_flow_sigmas:
                sig = sig / (sig + 1)
                ts = (sig * cfg.num_train_timesteps).copy()
            else:
                ts = np.array([sigma_to_t(x, log_sigmas) for x in sig])
                if self._kind == "karras":
                    ts = ts.round()
            last = 0.0 if zero else sig[-1]
        elif cfg.use_flow_sigmas:
            sig = np.asarray(sigmas, dtype=np.float64) if sigmas is not None else \
                np.linspace(1, 1 / cfg.num_train_timesteps, n + 1)[:-1]
            fs = FlowShift(float(cfg.flow_shift), bool(cfg.use_dynamic_shifting), None, cfg.shift_terminal,
                           cfg.time_shift_type, cfg.num_train_timesteps)
            sig = fs.shift_list(sig, mu, f32=False)
            if abs(sig[0] - 1) < 1e-6:
                sig[0] -= 1e-6
            ts = (sig * cfg.num_train_timesteps).copy()
            last = 0.0 if zero else sig[-1]
        else:
            sig = np.interp(ts, np.arange(0, len(base)), base)
            last = 0.0 if zero else float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        return ts, np.concatenate([sig, [last]]).astype(np.float32)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: list[float] | None = None, mu: float | None = None) -> None:
        """diffusers' list; predictor and corrector coefficients of every step and order computed once here."""
        ts, sig = self._unipc_list(num_inference_steps, sigmas, mu)
        lv = self._install(ts, sig, device)
        n, variant = len(lv), self.config.solver_type
        self._pred = [[flatten_terms(unipc_terms(lv, i, min(o, i + 1), variant, False, self.predict_x0))
                       for i in range(n)] for o in range(1, self.config.solver_order + 1)]
        self._corr = [[flatten_terms(unipc_terms(lv, i, min(o, i + 1), variant, True, self.predict_x0))
                       for i in range(n)] for o in range(1, self.config.solver_order + 1)]
        self.timestep_list = [None] * self.config.solver_order
        self.last_sample = None
        if self.solver_p is not None:
            self.solver_p.set_timesteps(self.num_inference_steps, device=device)

    def time_shift(self, mu: float, sigma: float, t: Any) -> Any:
        """The resolution shift of flow σ (core.path.FlowShift): e^μ/(e^μ + (1/t − 1)^σ), or linear in μ."""
        if self.config.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
        return mu / (mu + (1 / t - 1) ** sigma)

    def convert_model_output(self, model_output: torch.Tensor, *args: Any, sample: torch.Tensor | None = None,
                             **kwargs: Any) -> torch.Tensor:
        """x̂0 (predict_x0) or ε̂ at the current step."""
        if sample is None:
            raise UsageError("convert_model_output: sample is required")
        x0 = self._data(model_output, sample)
        if self.predict_x0:
            return x0
        if self.config.prediction_type == "epsilon" and not self.config.thresholding:
            return model_output
        a, s = self._pair(float(self.sigmas[self._step_index]))
        return torch.add(sample, x0, alpha=-a).div_(s)

    @staticmethod
    def _combine(plan: tuple[float, list[tuple[float, int]], float], x: torch.Tensor, hist: list[torch.Tensor],
                 m_new: torch.Tensor | None) -> torch.Tensor:
        A, lin, cT = plan
        out = x * A
        for c, k in lin:
            out.add_(hist[-1 - k], alpha=c)
        if cT != 0.0 and m_new is not None:
            out.add_(m_new, alpha=cT)
        return out

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             return_dict: bool = True) -> SchedulerOutput | tuple[torch.Tensor]:
        """UniC on the step just taken (with this call's output), then UniP for the next one."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        m = self.convert_model_output(model_output, sample=sample)
        if i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None:
            sample = self._combine(self._corr[self.this_order - 1][i - 1], self.last_sample, self.model_outputs, m
                                   ).to(sample.dtype)
        self.model_outputs = [*self.model_outputs[1:], m]
        self.timestep_list = [*self.timestep_list[1:], timestep]
        o = min(self.config.solver_order, len(self.timesteps) - i) if self.config.lower_order_final \
            else self.config.solver_order
        self.this_order = min(o, self.lower_order_nums + 1)
        self.last_sample = sample
        if self.solver_p is not None:
            prev = self.solver_p.step(model_output, self.timestep_list[-1], sample).prev_sample
        else:
            prev = self._combine(self._pred[self.this_order - 1][i], sample, self.model_outputs, None
                                 ).to(sample.dtype)
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)
