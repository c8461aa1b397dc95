"""The command line's parser: every flag, its type and range, and which command it runs."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..bench.suites import SUITES
from . import suites as _app_suites  # noqa: F401  (registers the app layer's bench suites)
from .commands import cmd_bench, cmd_demo, cmd_distill, cmd_reflow, cmd_schedule, cmd_serve, cmd_train
from .requests import cmd_request, cmd_run, cmd_samplers


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
_positive_float = _checked(float, 0.1, "number of seconds")








def _option(text: str) -> tuple[str, Any]:
    """--option KEY=VALUE: the value as JSON (3, 0.5, true, "bh1"), a bare word as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """What every request-running command shares: sampler options, shift, batch invariance, the request file."""
    p.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="a sampler option it declares (repeatable; `ddim samplers` lists them), e.g. order=3")
    p.add_argument("--shift", type=float, default=None,
                   help="flow models: a static σ-list shift s > 0 at sampling time, σ' = sσ/(1+(s−1)σ)")
    p.add_argument("--batch-invariant", action=argparse.BooleanOptionalAction, default=True,
                   help="fixed-size network calls, so a sample's bits do not depend on the batch around it "
                        "(default: on)")
    p.add_argument("--print-request", action="store_true", help="print the request JSON and exit (`ddim run` runs it)")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mixture:mog3",
                   help="model: mixture:mog3 (exact), a run folder, or a built-in name (default: %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=50,
                   help="number of sampling steps, 1..T (default: %(default)s)")
    p.add_argument("--sampler", default=None,
                   help="sampling method, e.g. ddim, dpmpp_2m, unipc (`ddim samplers` lists all; default: the model's "
                        "measured best for --steps network evaluations, else ddim)")
    p.add_argument("--eta", type=_finite_nonneg, default=None,
                   help="DDIM noise scale: 0 deterministic (default), 1 DDPM-like; only for samplers that take eta")
    p.add_argument("--spacing", default=None,
                   help="timestep spacing: trailing, leading, linspace, uniform, quadratic, logsnr, karras, "
                        "time_quadratic, lcm, ays, or optimised (the model's schedule.json; default: the model's)")
    p.add_argument("--seed", type=_nonneg_int, default=0,
                   help="seed of the first sample; sample i uses seed+i (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    _add_run_options(p)




def _add_guidance_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--class", dest="class_", default=None, metavar="C[,C...]",
                   help="class-conditional models: one class, or a comma list cycled over the samples")
    p.add_argument("--guidance", type=_finite_nonneg, default=None,
                   help="guidance scale w (1: conditional only, 0: unconditional; default 1)")
    p.add_argument("--guidance-rule", default="cfg",
                   help="cfg (Ho & Salimans), apg (Sadat et al. 2025) or cfg++ (Chung et al. 2024; DDIM/DDPM)")
    p.add_argument("--guidance-rescale", type=_finite_nonneg, default=0.0, metavar="PHI",
                   help="CFG rescale φ in [0, 1] (Lin et al. 2024; default 0)")
    p.add_argument("--guidance-interval", type=_finite_nonneg, nargs=2, default=None, metavar=("LO", "HI"),
                   help="guide only where σ/α lies in (LO, HI] (Kynkäänniemi et al. 2024)")
    p.add_argument("--distilled-guidance", type=_finite_nonneg, default=None, metavar="G",
                   help="guidance-distilled models (Flux-dev): the guidance scale the network takes as an input "
                        "(diffusers' guidance_scale; default 3.5); --guidance is then true CFG (true_cfg_scale)")
    p.add_argument("--apg-eta", type=float, default=None, help="APG: weight of the parallel component (default 0)")
    p.add_argument("--apg-momentum", type=float, default=None, help="APG: momentum β in (-1, 0] (default 0)")
    p.add_argument("--cfg-two-calls", action="store_true",
                   help="run the conditional and unconditional branches as two calls (less memory)")
    p.add_argument("--prompt-truncation", choices=["warn", "refuse"], default=None,
                   help="text-to-image folders: a prompt longer than a text encoder takes is truncated with a "
                        "warning naming what was dropped (warn, as diffusers; the default) or refused (refuse)")




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
    p.add_argument("--size", nargs="+", default=None, metavar="WxH",
                   help="image size as WIDTHxHEIGHT (the OpenAI images API's order, e.g. 1024x768), or H W; "
                        "text-to-image folders: a multiple of the latent scale")
    p.add_argument("--keep-shards", action="store_true", help="keep OUT.shards/ after the merged file is written")
    p.set_defaults(func=cmd_request, task="sample")

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
    p.add_argument("--objective", default=None, choices=["ddpm", "flow_matching", "flow", "meanflow"],
                   help="ddpm (L_simple on a β schedule, default), flow (flow matching, velocity ε − x0) or "
                        "meanflow (average velocity u(z, r, t): 1-8 step sampling, trained from scratch)")
    p.add_argument("--num-train-timesteps", type=_positive_int, default=None,
                   help="T: the ddpm grid size; flow objectives: the network sees t·T (default 1000)")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="start from this model's weights (a flow model for meanflow: its interval embedding "
                        "starts at zero)")
    p.add_argument("--interval-fraction", type=float, default=None,
                   help="meanflow: share of rows with r < t (default 0.25)")
    p.add_argument("--adaptive-power", type=float, default=None,
                   help="meanflow: p of the adaptive loss weight 1/(|Δ|² + c)^p, 0 = plain MSE (default 1)")
    p.add_argument("--time-sampling", default=None, choices=["uniform", "logit_normal"],
                   help="flow, meanflow: how t is drawn (default uniform; logit_normal as SD3)")
    p.add_argument("--loss", default=None, choices=["mse", "pseudo_huber"],
                   help="ddpm, flow: regression loss, mse (default) or pseudo_huber (iCT's, c = 0.00054·√d)")
    p.add_argument("--logit-mean", type=float, default=None, help="logit_normal: mean m (default 0)")
    p.add_argument("--logit-std", type=float, default=None, help="logit_normal: std s > 0 (default 1)")
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
    p.add_argument("--prompt", default=None, help="text-to-image folders: the prompt to search under (default: "
                                                   "the empty prompt)")
    p.add_argument("--negative-prompt", default=None, help="text-to-image folders: the negative prompt")
    p.add_argument("--guidance", type=_finite_nonneg, default=None,
                   help="text-to-image folders: the CFG scale to search under (default: the model's)")
    p.add_argument("--size", nargs="+", default=None, metavar="WxH",
                   help="latent models: the image size to search at, WIDTHxHEIGHT (default: the model's)")
    p.add_argument("--out", default=None, help="where to write (default: MODEL/schedule.json)")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("reflow", help="rectified flow: couple noise with the model's ODE samples and fine-tune",
                       description="Reflow (Liu et al. 2023): draw (noise, sample) pairs with an ODE sampler from a "
                                   "flow-matching model, then fine-tune it on straight paths between them. Writes "
                                   "OUT/pairs.npz and the run OUT/run; rerunning resumes.")
    p.add_argument("--model", default="digits-flow", help="flow-matching model to straighten (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder (pairs.npz and run/)")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="fine-tune this flow model (same network) on the pairs instead of --model")
    p.add_argument("--pairs", type=_positive_int, default=20000, help="number of pairs (default: %(default)s)")
    p.add_argument("--pair-steps", type=_positive_int, default=20, help="ODE steps per pair (default: %(default)s)")
    p.add_argument("--pair-sampler", default="dpmpp_2m", help="ODE sampler for the pairs (default: %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=4000, help="fine-tuning steps (default: %(default)s)")
    p.add_argument("--time-sampling", default="uniform", choices=["uniform", "logit_normal", "endpoint"],
                   help="t of each fine-tuning row: uniform (reflow, default) or endpoint (t = 1 only: one-step "
                        "distillation of the coupling, InstaFlow)")
    p.add_argument("--loss", default="mse", choices=["mse", "pseudo_huber"],
                   help="regression loss: mse (default) or pseudo_huber (iCT's, c = 0.00054·√d)")
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
        p.add_argument("--spacing", default=None, help="timestep spacing (default: the model's)")
        p.add_argument("--data", default="digits", help="data to encode: a built-in name (default: digits)")
        p.add_argument("--input", default=None, help="or a .npy/.npz file of samples to encode")
        p.add_argument("--index", type=int, nargs="+", default=None, help="rows of the data to use")
        p.add_argument("--n", type=_positive_int, default=16, help="number of rows when no --index (default 16)")
        p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
        p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                       help="the networks' dtype (default float32)")
        _add_guidance_options(p)
        _add_run_options(p)
        p.add_argument("--prompt", action="append", default=None, help="text-to-image folders: the images' own prompt")

    p = sub.add_parser("invert", help="encode data to noise with DDIM inversion (and check the round trip)",
                       description="Encode data to x_T by running DDIM forward in time; writes the encodings "
                                   "(.npy) and an original-vs-reconstruction picture.")
    add_latent(p)
    p.add_argument("--refine", type=_nonneg_int, default=3,
                   help="fixed-point iterations per step (0 = naive inversion; default 3)")
    p.add_argument("--eta", type=float, default=0.0, help="must be 0: inversion needs the deterministic sampler")
    p.add_argument("--out", default="encodings.npy", help="output .npy of encodings; a PNG is written beside it")
    p.set_defaults(func=cmd_request, task="invert")

    p = sub.add_parser("interpolate", help="decode a slerp/lerp path between two endpoints (strip PNG + GIF)",
                       description="Interpolate between two noise seeds (--seeds) or two data points "
                                   "(--index I J, encoded first) and decode each point with DDIM.")
    add_latent(p)
    p.add_argument("--seeds", type=_nonneg_int, nargs=2, default=None, help="two noise seeds as endpoints")
    p.add_argument("--method", default="slerp", choices=["slerp", "lerp"], help="path (default: slerp)")
    p.set_defaults(n=10)
    p.add_argument("--out", default="interpolation.png", help="strip PNG; an animated GIF is written beside it")
    p.set_defaults(func=cmd_request, task="interpolate")

    p = sub.add_parser("edit", help="encode, move along a latent direction, decode",
                       description="Edit samples along a latent direction: class:A-B (mean digits encoding of "
                                   "class A minus class B) or a .npy file holding the direction.")
    add_latent(p)
    p.add_argument("--direction", default=None, help="class:A-B or a .npy direction (default: class:3-8)")
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
    p.set_defaults(func=cmd_request, task="edit")

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
    p.set_defaults(func=cmd_request, task="likelihood")

    p = sub.add_parser("run", help="run a request JSON file (from --print-request, or written by hand)",
                       description="Run one request (`ddim sample ... --print-request` prints one); --schema prints "
                                   "the JSON schema of every request.")
    p.add_argument("request", nargs="?", default=None, help="request JSON file, or - for standard input")
    p.add_argument("--out", default=None, help="output file (.npy; .png for edit and interpolate)")
    p.add_argument("--keep-shards", action="store_true", help="keep OUT.shards/ after the merged file is written")
    p.add_argument("--schema", action="store_true", help="print the request JSON schema and exit")
    p.set_defaults(func=cmd_run, task=None)

    p = sub.add_parser("samplers", help="list the samplers and their declared options",
                       description="Every registered sampler with the options --option takes, and their defaults.")
    p.set_defaults(func=cmd_samplers)

    p = sub.add_parser("serve", help="an HTTP service: jobs batched step by step, bit-identical to solo runs",
                       description="Serve models over HTTP (FastAPI + uvicorn; the 'serve' extra). Loopback unless "
                                   "an API key file is given. OpenAPI docs at /docs.")
    p.add_argument("--models", default="digits", help="comma-separated built-in names and/or folders to serve "
                                                       "(a folder is served under its folder name; default digits)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s; any other needs "
                                                        "--api-key-file)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0: any free port)")
    p.add_argument("--api-key-file", default=None, help="a file of API keys, one a line (each key its own owner)")
    p.add_argument("--store", default=None, metavar="DIR", help="job store folder (SQLite + results); accepted jobs "
                                                                "survive a restart (default: in memory)")
    p.add_argument("--max-rows", type=_positive_int, default=64, help="samples in flight at once (default 64)")
    p.add_argument("--max-queue", type=_positive_int, default=256, help="queued jobs before 429 (default 256)")
    p.add_argument("--max-steps", type=_positive_int, default=1000, help="steps per request (default 1000)")
    p.add_argument("--max-size", type=_positive_int, default=1024, help="largest image side (default 1024)")
    p.add_argument("--max-body", type=_positive_int, default=1 << 20, help="request body bytes (default 1 MiB)")
    p.add_argument("--client-timeout", type=_positive_float, default=30.0,
                   help="seconds a client may take to send its headers or body (then 408; default 30)")
    p.add_argument("--result-ttl", type=_positive_float, default=7 * 86400,
                   help="seconds a result is kept (default 7 days)")
    p.add_argument("--result-max-bytes", type=_positive_int, default=1 << 30,
                   help="total bytes of results kept, oldest dropped first (default 1 GiB)")
    p.add_argument("--cors", default=None, help="comma-separated origins allowed by CORS (default: CORS off)")
    p.add_argument("--device", default="cpu", help="torch device of the served models (default cpu)")
    p.add_argument("--chunk", type=_positive_int, default=16,
                   help="rows per network call (default 16): results equal `ddim run` with batch_invariant = "
                        "this; larger fills big merged batches better")
    p.add_argument("--serial", action="store_true", help="run one job at a time (the baseline `ddim bench serve` "
                                                         "compares against)")
    p.add_argument("--ray", action="store_true", help="serve through Ray Serve replicas (the 'ray' extra)")
    p.add_argument("--replicas", type=_positive_int, default=1, help="Ray Serve replicas (with --ray)")
    p.add_argument("--max-replicas", type=_positive_int, default=None,
                   help="with --ray: autoscale between --replicas and this many replicas")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(SUITES),
                       description="Benchmarks that measure side by side in one run and write report.md + PNGs.")
    p.add_argument("suite", choices=list(SUITES))
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
                   help="speed / reconstruction suites: a text-to-image folder, SD, SDXL, SD3 or Flux (speed: beside "
                        "diffusers' pipeline; reconstruction: prompt-conditioned inversion under guidance 1 / 3 / "
                        "7.5); fewstep: a consistency-distilled model to add")
    p.add_argument("--size", nargs="+", default=None, metavar="WxH",
                   help="speed / reconstruction with --model: the image size, WIDTHxHEIGHT (default: the folder's)")
    p.add_argument("--reflowed", default=None, metavar="MODEL",
                   help="flow / fewstep suites: a reflowed model (from ddim reflow) to compare at few NFE")
    p.add_argument("--meanflow", default=None, metavar="MODEL",
                   help="fewstep suite: a MeanFlow model (ddim train --objective meanflow) at 1 / 2 / 4 / 8 NFE")
    p.add_argument("--steps-list", type=_positive_int, nargs="+", default=None,
                   help="step counts for the quality suite (default: 10 20 50 100)")
    p.set_defaults(func=cmd_bench)
    return parser


