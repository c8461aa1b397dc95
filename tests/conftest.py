"""Shared fixtures: a random MLP, the exact mixture, and diffusers' reference loops."""

from __future__ import annotations

import pytest
import torch

from ddim import Denoiser, NoiseSchedule
from ddim.models import MLP, mog3


@pytest.fixture(scope="session")
def mix():
    return mog3()


@pytest.fixture(scope="session")
def linear_schedule():
    return NoiseSchedule.linear(1000)


def random_mlp(dim: int = 4, seed: int = 0, dtype=torch.float32) -> MLP:
    torch.manual_seed(seed)
    net = MLP(dim=dim, hidden=32, depth=2).to(dtype)
    for p in net.parameters():  # keep outputs O(1) so that clipping and x̂0 stay in a sane range
        p.data.mul_(0.5)
    return net.eval()


def exact_denoiser(mix, schedule=None) -> Denoiser:
    schedule = schedule or NoiseSchedule.linear(1000)
    return Denoiser(mix.eps_model(schedule), schedule, sample_shape=(mix.dim,))


def diffusers_loop(scheduler, net, x_T: torch.Tensor, steps: int, **step_kw) -> torch.Tensor:
    """The textbook diffusers sampling loop around a scheduler."""
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = net(x, t.expand(x.shape[0]))
            x = scheduler.step(out, t, x, **step_kw).prev_sample
    return x


class ServerProcess:
    """`ddim serve` as a real uvicorn process on 127.0.0.1 (a free port), stopped by the context manager."""

    def __init__(self, *args: str, env: dict | None = None, timeout: float = 90.0) -> None:
        import os
        import subprocess
        import sys

        self.args = [sys.executable, "-m", "ddim", "serve", "--port", "0", *args]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=full_env)
        self.url = self._wait_for_url(timeout)

    def _wait_for_url(self, timeout: float) -> str:
        import threading

        found: list[str] = []
        lines: list[str] = []

        def read() -> None:
            for line in self.proc.stdout:
                lines.append(line)
                if line.startswith("ddim serve: http://") and not found:
                    found.append(line.split()[2].rstrip("/"))
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        import time

        t0 = time.time()
        while not found and time.time() - t0 < timeout and self.proc.poll() is None:
            time.sleep(0.05)
        if not found:
            self.stop()
            raise RuntimeError(f"server did not start: {''.join(lines)[-2000:]}")
        self.lines = lines
        import httpx

        while time.time() - t0 < timeout:  # the socket is bound before uvicorn answers
            try:
                if httpx.get(found[0] + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        return found[0]

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
