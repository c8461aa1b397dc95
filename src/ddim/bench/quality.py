"""`ddim bench quality | speed | eta-variance`: the paper's tables measured on the shipped digits model and
a mog3 MLP, written as report.md + PNGs with the command, versions and machine at the top."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UsageError
from ..core.prediction import Denoiser
from ..core.sample import sample
from ..core.samplers import SAMPLERS
from ..io import plots
from ..ops import metrics
from .report import header

ETAS: list[Any] = [0.0, 0.2, 0.5, 1.0, "sigma_hat"]


def _eta_label(eta: Any) -> str:
    return "σ̂" if eta == "sigma_hat" else f"η={eta:g}"


def _draw(den: Denoiser, shape: tuple[int, ...], steps: int, eta: Any, seed: int = 0, batch: int = 500,
          **kw: Any) -> torch.Tensor:
    """N samples in batches (same seeds whatever the batching); σ̂ is DDPM with σ² = β (fixed_large)."""
    outs = []
    n = shape[0]
    for a in range(0, n, batch):
        b = min(n, a + batch)
        with torch.no_grad():
            if eta == "sigma_hat":
                x = sample(den, (b - a, *shape[1:]), steps=steps, sampler="ddpm", seeds=range(seed + a, seed + b),
                           variance_type="fixed_large", **kw)
            else:
                x = sample(den, (b - a, *shape[1:]), steps=steps, eta=float(eta), seeds=range(seed + a, seed + b),
                           **kw)
        outs.append(x)
    return torch.cat(outs)


def _mog3_model(quick: bool) -> Denoiser:
    """A small MLP trained on mog3 (as in the demo), in memory."""
    import tempfile

    from ..io.runs import load_run_denoiser
    from ..training.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(data="mog3", steps=300 if quick else 3000, lr=2e-3, ema_decay=0.995, checkpoint_every=10**6)
        run = train(cfg, Path(d) / "run", progress=False, log=lambda *a: None)
        return load_run_denoiser(run)[0]


SEED_STRIDE = 10**6  # seed set k draws samples with seeds k·10⁶ + (0 … n-1): disjoint across sets


def quality(out: Path, quick: bool, command: str, n: int | None = None,
            steps_list: list[int] | None = None, seeds: int = 3) -> str:
    """FD of the shipped digits model per (steps, η), pooled over `seeds` seed sets of n samples each, with
    the spread across seed sets and the floor; mog3 log-likelihood gap and sliced W2 beside."""
    from tqdm.auto import tqdm

    from ..io.loader import load_model
    from ..models.mixture import mog3
    from .classifier import DigitsJudge

    steps_list = steps_list or ([10, 20] if quick else [10, 20, 50, 100])
    etas = [0.0, 1.0, "sigma_hat"] if quick else ETAS
    n = n or (64 if quick else 2000)
    if seeds < 1 or n < 2:
        raise UsageError("quality needs at least one seed set of ≥ 2 samples")
    judge = DigitsJudge()
    den = load_model("digits").denoiser
    mix = mog3()
    den2 = _mog3_model(quick)
    truth = mix.sample(20000, generator=torch.Generator().manual_seed(7)).float()
    ll_true = metrics.mixture_loglik(mix, mix.sample(n * seeds, generator=torch.Generator().manual_seed(8)))
    cells = [(S, eta) for S in steps_list for eta in etas]  # DDPM-1000 at this sample size: `ddim bench fewstep`
    rows = []
    for S, eta in tqdm(cells, desc="cells"):
        t0 = time.perf_counter()
        xs = [_draw(den, (n, 1, 8, 8), S, eta, seed=k * SEED_STRIDE) for k in range(seeds)]
        dt = time.perf_counter() - t0
        sc = judge.pooled(xs)
        p = torch.cat([_draw(den2, (n, 2), S, eta, seed=k * SEED_STRIDE) for k in range(seeds)])
        rows.append({"S": S, "eta": eta, **sc, "time": dt, "ll_gap": metrics.mixture_loglik(mix, p) - ll_true,
                     "sw": metrics.sliced_wasserstein(p, truth)})
    pooled = n * seeds
    lines = [header("Quality against steps and η (DDIM paper, Table 1 analogue)", command),
             f"Digits: the shipped model, {pooled} samples per cell pooled over {seeds} seed sets of {n} "
             f"(seeds k·10⁶ + 0…{n - 1}). Fréchet distance in the 64-d feature space of the shipped classifier "
             f"against all {len(judge.x_real)} real digits; class-balanced FD weights each sample by 1/count of "
             "its predicted class. Spread: the lowest and highest FD of the single seed sets (each set alone has "
             f"fewer samples, so its FD sits above the pooled one). {judge.floor_text(pooled)} "
             "Coverage: total-variation distance of the predicted-class "
             "histogram to uniform. σ̂: DDPM's ancestral step with σ² = β on the same sub-sequence.", "",
             "| S | sampler | FD ↓ | class-balanced FD ↓ | seed spread (bal.) | coverage TV ↓ | min class share "
             "| mog3 log-lik gap | mog3 sliced W2 ↓ | digits time (s) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sp = [c["fd_bal"] for c in r["seeds"]]
        lines.append(f"| {r['S']} | {_eta_label(r['eta'])} | {r['fd']:.2f} | {r['fd_bal']:.2f} | "
                     f"{min(sp):.2f}–{max(sp):.2f} | {r['tv']:.3f} | {r['min_frac']:.3f} | {r['ll_gap']:+.3f} | "
                     f"{r['sw']:.3f} | {r['time']:.1f} |")
    s10 = {r["eta"]: r["fd_bal"] for r in rows if r["S"] == steps_list[0]}
    best = min(s10, key=s10.get)
    lines += ["", f"At S = {steps_list[0]}: class-balanced FD "
              + ", ".join(f"{_eta_label(e)} {v:.2f}" for e, v in s10.items()) + f" — lowest: {_eta_label(best)}."]
    fig = _fd_figure(rows, etas, judge.floor(pooled)[1], out / "quality_fd.png")
    lines.append(f"\n![FD against steps]({fig.name})")
    return "\n".join(lines)


def _fd_figure(rows: list[dict[str, Any]], etas: list[Any], floor: float, path: Path) -> Path:
    """Class-balanced FD against steps per sampler: pooled value, seed-set spread as a bar, the floor dashed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for eta in etas:
        rs = [r for r in rows if r["eta"] == eta]
        xs = [r["S"] for r in rs]
        ys = [r["fd_bal"] for r in rs]
        lo = [y - min(c["fd_bal"] for c in r["seeds"]) for y, r in zip(ys, rs)]
        hi = [max(c["fd_bal"] for c in r["seeds"]) - y for y, r in zip(ys, rs)]
        ax.errorbar(xs, ys, yerr=[[max(v, 0) for v in lo], [max(v, 0) for v in hi]], marker="o", ms=3, capsize=2,
                    label=_eta_label(eta))
    ax.axhline(floor, color="k", ls="--", lw=1, label="floor (real digits resampled)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("steps S")
    ax.set_ylabel("class-balanced FD (pooled)")
    ax.set_title("digits: FD against steps (bars: spread over seed sets)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return plots._save(fig, path)


def eta_variance(out: Path, quick: bool, command: str) -> str:
    """The same x_T sampled `runs` times with different fresh noise: cross-run variance per η."""
    from ..core.noise import SeededNoise
    from ..io.loader import load_model

    runs, n = (3, 16) if quick else (8, 64)
    steps = 20 if quick else 50
    lines = [header("Cross-run variance against η (same x_T, fresh noise from different seeds)", command),
             f"{runs} runs of {n} samples, DDIM {steps} steps; variance across runs, averaged over samples and "
             "dimensions.", "", "| η | digits | mog3 (exact ε) |", "|---:|---:|---:|"]
    dig = load_model("digits").denoiser
    mog = load_model("mixture:mog3").denoiser
    results = []
    for eta in (0.0, 0.25, 0.5, 0.75, 1.0):
        cells = []
        for den, shape in ((dig, (1, 8, 8)), (mog, (2,))):
            x_T = SeededNoise(range(n), shape).initial()
            with torch.no_grad():
                xs = torch.stack([sample(den, x_T=x_T, steps=steps, eta=eta, seeds=range(1000 * (r + 1),
                                                                                           1000 * (r + 1) + n))
                                  for r in range(runs)])
            cells.append(float(xs.var(0, unbiased=True).mean()))
        results.append((eta, cells))
        lines.append(f"| {eta:g} | {cells[0]:.6f} | {cells[1]:.6f} |")
    fig = plots.curves({"digits": ([e for e, _ in results], [c[0] for _, c in results]),
                        "mog3": ([e for e, _ in results], [c[1] for _, c in results])},
                       out / "eta_variance.png", "η", "cross-run variance", title="variance across runs, same x_T")
    lines.append(f"\n![variance]({fig.name})")
    return "\n".join(lines)


def speed(out: Path, quick: bool, command: str, device: str = "cpu") -> str:
    """Per sampler: wall time, NFE, images/s and overhead vs model-only on the digits UNet, beside
    diffusers' loops on the same model; DDPM-1000/DDIM-50; peak memory vs steps."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    from ..io.loader import load_model
    from .overhead import _diffusers_loop, _timeit, ddpm_vs_ddim

    den = load_model("digits").denoiser
    den.net.to(device)
    b = 16 if quick else 64
    steps = 10 if quick else 50
    repeat = 1 if quick else 3
    x = torch.randn(b, 1, 8, 8, device=device)
    sched = den.path
    cuda = device.startswith("cuda")

    def timed(fn: Any) -> float:
        if not cuda:
            return _timeit(fn, repeat)
        fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / repeat

    with torch.no_grad():
        ts = sched.timesteps(steps).to(device)
        t_model = timed(lambda: [den.net(x, t.expand(b)) for t in ts])
        lines = [header("Sampling speed and memory", command),
                 f"Shipped digits UNet, batch {b}, {steps} steps, device {device}; model-only = the same network "
                 "calls with no sampler.", "",
                 "| sampler | ours (s) | NFE | images/s | ours / model-only | diffusers (s) | diffusers / model-only |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        cfg = {"clip_sample": False, "timestep_spacing": "trailing"}
        theirs = {"ddim": DDIMScheduler(**cfg), "dpmpp_2m": DPMSolverMultistepScheduler(timestep_spacing="trailing"),
                  "unipc": UniPCMultistepScheduler(timestep_spacing="trailing")}
        for name in ("ddim", "ddpm", "dpmpp_2m", "unipc", "heun"):
            t_ours = timed(lambda name=name: sample(den, x_T=x, steps=steps, sampler=name))
            nfe = SAMPLERS[name].nfe(steps)
            t_th = (timed(lambda s=theirs[name]: _diffusers_loop(s, den.net, x, steps)) if name in theirs
                    else math.nan)
            th = "–" if math.isnan(t_th) else f"{t_th:.3f}"
            thr = "–" if math.isnan(t_th) else f"{t_th / t_model * steps / nfe:.3f}"
            lines.append(f"| {name} | {t_ours:.3f} | {nfe} | {b / t_ours:.0f} | {t_ours / t_model * steps / nfe:.3f} "
                         f"| {th} | {thr} |")
        r = ddpm_vs_ddim(repeat=1, device=device)
        lines.append(f"\nDDPM-1000 / DDIM-50 wall time (MLP, batch 1): {r['ratio']:.2f} (NFE ratio 20).")
    lines += memory_section(out, quick, device)
    return "\n".join(lines)


def memory_section(out: Path, quick: bool, device: str) -> list[str]:
    """Peak memory vs steps, with and without the trajectory kept, each in a fresh subprocess; table + figure."""
    from .memory import peak_sampling_mb

    b = 64 if quick else 256
    steps_list = (10, 50) if quick else (10, 50, 200, 1000)
    lines = ["", f"Peak memory of one sampling call (digits UNet, batch {b}, DDIM; each cell a fresh process):", "",
             "| steps | peak, sampling only (MB) | with trajectory kept (MB) | trajectory size (MB) |",
             "|---:|---:|---:|---:|"]
    series: dict[str, tuple[list[float], list[float]]] = {"sampling only": ([], []), "trajectory kept": ([], [])}
    for S in steps_list:
        vals = [peak_sampling_mb("digits", b, S, trajectory=t, device=device) for t in (False, True)]
        for name, v in zip(series, vals):
            series[name][0].append(S)
            series[name][1].append(v)
        lines.append(f"| {S} | {vals[0]:.1f} | {vals[1]:.1f} | {(S + 1) * b * 64 * 4 / 2**20:.1f} |")
    fig = plots.curves(series, out / "memory.png", "steps", "peak memory added (MB)", logx=True,
                       title="peak memory of one sampling call")
    lines += ["", "Flat in the step count unless the trajectory is kept (then it grows by one state per step).",
              f"\n![memory]({fig.name})"]
    return lines


def reconstruction(out: Path, quick: bool, command: str) -> str:
    """DDIM paper Table 2 analogue: encode → decode MSE, naive vs refined, for three models."""
    from ..io.loader import load_model
    from ..models.mixture import mog3
    from ..ops.inversion import format_reconstruction, reconstruction_table

    refine = 3
    mix = mog3()
    exact = load_model("mixture:mog3").denoiser
    x_mix = mix.sample(64 if quick else 500, generator=torch.Generator().manual_seed(0))
    mlp = _mog3_model(quick)
    from ..io.data import digits

    dig = load_model("digits").denoiser
    x_dig = digits()[0][: 16 if quick else 256]
    parts = [header("Inversion: reconstruction error against steps", command),
             f"Per-dimension MSE of decode(encode(x0)) with the same timesteps; refined = {refine} Anderson-"
             "accelerated fixed-point iterations per step. Encodings' mean / variance / Kolmogorov–Smirnov "
             "statistic against N(0, 1) beside it: refined inversion inverts the S-step decoder exactly, so its "
             "encodings are only as Gaussian as that decoder is accurate."]
    cases = [("exact mixture ε (float64)", exact, x_mix, (10, 20) if quick else (10, 20, 50, 100, 200, 500, 1000)),
             ("demo's MLP on mog3", mlp, mix.sample(64 if quick else 500,
                                                     generator=torch.Generator().manual_seed(1)).float(),
              (10, 20) if quick else (10, 20, 50, 100, 200, 500, 1000)),
             ("shipped digits UNet", dig, x_dig, (10, 20) if quick else (10, 20, 50, 100, 200))]
    for title, den, x0, steps in cases:
        with torch.no_grad():
            rows = reconstruction_table(den, x0, steps, refine=refine, progress=True)
        parts += ["", f"### {title} ({x0.shape[0]} samples, data variance {float(x0.var()):.3f})", "",
                  format_reconstruction(rows, refine)]
    parts += guided_reconstruction_section(quick, refine)
    return "\n".join(parts)


def guided_reconstruction_section(quick: bool, refine: int) -> list[str]:
    """The guidance axis: the class-conditional digits model inverted and decoded under CFG w."""
    from ..io.data import digits
    from ..io.loader import load_model
    from ..ops.editing import guided_reconstruction

    den = load_model("digits-cond").denoiser
    x, y = digits()
    n = 16 if quick else 256
    scales, steps = ((1.0, 7.5), (10,)) if quick else ((1.0, 3.0, 7.5), (10, 20, 50))
    with torch.no_grad():
        rows = guided_reconstruction(den, x[:n], y[:n], scales, steps, refine=refine)
    lines = ["", f"### Under classifier-free guidance: shipped digits-cond, {n} real digits under their own class "
             f"(data variance {float(x[:n].var()):.3f})", "",
             f"naive: DDIM inversion of the guided step; refined: {refine} fixed-point iterations of the guided step; "
             "negative: invert with the conditional branch only and decode with the source class as the negative "
             "branch (the guided output is then the conditional one, so the round trip does not depend on w).", "",
             "| steps | guidance w | MSE naive | MSE refined | MSE negative |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['scale']:g} | {r['naive']:.3e} | {r['refined']:.3e} | {r['negative']:.3e} |")
    return lines
