"""`ddim bench speed --model FOLDER`: the seeds' performance table measured on a text-to-image folder (SD 1/2,
SDXL) — DDPM-1000 against DDIM 100 / 50 / 20 and DPM-Solver++ 20 under CFG, ours beside the diffusers pipeline
the folder names (StableDiffusionPipeline, StableDiffusionXLPipeline) in one run: time per image, sampler
overhead over the network alone, peak memory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..io import plots
from .report import header

CONFIGS = [("ddpm", "DDPMScheduler", 1000), ("ddim", "DDIMScheduler", 100), ("ddim", "DDIMScheduler", 50),
           ("ddim", "DDIMScheduler", 20), ("dpmpp_2m", "DPMSolverMultistepScheduler", 20)]
QUICK = [("ddpm", "DDPMScheduler", 20), ("ddim", "DDIMScheduler", 10), ("dpmpp_2m", "DPMSolverMultistepScheduler", 10)]
PROMPT, GUIDANCE = "a photo of a cat", 7.5


def _time(fn: Any, repeat: int) -> float:
    """Best of `repeat` timed calls (the caller warms up once beforehand)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def speed_text2image(out: Path, quick: bool, command: str, model: str, device: str = "cpu") -> str:
    import diffusers

    from ..io.loader import load_model
    from ..ops.text_to_image import text_to_image
    from .memory import diffusers_pipeline, peak_sampling_mb

    m = load_model(model, device)
    lp = m.codec
    pipe = diffusers_pipeline(model, device)
    base_cfg = pipe.scheduler.config
    both = lp.condition([PROMPT, ""])
    cond = {k: v.to(device) for k, v in both.items()}
    x = torch.randn(2, *lp.latent_shape, device=device)
    rows = []
    with torch.no_grad():
        text_to_image(lp, PROMPT, 1, guidance=GUIDANCE, steps=2, sampler="ddim")  # warm-up, both pipelines
        pipe(PROMPT, num_inference_steps=2, guidance_scale=GUIDANCE)
        for sampler, sched_name, steps in QUICK if quick else CONFIGS:
            repeat = 1 if quick else max(1, min(3, 100 // steps))  # best of 3 for short runs, one 1000-step run
            pipe.scheduler = getattr(diffusers, sched_name).from_config(base_cfg)
            pipe.scheduler.set_timesteps(steps)
            ts = pipe.scheduler.timesteps
            t_net = _time(lambda ts=ts: [lp.net(x, t, **cond) for t in ts], repeat)
            t_ours = _time(lambda s=sampler, n=steps: text_to_image(lp, PROMPT, 1, guidance=GUIDANCE, steps=n,
                                                                    sampler=s), repeat)
            t_theirs = _time(lambda n=steps: pipe(PROMPT, num_inference_steps=n, guidance_scale=GUIDANCE), repeat)
            mem = [peak_sampling_mb(model, 1, steps, sampler=sampler, device=device, prompt=PROMPT,
                                    guidance=GUIDANCE, diffusers_scheduler=d) for d in (None, sched_name)]
            rows.append({"sampler": sampler, "steps": steps, "net": t_net, "ours": t_ours, "theirs": t_theirs,
                         "mem_ours": mem[0], "mem_theirs": mem[1]})
    c, h, w = lp.latent_shape
    lines = [header(f"Text-to-image speed and memory ({m.format} folder, beside {type(pipe).__name__})", command),
             f"Folder `{model}`: latents {c}×{h}×{w} (images {lp.image_shape[1]}×{lp.image_shape[2]}), UNet blocks "
             f"{', '.join(lp.unet.config.down_block_types)}, one image, "
             f"prompt {PROMPT!r}, CFG {GUIDANCE} (the conditional and unconditional branches in one call on the "
             f"doubled batch, in both), device {device}. Time per image includes text encoding and the VAE decode; "
             "network only = the same UNet calls with no sampler, text encoder or VAE. Peak memory: the rise of peak "
             "RSS (CUDA: max_memory_allocated) during one call, each in a fresh process.", "",
             "| sampler | steps | ours (s/image) | diffusers (s/image) | network only (s) | ours / network | "
             "diffusers / network | peak MB ours | peak MB diffusers |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['ours']:.3f} | {r['theirs']:.3f} | {r['net']:.3f} | "
                     f"{r['ours'] / r['net']:.3f} | {r['theirs'] / r['net']:.3f} | {r['mem_ours']:.1f} | "
                     f"{r['mem_theirs']:.1f} |")
    ddpm = next(r for r in rows if r["sampler"] == "ddpm")
    ddim = [r for r in rows if r["sampler"] == "ddim"]
    if ddim:
        d = min(ddim, key=lambda r: r["steps"])
        lines += ["", f"DDPM-{ddpm['steps']} / DDIM-{d['steps']} time: {ddpm['ours'] / d['ours']:.1f}× (ours), "
                  f"{ddpm['theirs'] / d['theirs']:.1f}× (diffusers); NFE ratio {ddpm['steps'] / d['steps']:.0f}.",
                  "Peak memory, DDIM vs DDPM: " + ", ".join(
                      f"DDIM-{r['steps']} {_pct(r['mem_ours'], ddpm['mem_ours'])} (ours), "
                      f"{_pct(r['mem_theirs'], ddpm['mem_theirs'])} (diffusers)" for r in ddim) + ".",
                  _memory_verdict(ddpm, ddim)]
    fig = plots.curves({"ours": ([r["steps"] for r in rows], [r["ours"] for r in rows]),
                        "diffusers": ([r["steps"] for r in rows], [r["theirs"] for r in rows]),
                        "network only": ([r["steps"] for r in rows], [r["net"] for r in rows])},
                       out / "text2image_speed.png", "steps", "seconds per image", logx=True, logy=True,
                       title="text-to-image time per image")
    lines.append(f"\n![time per image]({fig.name})")
    return "\n".join(lines)


def _memory_verdict(ddpm: dict[str, Any], ddim: list[dict[str, Any]]) -> str:
    """Whether the seeds' "DDIM uses ~30 % less peak memory than DDPM" holds in these rows (≥ 25 % lower), for
    ours and for diffusers separately, with the sizes the percentages come from."""
    parts = []
    for key, who in (("mem_ours", "ours"), ("mem_theirs", "diffusers")):
        if ddpm[key] < 5.0:
            parts.append(f"{who}: DDPM's peak is below 5 MB, within the noise of RSS (use larger latents)")
            continue
        saved = [1 - r[key] / ddpm[key] for r in ddim]
        verdict = ("holds" if min(saved) >= 0.25 else "does not hold" if max(saved) < 0.25 else
                   "holds at some step counts only")
        parts.append(f"{who}: DDIM {100 * min(saved):.0f}–{100 * max(saved):.0f} % below DDPM's {ddpm[key]:.1f} MB, "
                     f"the claim {verdict}")
    diff = max(abs(ddpm[k] - r[k]) for r in ddim for k in ("mem_ours", "mem_theirs"))
    return ("The seeds' claim “DDIM uses ~30 % less peak memory than DDPM” — " + "; ".join(parts) + f". The "
            f"differences are at most {diff:.1f} MB: a DDIM and a DDPM step hold the same tensors (one latent, the "
            "doubled batch through the UNet), so fewer steps save time, not working memory.")


def _pct(v: float, ref: float) -> str:
    return f"{100 * (v / ref - 1):+.0f} %" if ref >= 5.0 else "n/a (peak below 5 MB)"


def reconstruction_text2image(out: Path, quick: bool, command: str, model: str) -> str:
    """Prompt-conditioned inversion of a Stable-Diffusion folder: latents of generated images encoded with the
    VAE, inverted and decoded under the prompt at guidance 1 / 3 / 7.5 (naive, refined, negative-prompt)."""
    from ..io.loader import load_model
    from ..ops.editing import guided_reconstruction
    from ..ops.text_to_image import text_to_image

    lp = load_model(model)
    n = 2 if quick else 4
    refine = 3 if quick else 8
    with torch.no_grad():
        z0 = lp.encode(text_to_image(lp, PROMPT, n, guidance=GUIDANCE, steps=10, sampler="dpmpp_2m"))
        rows = guided_reconstruction(lp.denoiser, z0, lp.condition([PROMPT]), (1.0, 3.0, 7.5),
                                     (10,) if quick else (10, 20, 50), refine=refine)
    scale = float(z0.pow(2).mean())
    lines = [header("Prompt-conditioned inversion (Stable-Diffusion-format folder)", command),
             f"Folder `{model}`: {n} generated images encoded with the VAE (latent mean square {scale:.3f}), inverted "
             f"and decoded under {PROMPT!r} with DDIM; refined = {refine} fixed-point iterations per step; negative = "
             "conditional-only inversion, decoded with the prompt as the negative branch. Relative MSE of the "
             "latents (MSE / latent mean square).", "",
             "| steps | guidance | naive | refined | negative |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['scale']:g} | {r['naive'] / scale:.2e} | {r['refined'] / scale:.2e} | "
                     f"{r['negative'] / scale:.2e} |")
    return "\n".join(lines)
