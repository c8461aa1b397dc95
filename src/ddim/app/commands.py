"""The commands that are not sampling requests: training, distillation, reflow, schedule search, demo, bench."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..core.errors import UsageError


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.config import TrainConfig
    from ..training.train import train

    overrides = {"data": args.data, "model": args.model, "steps": args.steps, "batch_size": args.batch_size,
                 "lr": args.lr, "warmup": args.warmup, "grad_clip": args.grad_clip, "ema_decay": args.ema_decay,
                 "seed": args.seed, "prediction_type": args.prediction_type, "schedule": args.schedule,
                 "checkpoint_every": args.checkpoint_every, "image_size": args.image_size,
                 "hidden": args.hidden, "depth": args.depth, "label_dropout": args.label_dropout,
                 "objective": args.objective, "time_sampling": args.time_sampling, "shift": args.shift,
                 "logit_mean": args.logit_mean, "logit_std": args.logit_std, "loss": args.loss,
                 "interval_fraction": args.interval_fraction, "init_from": args.init_from,
                 "num_train_timesteps": args.num_train_timesteps, "adaptive_power": args.adaptive_power,
                 "conditional": True if args.conditional else None}
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("objective") in ("flow", "flow_matching", "meanflow"):
        given.setdefault("prediction_type", "flow_prediction")
    cfg = TrainConfig.from_file(args.config, **given) if args.config else TrainConfig.from_dict(given, "flags")
    t0 = time.perf_counter()
    if args.resume is not None:  # the run's saved config rules; only --steps may extend it
        run = train(None, args.resume, resume=True, steps=args.steps)
    elif args.out is None:
        raise UsageError("give --out RUN_FOLDER (or --resume RUN_FOLDER)")
    else:
        run = train(cfg, args.out)
    print(f"trained {run} in {time.perf_counter() - t0:.1f} s")
    print(f"wrote {run / 'config.json'}, checkpoints in {run}/ckpt-*, loss curve {run / 'loss.png'}")
    if (run / "diffusers").is_dir():
        print(f"diffusers pipeline folder: {run / 'diffusers'}")
    return 0




def cmd_reflow(args: argparse.Namespace) -> int:
    from ..training.config import TrainConfig
    from ..training.reflow import reflow

    given = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                                "warmup": args.warmup, "ema_decay": args.ema_decay, "seed": args.seed,
                                "checkpoint_every": args.checkpoint_every,
                                "time_sampling": args.time_sampling, "loss": args.loss}.items() if v is not None}
    cfg = TrainConfig.from_dict({**given, "objective": "flow_matching", "prediction_type": "flow_prediction",
                                 "pairs": str(Path(args.out) / "pairs.npz")}, "flags")
    t0 = time.perf_counter()
    run = reflow(args.model, args.out, n_pairs=args.pairs, pair_steps=args.pair_steps, pair_sampler=args.pair_sampler,
                 train_config=cfg, init_from=args.init_from)
    print(f"reflowed {args.model} in {time.perf_counter() - t0:.1f} s: run {run}")
    if (run / "diffusers").is_dir():
        print(f"diffusers pipeline folder: {run / 'diffusers'}")
    return 0




def cmd_distill(args: argparse.Namespace) -> int:
    from ..training.distill import consistency_distill, package, progressive_distill

    t0 = time.perf_counter()
    if args.method == "consistency":
        run = consistency_distill(args.model, args.out, iters=args.iters, batch_size=args.batch_size, lr=args.lr,
                                  seed=args.seed, data=args.data)
        print(f"distilled {args.model} in {time.perf_counter() - t0:.1f} s: {run / 'diffusers'}")
        return 0
    rounds = progressive_distill(args.model, args.out, start_steps=args.start_steps, final_steps=args.final_steps,
                                 iters=args.iters, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                 data=args.data, teacher_solver=args.teacher_solver,
                                 teacher_substeps=args.teacher_substeps)
    kept = tuple(k for k in (1, 2, 4) if args.final_steps <= k < args.start_steps)
    model = package(rounds, rounds / "model", kept)
    print(f"distilled {args.model} in {time.perf_counter() - t0:.1f} s; rounds in {rounds}")
    print(f"model folder (students for its step counts): {model}")
    return 0




def cmd_schedule(args: argparse.Namespace) -> int:
    from ..io.loader import load_model
    from ..io.schedule_file import FILE, search_for_model, write_schedule
    from .requests import image_size

    model = load_model(args.model)
    out = Path(args.out) if args.out else (model.folder / FILE if model.folder is not None else None)
    if out is None:
        raise UsageError(f"{model.name} has no folder for {FILE}: give --out FILE")
    kw = {}
    if args.method == "ays":
        from ..io.data import load as load_data

        if args.data is None:
            raise UsageError("--method ays needs --data: samples of the data the model was trained on")
        kw["x_data"] = load_data(args.data)
    elif args.data is not None:
        raise UsageError("--data is for --method ays (the other searches start from noise)")
    t0 = time.perf_counter()
    size = image_size(args.size) if args.size is not None else None
    r, searched = search_for_model(model, args.nfe, args.sampler, args.method, args.n_cal, prompt=args.prompt,
                                   negative_prompt=args.negative_prompt, guidance=args.guidance, size=size,
                                   progress=True, **kw)
    write_schedule(out, model.denoiser, r, args.method, args.n_cal, searched)
    print(f"{args.method} schedule for {args.sampler} at NFE {args.nfe}: {[round(t, 4) for t in r.timesteps.tolist()]}"
          f" in {time.perf_counter() - t0:.1f} s")
    print(f"calibration error {r.error_optimized:.4g} (best fixed spacing {r.error_start:.4g}; calibration batch "
          f"{args.n_cal}: judge it on another batch, e.g. ddim bench fewstep)")
    print(f"wrote {out}; use it with --spacing optimised")
    return 0




def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, train_steps=args.train_steps, n=args.n, quick=args.quick)
    return 0




def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench.suites import run
    from .requests import image_size

    command = "ddim " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else f"ddim bench {args.suite}"
    run(args.suite, args.out, quick=args.quick, command=command, device=args.device, n=args.n,
        steps_list=args.steps_list, steps=args.steps, seeds=args.seeds, reflowed=args.reflowed, model=args.model,
        meanflow=args.meanflow, size=image_size(args.size) if args.size is not None else None)
    return 0




def cmd_serve(args: argparse.Namespace) -> int:
    """Build the service from the flags (refusing an exposed bind without keys) and serve it."""
    from .server import require_serve

    require_serve()
    from pathlib import Path

    from ..api.service import Limits, Service, served_models
    from ..core.errors import UsageError
    from .server import LOOPBACK, serve

    keys = None
    if args.api_key_file is not None:
        try:
            keys = [k.strip() for k in Path(args.api_key_file).read_text().splitlines() if k.strip()]
        except OSError as e:
            raise UsageError(f"--api-key-file {args.api_key_file}: {e.strerror or e}") from None
    if args.host not in LOOPBACK and keys is None:
        raise UsageError(f"--host {args.host} exposes the server beyond this machine: give --api-key-file")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must lie in 0..65535, got {args.port}")
    if args.max_replicas is not None and not args.ray:
        raise UsageError("--max-replicas needs --ray")
    if args.serial and args.ray:
        raise UsageError("--serial is the single-process baseline: it takes no --ray")
    if args.serial and args.chunk != 16:
        raise UsageError("--serial makes whole-request calls: it takes no --chunk")
    if args.replicas != 1 and not args.ray:
        raise UsageError("--replicas needs --ray")
    models = served_models(args.models.split(","))
    limits = Limits(max_rows=args.max_rows, max_queue=args.max_queue, max_steps=args.max_steps,
                    max_size=args.max_size, max_body=args.max_body, client_timeout=args.client_timeout)
    options = {"store": args.store, "limits": limits, "keys": keys, "device": args.device, "ttl": args.result_ttl,
               "max_bytes": args.result_max_bytes, "serial": args.serial, "chunk": args.chunk}
    cors = [o.strip() for o in args.cors.split(",") if o.strip()] if args.cors else None
    if args.ray:
        from .ray_serve import serve_ray

        return serve_ray(models, options, args.host, args.port, cors=cors, replicas=args.replicas,
                         max_replicas=args.max_replicas)
    serve(Service(models, **options), args.host, args.port, cors=cors)
    return 0
