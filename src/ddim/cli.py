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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddim", description="Fast, deterministic sampling of diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="draw samples from a model and write .npy + PNG",
                       description="Draw samples with any sampler and timestep schedule; writes FILE.npy and FILE.png.")
    _add_sampling_options(p)
    p.add_argument("--n", type=_positive_int, default=1000, help="number of samples (default: %(default)s)")
    p.add_argument("--out", default="samples.npy", help="output .npy file; a PNG is written beside it")
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, PermissionError, OSError) as e:
        print(f"ddim {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddim {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
