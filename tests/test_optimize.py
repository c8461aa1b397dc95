"""Adaptive step allocation, early exit, and the solvers benchmark's quick mode."""

import torch

from ddim import Denoiser, NoiseSchedule, optimize_timesteps, sample
from ddim.models import mog3
from ddim.ops.reference import pf_ode_reference


def _setup():
    mix = mog3()
    sched = NoiseSchedule.linear(1000)
    return mix, sched, Denoiser(mix.eps_model(sched), sched, sample_shape=(2,))


def test_optimised_schedule_never_worse_on_held_out_noise():
    mix, sched, den = _setup()
    x_cal = torch.randn(48, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref_cal = pf_ode_reference(mix, x_cal, sched.alpha_bar(999))
    res = optimize_timesteps(den, 10, "dpmpp_2m", x_cal, reference=ref_cal, rounds=4)
    assert res.error_optimized <= res.error_start
    assert len(res.timesteps) == 10 and int(res.timesteps[0]) == 999
    assert bool((res.timesteps[1:] < res.timesteps[:-1]).all())
    x_h = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref_h = pf_ode_reference(mix, x_h, sched.alpha_bar(999))
    e_start = float((sample(den, x_T=x_h, steps=10, sampler="dpmpp_2m", spacing=res.start_spacing) - ref_h)
                    .pow(2).mean().sqrt())
    e_opt = float((sample(den, x_T=x_h, timesteps=res.timesteps, sampler="dpmpp_2m") - ref_h).pow(2).mean().sqrt())
    assert e_opt <= e_start


def test_optimize_respects_nfe_budget_for_two_call_samplers():
    mix, sched, den = _setup()
    x_cal = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    res = optimize_timesteps(den, 9, "heun", x_cal, reference=pf_ode_reference(mix, x_cal, sched.alpha_bar(999)),
                             rounds=1)
    _, stats = sample(den, x_T=x_cal, timesteps=res.timesteps, sampler="heun", return_stats=True)
    assert stats.nfe <= 9


def test_early_exit_saves_nfe_and_returns_x0():
    _, _, den = _setup()
    x_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    full, st = sample(den, x_T=x_T, steps=200, return_stats=True)
    assert st.early_exit_step is None and st.nfe == 200
    early, st = sample(den, x_T=x_T, steps=200, early_exit_tol=0.05, return_stats=True)
    assert st.early_exit_step is not None and st.nfe < 200
    assert float((early - full).pow(2).mean().sqrt()) < 0.1  # the error stays of the order of the tolerance
    import pytest

    with pytest.raises(ValueError, match="early_exit_tol"):
        sample(den, x_T=x_T, steps=10, early_exit_tol=-1)


def test_bench_solvers_quick(tmp_path):
    from ddim.bench.solvers import run_solvers

    report = run_solvers(tmp_path, nfes=(5, 10), n=60, samplers=("ddim", "dpmpp_2m"), spacings=("trailing",),
                         optimize=True, log=lambda *a: None)
    text = report.read_text()
    assert "| dpmpp_2m | trailing |" in text and "Optimised timesteps" in text and "Command:" in text
    assert (tmp_path / "solvers.png").stat().st_size > 2000
