"""Training with the DDPM objective L_simple (Ho et al. 2020, eq. 14) or flow matching, EMA, AdamW, atomic
checkpoints, resume.

Every random draw (batch indices, t, noise) comes from one torch.Generator whose state is checkpointed,
and the learning rate is a pure function of the step, so a run killed at any point and resumed from its
last checkpoint ends with exactly the weights of an uninterrupted run. Under `torchrun` the same loop
runs as DDP (each rank draws its own share of the batch; rank 0 writes checkpoints).
`train` is four steps: resolve the config (new or resumed), set up the state, run the loop, finish.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.errors import CheckpointError, UsageError
from ..core.guidance import ClassLabels
from ..io import checkpoint as ck
from ..io.config import schedule_to_config
from ..io.distributed import DistInfo
from ..io.runs import check_run_config
from ..models.registry import build_model, model_spec
from .config import FLOW_OBJECTIVES, TrainConfig, build_schedule

#: MeanFlow's adaptive weight 1/(‖Δ‖² + c)^p (Geng et al. 2025, §4.3)
ADAPTIVE_C = 1e-3
#: improved consistency training's pseudo-Huber constant per √dimension (Song & Dhariwal 2023)
HUBER_C = 0.00054


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 0 (a pure function of the step: resumable)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def load_pairs(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, x0) couplings from an .npz written by `ddim reflow` (arrays 'noise' and 'x0')."""
    import numpy as np

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            noise, x0 = z["noise"], z["x0"]
    except (OSError, KeyError, ValueError) as e:
        raise UsageError(f"cannot read reflow pairs {path} (an .npz with 'noise' and 'x0'): {e}") from None
    if noise.shape != x0.shape or noise.ndim < 2 or not (np.isfinite(noise).all() and np.isfinite(x0).all()):
        raise UsageError(f"{path}: 'noise' and 'x0' must be finite arrays of one shape (N, ...)")
    return torch.from_numpy(noise.astype(np.float32)), torch.from_numpy(x0.astype(np.float32))


