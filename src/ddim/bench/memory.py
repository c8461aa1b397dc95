"""Peak memory of one sampling call, each configuration in a fresh subprocess (so no earlier run's freed memory
hides it): the rise of peak RSS over the RSS after loading the model and one warm-up call at batch 1 (CPU),
or of max_memory_allocated (CUDA)."""

from __future__ import annotations

import json
import subprocess
import sys

from ..core.errors import UsageError


def peak_sampling_mb(model: str, batch: int, steps: int, *, sampler: str = "ddim", trajectory: bool = False,
                     device: str = "cpu") -> float:
    """MB that one `sample()` call adds at its peak, measured in a fresh Python process."""
    args = json.dumps({"model": model, "batch": batch, "steps": steps, "sampler": sampler,
                       "trajectory": trajectory, "device": device})
    r = subprocess.run([sys.executable, "-m", "ddim.bench.memory", args], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        raise UsageError(f"memory probe failed: {last}")
    return float(r.stdout.strip().splitlines()[-1])


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def _probe(spec: dict) -> float:
    import torch

    from ..core.sample import sample
    from ..io.loader import load_model

    model = load_model(spec["model"]).to(spec["device"])
    x = torch.randn(spec["batch"], *model.sample_shape, device=spec["device"])
    sample(model.denoiser, x_T=x[:1], steps=1)  # one-time library set-up (kernels, thread pools) is not sampling
    kw = {"steps": spec["steps"], "sampler": spec["sampler"], "return_trajectory": spec["trajectory"]}
    if spec["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        sample(model.denoiser, x_T=x, **kw)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS (VmHWM) to the current RSS
        f.write("5")
    base = _rss_mb("VmRSS")
    sample(model.denoiser, x_T=x, **kw)
    return _rss_mb("VmHWM") - base


if __name__ == "__main__":
    print(f"{_probe(json.loads(sys.argv[1])):.3f}")
