"""Benchmarks that print ratios measured side by side in one run (never asserted in tests)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..core.prediction import Denoiser
from ..core.schedule import NoiseSchedule


def _timeit(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Median wall time of fn() after one warm-up call (the first op after idle costs ~1 ms)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Replay:
    """A 'network' that returns recorded outputs in order: the loop's own cost with no model.

    A plain callable, not an nn.Module, so that module-call overhead is not charged to either sampler.
    """

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        self.outputs, self.i = outputs, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.outputs[self.i % len(self.outputs)]
        self.i += 1
        return out


def _diffusers_loop(scheduler: Any, net: Callable[..., Any], x: torch.Tensor, steps: int, **kw: Any) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        out = net(x, t)
        out = out.sample if hasattr(out, "sample") else out
        x = scheduler.step(out, t, x, **kw).prev_sample
    return x


def overhead(steps: int = 50, repeat: int = 5, device: str = "cpu", include_unet: bool = True,
             batches: tuple[int, ...] = (1, 1024)) -> list[dict[str, Any]]:
    """Per model and batch: total, model-only and per-step sampler cost, ours vs diffusers' DDIM/DDPM."""
    from ..models import MLP

    torch.manual_seed(0)
    rows = []
    models: list[tuple[str, torch.nn.Module, tuple[int, ...], tuple[int, ...]]] = [
        ("mlp", MLP(2, 128, 3).eval().to(device), (2,), batches)]
    if include_unet:
        from ..models.unet import small_unet

        models.append(("unet8x8", small_unet(8, 1).eval().to(device), (1, 8, 8), (1, 64)))
    for name, net, shape, bs in models:
        for b in bs:
            rows.append(_overhead_row(name, net, (b, *shape), steps, repeat, device))
    return rows


def _overhead_row(name: str, net: torch.nn.Module, shape: tuple[int, ...], steps: int, repeat: int,
                  device: str) -> dict[str, Any]:
    from diffusers import DDIMScheduler, DDPMScheduler

    from ..core.samplers import sample_ddim, sample_ddpm

    sched = NoiseSchedule.linear(1000)
    b = shape[0]
    x = torch.randn(*shape, device=device)
    ts = sched.timesteps(steps)
    t_dev = ts.to(device)
    den = Denoiser(net, sched)
    ref = DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    ref_p = DDPMScheduler(clip_sample=False, timestep_spacing="trailing")
    with torch.no_grad():
        recorded = [net(x, t.expand(b)) for t in t_dev]
        rep = Replay(recorded)
        den_rep = Denoiser(rep, sched)

        def model_only() -> None:
            for t in t_dev:
                net(x, t.expand(b))

        def ddpm_generator() -> torch.Generator:
            return torch.Generator(device=device).manual_seed(0)

        timings = {
            "model_only_s": _timeit(model_only, repeat),
            "ours_total_s": _timeit(lambda: sample_ddim(den, x, ts), repeat),
            "diffusers_total_s": _timeit(lambda: _diffusers_loop(ref, net, x, steps, eta=0.0), repeat),
            "ours_step_us": _timeit(lambda: sample_ddim(den_rep, x, ts), repeat) / steps * 1e6,
            "diffusers_step_us": _timeit(lambda: _diffusers_loop(ref, rep, x, steps, eta=0.0), repeat) / steps * 1e6,
            "ours_ddpm_step_us": _timeit(lambda: sample_ddpm(den_rep, x, ts, generator=ddpm_generator()),
                                         repeat) / steps * 1e6,
            "diffusers_ddpm_step_us": _timeit(lambda: _diffusers_loop(ref_p, rep, x, steps, generator=ddpm_generator()),
                                              repeat) / steps * 1e6,
        }
    return {"model": name, "batch": b, "steps": steps, **timings,
            "ours_over_model": timings["ours_total_s"] / timings["model_only_s"],
            "diffusers_over_model": timings["diffusers_total_s"] / timings["model_only_s"]}


