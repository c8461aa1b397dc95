"""Sampler overhead vs the model, ours vs diffusers, side by side: `python benchmarks/overhead.py`."""

import argparse

from ddim.bench import ddpm_vs_ddim, format_overhead, overhead

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-unet", action="store_true")
    a = ap.parse_args()
    rows = overhead(a.steps, a.repeat, a.device, include_unet=not a.no_unet)
    print(format_overhead(rows, ddpm_vs_ddim(device=a.device)))
