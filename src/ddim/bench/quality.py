"""`ddim bench quality | speed | eta-variance`: the paper's tables measured on the shipped digits model and
a mog3 MLP, written as report.md + PNGs with the command, versions and machine at the top."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

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


def quality(out: Path, quick: bool, command: str, n: int | None = None,
            steps_list: list[int] | None = None) -> str:
    from ..io.data import digits
    from ..io.loader import load_model
    from ..models.mixture import mog3
    from .classifier import load_digits_classifier

    steps_list = steps_list or ([10, 20] if quick else [10, 20, 50, 100, 1000])
    etas = [0.0, 1.0, "sigma_hat"] if quick else ETAS
    n = n or (64 if quick else 500)
    clf = load_digits_classifier()
    xr, _ = digits()
    f_real = metrics.extract(clf, xr)
    pred_real = clf(xr).argmax(1)
    half = len(xr) // 2
    fd_halves = metrics.frechet_distance_features(f_real[:half], f_real[half:])
    den = load_model("digits").denoiser
    mix = mog3()
    den2 = _mog3_model(quick)
    truth = mix.sample(20000, generator=torch.Generator().manual_seed(7)).float()
    ll_true = metrics.mixture_loglik(mix, mix.sample(n, generator=torch.Generator().manual_seed(8)))
    rows = []
    from tqdm.auto import tqdm

    for S in tqdm(steps_list, desc="steps"):
        for eta in etas:
            t0 = time.perf_counter()
            x = _draw(den, (n, 1, 8, 8), S, eta).clamp(-1, 1)
            dt = time.perf_counter() - t0
            with torch.no_grad():
                f = metrics.extract(clf, x)
                pred = clf(x).argmax(1)
            cov = metrics.class_coverage(pred)
            prec, rec = metrics.precision_recall(f_real, f, k=3)
            p = _draw(den2, (n, 2), S, eta)
            rows.append({"S": S, "eta": eta, "fd": metrics.frechet_distance_features(f_real, f),
                         "fd_bal": metrics.frechet_distance_features(f_real, f, metrics.class_balanced_weights(
                             pred_real), metrics.class_balanced_weights(pred)),
                         "tv": cov["tv_to_uniform"], "min_frac": cov["min_fraction"], "prec": prec, "rec": rec,
                         "time": dt, "ll_gap": metrics.mixture_loglik(mix, p) - ll_true,
                         "sw": metrics.sliced_wasserstein(p, truth)})
    lines = [header("Quality against steps and η (DDIM paper, Table 1 analogue)", command),
             f"Digits: the shipped model, {n} samples per cell (seeds 0..{n - 1}), Fréchet distance in the 64-d "
             f"feature space of the shipped classifier against all {len(xr)} real digits (real half vs half: "
             f"{fd_halves:.2f}). Class-balanced FD weights each sample by 1/count of its predicted class. "
             "Coverage: total-variation distance of the predicted-class histogram to uniform. σ̂: DDPM's "
             "ancestral step with σ² = β on the same sub-sequence.", "",
             "| S | sampler | FD ↓ | class-balanced FD ↓ | coverage TV ↓ | min class share | precision | recall "
             "| mog3 log-lik gap | mog3 sliced W2 ↓ | digits time (s) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['S']} | {_eta_label(r['eta'])} | {r['fd']:.2f} | {r['fd_bal']:.2f} | {r['tv']:.3f} | "
                     f"{r['min_frac']:.3f} | {r['prec']:.3f} | {r['rec']:.3f} | {r['ll_gap']:+.3f} | {r['sw']:.3f} | "
                     f"{r['time']:.1f} |")
    s10 = {r["eta"]: r["fd"] for r in rows if r["S"] == steps_list[0]}
    best = min(s10, key=s10.get)
    lines += ["", f"At S = {steps_list[0]}: FD " + ", ".join(f"{_eta_label(e)} {v:.2f}" for e, v in s10.items())
              + f" — lowest: {_eta_label(best)}."]
    # heat map of FD over S × η
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.array([[next(r["fd"] for r in rows if r["S"] == S and r["eta"] == e) for e in etas] for S in steps_list])
    fig, ax = plt.subplots(figsize=(1.2 * len(etas) + 2, 0.6 * len(steps_list) + 1.5))
    im = ax.imshow(np.log10(grid), cmap="viridis_r")
    ax.set_xticks(range(len(etas)), [_eta_label(e) for e in etas])
    ax.set_yticks(range(len(steps_list)), [str(S) for S in steps_list])
    for i in range(len(steps_list)):
        for j in range(len(etas)):
            ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xlabel("sampler")
    ax.set_ylabel("steps S")
    ax.set_title("digits: Fréchet distance (log colour)", fontsize=9)
    fig.colorbar(im, ax=ax, label="log10 FD")
    heat = plots._save(fig, out / "quality_heatmap.png")
    lines.append(f"\n![heatmap]({heat.name})")
    return "\n".join(lines)


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
    sched = den.schedule
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
    return "\n".join(parts)
