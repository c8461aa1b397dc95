"""Flags → a request, the request → `ddim.api.run`, the result → files and a few printed lines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..core.errors import UsageError


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _guidance(args: argparse.Namespace) -> dict[str, Any]:
    g: dict[str, Any] = {}
    if args.guidance_rule != "cfg":
        g["rule"] = args.guidance_rule
    if args.guidance_rescale:
        g["rescale"] = args.guidance_rescale
    if args.cfg_two_calls:
        g["two_calls"] = True
    if args.guidance is not None:
        g["scale"] = args.guidance
    if args.guidance_interval:
        g["interval"] = list(args.guidance_interval)
    if args.distilled_guidance is not None:
        g["distilled"] = args.distilled_guidance
    opts = {k: v for k, v in (("eta", args.apg_eta), ("momentum", args.apg_momentum)) if v is not None}
    if opts:
        g["options"] = opts
    return g


def _classes(spec: str | None) -> list[int] | None:
    if spec is None:
        return None
    try:
        return [int(v) for v in str(spec).split(",")]
    except ValueError:
        raise UsageError(f"--class takes a class number or a comma list of them, got {spec!r}") from None


def _numbers(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def image_size(values: list[str] | None) -> list[int] | None:
    """--size WIDTHxHEIGHT (one value, as the OpenAI images API writes it) or H W → [height, width]."""
    if values is None:
        return None
    try:
        if len(values) == 1 and "x" in values[0]:
            w, h = (int(v) for v in values[0].split("x"))
        elif len(values) == 2:
            h, w = (int(v) for v in values)
        else:
            raise ValueError
    except ValueError:
        raise UsageError(f"--size takes WIDTHxHEIGHT (e.g. 1024x768) or H W, got {' '.join(values)!r}") from None
    if h < 1 or w < 1:
        raise UsageError(f"--size must be positive, got {' '.join(values)!r}")
    return [h, w]


def request_from_args(args: argparse.Namespace) -> Any:
    """The validated request a command's flags describe (the flags themselves are left as parsed)."""
    from ..api.request import parse_request

    task = args.task
    options = dict(args.option)
    if getattr(args, "eta", None) is not None:
        if task in ("invert", "likelihood"):
            if args.eta != 0:
                raise UsageError("--eta must be 0: inversion needs the deterministic sampler")
        else:
            options["eta"] = args.eta
    d: dict[str, Any] = {"task": task, "model": args.model, "steps": args.steps, "guidance": _guidance(args),
                         "options": options, "batch_invariant": args.batch_invariant,
                         "classes": _classes(args.class_),
                         **_given(args, "spacing", "shift", "device", "dtype", "prompt_truncation")}
    if args.prompt:
        d["prompt"] = list(args.prompt)
    if task == "sample":
        d.update(n=args.n, seed=args.seed, batch=args.batch, compile=args.compile,
                 **_given(args, "sampler", "negative_prompt"))
        if args.size is not None:
            d["size"] = image_size(args.size)
        return parse_request(d)
    d.update(data=args.input or args.data, n=args.n, **_given(args, "index"))
    if task == "invert":
        d["refine"] = args.refine
    elif task == "interpolate":
        d.update(method=args.method, **({"endpoints": list(args.seeds)} if args.seeds else {}))
    elif task == "edit":
        d.update(scales=_numbers(args.scales, "--scales"), examples=args.examples, inversion=args.inversion,
                 refine=args.refine, seed=args.seed, **_given(args, "direction", "to_class", "to_prompt"))
        if args.strength is not None:
            d["strength"] = _numbers(args.strength, "--strength")
    elif task == "likelihood":
        d.update(probes=args.probes, bits_per_dim=args.bits_per_dim, float64=args.float64,
                 **_given(args, "exact"))
    return parse_request(d)


def cmd_request(args: argparse.Namespace) -> int:
    """sample / invert / interpolate / edit / likelihood: build the request, then print or run it."""
    request = request_from_args(args)
    if args.print_request:
        from ..api.request import request_json

        print(request_json(request))
        return 0
    return execute(request, args.out, keep_shards=getattr(args, "keep_shards", False))


