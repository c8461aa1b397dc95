"""Peak memory of one sampling call, each configuration in a fresh subprocess (so no earlier run's freed memory
hides it): the rise of peak RSS over the RSS after loading the model and one warm-up call at batch 1 (CPU),
or of max_memory_allocated (CUDA)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..core.errors import UsageError


def peak_sampling_mb(model: str, batch: int, steps: int, *, sampler: str = "ddim", trajectory: bool = False,
                     device: str = "cpu", prompt: str | None = None, guidance: float = 7.5,
                     diffusers_scheduler: str | None = None, size: tuple[int, int] | None = None) -> float:
    """MB that one `sample()` call adds at its peak, measured in a fresh Python process. With `prompt` (a
    text-to-image folder): one text-to-image call under CFG at `size` (height, width; default the model's), by
    our sampler, or by the folder's diffusers pipeline with `diffusers_scheduler` (a class name) when given."""
    args = json.dumps({"model": model, "batch": batch, "steps": steps, "sampler": sampler,
                       "trajectory": trajectory, "device": device, "prompt": prompt, "guidance": guidance,
                       "diffusers_scheduler": diffusers_scheduler, "size": None if size is None else list(size)})
    r = subprocess.run([sys.executable, "-m", "ddim.bench.memory", args], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        raise UsageError(f"memory probe failed: {last}")
    return float(r.stdout.strip().splitlines()[-1])


def pipeline_kwargs(pipe: Any, guidance: float, size: tuple[int, int] | None) -> dict[str, Any]:
    """diffusers' call arguments for the work of our run under CFG `guidance` at `size` (height, width): Flux's
    CFG is `true_cfg_scale` against the empty negative prompt (its `guidance_scale` is the distilled input, left
    at the pipeline's default, as ours)."""
    kw: dict[str, Any] = {} if size is None else {"height": int(size[0]), "width": int(size[1])}
    if type(pipe).__name__ == "FluxPipeline":
        return {**kw, "true_cfg_scale": guidance, **({"negative_prompt": ""} if guidance > 1 else {})}
    return {**kw, "guidance_scale": guidance}


def sized_codec(model: Any, size: tuple[int, int] | None) -> Any:
    """A text-to-image model's LatentDiffusion at `size` (height, width; None: its own)."""
    return model.codec.resized(model.shape_for(None if size is None else tuple(size)))


def diffusers_pipeline(folder: str, device: str = "cpu") -> Any:
    """diffusers' own pipeline for a text-to-image folder (the class its model_index.json names), progress bar
    off: what our runs are measured beside."""
    import diffusers

    from ..io.checkpoint import read_json

    name = read_json(Path(folder) / "model_index.json").get("_class_name", "StableDiffusionPipeline")
    kw = {"safety_checker": None, "requires_safety_checker": False} if name == "StableDiffusionPipeline" else {}
    pipe = getattr(diffusers, name).from_pretrained(folder, **kw).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def _run_text_to_image(spec: dict):
    """(set-up call, measured call) for one text-to-image run, ours or diffusers'."""
    import torch

    from ..io.loader import load_model

    if spec["diffusers_scheduler"]:
        import diffusers

        pipe = diffusers_pipeline(spec["model"], spec["device"])
        pipe.scheduler = getattr(diffusers, spec["diffusers_scheduler"]).from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        kw = pipeline_kwargs(pipe, spec["guidance"], spec.get("size"))

        def run(steps: int, n: int) -> None:
            pipe([spec["prompt"]] * n, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **kw)
        return run
    from ..ops.text_to_image import text_to_image

    lp = sized_codec(load_model(spec["model"], spec["device"]), spec.get("size"))

    def run(steps: int, n: int) -> None:
        text_to_image(lp, spec["prompt"], n, guidance=spec["guidance"], steps=steps, sampler=spec["sampler"])
    return run


def _peak_mb(fn, device: str) -> float:
    """MB that fn() adds at its peak: max_memory_allocated on CUDA, the peak RSS (VmHWM, reset first) on CPU."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS (VmHWM) to the current RSS
        f.write("5")
    base = _rss_mb("VmRSS")
    fn()
    return _rss_mb("VmHWM") - base


def _probe(spec: dict) -> float:
    import torch

    from ..core.sample import sample
    from ..io.loader import load_model

    with torch.no_grad():
        if spec.get("prompt") is not None:
            run = _run_text_to_image(spec)
            run(1, 1)  # set-up (kernels, thread pools, the prompt's embedding) is not sampling
            return _peak_mb(lambda: run(spec["steps"], spec["batch"]), spec["device"])
        model = load_model(spec["model"], spec["device"])
        x = torch.randn(spec["batch"], *model.sample_shape, device=spec["device"])
        sample(model.denoiser, x_T=x[:1], steps=1)  # one-time library set-up (kernels, thread pools) is not sampling
        kw = {"steps": spec["steps"], "sampler": spec["sampler"], "return_trajectory": spec["trajectory"]}
        return _peak_mb(lambda: sample(model.denoiser, x_T=x, **kw), spec["device"])


if __name__ == "__main__":
    print(f"{_probe(json.loads(sys.argv[1])):.3f}")
