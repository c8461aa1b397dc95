"""Conditioning and guidance: a condition bound to a Denoiser for one run, and the guidance rules.

A condition is a dict of keyword arguments for the network (`class_labels`, `encoder_hidden_states`, ...),
batch-first, one entry per sample (a batch may mix classes; a batch of 1 broadcasts). `Conditioned` is the
Denoiser seen with a condition, an unconditional branch and a `Guidance`: its `call_net` returns the guided
output, so every sampler, inversion and the likelihood run unchanged. With D_c, D_u the conditional and
unconditional outputs and w the guidance scale:
  cfg     D = D_u + w (D_c − D_u)                                 (Ho & Salimans 2022, eq. 6)
  rescale D ← φ · D · std(D_c)/std(D) + (1 − φ) · D              (Lin et al. 2024, eqs. 15–16)
  interval  w only where σ/α lies in (lo, hi], else D = D_c (one call) (Kynkäänniemi et al. 2024, eq. 2)
  apg     on x̂0: Δ = x̂0_c − x̂0_u (+ β momentum, norm ≤ r); x̂0 = x̂0_c + (w − 1)(Δ⊥ + η Δ∥),
          ∥/⊥ relative to x̂0_c                                 (Sadat et al. 2025, eqs. 7–10)
  cfg++   x̂0 from the guided output (w ∈ [0, 1] typically), the renoising ε from the unconditional one
          (Chung et al. 2024, Algorithm 1): defined for DDIM-type steps.
Since x̂0 and ε̂ are the same affine map of the output for both branches, cfg in output space equals cfg
in ε or x̂0 space for every prediction type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import UsageError
from .prediction import Denoiser


@dataclass(frozen=True)
class GuidanceRule:
    """A registered guidance rule: how it combines the two branches' outputs, its own options (name → default,
    as `Guidance.options` takes them), whether the guided step stays affine in the outputs (inversion and the
    folded updates need it), whether it needs DDIM-type steps, and whether it needs both branches even at
    w = 1. `combine(view, x, t, out_cond, out_uncond, w)` returns the guided output."""

    name: str
    combine: Callable[..., torch.Tensor]
    options: dict[str, float] = field(default_factory=dict)
    affine: bool = True
    ddim_type_only: bool = False
    always_both_branches: bool = False


#: name → rule; filled in below, after the rules' combine functions
GUIDANCE_RULES: dict[str, GuidanceRule] = {}
Condition = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ClassLabels:
    """A class-conditional network: labels 0 … num_classes−1 go to the network as `key`; `null` is the learned
    unconditional label (trained by label dropout), None when the model has no unconditional branch."""

    num_classes: int
    null: int | None = None
    key: str = "class_labels"

    def condition(self, labels: Any) -> dict[str, torch.Tensor]:
        """The network keyword arguments for class labels (an int, a list or a tensor), range-checked."""
        if isinstance(labels, torch.Tensor):
            if labels.is_floating_point() or labels.is_complex():
                raise UsageError("class labels must be integers")
            y = labels.reshape(-1).long()
        else:
            vals = list(labels) if isinstance(labels, list | tuple | range) else [labels]
            if not vals or any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
                raise UsageError(f"class labels must be integers, got {labels!r}")
            y = torch.tensor(vals, dtype=torch.long)
        if y.numel() == 0:
            raise UsageError("no class labels given")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= self.num_classes:
            bad = lo if lo < 0 else hi
            raise UsageError(f"class {bad} is out of range: this model has classes 0–{self.num_classes - 1}")
        return {self.key: y}

    def unconditional(self) -> dict[str, torch.Tensor] | None:
        return None if self.null is None else {self.key: torch.tensor([self.null], dtype=torch.long)}

    def to_json(self) -> dict[str, Any]:
        return {"type": "class", "num_classes": self.num_classes, "null": self.null, "key": self.key}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClassLabels:
        return cls(int(d["num_classes"]), None if d.get("null") is None else int(d["null"]),
                   str(d.get("key", "class_labels")))


@dataclass(frozen=True)
class Guidance:
    """How the conditional and unconditional outputs combine (see the module docstring for each rule).

    scale: w (1 = conditional only, 0 = unconditional only). rule: a name in `GUIDANCE_RULES`. rescale: φ of
    CFG rescale (rule cfg). interval: (lo, hi] in σ/α where guidance is on. options: the rule's own options
    (apg: eta, momentum, threshold). batched: one network call on the doubled batch (False: two calls, half the
    activation memory).
    """

    scale: float = 1.0
    rule: str = "cfg"
    rescale: float = 0.0
    interval: tuple[float, float] | None = None
    options: Mapping[str, float] = field(default_factory=dict)
    batched: bool = True

    def __post_init__(self) -> None:
        for name, v in (("scale", self.scale), ("rescale", self.rescale), *self.options.items()):
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or (
                    math.isinf(v) and name != "threshold"):
                raise UsageError(f"guidance {name} must be a finite number, got {v!r}")
        if self.scale < 0:
            raise UsageError(f"guidance scale must be >= 0, got {self.scale}")
        if self.rule not in GUIDANCE_RULES:
            raise UsageError(f"unknown guidance rule {self.rule!r}; choose one of {', '.join(GUIDANCE_RULES)}")
        takes = GUIDANCE_RULES[self.rule].options
        unknown = sorted(set(self.options) - set(takes))
        if unknown:
            raise UsageError(f"guidance rule {self.rule!r} takes {', '.join(takes) or 'no options'}; got "
                             f"{', '.join(unknown)}")
        if not 0 <= self.rescale <= 1:
            raise UsageError(f"guidance rescale φ must lie in [0, 1], got {self.rescale}")
        if self.rescale and self.rule != "cfg":
            raise UsageError(f"guidance rescale is CFG's (rule cfg), not {self.rule}'s")
        if not (self.option("threshold", math.inf) > 0):
            raise UsageError(f"apg threshold must be > 0, got {self.option('threshold')}")
        if not -1 < self.option("momentum", 0.0) <= 0:
            raise UsageError(f"apg momentum β must lie in (-1, 0] (negative momentum), got {self.option('momentum')}")
        if self.interval is not None:
            lo, hi = (float(v) for v in self.interval)
            if not (0 <= lo < hi) or math.isnan(hi):
                raise UsageError(f"guidance interval must be (lo, hi] with 0 <= lo < hi in σ/α, got {self.interval}")

    def option(self, name: str, default: float | None = None) -> float:
        """The rule's option `name`: as given, else the rule's default."""
        return self.options.get(name, GUIDANCE_RULES[self.rule].options.get(name, default))

    @property
    def trivial(self) -> bool:
        """True when the result is the conditional output alone (w = 1, a rule that then needs one branch)."""
        return self.scale == 1.0 and not GUIDANCE_RULES[self.rule].always_both_branches

    def scale_at(self, alpha: float, sigma: float) -> float:
        """w at a level: the scale inside the interval, 1 (conditional only) outside it."""
        if self.interval is None:
            return self.scale
        s = sigma / alpha if alpha > 0 else math.inf
        return self.scale if self.interval[0] < s <= self.interval[1] else 1.0


def _batch_of(cond: Condition, n: int) -> dict[str, torch.Tensor]:
    """Each tensor expanded to batch n (a batch of 1 broadcasts; anything else must match)."""
    out = {}
    for k, v in cond.items():
        if not isinstance(v, torch.Tensor):
            out[k] = v
            continue
        if v.shape[0] not in (1, n):
            raise UsageError(f"condition {k!r} has batch {v.shape[0]}, the samples have {n} (or give 1 for all)")
        out[k] = v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v
    return out


class Conditioned(Denoiser):
    """A Denoiser with a bound condition and guidance (it holds the base and calls the network through it), for
    one run (it keeps APG's momentum and CFG++'s last
    unconditional output, so `for_run()` gives each run a fresh copy)."""

    def __init__(self, base: Denoiser, condition: Condition, uncond: Condition | None, guidance: Guidance) -> None:
        super().__init__(**base.fields())  # the base's network, path and prediction options
        self._affine, self._t_cache = base._affine, base._t_cache  # and its memo tables
        self.base = base
        self.condition = dict(condition)
        self.uncond = None if uncond is None else dict(uncond)
        self.guidance = guidance
        self._scale: dict[float, float] = {}
        self._kwargs: dict[tuple[int, bool], dict[str, torch.Tensor]] = {}
        self._momentum: torch.Tensor | None = None
        self._last_uncond: torch.Tensor | None = None

    def for_run(self) -> Conditioned:
        return Conditioned(self.base, self.condition, self.uncond, self.guidance)

    def replace(self, **changes: Any) -> Conditioned:
        """The same condition and guidance bound to a view of the base denoiser (e.g. batch-invariant)."""
        return Conditioned(self.base.replace(**changes), self.condition, self.uncond, self.guidance)

    @property
    def is_affine(self) -> bool:
        return self.base.is_affine and GUIDANCE_RULES[self.guidance.rule].affine

    def scale_at(self, t: float) -> float:
        w = self._scale.get(t)
        if w is None:
            w = self._scale[t] = self.guidance.scale_at(*self.path.alpha_sigma(t))
        return w

    def branches(self, t: float) -> int:
        return 1 if self.scale_at(t) == 1.0 and not GUIDANCE_RULES[self.guidance.rule].always_both_branches else 2

    def _net_kwargs(self, n: int, doubled: bool, device: torch.device) -> dict[str, torch.Tensor]:
        key = (n, doubled)
        kw = self._kwargs.get(key)
        if kw is None:
            c = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in _batch_of(self.condition, n).items()}
            if doubled:
                u = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                     for k, v in _batch_of(self.uncond, n).items()}
                c = {k: torch.cat([c[k], u[k]]) if isinstance(c[k], torch.Tensor) else c[k] for k in c}
            kw = self._kwargs[key] = c
        return kw

    def call_net(self, x: torch.Tensor, t: float, cond: Condition | None = None) -> torch.Tensor:
        """The guided output at level t (one or two network evaluations)."""
        n = x.shape[0]
        if self.branches(t) == 1:
            return self.base.call_net(x, t, self._net_kwargs(n, False, x.device))
        if self.guidance.batched:
            both = self.base.call_net(torch.cat([x, x]), t, self._net_kwargs(n, True, x.device))
            oc, ou = both[:n], both[n:]
        else:
            oc = self.base.call_net(x, t, self._net_kwargs(n, False, x.device))
            self._kwargs.setdefault((n, "u"), {k: v.to(x.device) if isinstance(v, torch.Tensor) else v
                                               for k, v in _batch_of(self.uncond, n).items()})
            ou = self.base.call_net(x, t, self._kwargs[(n, "u")])
        return self._combine(x, t, oc, ou)

    def _combine(self, x: torch.Tensor, t: float, oc: torch.Tensor, ou: torch.Tensor) -> torch.Tensor:
        return GUIDANCE_RULES[self.guidance.rule].combine(self, x, t, oc, ou, self.scale_at(t))

    def split(self, x: torch.Tensor, t: float, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps, x0 = super().split(x, t, out)
        if self._last_uncond is not None:
            eps = self.eps_from_output(x, t, self._last_uncond)  # CFG++: renoise with ε_u
        return eps, x0


def _cfg(view: Conditioned, x: torch.Tensor, t: float, oc: torch.Tensor, ou: torch.Tensor, w: float) -> torch.Tensor:
    """D_u + w (D_c − D_u), then CFG rescale φ (Lin et al. 2024, eqs. 15–16)."""
    if w == 1.0:
        return oc
    out = torch.lerp(ou, oc, w)
    phi = view.guidance.rescale
    if phi > 0:
        dims = tuple(range(1, out.ndim))
        factor = oc.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True).clamp_min(1e-12)
        out = out * (phi * factor + (1 - phi))
    return out


def _cfgpp(view: Conditioned, x: torch.Tensor, t: float, oc: torch.Tensor, ou: torch.Tensor, w: float
           ) -> torch.Tensor:
    """CFG++ (Chung et al. 2024, Alg. 1): x̂0 from the guided output, ε from the unconditional one (`split`)."""
    view._last_uncond = ou
    return torch.lerp(ou, oc, w)


def _apg(view: Conditioned, x: torch.Tensor, t: float, oc: torch.Tensor, ou: torch.Tensor, w: float) -> torch.Tensor:
    """Adaptive projected guidance (Sadat et al. 2025, eqs. 7–10) on x̂0, mapped back to the output space."""
    k1, k2, _, _ = view.coeffs(t)
    if w == 1.0 or k2 == 0.0:
        return oc
    g = view.guidance
    eta, beta, r = g.option("eta"), g.option("momentum"), g.option("threshold")
    x0c = torch.add(oc * k2, x, alpha=k1)
    diff = (oc - ou) * k2  # x̂0_c − x̂0_u
    if beta != 0.0:
        if view._momentum is not None:
            diff = diff + beta * view._momentum
        view._momentum = diff
    dims = tuple(range(1, x.ndim))
    if math.isfinite(r):
        norm = diff.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
        diff = diff * (r / norm.clamp_min(1e-12)).clamp(max=1.0)
    unit = x0c / x0c.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (x.ndim - 1)))
    par = (diff * unit).sum(dims, keepdim=True) * unit
    x0 = x0c + (w - 1) * ((diff - par) + eta * par)
    return (x0 - k1 * x) / k2


for _rule in (GuidanceRule("cfg", _cfg),
              GuidanceRule("apg", _apg, {"eta": 0.0, "momentum": 0.0, "threshold": math.inf}),
              GuidanceRule("cfg++", _cfgpp, affine=False, ddim_type_only=True, always_both_branches=True)):
    GUIDANCE_RULES[_rule.name] = _rule


def bind(den: Denoiser, condition: Any = None, guidance: Guidance | float | None = None,
         uncond: Any = None) -> Denoiser:
    """The Denoiser a run uses: `den` itself, or `den` with a condition and guidance bound.

    `condition`: class labels (int, list, tensor) for a class-conditional model, or a dict of network keyword
    arguments. `uncond`: the unconditional/negative condition (default: the model's null condition).
    `guidance`: a Guidance or a plain scale w for CFG.
    """
    if isinstance(den, Conditioned):
        if condition is not None or guidance is not None or uncond is not None:
            raise UsageError("this denoiser already has a condition bound; pass the condition once")
        return den
    g = Guidance(scale=float(guidance)) if isinstance(guidance, int | float) and not isinstance(guidance, bool) \
        else guidance
    if g is not None and not isinstance(g, Guidance):
        raise UsageError(f"guidance must be a number or a ddim.Guidance, got {type(guidance).__name__}")
    spec = den.conditioning
    if condition is None:
        if g is not None and not g.trivial:
            raise UsageError("guidance needs a condition (e.g. class labels or a prompt)")
        return den
    if spec is None and not isinstance(condition, Mapping):
        raise UsageError("this model is unconditional: it takes no condition")
    cond = dict(condition) if isinstance(condition, Mapping) else spec.condition(condition)
    if uncond is not None:
        unc = dict(uncond) if isinstance(uncond, Mapping) else spec.condition(uncond) if spec else None
    else:
        unc = spec.unconditional() if spec is not None else None
    g = g or Guidance()
    if not g.trivial and unc is None:
        raise UsageError(f"guidance {g.scale:g} needs an unconditional branch, and this model has none "
                         "(train with label dropout, or pass uncond=)")
    if unc is not None and set(unc) != set(cond):
        raise UsageError(f"condition keys {sorted(cond)} and unconditional keys {sorted(unc)} differ")
    return Conditioned(den, cond, unc, g)
