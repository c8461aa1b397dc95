"""Flow matching as a path: velocity prediction, diffusers' shifted σ lists, samplers and inversion on flow
models, against diffusers' FlowMatchEulerDiscreteScheduler and the exact Gaussian-mixture velocity."""

import math

import numpy as np
import pytest
import torch

from ddim.core.errors import UsageError
from ddim.core.path import ContinuousPath, FlowShift
from ddim.core.prediction import PREDICTION_TYPES, Denoiser, affine_coefficients, output_from
from ddim.core.sample import sample
from ddim.core.samplers import SAMPLERS
from ddim.models import mog3
from ddim.ops.inversion import invert
from ddim.ops.reference import pf_ode_reference

MIX = mog3()

CONFIGS = [{}, {"shift": 3.0}, {"shift": 3.0, "shift_terminal": 0.1}, {"use_dynamic_shifting": True},
           {"use_dynamic_shifting": True, "time_shift_type": "linear"}]


def _ours(cfg: dict) -> FlowShift:
    return FlowShift(cfg.get("shift", 1.0), cfg.get("use_dynamic_shifting", False), None, cfg.get("shift_terminal"),
                     cfg.get("time_shift_type", "exponential"))


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("n", [2, 5, 28, 50])
def test_sigma_lists_are_diffusers_bits(cfg, n):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ddim.diffusers import FlowMatchEulerDiscreteScheduler as Ours

    mu = 0.93 if cfg.get("use_dynamic_shifting") else None
    ref = FlowMatchEulerDiscreteScheduler(**cfg)
    ref.set_timesteps(n, mu=mu)
    ours = _ours(cfg).sigmas(n, mu)
    assert np.array_equal(ours.astype(np.float32), ref.sigmas[:-1].numpy())
    drop = Ours(**cfg)
    drop.set_timesteps(n, mu=mu)
    assert torch.equal(drop.sigmas, ref.sigmas) and torch.equal(drop.timesteps, ref.timesteps)


def test_one_step_shift_terminal_is_finite_where_diffusers_gives_nan():
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(shift=3.0, shift_terminal=0.1)
    with np.errstate(all="ignore"):
        ref.set_timesteps(1)
    assert torch.isnan(ref.sigmas[0])
    assert _ours({"shift": 3.0, "shift_terminal": 0.1}).sigmas(1).tolist() == [1.0]


def _tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8).eval()


