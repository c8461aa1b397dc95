"""Higher-order solvers: convergence order on the exact mixture, parity with diffusers, NFE accounting."""

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from conftest import random_mlp
from ddim import Denoiser, NoiseSchedule, sample
from ddim.core.run import Tracked
from ddim.core.samplers import SAMPLERS
from ddim.core.samplers.dpmpp import run_dpmpp_multistep
from ddim.models import mog3
from ddim.ops.reference import pf_ode_reference


@pytest.fixture(scope="module")
def uniform_lambda():
    """A fine grid uniform in log-SNR whose last step has length zero: every solver runs at its full order
    (no first-order step onto σ = 0), and linspace steps are uniform in λ."""
    mix = mog3()
    lam = np.linspace(2.5, -2.5, 100000)
    abar = 1 / (1 + np.exp(-2 * lam))
    sched = NoiseSchedule.from_alphas_cumprod(abar, final_alpha_cumprod=float(abar[0]), spacing="linspace")
    den = Denoiser(mix.eps_model(sched), sched, sample_shape=(2,))
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = pf_ode_reference(mix, x_T, float(abar[-1]), float(abar[0]))
    return den, x_T, ref


# (sampler, options, expected order, tolerance). Multistep methods start with lower-order steps whose
# local errors shrink faster than the global error at the full order, so slopes over 16..256 steps sit a
# little below the asymptotic order; ±0.35 separates every order from its neighbours.
ORDERS = [
    ("ddim", {}, 1), ("heun", {}, 2), ("dpmpp_2m", {}, 2), ("dpmpp_2s", {}, 2), ("pndm", {}, 2),
    ("dpmpp_3m", {}, 3), ("unipc", {"order": 3, "corrector": False}, 3), ("unipc", {"order": 2}, 3),
    ("unipc", {"order": 3}, 4), ("unipc", {"order": 3, "variant": "bh1"}, 4), ("rk4", {}, 4),
]


@pytest.mark.parametrize("name,kw,order", ORDERS)
def test_convergence_order(uniform_lambda, name, kw, order):
    den, x_T, ref = uniform_lambda
    steps = (16, 32, 64, 128)
    errs = [float((sample(den, x_T=x_T, steps=s, sampler=name, **kw) - ref).pow(2).mean().sqrt()) for s in steps]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.35, (errs, slope)


def test_diffusers_dpmpp_3m_is_only_second_order(uniform_lambda):
    """diffusers' (and the reference code's) 3M weights D2 by α(1/2 - (h-1+e^{-h})/h²), half the Taylor
    coefficient α(1 - 2(h-1+e^{-h})/h²) for D2 ≈ h² x̂0''/2, so its local error stays O(h³): second order.
    Same grid, same timesteps, same final level: ours converges at third order, theirs at second."""
    den, x_T, _ = uniform_lambda
    sched = den.path
    abar = sched.alphas_cumprod
    mix = den.net.mixture
    errs_ours, errs_theirs = [], []
    steps = (16, 32, 64, 128)
    for S in steps:
        ref_s = DPMSolverMultistepScheduler(num_train_timesteps=sched.T, trained_betas=sched.betas.tolist(),
                                            solver_order=3, final_sigmas_type="sigma_min")
        ref_s.set_timesteps(S)
        ts = ref_s.timesteps.clone()
        x = x_T.clone()
        with torch.no_grad():
            for t in ref_s.timesteps:
                x = ref_s.step(den.net(x, t.expand(x.shape[0])), t, x).prev_sample
        exact = pf_ode_reference(mix, x_T, float(abar[int(ts[0])]), float(abar[0]))
        ours = sample(den, x_T=x_T, timesteps=ts, sampler="dpmpp_3m")
        errs_ours.append(float((ours - exact).pow(2).mean().sqrt()))
        errs_theirs.append(float((x - exact).pow(2).mean().sqrt()))
    slope_ours = -np.polyfit(np.log(steps), np.log(errs_ours), 1)[0]
    slope_theirs = -np.polyfit(np.log(steps), np.log(errs_theirs), 1)[0]
    assert slope_ours > 2.65 and slope_theirs < 2.35, (errs_ours, errs_theirs)
    assert errs_ours[-1] < errs_theirs[-1] / 3


def test_nfe_accounting(uniform_lambda):
    den, x_T, _ = uniform_lambda
    expected = {"ddim": 10, "ddpm": 10, "heun": 19, "dpmpp_2m": 10, "dpmpp_3m": 10, "dpmpp_2s": 19, "unipc": 10,
                "pndm": 11, "rk4": 37, "midpoint": 19, "dpmpp_2m_sde": 10, "dpmpp_sde": 10, "lcm": 10, "tcd": 10}
    for name, nfe in expected.items():
        _, stats = sample(den, x_T=x_T[:4], steps=10, sampler=name, return_stats=True)
        assert stats.nfe == nfe == SAMPLERS[name].nfe(10), name
    assert set(expected) == set(SAMPLERS)


def test_ddim_equals_dpmpp_order1():
    net = random_mlp(4, dtype=torch.float64)
    sched = NoiseSchedule.linear(1000)
    den = Denoiser(net, sched)
    x_T = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ts = sched.timesteps(20)
    a = sample(den, x_T=x_T, timesteps=ts)
    with torch.no_grad():
        b = run_dpmpp_multistep(Tracked(den), x_T, ts, None, order=1)
    assert float((a - b).abs().max()) < 1e-10 * float(a.abs().max())


def _diffusers(scheduler, net, x_T, steps):
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t.expand(x.shape[0])), t, x).prev_sample
    return x, scheduler.timesteps.clone()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [8, 20])
def test_parity_dpmpp_2m_and_unipc_bh2(prediction_type, steps):
    net = random_mlp(4, dtype=torch.float64)
    x_T = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for ref, name in ((DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                   prediction_type=prediction_type), "dpmpp_2m"),
                      (UniPCMultistepScheduler(solver_type="bh2", solver_order=2,
                                               prediction_type=prediction_type), "unipc")):
        expected, ts = _diffusers(ref, net, x_T, steps)
        sched = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod.double())
        den = Denoiser(net, sched, prediction_type=prediction_type)
        ours = sample(den, x_T=x_T, timesteps=ts, sampler=name)
        scale = max(1.0, float(expected.abs().max()))
        assert float((ours - expected).abs().max()) <= 1e-4 * scale, name
