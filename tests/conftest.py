"""Shared fixtures: a random MLP, the exact mixture, and diffusers' reference loops."""

from __future__ import annotations

import pytest
import torch

from ddim import Denoiser, NoiseSchedule
from ddim.bench.process import ServerProcess  # noqa: F401  (the tests' real server processes)
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