@pytest.mark.parametrize("cfg", [{}, {"shift": 3.0}])
def test_euler_matches_diffusers_flow_scheduler_and_drop_in(cfg):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ddim.diffusers import FlowMatchEulerDiscreteScheduler as Ours
    from ddim.io.config import denoiser_from_config

    net = _tiny_unet()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def loop(s):
        s.set_timesteps(12)
        y = x.clone()
        for t in s.timesteps:
            y = s.step(net(y, t.expand(3)).sample, t, y).prev_sample
        return y

    with torch.no_grad():
        ref = loop(FlowMatchEulerDiscreteScheduler(**cfg))
        drop = loop(Ours(**cfg))
        den = denoiser_from_config(net, {"_class_name": "FlowMatchEulerDiscreteScheduler", **cfg}, (1, 8, 8))
        ours = sample(den, x_T=x, steps=12)
    assert float((ours - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    assert float((drop - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_prediction_types_convert_among_all_four():
    g = torch.Generator().manual_seed(0)
    eps, x0 = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    for alpha, sigma in ((0.8, 0.6), (0.3, 0.7), (1.0, 2.5)):
        x = alpha * x0 + sigma * eps
        for p in PREDICTION_TYPES:
            out = output_from(p, alpha, sigma, eps, x0)
            k1, k2, k3, k4 = affine_coefficients(p, alpha, sigma)
            if p == "sample":
                continue  # ε from x0 needs σ > 0 only: checked below
            assert torch.allclose(k1 * x + k2 * out, x0) and torch.allclose(k3 * x + k4 * out, eps), p
        k1, k2, k3, k4 = affine_coefficients("sample", alpha, sigma)
        assert torch.allclose(k3 * x + k4 * x0, eps)
    # velocity at pure noise (α = 0): x̂0 = x − u, ε̂ = x, both finite
    assert affine_coefficients("flow", 0.0, 1.0) == (1.0, -1.0, 1.0, 0.0)


def _flow_den(prediction_type: str = "flow", t_max: float = 1.0, t_min: float = 0.0) -> Denoiser:
    path = ContinuousPath("flow", t_max=t_max, t_min=t_min, time_scale=1000.0, flow_shift=FlowShift())
    return Denoiser(MIX.eps_model(path, prediction_type), path, prediction_type=prediction_type, sample_shape=(2,))


def test_exact_velocity_is_the_exact_eps_in_other_clothes():
    d, de = _flow_den(), _flow_den("epsilon")
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for t in (0.9, 0.5, 0.05):
        eps, _ = d.split(x, t, d.call_net(x, t))
        assert torch.allclose(eps, de.call_net(x, t), atol=1e-12)
    u = d.call_net(x, 1.0)  # pure noise: u = x − E[x0]
    assert torch.allclose(u, x - (MIX.weights[:, None] * MIX.means).sum(0), atol=1e-12)


STOCHASTIC = {"ddpm", "dpmpp_sde", "dpmpp_2m_sde", "lcm", "tcd"}  # fresh noise each step: no ODE to converge to


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n not in STOCHASTIC])
def test_every_sampler_converges_on_the_exact_flow_model(name):
    """From σ = 0.98 on the exact velocity model, each ODE sampler reaches the DOP853 solution at its order
    (lists down to σ = 0.002, so the last jump onto the data does not cap the order)."""
    d = _flow_den(t_max=0.98, t_min=0.002)
    order = {"ddim": 1, "pndm": 3, "rk4": 4, "dpmpp_3m": 2}.get(name, 2)
    a, s = 0.02, 0.98
    abar = a * a / (a * a + s * s)
    x_vp = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = pf_ode_reference(MIX, x_vp, abar)
    x_T = x_vp / math.sqrt(abar) * a
    steps, spacing = ((10, 20), "uniform") if name == "rk4" else ((40, 80), "logsnr")
    errs = [float((sample(d, x_T=x_T, timesteps=d.path.timesteps(n, spacing), sampler=name) - ref)
                  .pow(2).mean().sqrt()) for n in steps]
    assert math.log2(errs[0] / errs[1]) > order - 0.5, errs


def test_every_sampler_runs_from_pure_noise():
    d = _flow_den()
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    fine = sample(d, x_T=x, steps=400, sampler="rk4")
    for name in SAMPLERS:
        out = sample(d, x_T=x, steps=20, sampler=name)
        assert torch.isfinite(out).all(), name
        if name not in STOCHASTIC:
            assert float((out - fine).abs().max()) < 0.5, name


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_third_order_runs_from_pure_noise(variant):
    """At t = 1 (λ = −∞) the oldest level has no finite slope: order 3 drops it (it gave NaN from step 3 on)."""
    d = _flow_den()
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    fine = sample(d, x_T=x, steps=400, sampler="rk4")
    errs = [float((sample(d, x_T=x, steps=n, sampler="unipc", order=3, variant=variant) - fine).abs().max())
            for n in (10, 20, 40, 80)]
    assert all(math.isfinite(e) for e in errs) and errs[3] < errs[2] < errs[1] and errs[3] < 3e-3, errs


def test_flow_inversion_naive_vs_refined():
    d = _flow_den(t_max=0.98)
    x0 = MIX.sample(32, generator=torch.Generator().manual_seed(4))
    ts = d.path.timesteps(20, "logsnr")
    errs = {k: float((sample(d, x_T=invert(d, x0, timesteps=ts, refine=k), timesteps=ts) - x0).pow(2).mean())
            for k in (0, 6)}
    assert errs[6] < errs[0] / 1e4


def test_flow_likelihood_matches_the_exact_density():
    from ddim.ops.likelihood import log_likelihood

    path = ContinuousPath("flow", t_max=0.995, t_min=0.002, time_scale=1000.0)
    d = Denoiser(MIX.eps_model(path, "flow"), path, prediction_type="flow", sample_shape=(2,))
    x = MIX.sample(8, generator=torch.Generator().manual_seed(5))
    a_lo, s_lo = path.alpha_sigma(0.002)
    a_hi, s_hi = path.alpha_sigma(0.995)

    def log_p(x_t, a, s):  # the mixture seen at level (a, s), as a density of x_t
        ab = a * a / (a * a + s * s)
        return MIX.log_prob(x_t / math.sqrt(a * a + s * s), ab) - 2 * math.log(math.sqrt(a * a + s * s))

    ll = log_likelihood(d, x * a_lo, prior=lambda z: log_p(z, a_hi, s_hi))
    assert torch.allclose(ll, log_p(x * a_lo, a_lo, s_lo), atol=2e-3)


@pytest.mark.parametrize("call,match", [
    (lambda: FlowShift(0.0), "shift"),
    (lambda: FlowShift(-2.0), "shift"),
    (lambda: _flow_den().path.validate_timesteps([0.5, 0.7]), "decreasing"),
    (lambda: _flow_den().path.validate_timesteps([1.2, 0.5]), "lie in"),
    (lambda: _flow_den().path.validate_timesteps([0.5, 0.0]), "lie in"),
    (lambda: sample(_flow_den(), (2, 2), spacing="leading"), "spacing"),
    (lambda: sample(_flow_den(), (2, 2), sampler="ddpm", variance_type="learned"), "variance_type"),
])
def test_bad_flow_input_is_a_one_line_error(call, match):
    with pytest.raises(UsageError, match=match):
        call()


def test_flow_training_run_and_its_diffusers_folder_sample(tmp_path):
    from ddim.io.loader import load_model
    from ddim.training.config import TrainConfig
    from ddim.training.train import train

    run = train(TrainConfig(data="digits", objective="flow", prediction_type="flow", time_sampling="logit_normal",
                            steps=20, batch_size=16, checkpoint_every=10), tmp_path / "run", progress=False,
                log=lambda *a: None)
    for spec in (run, run / "diffusers"):
        d = load_model(spec).denoiser
        assert d.prediction_type == "flow_prediction" and d.path.kind == "flow"
        x = sample(d, (2, 1, 8, 8), steps=4)
        assert torch.isfinite(x).all()
    with pytest.raises(UsageError, match="flow"):
        TrainConfig.from_dict({"objective": "flow", "prediction_type": "epsilon"})


def test_dynamic_shift_folder_takes_mu_from_the_sample_size(tmp_path):
    from ddim.core.path import calculate_shift
    from ddim.io.checkpoint import export_diffusers
    from ddim.io.loader import load_model

    export_diffusers(_tiny_unet(), {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True},
                     tmp_path / "m")
    d = load_model(tmp_path / "m").denoiser
    assert d.path.flow_shift.mu == pytest.approx(calculate_shift(16))
    assert torch.isfinite(sample(d, (1, 1, 8, 8), steps=3)).all()


def test_transformer_flow_folder_loads_and_samples_under_guidance(tmp_path):
    from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler

    from ddim.io.loader import load_model

    torch.manual_seed(0)
    net = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, num_layers=1,
                                sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1)
    net.save_pretrained(tmp_path / "m" / "transformer", safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(shift=2.0).save_pretrained(tmp_path / "m" / "scheduler")
    m = load_model(tmp_path / "m")
    d = m.denoiser
    assert d.prediction_type == "flow_prediction" and d.conditioning.num_classes == 10 and d.sample_shape == (1, 8, 8)
    x, st = sample(d, (3, 1, 8, 8), steps=4, condition=[1, 2, 3], guidance=2.0, return_stats=True)
    assert torch.isfinite(x).all() and st.nfe == 8
    # the same as diffusers' scheduler driving the network by hand (the learned-variance half dropped)
    s = FlowMatchEulerDiscreteScheduler(shift=2.0)
    s.set_timesteps(4)
    y = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    ours = sample(d, x_T=y, steps=4, condition=[1, 2, 3])
    with torch.no_grad():
        for t in s.timesteps:
            y = s.step(net(y, t.expand(3), class_labels=torch.tensor([1, 2, 3])).sample[:, :1], t, y).prev_sample
    assert float((ours - y).abs().max()) < 1e-5
