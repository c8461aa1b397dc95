"""The model contract: what a loaded model offers every front end (CLI, request API, server).

A `Model` is immutable after load and safe to share between threads and concurrent runs: its conditions and
how they are encoded, its latent codec (identity for pixel models), its denoiser(s) — distilled students are
separate denoisers, never weights swapped into a shared network —, its measured sampling defaults and its
fingerprint. Formats (`ddim.io.formats`) build one; nothing assigns to it afterwards.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..core.errors import UsageError
from ..core.prediction import Denoiser


class Codec(Protocol):
    """Images ⇄ the space the denoiser works in."""

    image_shape: tuple[int, ...]

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class SamplingPlan:
    """What a run uses after the model's defaults are applied: the denoiser (a distilled student, or the
    model's own), the sampler, the spacing or an explicit step list, and the number of steps."""

    denoiser: Denoiser
    sampler: str
    spacing: str | None
    steps: int
    timesteps: torch.Tensor | None = None


@dataclass(frozen=True)
class SamplingDefaults:
    """A model's measured defaults: the best sampler and spacing per NFE budget (sampling.json, from
    `ddim bench flow` / `fewstep`; an entry may carry its tuned level list), a consistency sampler for LCM/TCD
    models, the default guidance scale."""

    nfe: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    sampler: str | None = None
    spacing: str | None = None
    guidance: float = 1.0
    #: distilled models: the sampler and spacing their students were trained for
    student_sampler: str = "ddim"
    student_spacing: str | None = None
    #: False where the model's own denoiser takes any sampler (MeanFlow): students only for their own
    #: sampler, spacing and step counts
    students_only: bool = True
    #: guidance-distilled models (Flux-dev): the default of the guidance scale they take as a network input
    distilled_guidance: float | None = None
    #: a model trained for these step counts only (sampling.json "steps"; a one-step distillation): others refused
    step_counts: tuple[int, ...] | None = None

    def best_for(self, nfe: int) -> dict[str, Any]:
        """The winner at the largest measured NFE within the budget, with as many steps as the budget allows."""
        fits = [k for k in self.nfe if k <= nfe]
        if not fits:
            return {}
        from ..core.samplers import get_sampler

        best = dict(self.nfe[max(fits)])
        best["steps"] = get_sampler(best["sampler"]).steps_for_nfe(nfe)
        return best


