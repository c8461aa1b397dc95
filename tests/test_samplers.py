"""Sampler behaviour: q_σ marginals, determinism, ground truth on the exact mixture, bad input."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import exact_denoiser, random_mlp
from ddim import Denoiser, ModelOutputError, NoiseSchedule, sample
from ddim.core.samplers import SAMPLERS, sample_ddim

SCHED = NoiseSchedule.linear(1000)


class OracleGivenX0(torch.nn.Module):
    """ε exactly consistent with a known x0: (x_t - sqrt(ᾱ) x0) / sqrt(1-ᾱ)."""

    def __init__(self, x0, schedule):
        super().__init__()
        self.x0, self.abar = x0, schedule.alphas_cumprod

    def forward(self, x, t):
        a = self.abar[t[0]].item()
        return (x - math.sqrt(a) * self.x0) / math.sqrt(1 - a)


@settings(max_examples=15, deadline=None)
@given(t=st.integers(50, 999), gap=st.integers(1, 400), eta=st.floats(0.0, 1.0))
def test_q_sigma_keeps_marginals(t, gap, eta):
    """DDIM eq. 7: if x_t ~ q(x_t|x0) then x_prev ~ q(x_prev|x0) for every σ (here: η in [0, 1])."""
    t_prev = max(t - gap, 0)
    n = 40000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    g = torch.Generator().manual_seed(t * 7 + gap)
    a, ap = SCHED.alpha_bar(t), SCHED.alpha_bar(t_prev)
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    den = Denoiser(OracleGivenX0(x0, SCHED), SCHED)
    seen = []
    sample_ddim(den, x_t, torch.tensor([t, t_prev]), generator=g, eta=eta, callback=lambda d: seen.append(d.x))
    x_prev = seen[0]
    se = math.sqrt((1 - ap) / n)
    assert abs(float(x_prev.mean()) - math.sqrt(ap) * 0.7) < 5 * se
    assert abs(float(x_prev.var()) - (1 - ap)) < 6 * (1 - ap) * math.sqrt(2 / n)


def test_same_seed_same_bits_and_batch_independence():
    net = random_mlp(4)
    den = Denoiser(net, SCHED)
    a = sample(den, (64, 4), steps=20, eta=0.5, seed=100)
    b = sample(den, (64, 4), steps=20, eta=0.5, seed=100)
    assert torch.equal(a, b)
    c = sample(den, (8, 4), steps=20, eta=0.5, seed=100)
    assert torch.equal(a[:8], c)
    # a seed alone equals its row in a batch up to the network's own kernel rounding
    d = sample(den, (1, 4), steps=20, eta=0.5, seeds=[137])
    assert float((d[0] - a[37]).abs().max()) <= 1e-5 * max(1.0, float(a[37].abs().max()))
    # explicit seeds pick the same streams
    e = sample(den, (3, 4), steps=20, eta=0.5, seeds=[105, 100, 163])
    assert float((e - a[[5, 0, 63]]).abs().max()) <= 1e-5 * max(1.0, float(a.abs().max()))
    assert not torch.equal(sample(den, (8, 4), steps=20, eta=0.5, seed=101), c)


def test_eta_zero_is_deterministic_and_x_T_given_equals_drawn():
    den = Denoiser(random_mlp(4), SCHED)
    a = sample(den, (16, 4), steps=10, seed=3)
    from ddim import SeededNoise

    x_T = SeededNoise(range(3, 19), (4,)).initial()
    b = sample(den, x_T=x_T, steps=10, seed=3)
    assert torch.equal(a, b)
    # with eta > 0 the fresh noise is the same whether x_T was given or drawn
    c = sample(den, (16, 4), steps=10, seed=3, eta=1.0)
    d = sample(den, x_T=x_T, steps=10, seed=3, eta=1.0)
    assert torch.equal(c, d)


def test_trajectory_and_nfe():
    den = Denoiser(random_mlp(4), SCHED)
    x, traj, stats = sample(den, (5, 4), steps=12, return_trajectory=True, return_stats=True)
    assert traj.shape == (13, 5, 4) and torch.equal(traj[-1], x)
    assert stats.nfe == 12
    assert not hasattr(den, "nfe") and not hasattr(den, "last_nfe")  # the run reports counts, not the model


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_ground_truth_1000_steps_match_true_mixture(mix, sampler):
    den = exact_denoiser(mix)
    n = 3000
    x = sample(den, (n, 2), steps=1000, sampler=sampler, dtype=torch.float64, seed=0)
    ref = mix.sample(n, generator=torch.Generator().manual_seed(1))
    se_mean = math.sqrt(float(ref.var(0).max()) / n)
    assert float((x.mean(0) - ref.mean(0)).abs().max()) < 5 * se_mean * math.sqrt(2)
    cov_x, cov_r = np.cov(x.T.numpy()), np.cov(ref.T.numpy())
    assert np.abs(cov_x - cov_r).max() < 0.12
    ll_x, ll_r = float(mix.log_prob(x).mean()), float(mix.log_prob(ref).mean())
    assert abs(ll_x - ll_r) < 0.08


def test_ddim_error_shrinks_linearly(mix):
    den = exact_denoiser(mix)
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = sample(den, x_T=x_T, steps=1000)
    steps = [10, 20, 40, 80]
    errs = [float((sample(den, x_T=x_T, steps=s) - ref).pow(2).mean().sqrt()) for s in steps]
    assert all(e2 < e1 for e1, e2 in itertools.pairwise(errs))
    slope = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert -1.35 < slope < -0.75, (errs, slope)


def test_mixture_eps_is_minus_scaled_score(mix):
    """ε* = -sqrt(1-ᾱ) ∇log p_t, checked against autograd of the noised log-density."""
    net = mix.eps_model(SCHED)
    x = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    for t in (0, 300, 999):
        a = SCHED.alpha_bar(t)
        lp = mix.log_prob(x, a).sum()
        (grad,) = torch.autograd.grad(lp, x)
        eps = net(x.detach(), torch.full((7,), t))
        assert torch.allclose(eps, -math.sqrt(1 - a) * grad, atol=1e-10)


def test_mixture_log_prob_normalised(mix):
    g = torch.linspace(-7, 7, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    p = mix.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().sum() * (g[1] - g[0]) ** 2
    assert abs(float(p) - 1) < 1e-4


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,match", [
    ({"steps": 0}, "between 1 and T"), ({"steps": 1001}, "between 1 and T"),
    ({"eta": -0.1}, "eta"), ({"eta": float("nan")}, "eta"), ({"spacing": "weird"}, "spacing"),
    ({"sampler": "nope"}, "unknown sampler"), ({"timesteps": [10, 20]}, "strictly decreasing"),
    ({"timesteps": [10, 10, 3]}, "strictly decreasing"), ({"steps": 2.5}, "integer"),
])
def test_bad_input_is_a_clear_value_error(mix, kw, match):
    with pytest.raises(ValueError, match=match):
        sample(exact_denoiser(mix), (4, 2), **kw)


def test_wrong_x_T_shape(mix):
    with pytest.raises(ValueError, match=r"takes \(N, 2\)"):
        sample(exact_denoiser(mix), x_T=torch.randn(4, 3))
    den = Denoiser(random_mlp(4), SCHED)  # no declared shape: the network's own failure is reported clearly
    with pytest.raises(ModelOutputError, match="failed on input of shape"):
        sample(den, x_T=torch.randn(4, 3))


class NaNAt(torch.nn.Module):
    def __init__(self, bad_t):
        super().__init__()
        self.bad_t = bad_t

    def forward(self, x, t):
        out = 0.1 * x
        return out * float("nan") if int(t[0]) == self.bad_t else out


def test_nan_from_model_names_the_step():
    ts = SCHED.timesteps(10)
    den = Denoiser(NaNAt(int(ts[3])), SCHED)
    with pytest.raises(ModelOutputError, match=rf"network call 4 \(timestep t={int(ts[3])}\)"):
        sample(den, (2, 3), steps=10)


def test_wrong_output_shape_names_the_timestep():
    den = Denoiser(lambda x, t: x[:, :1], SCHED)
    with pytest.raises(ModelOutputError, match="t=999 has shape"):
        sample(den, (2, 3), steps=10)


def test_zero_terminal_snr():
    """diffusers gives NaN/inf here; we give finite samples (v-prediction) or a clear error (epsilon)."""
    sched = NoiseSchedule.linear(1000, rescale_zero_terminal_snr=True)
    den_v = Denoiser(random_mlp(4), sched, prediction_type="v_prediction")
    for eta in (0.0, 1.0):
        x = sample(den_v, (8, 4), steps=25, eta=eta)
        assert bool(torch.isfinite(x).all())
    den_eps = Denoiser(random_mlp(4), sched)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        sample(den_eps, (8, 4), steps=25)


def test_diffusers_faults_we_do_not_have():
    """diffusers: NaN for eta=1 on a zero-SNR schedule; inf for epsilon models at ᾱ=0."""
    from diffusers import DDIMScheduler

    from conftest import diffusers_loop

    net = random_mlp(4)
    x_T = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    ref = DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False,
                        prediction_type="epsilon")
    theirs = diffusers_loop(ref, net, x_T, 25, eta=0.0)
    assert not bool(torch.isfinite(theirs).all())


def test_every_sampler_runs_on_any_spacing(mix):
    den = exact_denoiser(mix)
    for name in SAMPLERS:
        for spacing in ("trailing", "leading", "linspace", "uniform"):
            x = sample(den, (4, 2), steps=10, sampler=name, spacing=spacing)
            assert bool(torch.isfinite(x).all())


def test_float64_and_clipping_paths():
    den = Denoiser(random_mlp(4, dtype=torch.float64), SCHED, clip_sample=1.0)
    x = sample(den, (4, 4), steps=10, dtype=torch.float64)
    assert x.dtype == torch.float64 and float(x.abs().max()) <= 1.0 + 1e-9
    den_t = Denoiser(random_mlp(4), SCHED, thresholding=True)
    assert bool(torch.isfinite(sample(den_t, (4, 4), steps=10)).all())


def test_nan_after_the_watch_buffer_grows_names_the_step():
    ts = SCHED.timesteps(200)
    den = Denoiser(NaNAt(int(ts[150])), SCHED)
    with pytest.raises(ModelOutputError, match=rf"network call 151 \(timestep t={int(ts[150])}\)"):
        sample(den, (2, 3), steps=200)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_nothing_is_kept_per_step(sampler):
    """A long run keeps no tensor per step (time inputs come from one block, the NaN watch is one buffer):
    small objects left between the steps' large buffers grew DDPM-1000's peak memory by ~2 latents per step."""
    import gc

    den = Denoiser(lambda x, t: 0.1 * x, SCHED)
    seen = {}

    def count(info):
        if info.i in (20, 180):
            gc.collect()
            seen[info.i] = sum(isinstance(o, torch.Tensor) for o in gc.get_objects())

    sample(den, (3, 4), steps=200, sampler=sampler, callback=count)
    assert seen[180] == seen[20]
