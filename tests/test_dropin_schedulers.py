"""Conformance of the drop-in schedulers (`ddim.diffusers`) with diffusers' own classes of the same name:
constructor keys and defaults, every config variant a pipeline meets, stepping from any list entry, add_noise,
custom lists, dtypes, from_config across schedulers and real folders' scheduler configs, strict key handling,
and the deliberate differences (each shown). Our own suite, written for these drop-ins."""

import inspect
import itertools
import json
import warnings

import diffusers
import numpy as np
import pytest
import torch
from diffusers.utils import logging as dlogging

import ddim.diffusers as ours
from ddim.core.errors import UsageError

dlogging.set_verbosity_error()  # diffusers' own warnings (lower_order_final switched, …) are not under test
NAMES = ours.__all__
FLOW = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


def _model(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed nonlinear 'network' of the input and the level (deterministic, any dtype)."""
    return torch.tanh(x * 0.7 + float(t) / 1000.0) * 0.9 + 0.05 * x


def _run(s, n=10, begin=0, shape=(2, 4, 8, 8), dtype=torch.float32, set_kw=None, step_kw=None):
    """The loop a pipeline runs: set_timesteps, x_T · init_noise_sigma, scale_model_input, step (from `begin`)."""
    s.set_timesteps(**(set_kw or {"num_inference_steps": n}))
    torch.manual_seed(1234)  # DPMSolverSDEScheduler without noise_sampler_seed draws its tree seed from here
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * getattr(s, "init_noise_sigma", 1.0)
         ).to(dtype)
    g = torch.Generator().manual_seed(1)
    order = getattr(s, "order", 1)
    if begin and hasattr(type(s), "set_begin_index"):
        s.set_begin_index(begin * order)
    takes = inspect.signature(s.step).parameters
    for t in s.timesteps[begin * order:]:
        xin = s.scale_model_input(x, t) if hasattr(type(s), "scale_model_input") else x
        kw = {"generator": g} if "generator" in takes else {}
        x = s.step(_model(xin, t).to(dtype), t, x, **kw, **(step_kw or {})).prev_sample
    return x


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12))


SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
COMMON = [{}, dict(prediction_type="v_prediction"), dict(timestep_spacing="leading", steps_offset=1),
          dict(timestep_spacing="trailing"), SD, dict(beta_schedule="squaredcos_cap_v2"), dict(num_train_timesteps=20),
          dict(num_train_timesteps=2000), dict(trained_betas=np.linspace(1e-4, 0.02, 1000))]
SIGMAS = [dict(use_karras_sigmas=True), dict(use_exponential_sigmas=True), dict(use_beta_sigmas=True)]
ZSNR = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")
THRESH = dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.3)
DPM_ALGS = [dict(algorithm_type=a, solver_type=s, solver_order=o, **({} if a.endswith("++") else
                                                                     {"final_sigmas_type": "sigma_min"}))
            for a, s, o in itertools.product(["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"],
                                             ["midpoint", "heun"], [1, 2])]
FLOW_DPM = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)

CASES = {
    "DDIMScheduler": [c for c in COMMON if c.get("num_train_timesteps") != 2000] +
                     [dict(set_alpha_to_one=False), dict(clip_sample=False), dict(prediction_type="sample"), THRESH,
                      dict(THRESH, dynamic_thresholding_ratio=0.0), ZSNR],
    "DDPMScheduler": [*COMMON, dict(variance_type="fixed_large"), dict(variance_type="fixed_small_log"),
                      dict(prediction_type="sample"), THRESH, ZSNR, dict(timestep_spacing="linspace")],
    "PNDMScheduler": [{}, dict(skip_prk_steps=True), dict(SD, skip_prk_steps=True, steps_offset=1),
                      dict(set_alpha_to_one=True), dict(timestep_spacing="trailing"), dict(num_train_timesteps=2000)],
    "EulerDiscreteScheduler": COMMON + SIGMAS + [
        dict(prediction_type="sample"), dict(interpolation_type="log_linear"), dict(final_sigmas_type="sigma_min"),
        dict(timestep_type="continuous", prediction_type="v_prediction"), dict(ZSNR, timestep_spacing="linspace"),
        dict(use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0)],
    "EulerAncestralDiscreteScheduler": [*COMMON, dict(ZSNR, timestep_spacing="linspace")],
    "HeunDiscreteScheduler": COMMON + SIGMAS + [dict(prediction_type="sample"),
                                                dict(clip_sample=True, clip_sample_range=0.5)],
    "DPMSolverMultistepScheduler": COMMON + SIGMAS + DPM_ALGS + [
        dict(use_lu_lambdas=True), dict(final_sigmas_type="sigma_min"), dict(euler_at_final=True),
        dict(lower_order_final=False), dict(lambda_min_clipped=-5.1), dict(prediction_type="sample"), THRESH, ZSNR,
        FLOW_DPM, dict(solver_order=1)],
    "DPMSolverSinglestepScheduler": [c for c in COMMON if "timestep_spacing" not in c] + SIGMAS +
                                    [c for c in DPM_ALGS if c["algorithm_type"] != "sde-dpmsolver"] + [
        dict(solver_order=3, solver_type="midpoint"), dict(solver_order=3, solver_type="heun"),
        dict(solver_order=3, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
        dict(solver_order=3, final_sigmas_type="sigma_min"), dict(lower_order_final=True), THRESH, FLOW_DPM,
        dict(lambda_min_clipped=-5.1)],
    "UniPCMultistepScheduler": COMMON + SIGMAS + [
        dict(solver_order=3), dict(solver_order=1), dict(final_sigmas_type="sigma_min"),
        dict(predict_x0=False, final_sigmas_type="sigma_min"), dict(disable_corrector=[0, 3]), THRESH, ZSNR,
        FLOW_DPM, dict(FLOW_DPM, shift_terminal=0.1), dict(lower_order_final=False, final_sigmas_type="sigma_min"),
        dict(solver_type="bh1", final_sigmas_type="sigma_min"), dict(prediction_type="sample")],
    "LCMScheduler": [{}, dict(prediction_type="v_prediction"), THRESH, dict(clip_sample=True),
                     dict(original_inference_steps=20), dict(num_train_timesteps=100, original_inference_steps=10),
                     dict(timestep_scaling=5.0), dict(set_alpha_to_one=False), dict(prediction_type="sample")],
    "TCDScheduler": [{}, dict(prediction_type="v_prediction"), dict(original_inference_steps=20),
                     dict(num_train_timesteps=100, original_inference_steps=10), dict(set_alpha_to_one=False),
                     dict(prediction_type="sample")],
    "FlowMatchEulerDiscreteScheduler": [{}, dict(shift=3.0), dict(shift=2.0, shift_terminal=0.2),
                                        dict(use_karras_sigmas=True, shift=3.0), dict(use_exponential_sigmas=True),
                                        dict(use_beta_sigmas=True), dict(invert_sigmas=True),
                                        dict(stochastic_sampling=True, shift=3.0), dict(num_train_timesteps=20)],
    "FlowMatchHeunDiscreteScheduler": [{}, dict(shift=3.0), dict(num_train_timesteps=20)],
    "DPMSolverSDEScheduler": [dict(c, noise_sampler_seed=3) for c in [*COMMON, *SIGMAS] if
                              c.get("prediction_type") != "sample"] + [{}],
}
FEW = ("LCMScheduler", "TCDScheduler")


def test_every_drop_in_has_diffusers_constructor_keys_and_defaults():
    assert len(NAMES) == 14
    for name in NAMES:
        theirs = inspect.signature(getattr(diffusers, name).__init__).parameters
        mine = inspect.signature(getattr(ours, name).__init__).parameters
        assert list(mine) == list(theirs), name
        for k, p in theirs.items():
            d = p.default
            assert mine[k].default == d or (isinstance(d, float) and np.isinf(d) and np.isinf(mine[k].default)), (
                name, k)
        for method in ("set_timesteps", "step", "add_noise" if name not in FLOW else "scale_noise"):
            assert set(inspect.signature(getattr(getattr(diffusers, name), method)).parameters) <= \
                set(inspect.signature(getattr(getattr(ours, name), method)).parameters), (name, method)


@pytest.mark.parametrize("name,cfg", [(n, c) for n in NAMES for c in CASES[n]],
                         ids=lambda v: v if isinstance(v, str) else json.dumps(v, default=str)[:60])
def test_trajectories_equal_diffusers(name, cfg):
    """Every config variant, from the first list entry and from mid-list (what img2img does), ≤ 1e-5 relative."""
    starts = ((4, 0), (1, 0), (8, 2)) if name in FEW else ((10, 0), (25, 0), (10, 4))
    if cfg.get("num_train_timesteps") == 20:
        starts = tuple((min(n, 8), b) for n, b in starts)
    for n, begin in starts:
        if name in FEW and begin:  # LCM/TCD pipelines shorten the list with `strength` instead
            kw = {"num_inference_steps": 2, "strength": 0.5}
            a = _run(getattr(ours, name)(**cfg), set_kw=kw)
            b = _run(getattr(diffusers, name)(**cfg), set_kw=kw)
        else:
            a = _run(getattr(ours, name)(**cfg), n, begin)
            b = _run(getattr(diffusers, name)(**cfg), n, begin)
        assert torch.isfinite(a).all()
        assert _rel(a, b) < 1e-5, (name, cfg, n, begin, _rel(a, b))


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_in_half_out_and_lists_equal(name):
    """fp16 samples and outputs give an fp16 sample (diffusers' dtype contract), close to diffusers' fp16 run;
    timesteps and σ lists equal diffusers'."""
    a = _run(getattr(ours, name)(), 6, dtype=torch.float16)
    b = _run(getattr(diffusers, name)(), 6, dtype=torch.float16)
    assert a.dtype == b.dtype == torch.float16
    assert _rel(a.float(), b.float()) < 2e-2
    s, r = getattr(ours, name)(), getattr(diffusers, name)()
    s.set_timesteps(7)
    r.set_timesteps(7)
    assert torch.equal(s.timesteps.double(), r.timesteps.double()), name
    if hasattr(r, "sigmas"):
        assert torch.allclose(s.sigmas.double(), r.sigmas.double(), rtol=1e-6, atol=0), name


@pytest.mark.parametrize("name", [n for n in NAMES if n not in FLOW])
def test_add_noise_and_scale_model_input_equal_diffusers(name):
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    s, r = getattr(ours, name)(), getattr(diffusers, name)()
    s.set_timesteps(10)
    r.set_timesteps(10)
    ts = s.timesteps[[0, 3, 5]]
    assert _rel(s.add_noise(x0, eps, ts), r.add_noise(x0, eps, ts)) < 1e-6
    if hasattr(r, "set_begin_index"):  # img2img: the begin index decides the level
        s.set_begin_index(3)
        r.set_begin_index(3)
        t = s.timesteps[3:4].repeat(3)
        assert _rel(s.add_noise(x0, eps, t), r.add_noise(x0, eps, t)) < 1e-6
    t = s.timesteps[2]
    assert _rel(s.scale_model_input(x0, t), r.scale_model_input(x0, t)) < 1e-6
    if hasattr(r, "get_velocity") and name != "EulerDiscreteScheduler":  # Euler: see the differences below
        assert _rel(s.get_velocity(x0, eps, ts), r.get_velocity(x0, eps, ts)) < 1e-6


def test_flow_scale_noise_time_shift_and_custom_lists_equal_diffusers():
    a, b = ours.FlowMatchEulerDiscreteScheduler(shift=3.0), diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    x, z = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    for kw in ({"num_inference_steps": 8}, {"sigmas": [1.0, 0.6, 0.2]}, {"timesteps": [900.0, 500.0, 100.0]}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a.set_timesteps(**kw)
            b.set_timesteps(**kw)
        assert torch.allclose(a.sigmas, b.sigmas, atol=1e-7) and torch.allclose(a.timesteps, b.timesteps, atol=1e-4)
        got = a.scale_noise(x, a.timesteps[:3], z)  # a batch of timesteps, no begin index
        assert _rel(got, b.scale_noise(x, b.timesteps[:3], z)) < 1e-6
    for tst in ("exponential", "linear"):
        kw = {"use_dynamic_shifting": True, "time_shift_type": tst}
        a, b = ours.FlowMatchEulerDiscreteScheduler(**kw), diffusers.FlowMatchEulerDiscreteScheduler(**kw)
        a.set_timesteps(8, mu=0.8)
        b.set_timesteps(8, mu=0.8)
        assert torch.equal(a.sigmas, b.sigmas)
        assert a.time_shift(0.8, 1.0, 0.5) == pytest.approx(b.time_shift(0.8, 1.0, torch.tensor(0.5)).item())
    a, b = ours.FlowMatchEulerDiscreteScheduler(shift_terminal=0.1), \
        diffusers.FlowMatchEulerDiscreteScheduler(shift_terminal=0.1)
    t = torch.linspace(0.9, 0.3, 5)
    assert torch.allclose(a.stretch_shift_to_terminal(t), b.stretch_shift_to_terminal(t))
    a.set_timesteps(10)
    b.set_timesteps(10)
    assert a.index_for_timestep(a.timesteps[4]) == b.index_for_timestep(b.timesteps[4]) == 4
    tok = torch.rand(2, 16, generator=torch.Generator().manual_seed(0)) * 1000
    xa, u = torch.randn(2, 16, 8), torch.ones(2, 16, 8)
    ya = a.step(u, a.timesteps[0], xa, per_token_timesteps=tok).prev_sample
    yb = b.step(u, b.timesteps[0], xa, per_token_timesteps=tok).prev_sample
    assert torch.equal(ya, yb)


@pytest.mark.parametrize("name,kw", [
    ("DPMSolverMultistepScheduler", {"timesteps": [999, 700, 400, 100, 10]}),
    ("DPMSolverSinglestepScheduler", {"timesteps": [999, 700, 400, 100, 10, 5]}),
    ("EulerDiscreteScheduler", {"timesteps": [999.0, 700.0, 400.0, 100.0, 10.0]}),
    ("EulerDiscreteScheduler", {"sigmas": [14.6, 5.0, 1.0, 0.3, 0.0]}),
    ("HeunDiscreteScheduler", {"timesteps": [999.0, 700.0, 400.0, 100.0, 10.0]}),
    ("HeunDiscreteScheduler", {"num_inference_steps": 5, "num_train_timesteps": 500}),
    ("DDPMScheduler", {"timesteps": [999, 700, 400, 100, 10]}),
    ("UniPCMultistepScheduler", {"num_inference_steps": 6, "mu": 0.7}),
    ("LCMScheduler", {"timesteps": [999, 759, 499, 259]}),
    ("TCDScheduler", {"num_inference_steps": 4, "original_inference_steps": 100}),
])
def test_custom_timesteps_and_sigmas_equal_diffusers(name, kw):
    cfg = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "use_dynamic_shifting": True} \
        if "mu" in kw else {}
    a = _run(getattr(ours, name)(**cfg), set_kw=kw)
    b = _run(getattr(diffusers, name)(**cfg), set_kw=kw)
    assert _rel(a, b) < 1e-5


# ----------------------------------------------------------------------------------- configs and keys
FOLDER_CONFIGS = {
    "sd15": {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
             "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
             "clip_sample": False},
    "sd21": {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
             "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
             "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None},
    "sdxl": {"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
             "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
             "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False},
    "sd3": {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.29.0.dev0",
            "num_train_timesteps": 1000, "shift": 3.0},
    "flux": {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0",
             "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
             "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True},
}


@pytest.mark.parametrize("folder", FOLDER_CONFIGS)
def test_every_drop_in_loads_real_folder_configs_as_diffusers(folder):
    """From the scheduler_config.json of SD 1.5, SD 2.1 (v), SDXL, SD3 and Flux: the same config as diffusers'
    class gets, and the same first steps (flow configs go to the flow schedulers, as in those pipelines)."""
    cfg = FOLDER_CONFIGS[folder]
    flow = cfg["_class_name"].startswith("FlowMatch")
    for name in NAMES:
        if (name in FLOW) != flow:
            continue
        mine, theirs = getattr(ours, name).from_config(cfg), getattr(diffusers, name).from_config(cfg)
        assert dict(mine.config) == dict(theirs.config), (folder, name)
        if name == "PNDMScheduler" and cfg.get("prediction_type") == "v_prediction":
            continue  # a deliberate difference (test_difference_pndm_v_prediction_converted_at_each_level)
        takes_mu = "mu" in inspect.signature(mine.set_timesteps).parameters and mine.config.get("use_dynamic_shifting")
        kw = {"num_inference_steps": 6, **({"mu": 0.9} if takes_mu else {})}
        assert _rel(_run(mine, set_kw=kw), _run(theirs, set_kw=kw)) < 1e-5, (folder, name)


def test_from_config_across_every_pair_and_round_trip(tmp_path):
    """Any drop-in's config loads into any other compatible drop-in (foreign keys stay the other scheduler's,
    as in diffusers); save_config / from_pretrained round-trips; compatibles list diffusers' classes."""
    for src, dst in itertools.product(NAMES, NAMES):
        if (src in FLOW) != (dst in FLOW):
            continue
        cfg = getattr(ours, src)().config
        mine, theirs = getattr(ours, dst).from_config(cfg), getattr(diffusers, dst).from_config(cfg)
        assert dict(mine.config) == dict(theirs.config), (src, dst)
        if dst not in FLOW:
            assert _rel(_run(mine, 6), _run(theirs, 6)) < 1e-5, (src, dst)
    for name in NAMES:
        s = getattr(ours, name)(num_train_timesteps=500)
        s.save_config(tmp_path / name)
        back = getattr(ours, name).from_pretrained(tmp_path / name)
        drop = ("_use_default_values",)
        assert type(back) is type(s)
        assert {k: v for k, v in back.config.items() if k not in drop} == \
            {k: v for k, v in s.config.items() if k not in drop}
        names = {c.__name__ for c in s.compatibles}
        assert name in names and (len(names) > 2 or name in FLOW)


def test_unknown_keys_are_refused_never_dropped():
    with pytest.raises(ValueError, match=r"unknown key.*not_a_key"):
        ours.DPMSolverMultistepScheduler.from_config({"not_a_key": 1, "algorithm_type": "sde-dpmsolver++"})
    with pytest.raises(ValueError, match=r"unknown key.*solver_ordr"):
        ours.EulerDiscreteScheduler.from_config(ours.EulerDiscreteScheduler().config, solver_ordr=2)
    with pytest.raises(TypeError):  # the constructor: as diffusers' (an unexpected keyword)
        ours.DPMSolverMultistepScheduler(not_a_key=1)
    s = ours.DPMSolverMultistepScheduler.from_config({"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True,
                                                      "solver_type": "heun", "final_sigmas_type": "sigma_min"})
    assert (s.config.algorithm_type, s.config.use_karras_sigmas, s.config.solver_type,
            s.config.final_sigmas_type) == ("sde-dpmsolver++", True, "heun", "sigma_min")
    for bad, match in ((dict(algorithm_type="nope"), "algorithm_type"), (dict(solver_order=4), "solver_order"),
                       (dict(beta_schedule="cubic"), "beta_schedule"), (dict(trained_betas=np.array([["a"]])),
                                                                        "trained_betas"),
                       (dict(use_karras_sigmas=True, use_beta_sigmas=True), "at most one"),
                       (dict(algorithm_type="dpmsolver"), "final_sigmas_type"),
                       (dict(prediction_type="flow_prediction"), "use_flow_sigmas"),
                       (dict(time_shift_type="linear"), "time_shift_type")):
        with pytest.raises(ValueError, match=match):
            ours.DPMSolverMultistepScheduler(**bad)
    with pytest.raises(ValueError, match="variance_type"):
        ours.DDPMScheduler(variance_type="fixed_large_log")
    with pytest.raises(ValueError, match="predict_x0"):
        ours.UniPCMultistepScheduler(predict_x0=False)
    with pytest.raises(ValueError, match="integer index"):
        s = ours.EulerDiscreteScheduler()
        s.set_timesteps(4)
        s.step(torch.zeros(1, 4, 2, 2), 3, torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="set_timesteps"):
        ours.DPMSolverMultistepScheduler().step(torch.zeros(1, 4, 2, 2), 999, torch.zeros(1, 4, 2, 2))


def test_pipeline_attributes_exist():
    """What pipelines and editing methods read: betas, alphas, alphas_cumprod, final_alpha_cumprod, sigmas,
    model_outputs, step_index, begin_index, _get_variance (LEDITS++), get_velocity, order, init_noise_sigma."""
    for name in NAMES:
        s, r = getattr(ours, name)(), getattr(diffusers, name)()
        for attr in ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod", "sigmas", "model_outputs",
                     "step_index", "begin_index", "lower_order_nums", "order", "init_noise_sigma", "timesteps"):
            if hasattr(r, attr):
                assert hasattr(s, attr), (name, attr)
        for attr in ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod"):
            if isinstance(getattr(r, attr, None), torch.Tensor):
                assert torch.allclose(getattr(s, attr), getattr(r, attr), rtol=1e-6), (name, attr)
    s, r = ours.DDIMScheduler(), diffusers.DDIMScheduler()
    assert torch.allclose(s._get_variance(500, 480), r._get_variance(500, 480))


# ----------------------------------------------------------------------------- deliberate differences
def test_difference_third_order_is_taylor_correct():
    """3M (multistep) and singlestep SDE third order: our D2 weight is the Taylor one. On the exact solution of
    dx/dλ-linear test problems that is visible as a smaller error than diffusers' at equal steps."""
    from ddim.core.path import Levels
    from ddim.core.samplers.dpmpp import dpm_solver_coefficients

    # x̂0(λ) = λ² (a quadratic in λ): a third-order step integrates it exactly, the halved D2 weight does not
    lam = [-2.0, -1.5, -1.0, -0.5]
    pairs = [(1 / np.sqrt(1 + np.exp(-2 * v)), np.exp(-v) / np.sqrt(1 + np.exp(-2 * v))) for v in lam]
    lv = Levels.from_pairs(lam[:3], pairs)
    A, c, _ = dpm_solver_coefficients(lv, 2, 3)
    m = [lam[2] ** 2, lam[1] ** 2, lam[0] ** 2]
    x_s = 0.3
    ours_next = A * x_s + sum(ci * mi for ci, mi in zip(c, m))
    # exact: x_t = σ_t/σ_s x_s + σ_t ∫ e^{λ} λ² dλ  (data-prediction ODE)
    s_t = pairs[3][1]
    s_s = pairs[2][1]
    F = lambda v: np.exp(v) * (v * v - 2 * v + 2)  # noqa: E731
    exact = s_t / s_s * x_s + s_t * (F(lam[3]) - F(lam[2]))
    assert abs(ours_next - exact) < 1e-12
    a = _run(ours.DPMSolverMultistepScheduler(solver_order=3), 12)
    b = _run(diffusers.DPMSolverMultistepScheduler(solver_order=3), 12)
    assert 1e-5 < _rel(a, b) < 5e-2  # different, and close
    s = ours.DPMSolverSinglestepScheduler(solver_order=3, solver_type="heun", algorithm_type="sde-dpmsolver++")
    a = _run(s, 12)
    assert torch.isfinite(a).all()


def test_difference_finite_where_diffusers_gives_nan():
    """UniPC bh1 onto σ = 0 (diffusers: −inf · 0) and a repeated level (20 steps on a 20-step grid)."""
    for kw, n in ((dict(solver_type="bh1"), 10), (dict(num_train_timesteps=20), 20)):
        a = _run(ours.UniPCMultistepScheduler(**kw), n)
        b = _run(diffusers.UniPCMultistepScheduler(**kw), n)
        assert torch.isfinite(a).all() and not torch.isfinite(b).all()


def test_difference_next_list_entry_not_a_fixed_stride():
    """DDIM and PNDM step onto the next entry of the list; diffusers uses the stride T//n, which for linspace
    spacing is not the next entry. For leading spacing (SD's configs) the two agree (tested above)."""
    for name, kw in (("DDIMScheduler", dict(timestep_spacing="linspace")),
                     ("PNDMScheduler", dict(timestep_spacing="linspace", skip_prk_steps=True))):
        a, b = _run(getattr(ours, name)(**kw), 10), _run(getattr(diffusers, name)(**kw), 10)
        assert _rel(a, b) > 1e-3 and torch.isfinite(a).all()


def test_difference_pndm_v_prediction_converted_at_each_level():
    """diffusers' PNDM converts the combined v output to ε at the step's start level; ours converts each output
    at its own level, so v- and ε-models of the same denoiser give the same trajectory."""
    from ddim.core.prediction import output_from

    s_eps = ours.PNDMScheduler(skip_prk_steps=True)
    s_v = ours.PNDMScheduler(skip_prk_steps=True, prediction_type="v_prediction")
    outs = []
    for s in (s_eps, s_v):
        s.set_timesteps(8)
        x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
        for t in s.timesteps:
            eps = torch.tanh(x)
            if s.config.prediction_type == "v_prediction":
                a, sg = s.schedule.alpha_sigma(int(t))
                out = output_from("v_prediction", a, sg, eps, (x - sg * eps) / a)
            else:
                out = eps
            x = s.step(out, t, x).prev_sample
        outs.append(x)
    assert _rel(outs[1], outs[0]) < 1e-5


def test_difference_learned_variance_takes_the_first_half_of_the_channels():
    """variance_type learned(_range): ε is the first sample.shape[1] channels (diffusers: the first 3, wrong for
    4-channel latents); with 3-channel images the two agree."""
    s, r = ours.DPMSolverMultistepScheduler(variance_type="learned_range"), \
        diffusers.DPMSolverMultistepScheduler(variance_type="learned_range")
    for sch in (s, r):
        sch.set_timesteps(5)
    x = torch.randn(1, 3, 4, 4)
    out = torch.randn(1, 6, 4, 4)
    assert _rel(s.step(out, s.timesteps[0], x).prev_sample, r.step(out, r.timesteps[0], x).prev_sample) < 1e-6


def test_difference_epsilon_at_zero_terminal_snr_is_refused():
    """ε-prediction has no x̂0 at ᾱ = 0 (zero terminal SNR): refused by name, where diffusers returns inf/NaN."""
    s = ours.DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    s.set_timesteps(4)
    with pytest.raises(UsageError, match="zero terminal SNR"):
        s.step(torch.zeros(1, 4, 2, 2), s.timesteps[0], torch.zeros(1, 4, 2, 2))


def test_difference_ddpm_last_step_adds_no_noise():
    """DDPM on a list ending at t > 0 (trailing): diffusers adds noise on the last step (std sqrt(β) with
    fixed_large); ours ends on the data, so the last step does not depend on the generator."""
    outs = []
    for seed in (1, 2):
        s = ours.DDPMScheduler(variance_type="fixed_large", timestep_spacing="trailing")
        s.set_timesteps(10)
        x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
        t = s.timesteps[-1]
        outs.append(s.step(_model(x, t), t, x, generator=torch.Generator().manual_seed(seed)).prev_sample)
    assert torch.equal(outs[0], outs[1])
    a = _run(ours.DDPMScheduler(variance_type="fixed_large", timestep_spacing="trailing"), 10)
    b = _run(diffusers.DDPMScheduler(variance_type="fixed_large", timestep_spacing="trailing"), 10)
    assert _rel(a, b) > 1e-3


def test_ddpm_learned_variances_and_unipc_solver_p_equal_diffusers():
    """DDPM with a learned (range) variance read from the second half of the output channels; UniPC as the
    corrector of another scheduler's predictor (solver_p)."""
    for vt in ("learned", "learned_range"):
        outs = []
        for mod in (ours, diffusers):
            s = mod.DDPMScheduler(variance_type=vt)
            s.set_timesteps(8)
            x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
            g = torch.Generator().manual_seed(1)
            for t in s.timesteps:
                out = torch.cat([_model(x, t), torch.tanh(x) * 0.5 + (0.2 if vt == "learned" else 0.0)], dim=1)
                if vt == "learned":
                    out[:, 3:] = out[:, 3:].abs() * 1e-3
                x = s.step(out, t, x, generator=g).prev_sample
            outs.append(x)
        assert _rel(outs[0], outs[1]) < 1e-5, vt
    a = _run(ours.UniPCMultistepScheduler(solver_p=ours.DDIMScheduler()), 8)
    b = _run(diffusers.UniPCMultistepScheduler(solver_p=diffusers.DDIMScheduler()), 8)
    assert _rel(a, b) < 1e-5


def test_difference_tcd_applies_its_clipping_keys():
    """TCD's clip_sample / thresholding keys: diffusers accepts them and never applies them; ours clips x̂0 as
    the keys say (no key is silently ignored). Without them the two agree (the trajectory cases above)."""
    a = _run(ours.TCDScheduler(clip_sample=True, clip_sample_range=0.5), 4)
    b = _run(diffusers.TCDScheduler(clip_sample=True, clip_sample_range=0.5), 4)
    c = _run(diffusers.TCDScheduler(), 4)
    assert torch.equal(b, c) and _rel(a, b) > 1e-3
