"""Denoiser: the prediction interface. One network output at level t → (ε̂, x̂0), whatever the network predicts.

It does prediction maths only and holds no per-run state: counting network calls, the NaN check and early
exit belong to the run (`ddim.core.run`). For x_t = α x0 + σ ε (any path):
  epsilon:       x̂0 = (x − σ ε̂)/α                         (DDIM eq. 9)
  sample:        ε̂ = (x − α x̂0)/σ
  v_prediction:  v = α ε − σ x0, so x̂0 = (α x − σ v)/(α² + σ²), ε̂ = (σ x + α v)/(α² + σ²)  (Salimans & Ho 2022)
  flow_prediction: u = ε − x0 (the rectified-flow velocity; dx/dσ on the flow path α = 1 − σ),
                 so x̂0 = (x − σ u)/(α + σ), ε̂ = (x + α u)/(α + σ)   (Liu et al. 2023; Lipman et al. 2023)
Without clipping both are affine in (x, out): x̂0 = k1 x + k2 out, ε̂ = k3 x + k4 out, which samplers fold
into their own precomputed float64 coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .errors import ModelOutputError, UsageError
from .path import NoisePath

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
#: earlier names that keep working (run folders written before the rename say "flow")
PREDICTION_ALIASES = {"flow": "flow_prediction"}
Affine = tuple[float, float, float, float]


def affine_coefficients(prediction_type: str, alpha: float, sigma: float) -> Affine:
    """(k1, k2, k3, k4) with x̂0 = k1 x + k2 out and ε̂ = k3 x + k4 out; NaN marks an undefined x̂0
    (an epsilon model at α = 0)."""
    prediction_type = PREDICTION_ALIASES.get(prediction_type, prediction_type)
    if prediction_type == "epsilon":
        return (1 / alpha, -sigma / alpha, 0.0, 1.0) if alpha > 0 else (math.nan, math.nan, 0.0, 1.0)
    if prediction_type == "sample":
        return (0.0, 1.0, 1 / sigma, -alpha / sigma) if sigma > 0 else (0.0, 1.0, 0.0, 0.0)
    if prediction_type == "flow_prediction":
        n = alpha + sigma
        return (1 / n, -sigma / n, 1 / n, alpha / n)
    n = alpha * alpha + sigma * sigma
    return (alpha / n, -sigma / n, sigma / n, alpha / n)


def output_from(prediction_type: str, alpha: float, sigma: float, eps: torch.Tensor, x0: torch.Tensor
                ) -> torch.Tensor:
    """What a network of `prediction_type` outputs for a given (ε, x0) at level (α, σ): with
    `affine_coefficients` this converts among all four prediction types."""
    prediction_type = PREDICTION_ALIASES.get(prediction_type, prediction_type)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return alpha * eps - sigma * x0
    if prediction_type == "flow_prediction":
        return eps - x0
    raise UsageError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022): per sample, s = the `ratio` quantile of |x̂0|
    clamped to [1, max_value]; x̂0 is clipped to [−s, s] and divided by s (s = 1: plain clipping)."""
    flat = x0.reshape(x0.shape[0], -1)
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    s = torch.quantile(work.abs(), ratio, dim=1)
    s = s.clamp(min=1.0, max=max_value).unsqueeze(1)
    return (torch.maximum(torch.minimum(work, s), -s) / s).to(x0.dtype).reshape(x0.shape)


def _batched(v: Any, n: int) -> bool:
    return isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n


