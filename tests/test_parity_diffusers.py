"""Our DDIM/DDPM against diffusers' scheduler loops on the same network and x_T."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from conftest import diffusers_loop, random_mlp
from ddim import Denoiser, NoiseSchedule, sample
from ddim.core.samplers import sample_ddim, sample_ddpm

BETAS = {"linear": {}, "scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012}, "squaredcos_cap_v2": {}}


def _pair(beta_schedule, prediction_type, clip, spacing, net):
    ref = DDIMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=clip,
                        timestep_spacing=spacing, **BETAS[beta_schedule])
    # same ᾱ table as diffusers (float32-rounded) so that only the sampler is compared
    sched = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod.double(), spacing=spacing)
    den = Denoiser(net, sched, prediction_type=prediction_type, clip_sample=1.0 if clip else None)
    return ref, den


@pytest.mark.parametrize("beta_schedule", list(BETAS))
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("spacing,steps", [("leading", 50), ("leading", 37), ("trailing", 50), ("trailing", 8)])
def test_ddim_eta0_matches_diffusers(beta_schedule, prediction_type, clip, spacing, steps):
    net = random_mlp(4)
    ref, den = _pair(beta_schedule, prediction_type, clip, spacing, net)
    x_T = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    expected = diffusers_loop(ref, net, x_T, steps, eta=0.0)
    ours, stats = sample(den, x_T=x_T, steps=steps, sampler="ddim", eta=0.0, return_stats=True)
    scale = max(1.0, float(expected.abs().max()))
    assert float((ours - expected).abs().max()) <= 1e-5 * scale
    assert stats.nfe == steps


def _ddim_float64_reference(net, abar: np.ndarray, ts: list[int], x_T: torch.Tensor) -> torch.Tensor:
    """Independent re-derivation: DDIM eq. 12 with η=0 in float64, previous ᾱ = next list entry."""
    x = x_T.double()
    net64 = random_mlp(4, dtype=torch.float64)
    net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    with torch.no_grad():
        for i, t in enumerate(ts):
            a = abar[t]
            ap = abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
            eps = net64(x, torch.full((x.shape[0],), t))
            x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
            x = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps
    return x


def test_linspace_matches_float64_rederivation_where_diffusers_is_wrong():
    net = random_mlp(4)
    sched = NoiseSchedule.linear(1000, spacing="linspace")
    den = Denoiser(net, sched)
    x_T = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    ts = sched.timesteps(37, "linspace").tolist()
    expected = _ddim_float64_reference(net, sched.alphas_cumprod.numpy(), ts, x_T)
    ours = sample(den, x_T=x_T, steps=37, spacing="linspace")
    scale = float(expected.abs().max())
    assert float((ours.double() - expected).abs().max()) < 5e-6 * scale  # float32 rounding only
    # diffusers' fixed stride T//S ignores the linspace list: its previous ᾱ is wrong, and so is its output
    ref = DDIMScheduler(timestep_spacing="linspace", clip_sample=False)
    theirs = diffusers_loop(ref, net, x_T, 37, eta=0.0)
    assert torch.equal(torch.as_tensor(ts), ref.timesteps)
    assert float((theirs.double() - expected).abs().max()) > 1e-3 * scale


def test_eta1_full_grid_equals_ddpm_ancestral():
    net = random_mlp(4)
    sched = NoiseSchedule.linear(1000)
    den = Denoiser(net, sched)
    x_T = torch.randn(8, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    net.double()
    a = sample(den, x_T=x_T, steps=1000, sampler="ddim", eta=1.0, seed=10)
    b = sample(den, x_T=x_T, steps=1000, sampler="ddpm", seed=10)
    assert float((a - b).abs().max()) < 1e-9
    c = sample(den, x_T=x_T, steps=1000, sampler="ddim", eta=0.0, seed=10)
    assert float((a - c).abs().max()) > 0.1  # the noise is really there


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_matches_diffusers_with_same_noise(variance_type):
    """diffusers' DDPMScheduler on the full grid; both draw from one torch.Generator in the same order."""
    net = random_mlp(4).double()
    ref = DDPMScheduler(variance_type=variance_type, clip_sample=False)
    sched = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod.double())
    den = Denoiser(net, sched)
    x_T = torch.randn(6, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref.set_timesteps(1000)
    x = x_T.clone()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(net(x, t.expand(6)), t, x, generator=g).prev_sample
        ours = sample_ddpm(den, x_T, sched.timesteps(1000), generator=torch.Generator().manual_seed(5),
                           variance_type=variance_type)
    # diffusers computes its coefficients in float32: ~1e-7 relative per step over 1000 steps
    assert float((ours - x).abs().max()) < 5e-5 * float(x.abs().max())


def test_ddim_step_matches_diffusers_eta_positive_with_given_noise():
    """One eta > 0 step: same x_t, same ε̂, same z → same x_prev (σ formula and direction term)."""
    ref = DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    ref.set_timesteps(10)
    sched = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod.double())
    g = torch.Generator().manual_seed(6)
    x, eps, z = (torch.randn(5, 3, dtype=torch.float64, generator=g) for _ in range(3))
    expected = ref.step(eps, 899, x, eta=0.7, variance_noise=z).prev_sample
    den = Denoiser(lambda x_, t_: eps, sched)
    seen = []
    sample_ddim(den, x, torch.tensor([899, 799]), generator=lambda: z, eta=0.7,
                callback=lambda info: seen.append(info.x.clone()))
    assert float((seen[0] - expected).abs().max()) < 1e-6
