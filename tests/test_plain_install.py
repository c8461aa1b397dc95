"""A plain `pip install .` (no extras) runs what the README shows: sample the shipped model, likelihood, demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_plain_install_samples_the_shipped_model(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # torch first, pinned and CPU (as the Makefile does; pip's cache makes this a copy, not a download)
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=900)
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "demo_out", "bench_out",
                                                             "__pycache__", ".pytest_cache"))
    subprocess.run([*pip, str(src)], check=True, timeout=900)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ddim = str(venv / "bin" / "ddim")
    out = tmp_path / "digits.npy"
    for args in (["sample", "--model", "digits", "-n", "4", "--steps", "5", "--out", str(out)],
                 ["likelihood", "--model", "mixture:mog3", "--n", "3"],
                 ["demo", "--quick", "--out", str(tmp_path / "demo")]):
        r = subprocess.run([ddim, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (args, r.stderr[-2000:])
    assert out.is_file() and (tmp_path / "demo" / "report.md").is_file()
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import pytest"], capture_output=True)
    assert r.returncode != 0  # the test extra really was left out
