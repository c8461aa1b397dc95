"""The training configuration: every field that defines a run, validated at the boundary (files, flags, run folders)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..core.path import ContinuousPath, FlowShift, NoisePath
from ..core.prediction import PREDICTION_ALIASES, PREDICTION_TYPES
from ..core.schedule import NoiseSchedule

SCHEDULES = ("linear", "scaled_linear", "cosine")
OBJECTIVES = ("ddpm", "flow_matching", "meanflow")
#: objectives on the flow path x_t = (1 − t) x0 + t ε
FLOW_OBJECTIVES = ("flow_matching", "meanflow")
#: earlier names kept working
OBJECTIVE_ALIASES = {"flow": "flow_matching"}
TIME_SAMPLINGS = ("uniform", "logit_normal", "endpoint")
LOSSES = ("mse", "pseudo_huber")


@dataclass
class TrainConfig:
    """Everything that defines a run; saved resolved as `config.json` in the run folder."""

    data: str = "mog3"
    model: str = "auto"  # "mlp" for vectors, "unet" for images; auto picks by data shape
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    prediction_type: str = "epsilon"
    schedule: str = "linear"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    checkpoint_every: int = 500
    image_size: int | None = None
    hidden: int = 128
    depth: int = 3
    n_data: int | None = None
    objective: str = "ddpm"  # ddpm: L_simple on the β schedule; flow_matching on x_t = (1 − t) x0 + t ε;
    # meanflow: the average velocity u(z, r, t) on the same path (Geng et al. 2025), sampled in 1–8 steps
    time_sampling: str = "uniform"  # flow: t ~ U(0, 1), logit_normal (SD3: t = sigmoid(m + s·n)), or endpoint:
    # t = 1 only, one-step distillation of a reflow coupling (InstaFlow, Liu et al. 2024): needs pairs
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # flow: the σ-list shift stored in the scheduler config (sampling-time default)
    pairs: str | None = None  # flow: an .npz of (noise, x0) couplings to train on (reflow), instead of data
    init_from: str | None = None  # a model whose EMA weights start the network (reflow, meanflow fine-tuning)
    conditional: bool = False  # class-conditional (labelled data): a class embedding plus a learned null class
    label_dropout: float = 0.1  # fraction of labels replaced by the null class (classifier-free guidance)
    interval_fraction: float = 0.25  # meanflow: share of rows with r < t (the rest r = t: flow matching)
    adaptive_power: float = 1.0  # meanflow: p of the adaptive loss weight 1/(‖Δ‖² + c)^p (0: plain MSE)
    loss: str = "mse"  # ddpm, flow_matching: mse, or pseudo_huber √(‖Δ‖² + c²) − c per sample, c = 0.00054·√d (iCT)

    def validate(self, where: str = "training config") -> None:
        """Types first (one message naming the key), then ranges."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            want = _TYPES[f.name]
            want = (*want, int) if float in want else want
            ok = isinstance(v, want) and not (isinstance(v, bool) and bool not in want)
            if not ok or (isinstance(v, float) and not math.isfinite(v)):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in want)
                raise UsageError(f"{where}: {f.name} must be {names}, got {v!r}")
        if self.hidden < 1 or self.depth < 1:
            raise UsageError(f"{where}: hidden and depth must be >= 1")
        if self.warmup < 0 or self.num_train_timesteps < 2 or (self.n_data is not None and self.n_data < 1):
            raise UsageError(f"{where}: warmup must be >= 0, num_train_timesteps >= 2, n_data >= 1")
        if not (0 < self.beta_start < self.beta_end < 1) or self.grad_clip < 0 or self.weight_decay < 0:
            raise UsageError(f"{where}: need 0 < beta_start < beta_end < 1, grad_clip >= 0, weight_decay >= 0")
        if self.image_size is not None and self.image_size < 1:
            raise UsageError(f"{where}: image_size must be >= 1")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise UsageError("steps, batch_size and checkpoint_every must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        self.prediction_type = PREDICTION_ALIASES.get(self.prediction_type, self.prediction_type)
        if self.prediction_type not in PREDICTION_TYPES:
            raise UsageError(f"unknown prediction_type {self.prediction_type!r}")
        self.objective = OBJECTIVE_ALIASES.get(self.objective, self.objective)
        if self.objective not in OBJECTIVES:
            raise UsageError(f"{where}: unknown objective {self.objective!r}; choose one of {OBJECTIVES}")
        flow = self.objective in FLOW_OBJECTIVES
        if flow != (self.prediction_type == "flow_prediction"):
            raise UsageError(f"{where}: the {'/'.join(FLOW_OBJECTIVES)} objectives train prediction_type "
                             "'flow_prediction' (velocity ε − x0), and only they do; ddpm takes epsilon, sample or "
                             "v_prediction")
        if self.objective != "meanflow" and (self.interval_fraction != 0.25 or self.adaptive_power != 1.0):
            raise UsageError(f"{where}: interval_fraction and adaptive_power are meanflow options "
                             f"(objective is {self.objective!r})")
        if not (0 < self.interval_fraction <= 1) or not 0 <= self.adaptive_power <= 2:
            raise UsageError(f"{where}: interval_fraction must lie in (0, 1] and adaptive_power in [0, 2]")
        if self.objective == "meanflow" and (self.conditional or self.model == "mlp"):
            raise UsageError(f"{where}: meanflow trains an unconditional UNet (its second time input takes the "
                             "interval t − r); drop --conditional / --model mlp")
        if self.loss not in LOSSES:
            raise UsageError(f"{where}: unknown loss {self.loss!r}; choose one of {LOSSES}")
        if self.loss != "mse" and self.objective == "meanflow":
            raise UsageError(f"{where}: meanflow weights its loss adaptively (adaptive_power); loss must be 'mse'")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise UsageError(f"{where}: unknown time_sampling {self.time_sampling!r}; choose one of {TIME_SAMPLINGS}")
        if self.time_sampling != "uniform" and not flow:
            raise UsageError(f"{where}: time_sampling {self.time_sampling!r} is for the flow objectives")
        if self.pairs is not None and not flow:
            raise UsageError(f"{where}: pairs (reflow couplings) train the flow objectives")
        if self.time_sampling == "endpoint" and (self.pairs is None or self.objective != "flow_matching"):
            raise UsageError(f"{where}: time_sampling 'endpoint' (t = 1 only) distils a coupling: it needs pairs "
                             "and objective flow_matching (ddim reflow --time-sampling endpoint)")
        if not self.logit_std > 0 or not self.shift > 0:
            raise UsageError(f"{where}: logit_std and shift must be > 0")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if not 0 <= self.label_dropout < 1:
            raise UsageError(f"{where}: label_dropout must lie in [0, 1), got {self.label_dropout}")
        if self.model not in ("auto", "mlp", "unet"):
            raise UsageError(f"unknown model {self.model!r}; choose auto, mlp or unet")

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML or TOML file whose keys are TrainConfig fields; `overrides` win."""
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read config {path}: {e}") from None
        if path.suffix in (".toml",):
            import tomllib

            try:
                raw = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise UsageError(f"{path} is not valid TOML: {e}") from None
        else:
            import yaml

            try:
                raw = yaml.safe_load(text) or {}
            except yaml.YAMLError as e:  # includes !!python tags, which safe_load refuses (never executes)
                msg = " ".join(str(e).split())
                raise UsageError(f"{path} is not plain YAML: {msg[:160]}") from None
        if not isinstance(raw, dict):
            raise UsageError(f"{path} must hold a mapping of config keys")
        return cls.from_dict({**raw, **{k: v for k, v in overrides.items() if v is not None}}, str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "training config") -> TrainConfig:
        """A validated config from a mapping: unknown keys and wrong types are one-line errors naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UsageError(f"{where}: unknown config keys {unknown}; known: {', '.join(sorted(known))}")
        raw = {k: (float(v) if _TYPES[k] == (float,) and isinstance(v, int) and not isinstance(v, bool) else v)
               for k, v in raw.items()}
        cfg = cls(**raw)
        cfg.validate(where)
        return cfg


def build_schedule(cfg: TrainConfig) -> NoisePath:
    """The run's noise path: the β schedule (ddpm), or the flow path with its σ-list shift (flow)."""
    T = cfg.num_train_timesteps
    if cfg.objective in FLOW_OBJECTIVES:
        shift = FlowShift(cfg.shift, num_train_timesteps=T)
        return ContinuousPath("flow", t_max=1.0, time_scale=float(T), flow_shift=shift)
    if cfg.schedule == "cosine":
        return NoiseSchedule.cosine(T)
    ctor = NoiseSchedule.linear if cfg.schedule == "linear" else NoiseSchedule.scaled_linear
    return ctor(T, cfg.beta_start, cfg.beta_end)




_TYPES: dict[str, tuple[type, ...]] = {
    "data": (str,), "model": (str,), "steps": (int,), "batch_size": (int,), "lr": (float,), "warmup": (int,),
    "weight_decay": (float,), "grad_clip": (float,), "ema_decay": (float,), "seed": (int,),
    "prediction_type": (str,), "schedule": (str,), "num_train_timesteps": (int,), "beta_start": (float,),
    "beta_end": (float,), "checkpoint_every": (int,), "image_size": (int, type(None)), "hidden": (int,),
    "depth": (int,), "n_data": (int, type(None)), "conditional": (bool,), "label_dropout": (float,),
    "pairs": (str, type(None)), "init_from": (str, type(None)),
    "objective": (str,), "time_sampling": (str,), "logit_mean": (float,), "logit_std": (float,), "shift": (float,),
    "interval_fraction": (float,), "adaptive_power": (float,), "loss": (str,),
}
