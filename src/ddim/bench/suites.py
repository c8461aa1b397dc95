"""`ddim bench SUITE`: one entry point that runs a suite (quick or full preset) and writes OUT/report.md."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UsageError
from ..io.checkpoint import atomic_write_bytes
from .report import header

SUITES = ("overhead", "solvers", "quality", "speed", "eta-variance", "reconstruction", "guidance", "flow",
          "fewstep")


def run(suite: str, out: str | Path, *, quick: bool = False, command: str = "", device: str = "cpu",
        n: int | None = None, steps_list: list[int] | None = None, steps: int = 50, seeds: int = 3,
        reflowed: str | None = None, model: str | None = None) -> Path:
    """Run one suite and write its report (and figures) into `out`; prints the report and where it went."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    command = command or f"ddim bench {suite}"
    if suite == "overhead":
        from .overhead import overhead_report

        text = header("Sampler overhead", command) + "\n" + overhead_report(quick, steps, device)
    elif suite == "solvers":
        from .solvers import run_solvers

        if quick:
            return run_solvers(out, nfes=(5, 10), n=100, samplers=("ddim", "dpmpp_2m", "unipc"),
                               spacings=("trailing", "logsnr"), command=command)
        return run_solvers(out, command=command)
    elif suite == "fewstep":
        from .fewstep import fewstep_bench

        text = fewstep_bench(out, quick, command, n=n, seeds=seeds, consistency=model, reflowed=reflowed)
    elif suite == "flow":
        from .flow import flow_bench

        text = flow_bench(out, quick, command, n=n, seeds=seeds, reflowed=reflowed)
    elif suite == "guidance":
        from .guidance import guidance_bench

        text = guidance_bench(out, quick, command, n=n, seeds=seeds)
    elif suite in ("quality", "eta-variance", "speed", "reconstruction"):
        from . import quality as q

        if suite == "quality":
            text = q.quality(out, quick, command, n=n, steps_list=steps_list, seeds=seeds)
        elif suite == "eta-variance":
            text = q.eta_variance(out, quick, command)
        elif suite == "speed" and model is not None:
            from .text2image import speed_text2image

            text = speed_text2image(out, quick, command, model, device)
        elif suite == "speed":
            text = q.speed(out, quick, command, device)
        elif model is not None:
            from .text2image import reconstruction_text2image

            text = reconstruction_text2image(out, quick, command, model)
        else:
            text = q.reconstruction(out, quick, command)
    else:
        raise UsageError(f"unknown bench suite {suite!r}; choose one of {', '.join(SUITES)}")
    atomic_write_bytes(out / "report.md", (text + "\n").encode())
    print(text)
    print(f"wrote {out / 'report.md'}")
    return out / "report.md"