def ddpm_vs_ddim(batch: int = 1, repeat: int = 3, device: str = "cpu") -> dict[str, float]:
    """Wall-time ratio DDPM-1000 / DDIM-50 on the same MLP (the NFE ratio, 20, is the limit)."""
    from ..core.sample import sample
    from ..models import MLP

    torch.manual_seed(0)
    net = MLP(2, 128, 3).eval().to(device)
    den = Denoiser(net, NoiseSchedule.linear(1000))
    shape = (batch, 2)
    t_ddpm = _timeit(lambda: sample(den, shape, steps=1000, sampler="ddpm", device=device), repeat)
    t_ddim = _timeit(lambda: sample(den, shape, steps=50, sampler="ddim", device=device), repeat)
    return {"ddpm1000_s": t_ddpm, "ddim50_s": t_ddim, "ratio": t_ddpm / t_ddim}


def format_overhead(rows: list[dict[str, Any]], ratio: dict[str, float]) -> str:
    lines = [
        "| model | batch | model-only (ms) | ours total (ms) | ours/model | diffusers total (ms) | diffusers/model "
        "| ours DDIM µs/step | diffusers DDIM µs/step | ratio | ours DDPM µs/step | diffusers DDPM µs/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['model_only_s'] * 1e3:.2f} | {r['ours_total_s'] * 1e3:.2f} | "
            f"{r['ours_over_model']:.3f} | {r['diffusers_total_s'] * 1e3:.2f} | {r['diffusers_over_model']:.3f} | "
            f"{r['ours_step_us']:.1f} | {r['diffusers_step_us']:.1f} | "
            f"{r['diffusers_step_us'] / r['ours_step_us']:.1f}× | {r['ours_ddpm_step_us']:.1f} | "
            f"{r['diffusers_ddpm_step_us']:.1f} |")
    lines.append("")
    lines.append(f"DDPM-1000 / DDIM-50 wall time (MLP, batch 1): {ratio['ddpm1000_s']:.3f} s / "
                 f"{ratio['ddim50_s']:.4f} s = {ratio['ratio']:.2f} (NFE ratio 20)")
    return "\n".join(lines)