def fixed_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """fn over the rows of x in calls of exactly `chunk` rows (the last chunk padded), or in one call when
    chunk is None: the batch-invariant way to run any batched network (VAE, encoders)."""
    n = x.shape[0]
    if chunk is None or n == chunk:
        return fn(x)
    outs = [fn(_rows_padded(x, a, min(n, a + chunk), chunk))[: min(n, a + chunk) - a] for a in range(0, n, chunk)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def network_output(out: Any) -> Any:
    """The tensor a network call returned: itself, a diffusers output's `.sample`, or a tuple's first item."""
    if isinstance(out, torch.Tensor):
        return out
    out = getattr(out, "sample", out)
    return out[0] if isinstance(out, tuple | list) else out


def _rows_padded(v: torch.Tensor, a: int, b: int, c: int) -> torch.Tensor:
    """Rows a..b of v, padded to c rows by repeating the last one (the padding's outputs are dropped)."""
    part = v[a:b]
    if b - a == c:
        return part
    return torch.cat([part, part[-1:].expand(c - (b - a), *part.shape[1:])])


class Denoiser:
    """Wraps `net(x, t)` (a tensor or an object with `.sample`), its noise path and its prediction type."""

    def __init__(
        self,
        net: Callable[..., Any] | None,
        path: NoisePath,
        prediction_type: str = "epsilon",
        clip_sample: float | None = None,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        sample_shape: tuple[int, ...] | None = None,
        conditioning: Any = None,
        net_dtype: torch.dtype | None = None,
        chunk: int | None = None,
    ) -> None:
        if not isinstance(path, NoisePath):
            raise UsageError(f"path must be a NoisePath (NoiseSchedule or ContinuousPath), "
                             f"got {type(path).__name__}")
        prediction_type = PREDICTION_ALIASES.get(prediction_type, prediction_type)
        if prediction_type not in PREDICTION_TYPES:
            raise UsageError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
        if clip_sample is not None and not (clip_sample > 0 and math.isfinite(clip_sample)):
            raise UsageError(f"clip_sample must be a positive number or None, got {clip_sample}")
        if not 0 <= dynamic_thresholding_ratio <= 1:
            raise UsageError("dynamic_thresholding_ratio must lie in [0, 1]")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise UsageError(f"chunk (rows per network call in batch-invariant mode) must be an integer >= 1, "
                             f"got {chunk!r}")
        self.net = net
        self.path = path
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.thresholding = thresholding
        self.dynamic_thresholding_ratio = dynamic_thresholding_ratio
        self.sample_max_value = sample_max_value
        self.sample_shape = None if sample_shape is None else tuple(int(d) for d in sample_shape)
        #: how the network is conditioned (e.g. `ddim.core.guidance.ClassLabels`); None: unconditional
        self.conditioning = conditioning
        #: the network's own dtype when it differs from the sampler's (half-precision networks): inputs are
        #: cast to it and outputs back, so the sampler's maths stay in float32/float64
        self.net_dtype = None if net_dtype == torch.float32 else net_dtype
        #: batch-invariant mode: every network call has exactly `chunk` rows (the last chunk padded), so a row's
        #: arithmetic does not depend on the rows around it; None: one call on the whole batch
        self.chunk = chunk
        # memo tables (not run state): affine coefficients per level, time inputs per (device, batch, level)
        self._affine: dict[float, Affine] = {}
        self._t_cache: dict[tuple[torch.device, int], list[torch.Tensor]] = {}

    # ---------------------------------------------------------------------------------- the network
    def check_input(self, x: torch.Tensor) -> None:
        """A metadata check of x against the model's sample shape (no sync)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise UsageError("x must be a floating-point tensor (batch first)")
        if x.ndim < 2:
            raise UsageError(f"x must have a batch dimension and at least one data dimension, got {tuple(x.shape)}")
        if self.sample_shape is not None and tuple(x.shape[1:]) != self.sample_shape:
            raise UsageError(f"x has shape {tuple(x.shape)}; this model takes (N, "
                             f"{', '.join(map(str, self.sample_shape))})")

    def time_input(self, t: float, x: torch.Tensor) -> torch.Tensor:
        """The network's time argument for level t. On a grid path: a cached row of one index block per device
        and batch size, all rows made at once (no allocation per step, and nothing small allocated between the
        steps' large buffers, which pinned the heap: DDPM-1000 grew by ~2 latents per step with a per-level
        cache). Fractional and continuous levels are built per call."""
        if not (self.path.grid and float(t).is_integer()):
            return self.path.time_input(t, x.shape[0], x.device)
        key = (x.device, x.shape[0])
        rows = self._t_cache.get(key)
        if rows is None:
            if len(self._t_cache) > 16:
                self._t_cache.clear()
            T, b = self.path.T, x.shape[0]
            pad = -(-b // 8) * 8  # rows 64-byte aligned (compiled kernels assume aligned inputs)
            block = torch.arange(T, device=x.device)[:, None].expand(T, pad).contiguous()
            rows = self._t_cache[key] = [r[:b] for r in block.unbind(0)]
        return rows[int(t)]

    def fields(self) -> dict[str, Any]:
        """The constructor arguments this Denoiser was made with."""
        return {"net": self.net, "path": self.path, "prediction_type": self.prediction_type,
                "clip_sample": self.clip_sample, "thresholding": self.thresholding,
                "dynamic_thresholding_ratio": self.dynamic_thresholding_ratio,
                "sample_max_value": self.sample_max_value, "sample_shape": self.sample_shape,
                "conditioning": self.conditioning, "net_dtype": self.net_dtype, "chunk": self.chunk}

    def replace(self, **changes: Any) -> Denoiser:
        """A view of this Denoiser with some constructor fields changed (`path`, `chunk`, `net_dtype`, ...): the
        same network and memo tables, the original untouched (a loaded model stays immutable)."""
        import copy

        allowed = {"net", "path", "chunk", "net_dtype", "conditioning", "sample_shape"}
        bad = sorted(set(changes) - allowed)
        if bad:
            raise UsageError(f"Denoiser.replace takes {', '.join(sorted(allowed))}; got {', '.join(bad)}")
        view = copy.copy(self)
        if "sample_shape" in changes and "path" not in changes and changes["sample_shape"] is not None:
            moved = getattr(self.path, "at_shape", lambda _: self.path)(tuple(changes["sample_shape"]))
            if moved is not self.path:  # a dynamic flow shift follows the size (Flux's μ from the token count)
                changes = {**changes, "path": moved}
        if "path" in changes:
            view._affine, view._t_cache = {}, {}
        for k, v in changes.items():
            setattr(view, k, v)
        return view

    @property
    def fixed_rows(self) -> int | None:
        """Rows per network call in batch-invariant mode: its own chunk, or that of a network making fixed-size
        calls itself (the service's shared networks); None when calls take the whole batch."""
        return self.chunk if self.chunk is not None else getattr(self.net, "fixed_rows", None)

    def for_run(self) -> Denoiser:
        """The denoiser one run uses (a bound condition with per-run guidance state gives a fresh copy)."""
        return self

    def branches(self, t: float) -> int:
        """Network evaluations per call at level t (2 where guidance runs both branches)."""
        return 1

    def _default_condition(self, x: torch.Tensor) -> dict[str, Any]:
        """A conditional model called with no condition runs its unconditional (null) branch."""
        unc = self.conditioning.unconditional()
        if unc is None:
            raise UsageError("this model is conditional and has no unconditional branch: give a condition")
        return {k: v.to(x.device).expand(x.shape[0], *v.shape[1:]) for k, v in unc.items()}

    def call_net(self, x: torch.Tensor, t: float, cond: dict[str, Any] | None = None) -> torch.Tensor:
        """The network's output at level t with its keyword arguments `cond`, shape-checked (no counting: the
        run counts). In batch-invariant mode the rows go through calls of exactly `chunk` rows each."""
        if cond is None and self.conditioning is not None:
            cond = self._default_condition(x)
        if self.chunk is not None and x.shape[0] != self.chunk:
            return self._chunked(x, t, cond)
        xin = x if self.net_dtype is None or x.dtype == self.net_dtype else x.to(self.net_dtype)
        try:
            out = self.net(xin, self.time_input(t, x)) if cond is None else self.net(xin, self.time_input(t, x), **cond)
        except RuntimeError as e:  # shape/dtype mismatches inside the network
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelOutputError(f"the network failed on input of shape {tuple(x.shape)} "
                                   f"at timestep t={t}: {msg}") from e
        out = network_output(out)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelOutputError(f"model output at timestep t={t} has shape {got}, expected {tuple(x.shape)}")
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def _chunked(self, x: torch.Tensor, t: float, cond: dict[str, Any] | None) -> torch.Tensor:
        """call_net over calls of exactly `chunk` rows each (the last chunk padded, its padding dropped)."""
        c, n = self.chunk, x.shape[0]
        outs = []
        for a in range(0, n, c):
            b = min(n, a + c)
            ca = None if cond is None else {k: _rows_padded(v, a, b, c) if _batched(v, n) else v
                                            for k, v in cond.items()}
            outs.append(self.call_net(_rows_padded(x, a, b, c), t, ca)[: b - a])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    # ------------------------------------------------------------------------------ prediction maths
    def coeffs(self, t: float) -> Affine:
        """The affine coefficients (k1, k2, k3, k4) at level t (memoised)."""
        k = self._affine.get(t)
        if k is None:
            k = self._affine[t] = affine_coefficients(self.prediction_type, *self.path.alpha_sigma(t))
        return k

    @property
    def clips(self) -> bool:
        """True when x̂0 is clipped or thresholded."""
        return self.thresholding or self.clip_sample is not None

    @property
    def is_affine(self) -> bool:
        """True when a step is affine in (x, output): no clipping or thresholding."""
        return not self.clips

    def combine(self, t: float, a: float, b: float, c: float) -> tuple[float, float]:
        """(P, Q) with a·x + b·x̂0 + c·ε̂ = P·x + Q·out: a whole update in two tensor ops (affine case)."""
        k1, k2, k3, k4 = self.coeffs(t)
        if b != 0 and math.isnan(k1):
            self._undefined_x0(t)
        p = a + c * k3 + (b * k1 if b != 0 else 0.0)
        q = c * k4 + (b * k2 if b != 0 else 0.0)
        return p, q

    def _undefined_x0(self, t: float) -> None:
        raise UsageError(f"an epsilon-prediction model has no defined x̂0 at t={t} where α = 0 "
                         "(zero terminal SNR); use v_prediction or a schedule with ᾱ > 0")

    def split(self, x: torch.Tensor, t: float, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̂, x̂0) from a network output at level t, x̂0 clipped / thresholded as configured.

        ε̂ stays the model's own; samplers may re-derive it from the clipped x̂0 (use_clipped_model_output).
        """
        k1, k2, k3, k4 = self.coeffs(t)
        if math.isnan(k1):
            self._undefined_x0(t)
        x0 = out if (k1 == 0.0 and k2 == 1.0) else torch.add(x * k1, out, alpha=k2)
        eps = out if (k3 == 0.0 and k4 == 1.0) else torch.add(x * k3, out, alpha=k4)
        return eps, (self.clip(x0) if self.clips else x0)

    def x0_from_output(self, x: torch.Tensor, t: float, out: torch.Tensor) -> torch.Tensor:
        """x̂0 alone from a network output (clipping applied as configured)."""
        k1, k2, _, _ = self.coeffs(t)
        if math.isnan(k1):
            self._undefined_x0(t)
        x0 = out if (k1 == 0.0 and k2 == 1.0) else torch.add(out * k2, x, alpha=k1)
        return self.clip(x0) if self.clips else x0

    def eps_from_output(self, x: torch.Tensor, t: float, out: torch.Tensor) -> torch.Tensor:
        """ε̂ alone from a network output."""
        _, _, k3, k4 = self.coeffs(t)
        return out if (k3 == 0.0 and k4 == 1.0) else torch.add(x * k3, out, alpha=k4)

    def eps_from_x0(self, x: torch.Tensor, t: float, x0: torch.Tensor) -> torch.Tensor:
        """ε = (x_t − α x0)/σ: the noise direction consistent with x0."""
        a, s = self.path.alpha_sigma(t)
        if s == 0.0:
            return torch.zeros_like(x)
        return torch.add(x, x0, alpha=-a).div_(s)

    def clip(self, x0: torch.Tensor) -> torch.Tensor:
        """Static clipping to [-c, c], or dynamic thresholding (Saharia et al. 2022) per sample."""
        if self.thresholding:
            return dynamic_threshold(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        c = self.clip_sample
        return x0.clamp(-c, c)

    def device(self) -> torch.device:
        """The device of the network's parameters (CPU for parameter-free callables)."""
        params = getattr(self.net, "parameters", None)
        if callable(params):
            for p in params():
                return p.device
        return torch.device("cpu")
