"""Denoiser: one network call at timestep t → (ε̂, x̂0), whatever the network predicts.

It also counts network evaluations (NFE) and guards against bad output: a wrong shape raises at once
(a metadata check, no sync); NaN/inf is recorded per call on the device and checked once at the end of
a sampling run, naming the first bad step — so the guard adds no host sync per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .schedule import NoiseSchedule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class ModelOutputError(ValueError):
    """The network returned something unusable (wrong shape, NaN or inf)."""


class Denoiser:
    """Wraps `net(x, t)` (a tensor or an object with `.sample`) and its prediction type."""

    def __init__(
        self,
        net: Callable[..., Any],
        schedule: NoiseSchedule,
        prediction_type: str = "epsilon",
        clip_sample: float | None = None,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        sample_shape: tuple[int, ...] | None = None,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
        if clip_sample is not None and not (clip_sample > 0 and math.isfinite(clip_sample)):
            raise ValueError(f"clip_sample must be a positive number or None, got {clip_sample}")
        if not 0 < dynamic_thresholding_ratio <= 1:
            raise ValueError("dynamic_thresholding_ratio must lie in (0, 1]")
        self.net = net
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.thresholding = thresholding
        self.dynamic_thresholding_ratio = dynamic_thresholding_ratio
        self.sample_max_value = sample_max_value
        self.sample_shape = None if sample_shape is None else tuple(int(d) for d in sample_shape)
        self.nfe = 0
        self.last_nfe = 0
        self.early_exit_step: int | None = None
        abar = schedule.alphas_cumprod
        self._affine = [self._affine_for(a) for a in abar.tolist()]
        self._t_cache: dict[tuple[torch.device, int], torch.Tensor] = {}
        self._watch: list[torch.Tensor] = []
        self._watch_t: list[int] = []

    # ------------------------------------------------------------------------------------ guarding
    def begin(self, x: torch.Tensor) -> None:
        """Start a sampling run on x: check its shape, forget earlier NaN records."""
        if self.sample_shape is not None and tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"x has shape {tuple(x.shape)}; this model takes (N, "
                             f"{', '.join(map(str, self.sample_shape))})")
        self._watch = []
        self._watch_t = []

    def finish(self) -> None:
        """End a sampling run: one host sync to check every recorded model output for NaN/inf."""
        if not self._watch:
            return
        ok = torch.isfinite(torch.stack(self._watch))
        if not bool(ok.all()):
            first = int((~ok).nonzero()[0, 0])
            self._watch, ts = [], self._watch_t
            raise ModelOutputError(f"model output contains NaN or inf at network call {first + 1} "
                                   f"(sampling step {first}, timestep t={ts[first]})")
        self._watch = []
        self._watch_t = []

    # --------------------------------------------------------------------------------- evaluation
    def t_tensor(self, t: float, x: torch.Tensor) -> torch.Tensor:
        """The timestep as a (B,) tensor on x's device: a view into a cached (T, B) int64 table, or a
        float tensor for the fractional timesteps some solvers evaluate between grid points."""
        if not isinstance(t, int):
            return torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)
        key = (x.device, x.shape[0])
        table = self._t_cache.get(key)
        if table is None:
            table = torch.arange(self.schedule.T, dtype=torch.int64, device=x.device)[:, None].expand(-1, x.shape[0])
            self._t_cache = {key: table}
        return table[t]

    def _affine_for(self, abar: float) -> tuple[float, float, float, float]:
        """(k1, k2, k3, k4) with x̂0 = k1 x + k2 out and ε̂ = k3 x + k4 out for the raw output `out`.

        epsilon: x̂0 = (x - sqrt(1-ᾱ) ε)/sqrt(ᾱ) (DDIM eq. 9); sample: ε = (x - sqrt(ᾱ) x0)/sqrt(1-ᾱ);
        v (Salimans & Ho 2022): x̂0 = sqrt(ᾱ) x - sqrt(1-ᾱ) v, ε̂ = sqrt(1-ᾱ) x + sqrt(ᾱ) v.
        NaN marks an undefined entry (x̂0 of an epsilon model at ᾱ = 0).
        """
        sa, s1 = math.sqrt(abar), math.sqrt(max(1.0 - abar, 0.0))
        if self.prediction_type == "epsilon":
            return (1 / sa, -s1 / sa, 0.0, 1.0) if sa > 0 else (math.nan, math.nan, 0.0, 1.0)
        if self.prediction_type == "sample":
            return (0.0, 1.0, 1 / s1, -sa / s1) if s1 > 0 else (0.0, 1.0, 0.0, 0.0)
        return (sa, -s1, s1, sa)

    def coeffs(self, t: float) -> tuple[float, float, float, float]:
        """The affine coefficients at an integer (table) or fractional (interpolated) timestep."""
        if isinstance(t, int):
            return self._affine[t]
        return self._affine_for(self.schedule.alpha_bar_at(t))

    @property
    def is_affine(self) -> bool:
        """True when x̂0 and ε̂ are affine in (x, output): no clipping or thresholding."""
        return not self.thresholding and self.clip_sample is None

    def combine(self, t: int, a: float, b: float, c: float) -> tuple[float, float]:
        """(P, Q) with a·x + b·x̂0 + c·ε̂ = P·x + Q·out: a whole update in two tensor ops (affine case)."""
        k1, k2, k3, k4 = self.coeffs(t)
        if b != 0 and math.isnan(k1):
            self._undefined_x0(t)
        p = a + c * k3 + (b * k1 if b != 0 else 0.0)
        q = c * k4 + (b * k2 if b != 0 else 0.0)
        return p, q

    def _undefined_x0(self, t: int) -> None:
        raise ValueError(f"an epsilon-prediction model has no defined x̂0 at t={t} where ᾱ=0 "
                         "(zero terminal SNR); use v_prediction or a schedule with ᾱ > 0")

    def raw(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """One network call, shape-checked, NaN-recorded, counted."""
        try:
            out = self.net(x, self.t_tensor(t, x))
        except RuntimeError as e:  # shape/dtype mismatches inside the network
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelOutputError(f"the network failed on input of shape {tuple(x.shape)} "
                                   f"at timestep t={t}: {msg}") from e
        if not isinstance(out, torch.Tensor):
            out = getattr(out, "sample", out)
            if isinstance(out, tuple | list):
                out = out[0]
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelOutputError(f"model output at timestep t={t} has shape {got}, expected {tuple(x.shape)}")
        self.nfe += 1
        self._watch.append(out.sum())
        self._watch_t.append(t)
        return out

    def __call__(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̂, x̂0) at timestep t, with x̂0 clipped / thresholded as configured.

        ε̂ stays the model's own; samplers may re-derive it from the clipped x̂0 (use_clipped_model_output).
        """
        return self.split(x, t, self.raw(x, t))

    def split(self, x: torch.Tensor, t: int, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̂, x̂0) from a raw network output at timestep t (no network call)."""
        k1, k2, k3, k4 = self.coeffs(t)
        if math.isnan(k1):
            self._undefined_x0(t)
        x0 = out if (k1 == 0.0 and k2 == 1.0) else torch.add(x * k1, out, alpha=k2)
        eps = out if (k3 == 0.0 and k4 == 1.0) else torch.add(x * k3, out, alpha=k4)
        if not self.is_affine:
            x0 = self.clip(x0)
        return eps, x0

    def denoise(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """x̂0 only (one network call): skips ε̂ for solvers that work on the data prediction alone."""
        if not self.is_affine:
            return self(x, t)[1]
        out = self.raw(x, t)
        k1, k2, _, _ = self.coeffs(t)
        if math.isnan(k1):
            self._undefined_x0(t)
        return out if (k1 == 0.0 and k2 == 1.0) else torch.add(out * k2, x, alpha=k1)

    def x0_from_output(self, x: torch.Tensor, t: int, out: torch.Tensor) -> torch.Tensor:
        """x̂0 from a raw output (for callbacks on the fast path; clipping applied as configured)."""
        k1, k2, _, _ = self.coeffs(t)
        x0 = out if (k1 == 0.0 and k2 == 1.0) else torch.add(x * k1, out, alpha=k2)
        return x0 if self.is_affine else self.clip(x0)

    def eps_from_x0(self, x: torch.Tensor, t: float, x0: torch.Tensor) -> torch.Tensor:
        """ε = (x_t - sqrt(ᾱ) x0) / sqrt(1-ᾱ): the noise direction consistent with x0."""
        a = self.schedule.alpha_bar(t) if isinstance(t, int) else self.schedule.alpha_bar_at(t)
        if a >= 1.0:
            return torch.zeros_like(x)
        return torch.add(x, x0, alpha=-math.sqrt(a)).div_(math.sqrt(1 - a))

    def clip(self, x0: torch.Tensor) -> torch.Tensor:
        """Static clipping to [-c, c], or dynamic thresholding (Saharia et al. 2022) per sample."""
        if self.thresholding:
            flat = x0.reshape(x0.shape[0], -1)
            work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
            s = torch.quantile(work.abs(), self.dynamic_thresholding_ratio, dim=1)
            s = s.clamp(min=1.0, max=self.sample_max_value).unsqueeze(1)
            return (torch.maximum(torch.minimum(work, s), -s) / s).to(x0.dtype).reshape(x0.shape)
        c = self.clip_sample
        return x0.clamp(-c, c)

    @classmethod
    def from_diffusers_config(cls, net: Callable[..., Any], config: dict[str, Any]) -> Denoiser:
        """Denoiser with the schedule and prediction options of a diffusers scheduler config."""
        sched = NoiseSchedule.from_diffusers_config(config)
        clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample", False) else None
        return cls(net, sched, prediction_type=config.get("prediction_type", "epsilon"), clip_sample=clip,
                   thresholding=bool(config.get("thresholding", False)),
                   dynamic_thresholding_ratio=float(config.get("dynamic_thresholding_ratio", 0.995)),
                   sample_max_value=float(config.get("sample_max_value", 1.0)))
