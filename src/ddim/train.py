"""Training with the DDPM objective L_simple (Ho et al. 2020, eq. 14), EMA, AdamW, atomic checkpoints, resume.

Every random draw (batch indices, t, noise) comes from one torch.Generator whose state is checkpointed,
and the learning rate is a pure function of the step, so a run killed at any point and resumed from its
last checkpoint ends with exactly the weights of an uninterrupted run. Under `torchrun` the same loop
runs as DDP (each rank draws its own share of the batch; rank 0 writes checkpoints).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import checkpoint as ck
from .schedule import NoiseSchedule

SCHEDULES = ("linear", "scaled_linear", "cosine")


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
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch_size and checkpoint_every must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"unknown prediction_type {self.prediction_type!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.model not in ("auto", "mlp", "unet"):
            raise ValueError(f"unknown model {self.model!r}; choose auto, mlp or unet")

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML or TOML file whose keys are TrainConfig fields; `overrides` win."""
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".toml",):
            import tomllib

            raw = tomllib.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a mapping of config keys")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {unknown}")
        return cls(**{**raw, **{k: v for k, v in overrides.items() if v is not None}})


def build_schedule(cfg: TrainConfig) -> NoiseSchedule:
    T = cfg.num_train_timesteps
    if cfg.schedule == "cosine":
        return NoiseSchedule.cosine(T)
    ctor = NoiseSchedule.linear if cfg.schedule == "linear" else NoiseSchedule.scaled_linear
    return ctor(T, cfg.beta_start, cfg.beta_end)


def model_spec(cfg: TrainConfig, sample_shape: tuple[int, ...]) -> dict[str, Any]:
    """The network's type and constructor config, derived from the data shape."""
    kind = cfg.model
    if kind == "auto":
        kind = "mlp" if len(sample_shape) == 1 else "unet"
    if kind == "mlp":
        if len(sample_shape) != 1:
            raise ValueError(f"the MLP takes vectors, the data has sample shape {sample_shape}")
        return {"type": "mlp", "config": {"dim": sample_shape[0], "hidden": cfg.hidden, "depth": cfg.depth}}
    if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
        raise ValueError(f"the UNet takes square images (C, H, W), the data has sample shape {sample_shape}")
    from .models.unet import unet_config

    return {"type": "unet", "config": unet_config(sample_shape[1], sample_shape[0])}


def build_model(spec: dict[str, Any]) -> torch.nn.Module:
    if spec.get("type") == "mlp":
        from .models.mlp import MLP

        return MLP(**spec["config"])
    if spec.get("type") == "unet":
        from diffusers import UNet2DModel

        return UNet2DModel(**spec["config"])
    raise ck.CheckpointError(f"unknown model type {spec.get('type')!r} in run config")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 0 (a pure function of the step: resumable)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def loss_target(pred_type: str, x0: torch.Tensor, noise: torch.Tensor, sa: torch.Tensor, s1: torch.Tensor
                ) -> torch.Tensor:
    if pred_type == "epsilon":
        return noise
    if pred_type == "sample":
        return x0
    return sa * noise - s1 * x0  # v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _output(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.sample