def solver_overhead(steps: int = 20, repeat: int = 7, device: str = "cpu") -> str:
    """Per-step cost of the multistep solvers' own work (outputs replayed, tiny MLP, batch 1), ours vs
    diffusers' DPMSolverMultistepScheduler (2M) and UniPCMultistepScheduler (bh2)."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    from ..core.samplers import SAMPLERS
    from ..models import MLP

    torch.manual_seed(0)
    net = MLP(2, 32, 1).eval().to(device)
    x = torch.randn(1, 2, device=device)
    lines = ["| solver | ours µs/step | diffusers µs/step | ratio |", "|---|---:|---:|---:|"]
    for name, ref in (("dpmpp_2m", DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)),
                      ("unipc", UniPCMultistepScheduler(solver_type="bh2", solver_order=2))):
        ref.set_timesteps(steps)
        ts = ref.timesteps.clone()
        with torch.no_grad():
            rep = Replay([net(x, t.reshape(1)) for t in ts])
            den = Denoiser(rep, NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod.double()))
            fn = SAMPLERS[name]
            ours = _timeit(lambda fn=fn, den=den, ts=ts: fn(den, x, ts), repeat) / steps * 1e6
            theirs = _timeit(lambda ref=ref, rep=rep: _diffusers_loop(ref, rep, x, steps), repeat) / steps * 1e6
        lines.append(f"| {name} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.1f}× |")
    return "\n".join(lines)


def dropin_overhead(steps: int = 20, repeat: int = 5, device: str = "cpu", batch: int = 1) -> str:
    """Per-step cost of each drop-in scheduler's own work beside diffusers' class of the same name, same run:
    the pipeline loop (set_timesteps, scale_model_input, step) on replayed outputs, a (batch, 4, 8, 8) latent."""
    import diffusers
    from diffusers.utils import logging as dlogging

    from ..io import schedulers as ours

    dlogging.set_verbosity_error()
    x = torch.randn(batch, 4, 8, 8, device=device)
    outs = [torch.randn_like(x) * 0.1 for _ in range(2 * steps + 2)]
    lines = ["| drop-in | ours µs/step | diffusers µs/step | diffusers / ours |", "|---|---:|---:|---:|"]

    def loop(s: Any) -> None:
        s.set_timesteps(steps)
        y = x * getattr(s, "init_noise_sigma", 1.0)
        g = torch.Generator(device=device).manual_seed(0)
        kw = {"generator": g} if "generator" in s.step.__code__.co_varnames else {}
        scale = getattr(s, "scale_model_input", None)
        for i, t in enumerate(s.timesteps):
            if scale is not None:
                scale(y, t)
            y = s.step(outs[i], t, y, **kw).prev_sample

    for name in ours.__all__:
        n_calls = len(_timesteps_of(getattr(ours, name)(), steps))
        mine = _timeit(lambda name=name: loop(getattr(ours, name)()), repeat) / n_calls * 1e6
        theirs = _timeit(lambda name=name: loop(getattr(diffusers, name)()), repeat) / n_calls * 1e6
        lines.append(f"| {name} | {mine:.1f} | {theirs:.1f} | {theirs / mine:.2f}× |")
    return "\n".join(lines)


def _timesteps_of(s: Any, steps: int) -> torch.Tensor:
    s.set_timesteps(steps)
    return s.timesteps


def invariance_cost(steps: int = 20, repeat: int = 3, device: str = "cpu", quick: bool = False,
                    chunks: tuple[int, ...] = (8, 16, 32, 64)) -> str:
    """Wall time of batch-invariant DDIM (fixed-size network calls of `chunk` rows, the last chunk padded)
    over the plain mode's, per model, batch and chunk size: the price of bit-identical samples across batches."""
    from ..core.sample import BATCH_INVARIANT_CHUNK, sample
    from ..models import MLP
    from ..models.unet import small_unet

    torch.manual_seed(0)
    models = [("mlp", MLP(2, 128, 3).eval().to(device), (2,))]
    if not quick:
        models.append(("unet8x8", small_unet(8, 1).eval().to(device), (1, 8, 8)))
    chunks = (BATCH_INVARIANT_CHUNK,) if quick else chunks
    lines = ["| model | batch | plain (ms) | " + " | ".join(f"chunk {c} (× plain)" for c in chunks) + " |",
             "|---|---:|---:|" + "---:|" * len(chunks)]
    for name, net, shape in models:
        den = Denoiser(net, NoiseSchedule.linear(1000))
        for b in (1, 8) if quick else (1, 8, 64):
            def go(inv: bool | int, b: int = b, den: Denoiser = den, shape: tuple[int, ...] = shape) -> None:
                sample(den, (b, *shape), steps=steps, device=device, batch_invariant=inv)
            with torch.no_grad():
                plain = _timeit(lambda: go(False), repeat)
                cells = [_timeit(lambda c=c: go(c), repeat) / plain for c in chunks]
            lines.append(f"| {name} | {b} | {plain * 1e3:.2f} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines)


def overhead_report(quick: bool = False, steps: int = 50, device: str = "cpu") -> str:
    """The `ddim bench overhead` report body: DDIM/DDPM vs diffusers per model and batch, then the multistep solvers."""
    repeat = 3 if quick else 7
    rows = overhead(steps=steps, repeat=repeat, device=device, include_unet=not quick,
                    batches=(1,) if quick else (1, 1024))
    text = format_overhead(rows, ddpm_vs_ddim(device=device, repeat=1 if quick else 3))
    inv = invariance_cost(steps=20, repeat=repeat, device=device, quick=quick)
    drop = dropin_overhead(steps=20, repeat=repeat, device=device)
    return (text + "\n\n" + solver_overhead(steps=steps, repeat=repeat, device=device)
            + "\n\nDrop-in schedulers in a pipeline loop (20 steps, a 1×4×8×8 latent, outputs replayed; each step "
              "call including set_timesteps' share):\n\n" + drop
            + "\n\nBatch-invariant mode (DDIM, 20 steps; wall time over the plain mode's, same run):\n\n" + inv)