def cmd_run(args: argparse.Namespace) -> int:
    """`ddim run request.json --out FILE`: one request from a file (or standard input)."""
    from ..api.request import dumps, parse_request, request_schema

    if args.schema:
        print(dumps(request_schema()))
        return 0
    if args.request is None:
        raise UsageError("give a request JSON file (or - for standard input), or --schema")
    text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text()
    request = parse_request(text)
    return execute(request, args.out, keep_shards=args.keep_shards)


def cmd_samplers(args: argparse.Namespace) -> int:
    from ..api.catalog import samplers

    for s in samplers():
        opts = ", ".join(f"{k}={v!r}" for k, v in s["options"].items()) or "no options"
        print(f"{s['name']:14s} {s['nfe_per_step']} NFE/step  {opts}")
    return 0


def execute(request: Any, out: str | None, keep_shards: bool = False) -> int:
    """Run a request, write its files, print what it did and where."""
    from ..api.outputs import check_out, save_result
    from ..api.run import run
    from ..io.distributed import DistInfo

    path = check_out(request.task, out) if out is not None else None
    if path is None and request.task != "likelihood":
        path = check_out(request.task, {"sample": "samples.npy", "invert": "encodings.npy",
                                        "reconstruct": "reconstruction.npy", "img2img": "images.npy",
                                        "edit": "edit.png", "interpolate": "interpolation.png"}[request.task])
    dist = DistInfo.from_env()
    shards = path.with_name(path.stem + ".shards") if path is not None else None
    result = run(request, shards=shards, dist=dist, progress=True)
    if not dist.is_main:
        return 0
    written = save_result(result, path, shards=shards, keep_shards=keep_shards) if path is not None else []
    print(describe(result, dist.world_size if dist.active else 1))
    if written:
        print(f"wrote {' and '.join(str(p) for p in written)}")
    return 0


def describe(result: Any, ranks: int = 1) -> str:
    """One or two lines on what a run did."""
    req, plan, s = result.provenance["request"], result.provenance["plan"], result.summary
    name = result.provenance["model"]["name"]
    sp = f", {plan['spacing']} spacing" if plan["spacing"] else (
        ", optimised schedule" if req["spacing"] == "optimised" else "")
    eta = f", eta={req['options']['eta']}" if "eta" in req["options"] else ""
    if result.task in ("sample", "img2img"):
        where = f" on {ranks} ranks" if ranks > 1 else ""
        return (f"{len(result.main)} samples from {name} with {plan['sampler']} ({plan['steps']} steps{sp}{eta})"
                f"{where}: NFE {result.stats.nfe} per batch, {result.seconds:.2f} s")
    if result.task in ("invert", "reconstruct"):
        return (f"encoded {len(result.main)} samples with {plan['steps']} steps, refine={req['refine']}: NFE "
                f"{result.stats.nfe}, {result.seconds:.2f} s\nround-trip per-dimension MSE {s['mse']:.3e} (data "
                f"variance {s['data_var']:.3e}); encodings mean {s['mean']:+.3f}, var {s['var']:.3f}, KS vs N(0,1) "
                f"{s['ks']:.3f}")
    if result.task == "edit":
        if "direction" in s:
            return f"edited {result.main.shape[1]} samples along {s['direction']} at scales {req['scales']}"
        return (f"edited {result.main.shape[1]} samples ({req['inversion']} inversion, {plan['steps']} steps, "
                f"guidance {s['guidance']:g}): reconstruction MSE {s['mse']:.3e}"
                + (f" (latents {s['latent_mse']:.3e}; the rest is the VAE's round trip)" if "latent_mse" in s else ""))
    if result.task == "interpolate":
        return f"decoded a {req['method']} path of {req['n']} points with DDIM {plan['steps']} steps"
    line = (f"{len(result.main)} samples under {name}: mean {s['mean']:.4f} {s['unit']} (std {s['std']:.4f}), "
            f"{result.seconds:.1f} s")
    if s["true_mean"] is not None:
        line += f"\ntrue value under the exact mixture: {s['true_mean']:.4f} {s['unit']}"
    return line
