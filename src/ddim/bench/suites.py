"""`ddim bench SUITE`: the suites as a registry (like the samplers'), each a function of the run's options that
returns its report text; `run` writes OUT/report.md. Importing this module imports no torch (the CLI's parser
lists the names)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BenchOptions:
    """What a suite may use: output folder, quick preset, the command line for the report, and the flags."""

    out: Path
    quick: bool
    command: str
    device: str = "cpu"
    n: int | None = None
    steps_list: list[int] | None = None
    steps: int = 50
    seeds: int = 3
    reflowed: str | None = None
    model: str | None = None
    meanflow: str | None = None
    size: tuple[int, int] | None = None  # text-to-image suites: (height, width)


#: name → function(options) returning the report text (or the path of a report it wrote itself)
SUITES: dict[str, Callable[[BenchOptions], Any]] = {}


def suite(name: str) -> Callable[[Callable[[BenchOptions], Any]], Callable[[BenchOptions], Any]]:
    def wrap(fn: Callable[[BenchOptions], Any]) -> Callable[[BenchOptions], Any]:
        SUITES[name] = fn
        return fn
    return wrap


@suite("overhead")
def _overhead(o: BenchOptions) -> str:
    from .overhead import overhead_report
    from .report import header

    return header("Sampler overhead", o.command) + "\n" + overhead_report(o.quick, o.steps, o.device)


@suite("solvers")
def _solvers(o: BenchOptions) -> Path:
    from .solvers import run_solvers

    if o.quick:
        return run_solvers(o.out, nfes=(5, 10), n=100, samplers=("ddim", "dpmpp_2m", "unipc"),
                           spacings=("trailing", "logsnr"), command=o.command)
    return run_solvers(o.out, command=o.command)


@suite("quality")
def _quality(o: BenchOptions) -> str:
    from .quality import quality

    return quality(o.out, o.quick, o.command, n=o.n, steps_list=o.steps_list, seeds=o.seeds)


@suite("speed")
def _speed(o: BenchOptions) -> str:
    if o.model is not None:  # a text-to-image folder beside diffusers' pipeline
        from .text2image import speed_text2image

        return speed_text2image(o.out, o.quick, o.command, o.model, o.device, o.size)
    from .quality import speed

    return speed(o.out, o.quick, o.command, o.device)


@suite("eta-variance")
def _eta_variance(o: BenchOptions) -> str:
    from .quality import eta_variance

    return eta_variance(o.out, o.quick, o.command)


@suite("reconstruction")
def _reconstruction(o: BenchOptions) -> str:
    if o.model is not None:
        from .text2image import reconstruction_text2image

        return reconstruction_text2image(o.out, o.quick, o.command, o.model, o.size)
    from .quality import reconstruction

    return reconstruction(o.out, o.quick, o.command)


@suite("guidance")
def _guidance(o: BenchOptions) -> str:
    from .guidance import guidance_bench

    return guidance_bench(o.out, o.quick, o.command, n=o.n, seeds=o.seeds)


@suite("flow-matching")
def _flow(o: BenchOptions) -> str:
    from .flow import flow_bench

    return flow_bench(o.out, o.quick, o.command, n=o.n, seeds=o.seeds, reflowed=o.reflowed)


SUITES["flow"] = _flow  # the earlier name of flow-matching


@suite("fewstep")
def _fewstep(o: BenchOptions) -> str:
    from .fewstep import fewstep_bench

    return fewstep_bench(o.out, o.quick, o.command, n=o.n, seeds=o.seeds, consistency=o.model, reflowed=o.reflowed,
                         meanflow=o.meanflow)


@suite("startup")
def _startup(o: BenchOptions) -> str:
    from .startup import startup_report

    return startup_report(o.quick, o.command)


def run(name: str, out: str | Path, *, quick: bool = False, command: str = "", **flags: Any) -> Path:
    """Run one suite and write its report (and figures) into `out`; prints the report and where it went."""
    from ..core.errors import UsageError
    from ..io.checkpoint import atomic_write_bytes

    if name not in SUITES:
        raise UsageError(f"unknown bench suite {name!r}; choose one of {', '.join(SUITES)}")
    if flags.get("size") is not None and not (name in ("speed", "reconstruction") and flags.get("model")):
        raise UsageError("--size is for the speed and reconstruction suites on a text-to-image folder (--model)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = SUITES[name](BenchOptions(out, quick, command or f"ddim bench {name}", **flags))
    if isinstance(text, Path):
        return text
    atomic_write_bytes(out / "report.md", (text + "\n").encode())
    print(text)
    print(f"wrote {out / 'report.md'}")
    return out / "report.md"


@suite("serve")
def _serve(o: BenchOptions) -> str:
    from .serve import serve_report

    return serve_report(o.out, o.quick, o.command, o.model)