@dataclass(frozen=True, eq=False)
class Model:
    """A loaded model (see the module docstring). `sample_shape` is the denoiser's (latent) sample shape."""

    name: str
    format: str
    denoiser: Denoiser
    sample_shape: tuple[int, ...]
    condition_kind: str | None = None  # "class", "prompt" or None (unconditional)
    codec: Codec | None = None
    #: prompt models: an object with `condition(prompts) -> network kwargs` (the text encoders)
    encoder: Any = None
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    students: Mapping[int, Denoiser] = field(default_factory=dict)
    folder: Path | None = None
    #: exact mixtures: the ground-truth distribution (exact log-likelihood)
    mixture: Any = None
    #: latent models: latent sizes must be multiples of this (the transformer's patch; Flux's 2×2 packing)
    patch: int = 1

    # ------------------------------------------------------------------------------ images ⇄ samples
    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.sample_shape

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.codec.image_shape if self.codec is not None else self.sample_shape

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images → the denoiser's space (identity for pixel models)."""
        return images if self.codec is None else self.codec.encode(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The denoiser's space → images (identity for pixel models)."""
        return latents if self.codec is None else self.codec.decode(latents)

    def shape_for(self, size: tuple[int, int] | None) -> tuple[int, ...]:
        """The denoiser's sample shape for images of `size` (height, width); None: the model's own size.
        Pixel models make their own size only; latent models any multiple of the codec's scale."""
        if size is None:
            return self.sample_shape
        h, w = size
        own = self.image_shape
        if len(own) != 3:
            raise UsageError(f"{self.name} makes {own} samples, not images: it takes no size")
        if self.codec is None:
            if (h, w) != own[1:]:
                raise UsageError(f"{self.name} makes {own[1]}×{own[2]} images, not {h}×{w}")
            return self.sample_shape
        f = own[-1] // self.sample_shape[-1]
        m = f * self.patch
        if h % m or w % m:
            why = f"its latent scale {f} × patch {self.patch}" if self.patch > 1 else "its latent scale"
            (w0, w1), (h0, h1) = (max(m, w // m * m), -(-w // m) * m), (max(m, h // m * m), -(-h // m) * m)
            raise UsageError(f"{self.name}: width and height must be multiples of {m} ({why}), got {w}x{h}: "
                             f"e.g. {w0}x{h0} or {w1}x{h1}")
        return (self.sample_shape[0], h // f, w // f)

    def input_shape(self) -> tuple[int | None, ...]:
        """The image shape data rows must have: the model's own for pixel models; any height and width for latent
        models (None entries; `shape_for` then checks them), so img2img and inversion take every size it samples."""
        own = self.image_shape
        return own if self.codec is None or len(own) != 3 else (own[0], None, None)

    # ------------------------------------------------------------------------------------- conditions
    def condition(self, value: Any, distilled_guidance: float | None = None) -> dict[str, torch.Tensor]:
        """Network keyword arguments for per-sample class labels or prompts; a guidance-distilled model takes
        the `distilled_guidance` scale (its default when None) as its `guidance` input (give the negative
        prompt's condition the same scale)."""
        d = self.defaults.distilled_guidance
        if distilled_guidance is not None and d is None:
            raise UsageError(f"{self.name} is not guidance-distilled: it takes no distilled guidance scale (use "
                             "guidance, classifier-free)")
        if self.condition_kind == "prompt":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, Sequence) or not all(isinstance(p, str) for p in value):
                raise UsageError(f"{self.name} takes prompts (strings), not {type(value).__name__}")
            cond = self.encoder.condition(list(value))
            if distilled_guidance is None:
                return cond
            return {**cond, "guidance": torch.full_like(cond["guidance"], float(distilled_guidance))}
        if self.condition_kind == "class":
            return self.denoiser.conditioning.condition(value)
        raise UsageError(f"{self.name} is unconditional: it takes neither classes nor prompts")

    # --------------------------------------------------------------------------------- sampling plan
    def denoiser_for(self, steps: int) -> Denoiser:
        """The denoiser a run of `steps` steps uses: a distilled student when the model has them (other step
        counts are refused), else the model's own."""
        if not self.students:
            return self.denoiser
        if steps not in self.students:
            have = ", ".join(str(k) for k in sorted(self.students))
            raise UsageError(f"{self.name} was distilled for {have} steps, not {steps}: use --steps {have}")
        return self.students[steps]

    def plan(self, steps: int, sampler: str | None = None, spacing: str | None = None,
             timesteps: Sequence[float] | None = None) -> SamplingPlan:
        """The run's sampler, spacing and steps: as given, or — with no sampler named — the model's measured best
        within a budget of `steps` network evaluations (ddim with `steps` steps when it has no table). An
        explicit `timesteps` list fixes the steps."""
        d = self.defaults
        if d.step_counts is not None and (n := steps if timesteps is None else len(timesteps)) not in d.step_counts:
            have = ", ".join(str(k) for k in d.step_counts)
            raise UsageError(f"{self.name} was trained for {have} step(s) only, not {n}: use --steps {have}")
        if timesteps is not None:
            ts = self.denoiser.path.validate_timesteps(timesteps)
            den = self.denoiser_for(len(ts)) if d.students_only else self.denoiser
            return SamplingPlan(den, sampler or "ddim", None, len(ts), ts)
        if self.students and not d.students_only and (steps not in self.students or sampler not in (
                None, d.student_sampler) or spacing not in (None, d.student_spacing)):
            return SamplingPlan(self.denoiser, sampler or "ddim", spacing, steps)
        if self.students:
            return SamplingPlan(self.denoiser_for(steps), sampler or d.student_sampler, spacing or d.student_spacing,
                                steps)
        if sampler is not None:
            return SamplingPlan(self.denoiser, sampler, spacing, steps)
        best = self.defaults.best_for(steps)
        if best:
            ts = best.get("timesteps")
            if ts is not None and spacing is None and len(ts) == best["steps"]:  # a budget of the entry's own NFE
                return SamplingPlan(self.denoiser, best["sampler"], None, len(ts),
                                    self.denoiser.path.validate_timesteps(ts))
            return SamplingPlan(self.denoiser, best["sampler"], spacing or best.get("spacing"), int(best["steps"]))
        if self.defaults.sampler is not None:  # a model shipped with LCM/TCD scheduling samples that way
            return SamplingPlan(self.denoiser, self.defaults.sampler, spacing or self.defaults.spacing, steps)
        return SamplingPlan(self.denoiser, "ddim", spacing, steps)

    def resolve_sampling(self, steps: int, sampler: str | None = None, spacing: str | None = None
                         ) -> tuple[str, str | None, int]:
        """(sampler, spacing, steps) of `plan`."""
        p = self.plan(steps, sampler, spacing)
        return p.sampler, p.spacing, p.steps

    # ------------------------------------------------------------------------------------- identity
    @cached_property
    def fingerprint(self) -> str:
        """sha256 over every network's weights (students, encoders, codec included), prediction options and
        noise levels: what provenance and shard manifests record."""
        h = hashlib.sha256(self.format.encode())
        for den in (self.denoiser, *(self.students[k] for k in sorted(self.students))):
            h.update(denoiser_fingerprint(den).encode())
        for part in (self.codec, self.encoder):
            for m in _modules(part):
                _hash_state(h, m)
        return h.hexdigest()

    def exact_log_likelihood(self, x: torch.Tensor, bits_per_dim: bool = False) -> torch.Tensor | None:
        """The true log-density of x at the model's lowest level, for exact mixtures; None for trained models."""
        if self.mixture is None:
            return None
        path = self.denoiser.path
        a = path.alpha_sigma(path.t_range[0])[0] ** 2
        ll = self.mixture.log_prob(x.double(), a)
        return -ll / (x[0].numel() * math.log(2)) if bits_per_dim else ll


def _modules(part: Any) -> list[torch.nn.Module]:
    if part is None:
        return []
    return [v for v in vars(part).values() if isinstance(v, torch.nn.Module)] if hasattr(part, "__dict__") else []


def _hash_state(h: Any, module: torch.nn.Module) -> None:
    sd = module.state_dict()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().float().contiguous().numpy().tobytes())


def denoiser_fingerprint(den: Denoiser) -> str:
    """sha256 over a denoiser's network weights, prediction options and noise levels."""
    h = hashlib.sha256()
    h.update(f"{type(den.net).__name__}|{den.prediction_type}|{den.clip_sample}|{den.thresholding}".encode())
    h.update(repr(den.path).encode())
    lo, hi = den.path.t_range
    h.update(np.asarray([den.path.alpha_sigma(t) for t in np.linspace(lo, hi, 64)]).tobytes())
    if isinstance(den.net, torch.nn.Module):
        _hash_state(h, den.net)
    return h.hexdigest()
