"""Benchmark suites that measure side by side in one run and write report.md + PNGs."""
