"""The `ddim` command. Bad input gives a one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..bench.suites import SUITES
from ..core.errors import UsageError
from ..core.guidance import GUIDANCE_RULES
from ..core.schedule import SPACINGS


def _checked(kind: type, minimum: float, what: str):
    """An argparse type: a finite `kind` (int or float) that is at least `minimum`."""

    def parse(s: str) -> int | float:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not (v >= minimum and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"expected a finite {what} >= {minimum}, got {s}")
        return v

    return parse


_positive_int = _checked(int, 1, "integer")
_nonneg_int = _checked(int, 0, "integer")
_finite_nonneg = _checked(float, 0.0, "number")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    from ..core.samplers import SAMPLERS

    p.add_argument("--model", default="mixture:mog3",
                   help="model: mixture:mog3 (exact), a run folder, or a built-in name (default: %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=50,
                   help="number of sampling steps, 1..T (default: %(default)s)")
    p.add_argument("--sampler", default=None, choices=sorted(SAMPLERS),
                   help="sampling method (default: the model's measured best for --steps network evaluations, "
                        "else ddim)")
    p.add_argument("--eta", type=_finite_nonneg, default=None,
                   help="DDIM noise scale: 0 deterministic (default), 1 DDPM-like; only for samplers that take eta")
    p.add_argument("--spacing", default=None, choices=(*SPACINGS, "optimised"),
                   help="timestep spacing (default: the model's, usually trailing)")
    p.add_argument("--seed", type=_nonneg_int, default=0,
                   help="seed of the first sample; sample i uses seed+i (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")


def _sampler_options(args: argparse.Namespace) -> dict:
    return {"eta": args.eta} if args.eta is not None else {}


def _add_guidance_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--class", dest="class_", default=None, metavar="C[,C...]",
                   help="class-conditional models: one class, or a comma list cycled over the samples")
    p.add_argument("--guidance", type=_finite_nonneg, default=None,
                   help="guidance scale w (1: conditional only, 0: unconditional; default 1)")
    p.add_argument("--guidance-rule", default="cfg", choices=GUIDANCE_RULES,
                   help="cfg (Ho & Salimans), apg (Sadat et al. 2025) or cfg++ (Chung et al. 2024; DDIM/DDPM)")
    p.add_argument("--guidance-rescale", type=_finite_nonneg, default=0.0, metavar="PHI",
                   help="CFG rescale φ in [0, 1] (Lin et al. 2024; default 0)")
    p.add_argument("--guidance-interval", type=_finite_nonneg, nargs=2, default=None, metavar=("LO", "HI"),
                   help="guide only where σ/α lies in (LO, HI] (Kynkäänniemi et al. 2024)")
    p.add_argument("--apg-eta", type=float, default=0.0, help="APG: weight of the parallel component (default 0)")
    p.add_argument("--apg-momentum", type=float, default=0.0, help="APG: momentum β in (-1, 0] (default 0)")
    p.add_argument("--cfg-two-calls", action="store_true",
                   help="run the conditional and unconditional branches as two calls (less memory)")


def _guidance(args: argparse.Namespace, default: float = 1.0):
    from ..core.guidance import Guidance

    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    return Guidance(default if args.guidance is None else args.guidance, rule=args.guidance_rule,
                    rescale=args.guidance_rescale, interval=interval, apg_eta=args.apg_eta,
                    apg_momentum=args.apg_momentum, batched=not args.cfg_two_calls)


def _conditioning(args: argparse.Namespace, n: int, labels=None) -> dict:
    """condition / guidance keyword arguments from the flags (labels: per-sample source classes)."""
    from ..io.inputs import class_labels

    cond = class_labels(args.class_, n) if args.class_ is not None else labels
    g = _guidance(args)
    if cond is None:
        if args.guidance is not None and not g.trivial:
            raise UsageError("--guidance needs --class (a class-conditional model)")
        return {}
    return {"condition": cond, "guidance": g}


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from ..io.checkpoint import atomic_save_npy
    from ..io.distributed import DistInfo
    from ..io.inputs import resolve_device
    from ..io.loader import load_model
    from ..io.plots import save_samples_figure
    from ..io.sharding import draw

    out = _npy_path(args.out)
    device = resolve_device(args.device)
    dist = DistInfo.from_env()
    model = load_model(args.model)
    model.to(device, _dtype(args.dtype))
    if args.compile:
        model.denoiser.net = compile_network(model.denoiser.net)
    timesteps = None
    if args.spacing == "optimised":  # the model's schedule.json: its sampler and step list
        args.sampler, timesteps = model.optimised(args.sampler, None)
        args.steps, args.spacing = len(timesteps), None
    else:
        args.sampler, args.spacing, args.steps = model.resolve_sampling(args.steps, args.sampler, args.spacing)
    if "pipeline" in model.info:
        return _sample_prompts(args, model, out)
    if args.prompt:
        raise UsageError(f"{model.name} takes no prompts (a Stable-Diffusion-format folder does)")
    t0 = time.perf_counter()
    with torch.no_grad():
        arr, stats = draw(model.denoiser, model.sample_shape, args.n, batch=args.batch, seed=args.seed,
                          shard_folder=out.with_name(out.stem + ".shards"), dist=dist, steps=args.steps,
                          sampler=args.sampler, spacing=args.spacing, timesteps=timesteps, device=device,
                          **_sampler_options(args),
                          **_conditioning(args, args.n))
    dt = time.perf_counter() - t0
    if not dist.is_main:
        return 0
    atomic_save_npy(out, arr)
    eta = f", eta={args.eta}" if args.eta is not None else ""
    fig = save_samples_figure(torch.from_numpy(arr), out.with_suffix(".png"),
                              f"{model.name}: {args.sampler}{eta} {args.steps} steps")
    ranks = f" on {dist.world_size} ranks" if dist.active else ""
    sp = f", {args.spacing} spacing" if args.spacing else (", optimised schedule" if timesteps is not None else "")
    print(f"{args.n} samples from {model.name} with {args.sampler} ({args.steps} steps{sp}{eta}){ranks}: "
          f"NFE {stats.nfe} per batch, {dt:.2f} s")
    print(f"wrote {out} and {fig}")
    return 0


def _dtype(name: str):
    import torch

    return {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def compile_network(net):
    """torch.compile of the network (the sampler's own step stays eager: it is a few fused tensor ops)."""
    import torch

    try:
        return torch.compile(net)
    except RuntimeError as e:  # e.g. no C++ compiler for the inductor backend
        raise UsageError(f"--compile failed: {str(e).splitlines()[0]}") from None


def _sample_prompts(args: argparse.Namespace, model, out: Path) -> int:
    """Text-to-image: decoded images (N, C, H, W) in [-1, 1] and a PNG grid, in batches of --batch."""
    import torch

    from ..io.checkpoint import atomic_save_npy
    from ..io.plots import save_samples_figure
    from ..ops.text_to_image import text_to_image

    pipe = model.info["pipeline"]
    if args.class_ is not None:
        raise UsageError("this model takes prompts (--prompt), not --class")
    prompts = args.prompt or [""]
    g = _guidance(args, default=7.5)
    t0 = time.perf_counter()
    parts = []
    for a in range(0, args.n, args.batch):
        b = min(args.n, a + args.batch)
        ps = [prompts[i % len(prompts)] for i in range(a, b)]
        with torch.no_grad():
            parts.append(text_to_image(pipe, ps, b - a, negative_prompt=args.negative_prompt, guidance=g,
                                       steps=args.steps, sampler=args.sampler, spacing=args.spacing,
                                       seeds=range(args.seed + a, args.seed + b), **_sampler_options(args)).cpu())
    imgs = torch.cat(parts)
    atomic_save_npy(out, imgs.numpy())
    fig = save_samples_figure(imgs, out.with_suffix(".png"), f"{prompts[0][:40]!r}: {args.sampler} {args.steps} "
                                                            f"steps, guidance {g.scale:g}")
    print(f"{args.n} images {tuple(imgs.shape[1:])} from {model.name} with {args.sampler} ({args.steps} steps, "
          f"guidance {g.scale:g}): {time.perf_counter() - t0:.2f} s")
    print(f"wrote {out} and {fig}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.config import TrainConfig
    from ..training.train import train

    overrides = {"data": args.data, "model": args.model, "steps": args.steps, "batch_size": args.batch_size,
                 "lr": args.lr, "warmup": args.warmup, "grad_clip": args.grad_clip, "ema_decay": args.ema_decay,
                 "seed": args.seed, "prediction_type": args.prediction_type, "schedule": args.schedule,
                 "checkpoint_every": args.checkpoint_every, "image_size": args.image_size,
                 "hidden": args.hidden, "depth": args.depth, "label_dropout": args.label_dropout,
                 "objective": args.objective, "time_sampling": args.time_sampling, "shift": args.shift,
                 "conditional": True if args.conditional else None}
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("objective") == "flow":
        given.setdefault("prediction_type", "flow")
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
                                "checkpoint_every": args.checkpoint_every}.items() if v is not None}
    cfg = TrainConfig.from_dict({**given, "objective": "flow", "prediction_type": "flow"}, "flags")
    t0 = time.perf_counter()
    run = reflow(args.model, args.out, n_pairs=args.pairs, pair_steps=args.pair_steps, pair_sampler=args.pair_sampler,
                 train_config=cfg)
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
    from ..io.schedule_file import FILE, write_schedule
    from ..ops.optimize import search_schedule

    model = load_model(args.model)
    out = Path(args.out) if args.out else (Path(model.info["folder"]) / FILE if "folder" in model.info else None)
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
    r = search_schedule(model.denoiser, args.nfe, args.sampler, method=args.method, n_cal=args.n_cal,
                        progress=True, **kw)
    write_schedule(out, model.denoiser, r, args.method, args.n_cal)
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


