import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from ddim import NoiseSchedule
from ddim.io.config import schedule_from_config


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 10, 37, 50, 1000])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_match_diffusers(spacing, steps, offset):
    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
    ref.set_timesteps(steps)
    expected = ref.timesteps
    if expected.min() < 0 or expected.max() > 999:
        pytest.skip("diffusers itself is out of range here")
    ours = NoiseSchedule.linear(1000, steps_offset=offset).timesteps(steps, spacing)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, expected.to(torch.int64))


def test_leading_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        NoiseSchedule.linear(1000, steps_offset=1).timesteps(1000, "leading")


def test_trailing_default_starts_at_top():
    s = NoiseSchedule.linear(1000)
    for n in (1, 7, 10, 50, 999):
        ts = s.timesteps(n)
        assert int(ts[0]) == 999 and len(ts) == n
        assert bool((ts[1:] < ts[:-1]).all())


def test_uniform_and_quadratic_follow_ddim_reference():
    s = NoiseSchedule.linear(1000)
    assert s.timesteps(50, "uniform").tolist() == list(range(0, 1000, 20))[::-1]
    seq = sorted({int(v) for v in np.linspace(0, math.sqrt(800), 50) ** 2})
    with pytest.warns(UserWarning, match="repeats"):  # int(0.33**2) == int(0**2): the reference repeats t=0
        assert s.timesteps(50, "quadratic").tolist() == seq[::-1]
    with pytest.warns(UserWarning, match="repeats"):
        ts = s.timesteps(200, "quadratic")
    assert len(ts) < 200 and bool((ts[1:] < ts[:-1]).all())


@pytest.mark.parametrize("spacing", ["logsnr", "karras", "time_quadratic"])
def test_continuous_spacings_are_valid(spacing):
    s = NoiseSchedule.cosine(1000)
    ts = s.timesteps(20, spacing)
    assert int(ts[0]) == 999 and int(ts[-1]) == 0
    assert bool((ts[1:] < ts[:-1]).all())


@pytest.mark.parametrize("kind,ctor", [("linear", NoiseSchedule.linear), ("scaled_linear", NoiseSchedule.scaled_linear),
                                       ("squaredcos_cap_v2", NoiseSchedule.cosine)])
@pytest.mark.parametrize("zsnr", [False, True])
def test_alphas_cumprod_match_diffusers(kind, ctor, zsnr):
    ref = DDIMScheduler(beta_schedule=kind, rescale_betas_zero_snr=zsnr,
                        **({"beta_start": 0.00085, "beta_end": 0.012} if kind == "scaled_linear" else {}))
    ours = ctor(1000, rescale_zero_terminal_snr=zsnr)
    assert ours.alphas_cumprod.dtype == torch.float64
    np.testing.assert_allclose(ours.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy(), rtol=2e-5,
                               atol=1e-7)
    if zsnr:
        assert ours.alphas_cumprod[-1] == 0.0


def test_from_diffusers_config(tmp_path):
    cfg = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
           "beta_end": 0.012, "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading",
           "prediction_type": "v_prediction", "clip_sample": False}
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(cfg))
    s = schedule_from_config(path)
    ref = DDIMScheduler.from_config(cfg)
    assert s.ddim_final[0] ** 2 == pytest.approx(float(ref.final_alpha_cumprod), rel=1e-6)  # DDIM-type steps only
    ref.set_timesteps(50)
    assert torch.equal(s.timesteps(50), ref.timesteps)
    with pytest.warns(UserWarning, match="unknown"):
        schedule_from_config({"beta_schedule": "linear", "frobnicate": 3})
    # missing keys take diffusers' defaults
    d = schedule_from_config({})
    np.testing.assert_allclose(d.alphas_cumprod.numpy(), DDIMScheduler().alphas_cumprod.double().numpy(), rtol=2e-5)
    with pytest.raises(ValueError, match="beta_schedule"):
        schedule_from_config({"beta_schedule": "sigmoid"})


@pytest.mark.parametrize("bad", [[5, 5, 1], [1, 5], [1000, 3], [-1], [], [3.5, 1.0]])
def test_explicit_timesteps_validated(bad):
    with pytest.raises(ValueError):
        NoiseSchedule.linear(1000).timesteps(bad)


def test_explicit_list_accepted():
    ts = NoiseSchedule.linear(1000).timesteps([999, 500, 10, 0])
    assert ts.tolist() == [999, 500, 10, 0] and ts.dtype == torch.int64


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_steps_out_of_range(steps):
    with pytest.raises(ValueError, match="between 1 and T"):
        NoiseSchedule.linear(1000).timesteps(steps)


def test_unknown_spacing():
    with pytest.raises(ValueError, match="unknown spacing"):
        NoiseSchedule.linear(1000).timesteps(10, "fancy")


def test_betas_round_trip():
    s = NoiseSchedule.linear(1000)
    np.testing.assert_allclose(s.betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-10)
    s2 = NoiseSchedule.from_betas(s.betas)
    assert torch.allclose(s2.alphas_cumprod, s.alphas_cumprod, rtol=1e-12)


def test_bad_schedules_rejected():
    with pytest.raises(ValueError):
        NoiseSchedule.from_alphas_cumprod([0.5, 0.9])
    with pytest.raises(ValueError):
        NoiseSchedule.from_betas([0.1, 1.5])
    with pytest.raises(ValueError):
        NoiseSchedule.from_alphas_cumprod([float("nan")])
