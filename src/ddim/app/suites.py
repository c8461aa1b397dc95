"""Bench suites of the app layer, registered beside the library's (`ddim bench reliability` measures the service
itself, so it cannot live below it). Importing this module imports no torch."""

from __future__ import annotations

from ..bench.suites import BenchOptions, suite


@suite("reliability")
def _reliability(o: BenchOptions) -> str:
    from .reliability import reliability_report

    return reliability_report(o.out, o.quick, o.command)