def _inputs(args: argparse.Namespace, sample_shape: tuple[int, ...]):
    from ..io.inputs import load_inputs

    return load_inputs(args.input or args.data, sample_shape, index=args.index, n=args.n)


def _input_conditioning(args: argparse.Namespace, den, n: int) -> dict:
    """condition/guidance for data rows: --class, or the rows' own labels when a conditional model encodes
    labelled data."""
    from ..io.inputs import input_labels

    labels = None
    if args.class_ is None and den.conditioning is not None and not args.input:
        labels = input_labels(args.data, index=args.index, n=args.n)
    return _conditioning(args, n, labels)


def _npy_path(out: str) -> Path:
    path = Path(out)
    if path.suffix != ".npy":
        raise UsageError(f"--out must end in .npy, got {path}")
    return path


def cmd_invert(args: argparse.Namespace) -> int:
    from ..core.sample import sample
    from ..io.checkpoint import atomic_save_npy
    from ..io.loader import load_model
    from ..io.plots import save_pairs_figure
    from ..ops.inversion import invert, normality

    out = _npy_path(args.out)
    model = load_model(args.model)
    den = model.denoiser
    if "pipeline" in model.info:  # images → VAE latents, inverted under the prompt
        pipe = model.info["pipeline"]
        images = _inputs(args, pipe.image_shape)
        x0 = pipe.encode(images)
        cond = {"condition": pipe.condition([args.prompt or ""]), "guidance": _guidance(args)}
    else:
        x0 = _inputs(args, model.sample_shape)
        cond = _input_conditioning(args, den, len(x0))
    t0 = time.perf_counter()
    z, stats = invert(den, x0, args.steps, args.spacing, refine=args.refine, eta=args.eta, return_stats=True,
                      **cond)
    nfe = stats.nfe
    rec = sample(den, x_T=z, steps=args.steps, spacing=args.spacing, progress=True, **cond)
    dt = time.perf_counter() - t0
    atomic_save_npy(out, z.cpu().numpy())
    fig = save_pairs_figure(x0, rec, out.with_suffix(".png"), f"encode ({args.steps} steps, refine={args.refine}) "
                                                             "→ decode")
    st = normality(z)
    mse = float((rec - x0).pow(2).mean())
    print(f"encoded {x0.shape[0]} samples with {args.steps} steps, refine={args.refine}: NFE {nfe}, {dt:.2f} s")
    print(f"round-trip per-dimension MSE {mse:.3e} (data variance {float(x0.var()):.3e}); encodings mean "
          f"{st['mean']:+.3f}, var {st['var']:.3f}, KS vs N(0,1) {st['ks']:.3f}")
    print(f"wrote {out} and {fig}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from ..core.noise import SeededNoise
    from ..io.loader import load_model
    from ..io.plots import save_animation, save_strip
    from ..ops.latent import interpolate

    model = load_model(args.model)
    den = model.denoiser
    if args.seeds:
        ends = SeededNoise(args.seeds, model.sample_shape).initial()
        encode = False
    else:
        if not args.index or len(args.index) != 2:
            raise UsageError("give --seeds A B (noise endpoints) or --index I J with --data/--input (data endpoints)")
        ends = _inputs(args, model.sample_shape)
        encode = True
    cond = _conditioning(args, 1)
    xs = interpolate(den, ends[:1], ends[1:], args.n, method=args.method, encode=encode, steps=args.steps, **cond)
    out = Path(args.out)
    strip = save_strip(xs, out, f"{args.method} in noise space, {args.n} points, DDIM {args.steps} steps")
    gif = save_animation(xs, out.with_suffix(".gif"))
    print(f"wrote {strip} and {gif}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from ..io.loader import load_model

    model = load_model(args.model)
    if "pipeline" in model.info:
        return _edit_prompts(args, model)
    x0 = _inputs(args, model.sample_shape)
    if args.to_class is not None or args.strength is not None:
        return _edit_class(args, model, x0)
    from ..io.inputs import load_direction
    from ..io.plots import save_edit_grid
    from ..ops.latent import edit

    den = model.denoiser
    direction = load_direction(args.direction, den, model.sample_shape, examples=args.examples, steps=args.steps)
    scales = _numbers(args.scales, "--scales")
    outs = edit(den, x0, direction, scales, steps=args.steps, **_input_conditioning(args, den, len(x0)))
    fig = save_edit_grid(outs, scales, Path(args.out))
    print(f"edited {x0.shape[0]} samples along {args.direction} at scales {scales}")
    print(f"wrote {fig}")
    return 0


def _numbers(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def _edit_prompts(args: argparse.Namespace, model) -> int:
    """Real images: invert under --prompt, regenerate under --to-prompt; img2img (SDEdit) at each --strength."""
    import torch

    from ..io.plots import save_edit_grid
    from ..ops.text_to_image import edit_images, img2img

    pipe = model.info["pipeline"]
    if args.to_prompt is None:
        raise UsageError("give --to-prompt (the prompt to edit towards) and --prompt (the images' own)")
    images = _inputs(args, pipe.image_shape)
    g = _guidance(args, default=7.5)
    r = edit_images(pipe, images, args.prompt or "", args.to_prompt, steps=args.steps, guidance=g,
                    inversion=args.inversion, refine=args.refine)
    cols, outs = ["real", "reconstruction", f"→ {args.to_prompt[:20]!r}"], [images, r.reconstruction, r.edited]
    for s in _numbers(args.strength, "--strength") if args.strength else []:
        outs.append(img2img(pipe, images, args.to_prompt, s, guidance=g, steps=args.steps, seed=args.seed))
        cols.append(f"img2img {s:g}")
    fig = save_edit_grid(torch.stack(outs), cols, Path(args.out))
    mse = float((r.reconstruction - images).pow(2).mean())
    print(f"edited {len(images)} images to {args.to_prompt!r} ({args.inversion} inversion, {args.steps} steps, "
          f"guidance {g.scale:g}): reconstruction MSE {mse:.3e}")
    print(f"wrote {fig}")
    return 0


def _edit_class(args: argparse.Namespace, model, x0) -> int:
    """Invert under the source class, regenerate under --to-class; SDEdit at each --strength."""
    import torch

    from ..io.plots import save_edit_grid
    from ..ops.editing import sdedit, swap_condition

    den = model.denoiser
    if den.conditioning is None:
        raise UsageError(f"{model.name} is unconditional: --to-class and --strength need a class-conditional model")
    if args.to_class is None:
        raise UsageError("give --to-class C (the class to edit towards)")
    src = _input_conditioning(args, den, len(x0))
    if "condition" not in src:
        raise UsageError("give --class (the source class) for inputs without labels")
    target = [args.to_class] * len(x0)
    g = src["guidance"]
    r = swap_condition(den, x0, src["condition"], target, steps=args.steps, spacing=args.spacing, guidance=g,
                       inversion=args.inversion, refine=args.refine)
    cols, outs = ["real", "reconstruction", f"→ {args.to_class}"], [x0, r.reconstruction, r.edited]
    for s in _numbers(args.strength, "--strength") if args.strength else []:
        outs.append(sdedit(den, x0, s, condition=target, guidance=g, steps=args.steps, spacing=args.spacing,
                           seed=args.seed))
        cols.append(f"SDEdit {s:g}")
    fig = save_edit_grid(torch.stack(outs), cols, Path(args.out))
    mse = float((r.reconstruction - x0).pow(2).mean())
    print(f"edited {len(x0)} samples to class {args.to_class} ({args.inversion} inversion, {args.steps} steps, "
          f"guidance {g.scale:g}): reconstruction MSE {mse:.3e}")
    print(f"wrote {fig}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench.suites import run

    command = "ddim " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else f"ddim bench {args.suite}"
    run(args.suite, args.out, quick=args.quick, command=command, device=args.device, n=args.n,
        steps_list=args.steps_list, steps=args.steps, seeds=args.seeds, reflowed=args.reflowed, model=args.model)
    return 0


def cmd_likelihood(args: argparse.Namespace) -> int:
    from ..io.checkpoint import atomic_save_npy
    from ..io.loader import load_model
    from ..ops.likelihood import log_likelihood

    out = _npy_path(args.out) if args.out else None
    model = load_model(args.model)
    x = _inputs(args, model.sample_shape)
    x = x.double() if args.float64 else x
    t0 = time.perf_counter()
    ll = log_likelihood(model.denoiser, x, exact=args.exact, probes=args.probes, bits_per_dim=args.bits_per_dim,
                        **_input_conditioning(args, model.denoiser, len(x)))
    unit = "bits/dim" if args.bits_per_dim else "nats"
    print(f"{x.shape[0]} samples under {model.name}: mean {float(ll.mean()):.4f} {unit} "
          f"(std {float(ll.std()) if ll.numel() > 1 else 0.0:.4f}), {time.perf_counter() - t0:.1f} s")
    true = model.exact_log_likelihood(x, bits_per_dim=args.bits_per_dim)
    if true is not None:
        print(f"true value under the exact mixture: {float(true.mean()):.4f} {unit}")
    if out is not None:
        atomic_save_npy(out, ll.numpy())
        print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddim", description="Fast, deterministic sampling of diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="draw samples from a model and write .npy + PNG",
                       description="Draw samples with any sampler and timestep schedule; writes FILE.npy and FILE.png.")
    _add_sampling_options(p)
    _add_guidance_options(p)
    p.add_argument("--prompt", action="append", default=None,
                   help="text-to-image folders: the prompt (repeat for several, cycled over the samples)")
    p.add_argument("--negative-prompt", default=None, help="the negative prompt (default: the empty prompt)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="the networks' dtype (the sampler's maths stay float32/float64; default float32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("-n", "--n", type=_positive_int, default=1000,
                   help="number of samples (default: %(default)s); under torchrun write -n, since torchrun's own "
                        "parser claims every --n... prefix")
    p.add_argument("--batch", type=_positive_int, default=1000,
                   help="samples per batch; more samples than this (or torchrun) are written as resumable shards "
                        "in OUT.shards/ (default: %(default)s)")
    p.add_argument("--out", default="samples.npy", help="output .npy file; a PNG is written beside it")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train", help="train a noise predictor with the DDPM objective",
                       description="Train with L_simple, AdamW, warm-up + cosine decay, EMA; checkpoints are atomic "
                                   "and --resume continues exactly where a run stopped.")
    p.add_argument("--data", default=None, help="mog3, moons, swissroll, digits, a .npy/.npz file or an image folder")
    p.add_argument("--model", default=None, choices=["auto", "mlp", "unet"], help="network (default: auto by data)")
    p.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps (default 3000)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="batch size (default 256)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3)")
    p.add_argument("--warmup", type=_nonneg_int, default=None, help="linear warm-up steps (default 100)")
    p.add_argument("--grad-clip", type=float, default=None, help="gradient-norm clip, 0 = off (default 1.0)")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the weights (default 0.999)")
    p.add_argument("--seed", type=_nonneg_int, default=None, help="seed of every random draw (default 0)")
    p.add_argument("--prediction-type", default=None, choices=["epsilon", "sample", "v_prediction"],
                   help="what the network predicts under the ddpm objective (default epsilon)")
    p.add_argument("--objective", default=None, choices=["ddpm", "flow"],
                   help="ddpm (L_simple on a β schedule, default) or flow (flow matching, velocity ε − x0)")
    p.add_argument("--time-sampling", default=None, choices=["uniform", "logit_normal"],
                   help="flow: how t is drawn (default uniform; logit_normal as SD3)")
    p.add_argument("--shift", type=float, default=None,
                   help="flow: σ-list shift s > 0 stored with the model, σ' = sσ/(1+(s−1)σ) (default 1)")
    p.add_argument("--schedule", default=None, choices=["linear", "scaled_linear", "cosine"],
                   help="beta schedule (default linear)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, help="steps between checkpoints (500)")
    p.add_argument("--image-size", type=_positive_int, default=None, help="resize images of a folder to this size")
    p.add_argument("--hidden", type=_positive_int, default=None, help="MLP width (default 128)")
    p.add_argument("--depth", type=_positive_int, default=None, help="MLP residual blocks (default 3)")
    p.add_argument("--conditional", action="store_true",
                   help="class-conditional model (labelled data: digits or .npz with x, y) with a null class")
    p.add_argument("--label-dropout", type=float, default=None,
                   help="share of labels replaced by the null class, for guidance (default 0.1)")
    p.add_argument("--config", default=None, help="YAML/TOML file of config keys (flags override it)")
    p.add_argument("--out", default=None, help="run folder to create")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="progressive distillation to 1-4 steps",
                       description="Progressive distillation (Salimans & Ho 2022): v-prediction students that each "
                                   "learn two teacher DDIM steps in one, halving the steps every round. Writes "
                                   "OUT/round-K/ per round (rerunning resumes) and OUT/model (the 1/2/4-step "
                                   "students in one folder).")
    p.add_argument("--model", default="digits", help="teacher: a grid-schedule model (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", default="progressive", choices=["progressive", "consistency"],
                   help="progressive (halving rounds, default) or consistency (LCM-style consistency distillation)")
    p.add_argument("--data", default="digits", help="training data for the student (default: %(default)s)")
    p.add_argument("--start-steps", type=_positive_int, default=64, help="teacher DDIM steps (default 64)")
    p.add_argument("--teacher-solver", default="ddim", choices=["ddim", "dpmpp_2m"],
                   help="solver for the first round's targets from the original teacher (default: %(default)s)")
    p.add_argument("--teacher-substeps", type=_positive_int, default=2,
                   help="teacher solver steps per first-round student step (default 2, the paper's recipe)")
    p.add_argument("--final-steps", type=_positive_int, default=1, help="steps of the last student (default 1)")
    p.add_argument("--iters", type=_positive_int, default=1000, help="optimizer steps per round (default 1000)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate (default 2e-4)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed (default 0)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("schedule", help="search a step list for a model and sampler (GITS, coordinate descent)",
                       description="Search the timesteps for an NFE budget on a calibration batch and store them as "
                                   "schedule.json beside the model (use with --spacing optimised).")
    p.add_argument("--model", required=True, help="a run folder or diffusers folder (or give --out)")
    p.add_argument("--nfe", type=_positive_int, default=10, help="network evaluations (default: %(default)s)")
    p.add_argument("--sampler", default="unipc", help="the sampler the schedule is for (default: %(default)s)")
    p.add_argument("--method", default="gits+cd", choices=["gits", "coordinate", "gits+cd", "ays"],
                   help="GITS dynamic programming, coordinate descent, GITS refined by it (default), or Align "
                        "Your Steps' KL upper bound minimised by dynamic programming (needs --data)")
    p.add_argument("--data", default=None, help="--method ays: the model's training data (e.g. digits, mog3)")
    p.add_argument("--n-cal", type=_positive_int, default=512, help="calibration samples (default: %(default)s)")
    p.add_argument("--out", default=None, help="where to write (default: MODEL/schedule.json)")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("reflow", help="rectified flow: couple noise with the model's ODE samples and fine-tune",
                       description="Reflow (Liu et al. 2023): draw (noise, sample) pairs with an ODE sampler from a "
                                   "flow-matching model, then fine-tune it on straight paths between them. Writes "
                                   "OUT/pairs.npz and the run OUT/run; rerunning resumes.")
    p.add_argument("--model", default="digits-flow", help="flow-matching model to straighten (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder (pairs.npz and run/)")
    p.add_argument("--pairs", type=_positive_int, default=20000, help="number of pairs (default: %(default)s)")
    p.add_argument("--pair-steps", type=_positive_int, default=20, help="ODE steps per pair (default: %(default)s)")
    p.add_argument("--pair-sampler", default="dpmpp_2m", help="ODE sampler for the pairs (default: %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=4000, help="fine-tuning steps (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default: %(default)s)")
    p.add_argument("--warmup", type=_nonneg_int, default=100, help="warm-up steps (default: %(default)s)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (default: %(default)s)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=500, help="steps between checkpoints (500)")
    p.set_defaults(func=cmd_reflow)

    p = sub.add_parser("demo", help="the 2-D DDIM tutorial end to end, with a report",
                       description="Train an MLP on mog3, then compare DDIM/DDPM samplers, check determinism and "
                                   "decode a slerp path; writes report.md and PNGs.")
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("--train-steps", type=_positive_int, default=3000, help="training steps (default: %(default)s)")
    p.add_argument("--n", type=_positive_int, default=1000, help="points per sampler (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a fast smoke run (few training steps, small n)")
    p.set_defaults(func=cmd_demo)

    def add_latent(p: argparse.ArgumentParser, default_model: str = "digits") -> None:
        p.add_argument("--model", default=default_model, help="model (default: %(default)s)")
        p.add_argument("--steps", type=_positive_int, default=50,
                       help="DDIM steps for encoding and decoding (default: 50)")
        p.add_argument("--spacing", default=None, choices=SPACINGS, help="timestep spacing (default: the model's)")
        p.add_argument("--data", default="digits", help="data to encode: a built-in name (default: digits)")
        p.add_argument("--input", default=None, help="or a .npy/.npz file of samples to encode")
        p.add_argument("--index", type=int, nargs="+", default=None, help="rows of the data to use")
        p.add_argument("--n", type=_positive_int, default=16, help="number of rows when no --index (default 16)")
        _add_guidance_options(p)
        p.add_argument("--prompt", default=None, help="text-to-image folders: the images' own prompt")

    p = sub.add_parser("invert", help="encode data to noise with DDIM inversion (and check the round trip)",
                       description="Encode data to x_T by running DDIM forward in time; writes the encodings "
                                   "(.npy) and an original-vs-reconstruction picture.")
    add_latent(p)
    p.add_argument("--refine", type=_nonneg_int, default=3,
                   help="fixed-point iterations per step (0 = naive inversion; default 3)")
    p.add_argument("--eta", type=float, default=0.0, help="must be 0: inversion needs the deterministic sampler")
    p.add_argument("--out", default="encodings.npy", help="output .npy of encodings; a PNG is written beside it")
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser("interpolate", help="decode a slerp/lerp path between two endpoints (strip PNG + GIF)",
                       description="Interpolate between two noise seeds (--seeds) or two data points "
                                   "(--index I J, encoded first) and decode each point with DDIM.")
    add_latent(p)
    p.add_argument("--seeds", type=_nonneg_int, nargs=2, default=None, help="two noise seeds as endpoints")
    p.add_argument("--method", default="slerp", choices=["slerp", "lerp"], help="path (default: slerp)")
    p.set_defaults(n=10)
    p.add_argument("--out", default="interpolation.png", help="strip PNG; an animated GIF is written beside it")
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("edit", help="encode, move along a latent direction, decode",
                       description="Edit samples along a latent direction: class:A-B (mean digits encoding of "
                                   "class A minus class B) or a .npy file holding the direction.")
    add_latent(p)
    p.add_argument("--direction", default="class:3-8", help="class:A-B or a .npy direction (default: %(default)s)")
    p.add_argument("--scales", default="-1,-0.5,0,0.5,1", help="comma-separated scales (default: %(default)s)")
    p.add_argument("--examples", type=_positive_int, default=64,
                   help="examples per class for class directions (default 64)")
    p.add_argument("--to-prompt", default=None, help="text-to-image folders: the prompt to regenerate under")
    p.add_argument("--to-class", type=_nonneg_int, default=None,
                   help="conditional models: invert under the source class, regenerate under this one")
    p.add_argument("--inversion", default="refined", choices=["naive", "refined", "negative"],
                   help="inversion for --to-class (default: refined; negative: conditional-only inversion with the "
                        "source as the negative branch)")
    p.add_argument("--refine", type=_nonneg_int, default=3, help="fixed-point iterations per step (default 3)")
    p.add_argument("--strength", default=None, help="SDEdit strengths in (0, 1], comma-separated, e.g. 0.3,0.5,0.8")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the SDEdit noise (sample i: seed+i)")
    p.add_argument("--out", default="edit.png", help="output PNG grid (rows: samples, columns: scales)")
    p.set_defaults(n=4)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("likelihood", help="log-likelihood of data through the probability-flow ODE",
                       description="Per-sample log-likelihood (nats, or bits/dim) by integrating the PF-ODE with an "
                                   "adaptive solver: exact divergence in low dimension, Hutchinson otherwise.")
    add_latent(p, default_model="mixture:mog3")
    p.set_defaults(data="mog3", n=200)
    p.add_argument("--exact", action=argparse.BooleanOptionalAction, default=None,
                   help="exact divergence (default: when the dimension is at most 16)")
    p.add_argument("--probes", type=_positive_int, default=4, help="Hutchinson probes when not exact (default 4)")
    p.add_argument("--bits-per-dim", action="store_true", help="report bits per dimension instead of nats")
    p.add_argument("--float64", action="store_true", help="compute in float64")
    p.add_argument("--out", default=None, help="optional .npy of per-sample values")
    p.set_defaults(func=cmd_likelihood)

    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(SUITES),
                       description="Benchmarks that measure side by side in one run and write report.md + PNGs.")
    p.add_argument("suite", choices=SUITES)
    p.add_argument("--out", default="bench_out", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a small, fast run (smoke test)")
    p.add_argument("--steps", type=_positive_int, default=50,
                   help="steps for the overhead suite (default 50)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--n", type=_positive_int, default=None,
                   help="samples per seed set and cell for the quality suites (default 2000)")
    p.add_argument("--seeds", type=_positive_int, default=3,
                   help="seed sets pooled per cell for the quality suites (default 3)")
    p.add_argument("--model", default=None, metavar="FOLDER",
                   help="speed / reconstruction suites: a Stable-Diffusion-format folder (speed: beside diffusers' "
                        "pipeline; reconstruction: prompt-conditioned inversion under guidance 1 / 3 / 7.5); "
                        "fewstep: a consistency-distilled model to add")
    p.add_argument("--reflowed", default=None, metavar="MODEL",
                   help="flow / fewstep suites: a reflowed model (from ddim reflow) to compare at few NFE")
    p.add_argument("--steps-list", type=_positive_int, nargs="+", default=None,
                   help="step counts for the quality suite (default: 10 20 50 100)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a malformed flag (argparse has printed usage and the error)
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except (UsageError, FloatingPointError, OSError) as e:  # bad input, a diverging run, an unusable file
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"ddim {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # e.g. a collective timed out because another rank died
        print(f"ddim {args.command}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ddim {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        from ..io.distributed import shutdown

        shutdown()


if __name__ == "__main__":
    sys.exit(main())
