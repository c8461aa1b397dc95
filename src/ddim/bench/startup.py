"""Start-up cost of the command line, as a ratio measured in one run: (wall time of `ddim sample` minus its own
sampling time) over the wall time of `python -c "import torch"`, and `ddim --help` over `python -c pass`."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .report import header

SAMPLE = ["sample", "--model", "digits", "--steps", "20", "-n", "64"]


def _wall(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, r.stdout


def _median(cmd: list[str], repeat: int) -> tuple[float, list[str]]:
    runs = [_wall(cmd) for _ in range(repeat)]
    return statistics.median(t for t, _ in runs), [out for _, out in runs]


def startup_report(quick: bool = False, command: str = "ddim bench startup") -> str:
    repeat = 2 if quick else 5
    py = sys.executable
    with tempfile.TemporaryDirectory() as d:
        out = str(Path(d) / "x.npy")
        _wall([py, "-m", "ddim", *SAMPLE, "--out", out])  # warm the file cache for every row alike
        t_torch, _ = _median([py, "-c", "import torch"], repeat)
        t_pass, _ = _median([py, "-c", "pass"], repeat)
        t_help, _ = _median([py, "-m", "ddim", "--help"], repeat)
        t_cli, outs = _median([py, "-m", "ddim", *SAMPLE, "--out", out], repeat)
    sampling = statistics.median(float(re.search(r"([0-9.]+) s\n", o).group(1)) for o in outs)
    ratio = (t_cli - sampling) / t_torch
    lines = [header("Start-up", command),
             f"`ddim {' '.join(SAMPLE)}`, median of {repeat} fresh processes each, same run:", "",
             "| what | wall (s) |", "|---|---:|",
             f"| python -c pass | {t_pass:.3f} |", f"| python -c 'import torch' | {t_torch:.3f} |",
             f"| ddim --help | {t_help:.3f} |", f"| ddim sample (whole process) | {t_cli:.3f} |",
             f"| … of which sampling (the run's own time) | {sampling:.3f} |", "",
             f"Start-up ratio (wall − sampling) / import torch: **{ratio:.2f}** (target ≤ 1.5: "
             f"{'met' if ratio <= 1.5 else 'not met'}); `ddim --help` / `python -c pass`: {t_help / t_pass:.2f}."]
    return "\n".join(lines)