def noised_batch(cfg: TrainConfig, x0: torch.Tensor, gen: torch.Generator, abar: torch.Tensor | None,
                 coupled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, the network's time input, the regression target) for one batch, every draw from `gen`.

    ddpm: t uniform on the grid, x_t = sqrt(ᾱ) x0 + sqrt(1 − ᾱ) ε (DDPM eq. 4), target ε / x0 / v.
    flow: t ∈ (0, 1) uniform or logit-normal (SD3, Esser et al. 2024 §3.1), or t = 1 (endpoint: the one-step
    map z ↦ x0 = z − u of a coupling, InstaFlow's distillation with an L2 loss), x_t = (1 − t) x0 + t ε,
    target u = ε − x0 (conditional flow matching, Lipman et al. 2023 eq. 23); the net sees t·T. `coupled`:
    the noise paired with each x0 (reflow, Liu et al. 2023 eq. 6) instead of fresh noise.
    """
    n = x0.shape[0]
    if cfg.objective in FLOW_OBJECTIVES:
        if cfg.time_sampling == "logit_normal":
            t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=gen))
        elif cfg.time_sampling == "endpoint":
            t = torch.ones(n)
        else:
            t = torch.rand(n, generator=gen)
        noise = torch.randn(x0.shape, generator=gen) if coupled is None else coupled
        tb = _bcast(t, x0)
        return (1 - tb) * x0 + tb * noise, t * cfg.num_train_timesteps, noise - x0
    t = torch.randint(0, cfg.num_train_timesteps, (n,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    sa, s1 = _bcast(abar[t].sqrt(), x0), _bcast((1 - abar[t]).sqrt(), x0)
    x_t = sa * x0 + s1 * noise
    if cfg.prediction_type == "epsilon":
        target = noise
    elif cfg.prediction_type == "sample":
        target = x0
    else:
        target = sa * noise - s1 * x0  # v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0
    return x_t, t, target


def meanflow_target(cfg: TrainConfig, net: torch.nn.Module, z: torch.Tensor, t_in: torch.Tensor, v: torch.Tensor,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, t·T, interval input (t − r)·T, target u_tgt) for a flow batch (z, t·T, v = ε − x0): MeanFlow's
    identity u(z, r, t) = v − (t − r) d/dt u(z, r, t) (Geng et al. 2025, eq. 6), d/dt u = v·∂_z u + ∂_t u the
    JVP along the tangent (v, 0, 1) in (z, r, t) — (v, T, T) in the network's inputs (z, t·T, (t − r)·T);
    stop-gradient.

    A share `interval_fraction` of the rows draws a second time s like t and takes t = max, r = min (moving
    z along its own path, z + (t' − t) v); the others keep r = t, where the target is v (flow matching). Only
    the r < t rows pay for the JVP."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n, T = z.shape[0], float(cfg.num_train_timesteps)
    if cfg.time_sampling == "logit_normal":
        s = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=gen))
    else:
        s = torch.rand(n, generator=gen)
    pick = torch.rand(n, generator=gen) < cfg.interval_fraction
    rows = pick.nonzero().squeeze(1)
    h_in = torch.zeros_like(t_in)
    target = v.clone()
    if rows.numel():
        z, t_in = z.clone(), t_in.clone()
        t_old, s_in = t_in[rows], s[rows] * T
        t_new = torch.maximum(t_old, s_in)
        h_in[rows] = t_new - torch.minimum(t_old, s_in)
        t_in[rows] = t_new
        z[rows] = z[rows] + _bcast((t_new - t_old) / T, v) * v[rows]
        zr, tr, hr, vr = z[rows], t_new, h_in[rows], v[rows]
        ones = torch.full_like(tr, T)

        def u(z_: torch.Tensor, t_: torch.Tensor, h_: torch.Tensor) -> torch.Tensor:
            return _output(net(z_, t_, class_labels=h_))

        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # CPU flash attention has no forward-mode AD
            _, dudt = torch.func.jvp(u, (zr, tr, hr), (vr, ones, ones))
        target[rows] = vr - _bcast(hr / T, vr) * dudt
    return z, t_in, h_in, target


def objective_loss(cfg: TrainConfig, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to minimise, the plain MSE to log): MSE; the pseudo-Huber √(‖Δ‖² + c²) − c per sample with
    c = 0.00054·√d (Song & Dhariwal 2023, §3.3: robust to the hardest rows); or for meanflow with
    adaptive_power p > 0 the adaptively weighted sg(w)·‖Δ‖², w = 1/(‖Δ‖² + c)^p per sample."""
    if cfg.loss == "pseudo_huber":
        sq = (out - target).square().flatten(1)
        c = HUBER_C * math.sqrt(sq.shape[1])
        return ((sq.sum(1) + c * c).sqrt() - c).mean(), sq.mean()
    if cfg.objective != "meanflow" or cfg.adaptive_power == 0.0:
        loss = F.mse_loss(out, target)
        return loss, loss
    err = (out - target).square().flatten(1).mean(1)
    w = (err.detach() + ADAPTIVE_C).pow(-cfg.adaptive_power)
    return (w * err).mean(), err.mean()


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _output(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.sample


def train(cfg: TrainConfig | None, out: str | Path, *, resume: bool = False, steps: int | None = None,
          progress: bool = True, log: Any = print) -> Path:
    """Train a new run in folder `out` with `cfg`, or resume it (`resume=True`: the run's saved config is
    used; `steps` may extend it). Returns the run folder."""
    dist = DistInfo.from_env()
    run = Path(out)
    cfg = resolve_config(cfg, run, resume, steps)
    state = setup(cfg, run, dist, ck.latest_checkpoint(run) if resume else None, log)
    train_loop(cfg, run, state, dist, progress)
    if dist.is_main:
        finish(cfg, run, state)
    return run


def resolve_config(cfg: TrainConfig | None, run: Path, resume: bool, steps: int | None) -> TrainConfig:
    """The run's saved config when resuming (only `steps` may change), else the given one; validated."""
    if resume:
        if not (run / "config.json").is_file():
            raise CheckpointError(f"{run} is not a run folder (no config.json)")
        where = str(run / "config.json")
        saved = check_run_config(ck.read_json(run / "config.json"), where)
        if not isinstance(saved.get("train"), dict):
            raise CheckpointError(f"{where}: 'train' must be an object of training config keys")
        cfg = TrainConfig.from_dict(saved["train"], where)
    else:
        if cfg is None:
            raise UsageError("a new run needs a TrainConfig")
        if (run / "latest").exists():
            raise UsageError(f"{run} already holds a run; use --resume to continue it or pick another --out")
    if steps is not None:
        cfg = dataclasses.replace(cfg, steps=steps)
    cfg.validate()
    return cfg


@dataclass
class TrainState:
    """Everything the loop updates: data, networks, optimizer, the one generator, the step and the losses."""

    x_data: torch.Tensor
    y_data: torch.Tensor | None  # class labels (conditional runs)
    z_data: torch.Tensor | None  # the noise coupled to each x_data row (reflow pairs)
    spec: dict[str, Any]
    net: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator
    start: int
    losses: list[float]


def setup(cfg: TrainConfig, run: Path, dist: DistInfo, latest: Path | None, log: Any) -> TrainState:
    """Data, networks, optimizer and generator, restored from `latest` when resuming; writes config.json."""
    from ..io import data as data_mod

    z_data = None
    if cfg.pairs is not None:
        z_data, x_data = load_pairs(cfg.pairs)
    else:
        x_data = data_mod.load(cfg.data, n=cfg.n_data, image_size=cfg.image_size)
    sample_shape = tuple(x_data.shape[1:])
    y_data, conditioning = None, None
    if cfg.conditional:
        y_data = data_mod.labels(cfg.data, n=cfg.n_data)
        if len(y_data) != len(x_data):
            raise UsageError(f"{cfg.data}: {len(y_data)} labels for {len(x_data)} samples")
        k = int(y_data.max()) + 1
        conditioning = ClassLabels(k, null=k)
    spec = model_spec(cfg.model, sample_shape, cfg.hidden, cfg.depth,
                      num_classes=None if conditioning is None else conditioning.num_classes,
                      interval=cfg.objective == "meanflow")
    torch.manual_seed(cfg.seed)
    net = build_model(spec)
    ema = build_model(spec)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    if cfg.objective == "meanflow":
        from ..models.meanflow import forward_ad_ready

        forward_ad_ready(net)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1000003 * dist.rank)
    if cfg.init_from is not None and latest is None:  # reflow, meanflow: start from the teacher's EMA weights
        from ..io.loader import load_model
        from ..models.meanflow import IntervalNet, start_from_flow

        teacher = load_model(cfg.init_from).denoiser.net
        teacher = teacher.net if isinstance(teacher, IntervalNet) else teacher
        try:
            if cfg.objective == "meanflow":
                start_from_flow(net, teacher.state_dict())
            else:
                net.load_state_dict(teacher.state_dict())
        except (RuntimeError, AttributeError):
            raise UsageError(f"init_from {cfg.init_from} has a different network than this run") from None
        ema.load_state_dict(net.state_dict())
    state = TrainState(x_data, y_data, z_data, spec, net, ema, opt, gen, 0, [])
    if latest is not None:
        ck.load_state_into(net, latest / "model.safetensors")
        ck.load_state_into(ema, latest / "ema.safetensors")
        ck.restore_optimizer(opt, latest / "optimizer.safetensors")
        rng = ck.load_tensors(latest / "rng.safetensors")
        key = f"rank{dist.rank}"
        if key not in rng:
            raise CheckpointError(f"{latest} has no RNG state for {key} (resumed with a different world size?)")
        gen.set_state(rng[key])
        saved = ck.read_json(latest / "state.json")
        state.start, state.losses = int(saved["step"]), list(saved.get("losses", []))
        if dist.is_main:
            log(f"resuming {run} from step {state.start}")
    if dist.is_main:
        run.mkdir(parents=True, exist_ok=True)
        ck.atomic_write_json(run / "config.json", {
            "format_version": ck.FORMAT_VERSION, "train": dataclasses.asdict(cfg), "model": spec,
            "schedule": schedule_to_config(build_schedule(cfg)), "prediction_type": cfg.prediction_type,
            "sample_shape": list(sample_shape),
            **({"conditioning": conditioning.to_json()} if conditioning is not None else {})})
    return state


def train_loop(cfg: TrainConfig, run: Path, st: TrainState, dist: DistInfo, progress: bool) -> None:
    """Optimizer steps from st.start to cfg.steps, checkpointing every cfg.checkpoint_every steps."""
    model = dist.wrap(st.net)
    path = build_schedule(cfg)
    abar = path.alphas_cumprod.float() if cfg.objective == "ddpm" else None
    N = st.x_data.shape[0]
    per_rank = dist.share(cfg.batch_size)
    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=st.start, desc="train", dynamic_ncols=True)
    t_start = time.perf_counter()
    ema_params = list(st.ema.parameters())
    net_params = list(st.net.parameters())
    null_class = st.spec["config"].get("num_class_embeds", 0) - 1
    for step in range(st.start, cfg.steps):
        idx = torch.randint(0, N, (per_rank,), generator=st.gen)
        x_t, t, target = noised_batch(cfg, st.x_data[idx], st.gen, abar,
                                      None if st.z_data is None else st.z_data[idx])
        kw = {}
        if st.y_data is not None:  # label dropout: the null class k trains the unconditional branch
            y = st.y_data[idx]
            drop = torch.rand(per_rank, generator=st.gen) < cfg.label_dropout
            kw["class_labels"] = torch.where(drop, torch.full_like(y, null_class), y)
        if cfg.objective == "meanflow":
            x_t, t, kw["class_labels"], target = meanflow_target(cfg, st.net, x_t, t, target, st.gen)
        loss, mse = objective_loss(cfg, _output(model(x_t, t, **kw)), target)
        for g in st.opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        st.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net_params, cfg.grad_clip)
        st.opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in net_params], 1 - decay)
        lv = dist.mean(mse.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"training loss became {lv} at step {step}; lower --lr or check the data")
        st.losses.append(lv)
        done = step + 1
        if bar is not None:
            bar.update(1)
            if done % 20 == 0 or done == cfg.steps:
                bar.set_postfix(loss=f"{sum(st.losses[-50:]) / len(st.losses[-50:]):.4f}",
                                sps=f"{(done - st.start) / (time.perf_counter() - t_start):.0f}")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            rng_all = dist.gather_states(st.gen.get_state())
            if dist.is_main:
                save_run_checkpoint(run, done, st.net, st.ema, st.opt, rng_all, st.losses)
            dist.barrier()
    if bar is not None:
        bar.close()


def finish(cfg: TrainConfig, run: Path, st: TrainState) -> None:
    """After the loop: the loss curve, and a diffusers pipeline folder for UNet runs."""
    from ..io.plots import curves

    smooth = _smooth(st.losses)
    curves({"loss (smoothed)": (list(range(1, len(smooth) + 1)), smooth)}, run / "loss.png", "step",
           "L_simple", logy=True, title=f"{cfg.data}: training loss")
    if st.spec["type"] == "unet":
        cond = ck.read_json(run / "config.json").get("conditioning")
        extra = {} if cfg.objective in FLOW_OBJECTIVES else {"prediction_type": cfg.prediction_type,
                                                              "clip_sample": False}
        ck.export_diffusers(st.ema, schedule_to_config(build_schedule(cfg)), run / "diffusers", extra,
                            conditioning=cond)
        if cfg.objective == "meanflow":
            from ..models.meanflow import MEANFLOW_FILE, meanflow_record

            ck.atomic_write_json(run / "diffusers" / MEANFLOW_FILE, meanflow_record())


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


