"""The `ddim` command. Bad input gives a one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .schedule import SPACINGS


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    from .samplers import SAMPLERS

    p.add_argument("--model", default="mixture:mog3",
                   help="model: mixture:mog3 (exact), a run folder, or a built-in name (default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, help="number of sampling steps, 1..T (default: %(default)s)")
    p.add_argument("--sampler", default="ddim", choices=sorted(SAMPLERS), help="sampling method (default: %(default)s)")
    p.add_argument("--eta", type=float, default=0.0,
                   help="DDIM noise scale: 0 deterministic, 1 DDPM-like (default: %(default)s)")
    p.add_argument("--spacing", default=None, choices=SPACINGS,
                   help="timestep spacing (default: the model's, usually trailing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample; sample i uses seed+i (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from . import sample
    from .loader import load_model
    from .plots import save_samples_figure

    model = load_model(args.model)
    den = model.denoiser
    if hasattr(den.net, "to"):
        den.net.to(args.device)
    out = Path(args.out)
    if out.suffix != ".npy":
        raise CLIError(f"--out must end in .npy, got {out}")
    t0 = time.perf_counter()
    x = sample(den, (args.n, *model.sample_shape), steps=args.steps, sampler=args.sampler, eta=args.eta,
               spacing=args.spacing, seed=args.seed, device=args.device, progress=True)
    dt = time.perf_counter() - t0
    arr = x.detach().cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(out)
    fig = save_samples_figure(x.cpu(), out.with_suffix(".png"),
                              f"{model.name}: {args.sampler} eta={args.eta} {args.steps} steps")
    print(f"{args.n} samples from {model.name} with {args.sampler} ({args.steps} steps, eta={args.eta}): "
          f"NFE {den.last_nfe}, {dt:.2f} s")
    print(f"wrote {out} and {fig}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    overrides = {"data": args.data, "model": args.model, "steps": args.steps, "batch_size": args.batch_size,
                 "lr": args.lr, "warmup": args.warmup, "grad_clip": args.grad_clip, "ema_decay": args.ema_decay,
                 "seed": args.seed, "prediction_type": args.prediction_type, "schedule": args.schedule,
                 "checkpoint_every": args.checkpoint_every, "image_size": args.image_size,
                 "hidden": args.hidden, "depth": args.depth}
    if args.config:
        cfg = TrainConfig.from_file(args.config, **overrides)
    else:
        cfg = TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    t0 = time.perf_counter()
    if args.resume is not None:  # the run's saved config rules; only --steps may extend it
        run = train(None, args.resume, resume=True, steps=args.steps)
    elif args.out is None:
        raise CLIError("give --out RUN_FOLDER (or --resume RUN_FOLDER)")
    else:
        run = train(cfg, args.out)
    print(f"trained {run} in {time.perf_counter() - t0:.1f} s")
    print(f"wrote {run / 'config.json'}, checkpoints in {run}/ckpt-*, loss curve {run / 'loss.png'}")
    if (run / "diffusers").is_dir():
        print(f"diffusers pipeline folder: {run / 'diffusers'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, train_steps=args.train_steps, n=args.n, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddim", description="Fast, deterministic sampling of diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="draw samples from a model and write .npy + PNG",
                       description="Draw samples with any sampler and timestep schedule; writes FILE.npy and FILE.png.")
    _add_sampling_options(p)
    p.add_argument("--n", type=_positive_int, default=1000, help="number of samples (default: %(default)s)")
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
    p.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (default 100)")
    p.add_argument("--grad-clip", type=float, default=None, help="gradient-norm clip, 0 = off (default 1.0)")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the weights (default 0.999)")
    p.add_argument("--seed", type=int, default=None, help="seed of every random draw (default 0)")
    p.add_argument("--prediction-type", default=None, choices=["epsilon", "sample", "v_prediction"],
                   help="what the network predicts (default epsilon)")
    p.add_argument("--schedule", default=None, choices=["linear", "scaled_linear", "cosine"],
                   help="beta schedule (default linear)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, help="steps between checkpoints (500)")
    p.add_argument("--image-size", type=int, default=None, help="resize images of a folder to this size")
    p.add_argument("--hidden", type=int, default=None, help="MLP width (default 128)")
    p.add_argument("--depth", type=int, default=None, help="MLP residual blocks (default 3)")
    p.add_argument("--config", default=None, help="YAML/TOML file of config keys (flags override it)")
    p.add_argument("--out", default=None, help="run folder to create")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="the 2-D DDIM tutorial end to end, with a report",
                       description="Train an MLP on mog3, then compare DDIM/DDPM samplers, check determinism and "
                                   "decode a slerp path; writes report.md and PNGs.")
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("--train-steps", type=_positive_int, default=3000, help="training steps (default: %(default)s)")
    p.add_argument("--n", type=_positive_int, default=1000, help="points per sampler (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a fast smoke run (few training steps, small n)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FloatingPointError, OSError) as e:
        print(f"ddim {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddim {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