def train(cfg: TrainConfig | None, out: str | Path, *, resume: bool = False, steps: int | None = None,
          progress: bool = True, log: Any = print) -> Path:
    """Train a new run in folder `out` with `cfg`, or resume it (`resume=True`: the run's saved config is
    used; `steps` may extend it). Returns the run folder."""
    from . import data as data_mod
    from .distributed import DistInfo

    dist = DistInfo.from_env()
    run = Path(out)
    latest = ck.latest_checkpoint(run) if resume else None
    if resume:
        if not (run / "config.json").is_file():
            raise ck.CheckpointError(f"{run} is not a run folder (no config.json)")
        saved = ck.read_json(run / "config.json")
        if saved.get("format_version") != ck.FORMAT_VERSION:
            raise ck.CheckpointError(f"{run} was written by an incompatible version "
                                     f"(format {saved.get('format_version')}, expected {ck.FORMAT_VERSION})")
        cfg = TrainConfig(**saved["train"])
        if steps is not None:
            cfg.steps = steps
    else:
        if cfg is None:
            raise ValueError("a new run needs a TrainConfig")
        if (run / "latest").exists():
            raise ValueError(f"{run} already holds a run; use --resume to continue it or pick another --out")
        if steps is not None:
            cfg.steps = steps
    cfg.validate()

    x_data = data_mod.load(cfg.data, n=cfg.n_data, image_size=cfg.image_size)
    sample_shape = tuple(x_data.shape[1:])
    spec = model_spec(cfg, sample_shape)
    sched = build_schedule(cfg)
    torch.manual_seed(cfg.seed)
    net = build_model(spec)
    ema = build_model(spec)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1000003 * dist.rank)
    losses: list[float] = []
    start = 0
    if latest is not None:
        ck.load_state_into(net, latest / "model.safetensors")
        ck.load_state_into(ema, latest / "ema.safetensors")
        ck.restore_optimizer(opt, latest / "optimizer.safetensors")
        rng = ck.load_tensors(latest / "rng.safetensors")
        key = f"rank{dist.rank}"
        if key not in rng:
            raise ck.CheckpointError(f"{latest} has no RNG state for {key} (resumed with a different world size?)")
        gen.set_state(rng[key])
        state = ck.read_json(latest / "state.json")
        start, losses = int(state["step"]), list(state.get("losses", []))
        if dist.is_main:
            log(f"resuming {run} from step {start}")
    run_config = {"format_version": ck.FORMAT_VERSION, "train": dataclasses.asdict(cfg), "model": spec,
                  "schedule": sched.to_diffusers_config(), "prediction_type": cfg.prediction_type,
                  "sample_shape": list(sample_shape)}
    if dist.is_main:
        run.mkdir(parents=True, exist_ok=True)
        ck.atomic_write_json(run / "config.json", run_config)

    model = dist.wrap(net)
    abar = sched.alphas_cumprod.float()
    N = x_data.shape[0]
    per_rank = dist.share(cfg.batch_size)
    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True)
    t_start = time.perf_counter()
    ema_params = list(ema.parameters())
    net_params = list(net.parameters())
    for step in range(start, cfg.steps):
        idx = torch.randint(0, N, (per_rank,), generator=gen)
        x0 = x_data[idx]
        t = torch.randint(0, cfg.num_train_timesteps, (per_rank,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        sa, s1 = _bcast(abar[t].sqrt(), x0), _bcast((1 - abar[t]).sqrt(), x0)
        x_t = sa * x0 + s1 * noise  # q(x_t | x_0), DDPM eq. 4
        loss = F.mse_loss(_output(model(x_t, t)), loss_target(cfg.prediction_type, x0, noise, sa, s1))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net_params, cfg.grad_clip)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in net_params], 1 - decay)
        lv = dist.mean(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"training loss became {lv} at step {step}; lower --lr or check the data")
        losses.append(lv)
        done = step + 1
        if bar is not None:
            bar.update(1)
            if done % 20 == 0 or done == cfg.steps:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}",
                                sps=f"{(done - start) / (time.perf_counter() - t_start):.0f}")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            rng_all = dist.gather_states(gen.get_state())
            if dist.is_main:
                save_run_checkpoint(run, done, net, ema, opt, rng_all, losses)
            dist.barrier()
    if bar is not None:
        bar.close()
    if dist.is_main:
        from .plots import curves

        smooth = _smooth(losses)
        curves({"loss (smoothed)": (list(range(1, len(smooth) + 1)), smooth)}, run / "loss.png", "step",
               "L_simple", logy=True, title=f"{cfg.data}: training loss")
        if spec["type"] == "unet":
            ck.export_diffusers(ema, sched.to_diffusers_config(), run / "diffusers",
                                {"prediction_type": cfg.prediction_type, "clip_sample": False})
    return run


def save_run_checkpoint(run: Path, step: int, net: torch.nn.Module, ema: torch.nn.Module,
                        opt: torch.optim.Optimizer, rng: dict[str, torch.Tensor], losses: list[float]) -> Path:
    opt_t, opt_meta = ck.optimizer_tensors(opt)
    return ck.write_checkpoint(
        run, step,
        files={"model.safetensors": net.state_dict(), "ema.safetensors": ema.state_dict(),
               "optimizer.safetensors": opt_t, "rng.safetensors": rng},
        metas={"optimizer.safetensors": opt_meta},
        state={"losses": losses})


def _smooth(xs: list[float], k: int = 50) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(xs):
        acc += v
        if i >= k:
            acc -= xs[i - k]
        out.append(acc / min(i + 1, k))
    return out


def load_run(run: str | Path, use_ema: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a run folder (EMA weights by default) and its config."""
    run = Path(run)
    cfg = ck.read_json(run / "config.json")
    if cfg.get("format_version") != ck.FORMAT_VERSION:
        raise ck.CheckpointError(f"{run} was written by an incompatible version "
                                 f"(format {cfg.get('format_version')}, expected {ck.FORMAT_VERSION})")
    latest = ck.latest_checkpoint(run)
    if latest is None:
        raise ck.CheckpointError(f"{run} has no complete checkpoint yet")
    net = build_model(cfg["model"])
    ck.load_state_into(net, latest / ("ema.safetensors" if use_ema else "model.safetensors"))
    return net.eval(), cfg
