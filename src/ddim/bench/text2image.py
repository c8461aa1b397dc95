"""`ddim bench speed --model FOLDER`: the seeds' performance table measured on a text-to-image folder (SD 1/2,
SDXL, SD3, Flux) — ours beside the diffusers pipeline the folder names, at equal steps, in one run: time per
image, sampler overhead over the network alone, peak memory. DDPM-1000 against DDIM 100 / 50 / 20 and
DPM-Solver++ 20 on ε/v folders; Euler (FlowMatchEulerDiscreteScheduler) 100 / 50 / 20 / 4 on flow folders, with
our DPM-Solver++(2M) and UniPC in flow variables, which the pipelines' flow scheduler does not offer, beside."""

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
EULER = "FlowMatchEulerDiscreteScheduler"
FLOW_CONFIGS = [("ddim", EULER, 100), ("ddim", EULER, 50), ("ddim", EULER, 20), ("ddim", EULER, 4),
                ("dpmpp_2m", None, 20), ("unipc", None, 10)]
FLOW_QUICK = [("ddim", EULER, 10), ("ddim", EULER, 4), ("dpmpp_2m", None, 4)]
PROMPT, GUIDANCE = "a photo of a cat", 7.5


def _time(fn: Any, repeat: int) -> float:
    """Best of `repeat` timed calls (the caller warms up once beforehand)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def default_guidance(model: Any) -> float:
    """The CFG scale a folder is benchmarked under: 7.5, or none for Flux (dev: its distilled input at the default,
    as its users run it)."""
    return 1.0 if model.format == "flux" else GUIDANCE


def speed_text2image(out: Path, quick: bool, command: str, model: str, device: str = "cpu",
                     size: tuple[int, int] | None = None) -> str:
    import diffusers

    from ..core.errors import UsageError
    from ..core.sample import resolve_timesteps
    from ..core.samplers import SAMPLERS
    from ..io.loader import load_model
    from ..ops.text_to_image import text_to_image
    from .memory import diffusers_pipeline, peak_sampling_mb, pipeline_kwargs, sized_codec

    m = load_model(model, device)
    lp = sized_codec(m, size)
    g = default_guidance(m)
    pipe = diffusers_pipeline(model, device)
    base_cfg = pipe.scheduler.config
    flow = type(pipe.scheduler).__name__.startswith("FlowMatch")
    hw = tuple(lp.image_shape[1:])
    pkw = pipeline_kwargs(pipe, g, hw)
    prompts = [PROMPT, ""] if g != 1 else [PROMPT]
    cond = {k: v.to(device) for k, v in lp.condition(prompts).items()}
    x = torch.randn(len(prompts), *lp.latent_shape, device=device)
    configs = (FLOW_QUICK if quick else FLOW_CONFIGS) if flow else (QUICK if quick else CONFIGS)
    rows, skipped = [], []
    with torch.no_grad():
        text_to_image(lp, PROMPT, 1, guidance=g, steps=2, sampler="ddim")  # warm-up, both pipelines
        pipe(PROMPT, num_inference_steps=2, **pkw)
        for sampler, sched_name, steps in configs:
            try:
                step_list = resolve_timesteps(lp.denoiser, steps, None, None)
            except UsageError as e:  # e.g. SDXL's leading spacing with steps_offset 1 at 1000 steps
                skipped.append(f"{sampler}-{steps}: {e} (diffusers' {sched_name} makes timestep {steps} there, "
                               "outside its table)")
                continue
            repeat = 1 if quick else max(1, min(3, 100 // steps))  # best of 3 for short runs, one 1000-step run
            if sched_name is not None:
                pipe.scheduler = getattr(diffusers, sched_name).from_config(base_cfg)
            # the network calls of the run: its sampler's NFE at the levels of its step list (the pipeline's own
            # levels where both run, by the parity tests)
            levels = [lp.denoiser.path.time_input(float(t), x.shape[0], x.device) for t in step_list]
            ts = (levels * 2)[:SAMPLERS[sampler].nfe(steps)]
            t_net = _time(lambda ts=ts: [lp.net(x, t, **cond) for t in ts], repeat)
            t_ours = _time(lambda s=sampler, n=steps: text_to_image(lp, PROMPT, 1, guidance=g, steps=n, sampler=s),
                           repeat)
            t_theirs = None if sched_name is None else _time(
                lambda n=steps: pipe(PROMPT, num_inference_steps=n, **pkw), repeat)
            def peak(d: str | None, s: str = sampler, n: int = steps) -> float:
                return peak_sampling_mb(model, 1, n, sampler=s, device=device, prompt=PROMPT, guidance=g,
                                        diffusers_scheduler=d, size=hw)
            mem = [peak(None), None if sched_name is None else peak(sched_name)]
            rows.append({"sampler": sampler, "steps": steps, "net": t_net, "ours": t_ours, "theirs": t_theirs,
                         "mem_ours": mem[0], "mem_theirs": mem[1], "scheduler": sched_name})
    c, h, w = lp.latent_shape
    net = getattr(lp, "unet", None) or getattr(lp, "transformer", lp.net)
    n_params = sum(p.numel() for p in net.parameters())
    cfg = (f"CFG {g:g} (ours: the conditional and unconditional branches in one call on the doubled batch; "
           + ("diffusers' true CFG: two calls)" if m.format == "flux" else "diffusers: the same)") if g != 1 else
           "no CFG (one network call per step; Flux's distilled guidance input at the pipeline's default)")
    lines = [header(f"Text-to-image speed and memory ({m.format} folder, beside {type(pipe).__name__})", command),
             f"Folder `{model}`: {type(net).__name__} ({n_params / 1e6:.2f} M parameters), latents {c}×{h}×{w} "
             f"(images {hw[1]}×{hw[0]}, width × height), one image, prompt {PROMPT!r}, {cfg}, device {device}"
             f"{' (CPU: the real figures come from the same command on a GPU machine)' if device == 'cpu' else ''}. "
             "Time per image includes text encoding and the VAE decode; network only = the same network calls with "
             "no sampler, text encoder or VAE. Peak memory: the rise of peak RSS (CUDA: max_memory_allocated) "
             "during one call, each in a fresh process. Equal steps in each row"
             + ("; rows without a diffusers scheduler are ours only (the flow pipelines' scheduler is Euler)."
                if flow else "."), "",
             "| sampler | steps | diffusers scheduler | ours (s/image) | diffusers (s/image) | network only (s) | "
             "ours / network | diffusers / network | peak MB ours | peak MB diffusers |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        th = "—" if r["theirs"] is None else f"{r['theirs']:.3f}"
        thn = "—" if r["theirs"] is None else f"{r['theirs'] / r['net']:.3f}"
        mt = "—" if r["mem_theirs"] is None else f"{r['mem_theirs']:.1f}"
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['scheduler'] or '—'} | {r['ours']:.3f} | {th} | "
                     f"{r['net']:.3f} | {r['ours'] / r['net']:.3f} | {thn} | {r['mem_ours']:.1f} | {mt} |")
    ddpm = next((r for r in rows if r["sampler"] == "ddpm"), None)
    ddim = [r for r in rows if r["sampler"] == "ddim"]
    if ddpm is not None and ddim:
        d = min(ddim, key=lambda r: r["steps"])
        lines += ["", f"DDPM-{ddpm['steps']} / DDIM-{d['steps']} time: {ddpm['ours'] / d['ours']:.1f}× (ours), "
                  f"{ddpm['theirs'] / d['theirs']:.1f}× (diffusers); NFE ratio {ddpm['steps'] / d['steps']:.0f}.",
                  "Peak memory, DDIM vs DDPM: " + ", ".join(
                      f"DDIM-{r['steps']} {_pct(r['mem_ours'], ddpm['mem_ours'])} (ours), "
                      f"{_pct(r['mem_theirs'], ddpm['mem_theirs'])} (diffusers)" for r in ddim) + ".",
                  _memory_verdict(ddpm, ddim)]
    if skipped:
        lines += ["", "Not run: " + "; ".join(skipped) + "."]
    both = [r for r in rows if r["theirs"] is not None]
    lines.append("\nOurs / diffusers time at equal steps: " + ", ".join(
        f"{r['sampler']}-{r['steps']} {r['ours'] / r['theirs']:.2f}" for r in both) + ".")
    fig = plots.curves({"ours": ([r["steps"] for r in rows], [r["ours"] for r in rows]),
                        "diffusers": ([r["steps"] for r in both], [r["theirs"] for r in both]),
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


def reconstruction_text2image(out: Path, quick: bool, command: str, model: str,
                              size: tuple[int, int] | None = None) -> str:
    """Prompt-conditioned inversion of a text-to-image folder (any format): latents of generated images encoded
    with the VAE, inverted and decoded under the prompt at guidance 1 / 3 / 7.5 (naive, refined, negative-prompt),
    at `size` (height, width; default the folder's)."""
    from ..io.loader import load_model
    from ..ops.editing import guided_reconstruction
    from ..ops.text_to_image import text_to_image
    from .memory import sized_codec

    m = load_model(model)
    lp = sized_codec(m, size)
    n = 2 if quick else 4
    refine = 3 if quick else 8
    with torch.no_grad():
        z0 = lp.encode(text_to_image(lp, PROMPT, n, guidance=default_guidance(m), steps=10, sampler="dpmpp_2m"))
        rows = guided_reconstruction(lp.denoiser, z0, lp.condition([PROMPT]), (1.0, 3.0, 7.5),
                                     (10,) if quick else (10, 20, 50), refine=refine)
    scale = float(z0.pow(2).mean())
    h, w = lp.image_shape[1:]
    lines = [header(f"Prompt-conditioned inversion ({m.format} folder)", command),
             f"Folder `{model}`: {n} generated {w}×{h} images encoded with the VAE (latent mean square {scale:.3f}), "
             "inverted "
             f"and decoded under {PROMPT!r} with DDIM; refined = {refine} fixed-point iterations per step; negative = "
             "conditional-only inversion, decoded with the prompt as the negative branch. Relative MSE of the "
             "latents (MSE / latent mean square).", "",
             "| steps | guidance | naive | refined | negative |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['scale']:g} | {r['naive'] / scale:.2e} | {r['refined'] / scale:.2e} | "
                     f"{r['negative'] / scale:.2e} |")
    return "\n".join(lines)
