"""Few-step sampling: SDE samplers (parity with diffusers' SDE-DPM-Solver++ on the same noise, per-sample noise,
the right stationary distribution on the exact mixture), consistency sampling, schedule search."""


import json

import numpy as np
import pytest
import torch

from ddim import Denoiser, NoiseSchedule, sample
from ddim.core.samplers import SAMPLERS
from ddim.models import mog3
from ddim.ops import metrics


def random_mlp(dim: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = torch.nn.Sequential(torch.nn.Linear(dim + 1, 32), torch.nn.SiLU(), torch.nn.Linear(32, dim))

        def forward(self, x, t):
            return self.f(torch.cat([x, t.to(x.dtype)[:, None] / 1000], 1))

    return Net().double()


@pytest.mark.parametrize("name,order", [("dpmpp_2m_sde", 2), ("dpmpp_sde", 1)])
@pytest.mark.parametrize("steps", [8, 20])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sde_samplers_match_diffusers_with_the_same_noise(name, order, steps, prediction_type):
    from diffusers import DPMSolverMultistepScheduler

    net = random_mlp(4)
    x_T = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=order,
                                      prediction_type=prediction_type)
    ref.set_timesteps(steps)
    g = torch.Generator().manual_seed(3)
    draws, x = [], x_T.clone()
    with torch.no_grad():
        for t in ref.timesteps:
            draws.append(torch.randn(x.shape, generator=g, dtype=x.dtype))
            x = ref.step(net(x, t.expand(8)), t, x, variance_noise=draws[-1]).prev_sample
    den = Denoiser(net, NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod.double()), prediction_type=prediction_type)
    it = iter(draws)
    with torch.no_grad():
        ours = SAMPLERS[name](den, x_T, ref.timesteps, generator=lambda: next(it))
    assert float((ours - x).abs().max()) <= 1e-6 * float(x.abs().max())


def _exact(dtype=torch.float64) -> Denoiser:
    sched = NoiseSchedule.linear(1000)
    return Denoiser(mog3().eps_model(sched), sched, sample_shape=(2,))


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_sde"])
def test_sde_noise_is_per_sample(name):
    full = sample(_exact(), (6, 2), steps=10, sampler=name, seed=3, dtype=torch.float64)
    for i in (0, 4):
        one = sample(_exact(), (1, 2), steps=10, sampler=name, seeds=[3 + i], dtype=torch.float64)
        assert torch.allclose(one[0], full[i], atol=1e-12)
    ode = sample(_exact(), (6, 2), steps=10, sampler="dpmpp_2m", seed=3, dtype=torch.float64)
    assert float((ode - full).abs().max()) > 1e-2  # the noise is really injected


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_sde"])
def test_sde_samplers_reach_the_data_distribution(name):
    """On the exact mixture the SDE's samples have the data's mean log-density (the stationary distribution)."""
    mix = mog3()
    x = sample(_exact(), (20000, 2), steps=200, spacing="logsnr", sampler=name, seed=0, dtype=torch.float64)
    truth = mix.sample(20000, generator=torch.Generator().manual_seed(1))
    gap = metrics.mixture_loglik(mix, x) - metrics.mixture_loglik(mix, truth)
    assert abs(gap) < 0.03, gap
    assert metrics.sliced_wasserstein(x.float(), truth.float()) < 0.05


def test_first_order_sde_dpm_solver_is_ddpm_ancestral_sampling():
    """SDE-DPM-Solver++(1) on a grid equals DDPM's posterior sampling (σ² = β̃) step for step."""
    a = sample(_exact(), (16, 2), steps=20, sampler="dpmpp_sde", seed=2, dtype=torch.float64)
    b = sample(_exact(), (16, 2), steps=20, sampler="ddpm", seed=2, dtype=torch.float64)
    assert torch.allclose(a, b, atol=1e-10)


def test_sde_nfe():
    assert SAMPLERS["dpmpp_2m_sde"].nfe(10) == 10 and SAMPLERS["dpmpp_sde"].nfe(10) == 10


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize("kind,option", [("lcm", None), ("tcd", 0.3), ("tcd", 0.0), ("tcd", 1.0)])
def test_consistency_samplers_match_diffusers_lcm_and_tcd(steps, kind, option):
    """Same model outputs, same noise: our lcm / tcd samplers reproduce LCMScheduler / TCDScheduler."""
    from diffusers import LCMScheduler, TCDScheduler

    from ddim.io.config import denoiser_from_config

    net = random_mlp(4)
    ref = (LCMScheduler if kind == "lcm" else TCDScheduler)()
    ref.set_timesteps(steps)
    den = denoiser_from_config(net, dict(ref.config))
    ts = den.path.timesteps(steps, "lcm")
    assert ts.tolist() == ref.timesteps.tolist()
    x_T = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(5)
    draws, x = [], x_T.clone()
    kw = {} if kind == "lcm" else {"eta": option}
    with torch.no_grad():
        for t in ref.timesteps:
            out = net(x, t.expand(8))
            state = g.get_state()
            x = ref.step(out, t, x, generator=g, **kw).prev_sample
            if not torch.equal(g.get_state(), state):  # the step drew noise: replay the same draw for ours
                draws.append(torch.randn(x.shape, generator=torch.Generator().set_state(state), dtype=x.dtype))
    it = iter(draws)
    opts = {} if kind == "lcm" else {"gamma": option}
    with torch.no_grad():
        ours = SAMPLERS[kind](den, x_T, ts, generator=lambda: next(it), **opts)
    assert float((ours - x).abs().max()) <= 1e-6 * max(1.0, float(x.abs().max()))


def test_lcm_folder_samples_with_its_consistency_sampler_by_default(tmp_path):
    from diffusers import LCMScheduler

    from ddim.io.checkpoint import export_diffusers
    from ddim.io.loader import load_model
    from ddim.models.unet import small_unet

    export_diffusers(small_unet(), {**LCMScheduler().config, "_class_name": "LCMScheduler"}, tmp_path / "m")
    m = load_model(tmp_path / "m")
    assert m.resolve_sampling(4) == ("lcm", "lcm", 4)
    x = sample(m.denoiser, (2, 1, 8, 8), steps=4, sampler="lcm", spacing="lcm")
    assert torch.isfinite(x).all()


def test_gits_plus_coordinate_descent_halves_the_held_out_error_on_a_3d_mixture():
    """Calibrate on one batch (seeds 10⁶ + i), report on another: ≥ 2× lower error than the best fixed spacing
    at NFE 10 (UniPC) on the anisotropic 3-D mixture with exact ε."""
    from ddim.core.noise import SeededNoise
    from ddim.io.loader import load_model
    from ddim.ops.optimize import _spacings, reference_solution, schedule_error, search_schedule

    d = load_model("mixture:mog3d").denoiser
    r = search_schedule(d, 10, "unipc", method="gits+cd", n_cal=512)
    held = SeededNoise(range(5000, 5512), (3,), dtype=torch.float64).initial()
    ref = reference_solution(d, held)
    best_fixed = min(schedule_error(d, "unipc", d.path.timesteps(10, sp), held, ref)
                     for sp in _spacings(d.path, 10))
    assert best_fixed / schedule_error(d, "unipc", r.timesteps, held, ref) >= 2.0


def test_schedule_file_round_trip_and_refusals(tmp_path, capsys):
    import shutil

    from ddim.app.cli import main
    from ddim.training.config import TrainConfig
    from ddim.training.train import train

    runs = []
    for seed in (0, 1):
        runs.append(train(TrainConfig(data="mog3", steps=20, seed=seed, checkpoint_every=10), tmp_path / f"r{seed}",
                          progress=False, log=lambda *a: None))
    assert main(["schedule", "--model", str(runs[0]), "--nfe", "4", "--sampler", "ddim", "--method", "gits",
                 "--n-cal", "16"]) == 0
    assert (runs[0] / "schedule.json").is_file()
    out = tmp_path / "x.npy"
    assert main(["sample", "--model", str(runs[0]), "--spacing", "optimised", "-n", "8", "--out", str(out)]) == 0
    assert "optimised schedule" in capsys.readouterr().out
    assert main(["sample", "--model", str(runs[0]), "--spacing", "optimised", "--sampler", "unipc", "-n", "8",
                 "--out", str(out)]) == 2
    shutil.copy(runs[0] / "schedule.json", runs[1] / "schedule.json")
    assert main(["sample", "--model", str(runs[1]), "--spacing", "optimised", "-n", "8", "--out", str(out)]) == 2
    assert "another model" in capsys.readouterr().err


def test_ays_spacing_is_the_published_sd15_list_at_10_steps():
    s = NoiseSchedule.scaled_linear(1000, 0.00085, 0.012)
    assert s.timesteps(10, "ays").tolist() == [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]
    assert len(s.timesteps(4, "ays")) == 4


def test_progressive_distillation_rounds_package_and_step_refusal(tmp_path, capsys):
    from ddim.app.cli import main
    from ddim.io.loader import load_model

    assert main(["distill", "--model", "digits", "--out", str(tmp_path / "d"), "--start-steps", "8", "--iters", "3",
                 "--batch-size", "8"]) == 0
    for k in ("v", "4", "2", "1"):
        assert (tmp_path / "d" / f"round-{k}" / "diffusers" / "unet" / "config.json").is_file()
    m = load_model(tmp_path / "d" / "model")
    w4 = m.denoiser_for(4).net.state_dict()
    assert m.resolve_sampling(1) == ("ddim", "trailing", 1)
    assert any(not torch.equal(v, m.denoiser_for(1).net.state_dict()[k]) for k, v in w4.items())  # 1-step student
    assert all(torch.equal(v, m.denoiser_for(4).net.state_dict()[k]) for k, v in w4.items())  # nothing swapped
    out = tmp_path / "x.npy"
    assert main(["sample", "--model", str(tmp_path / "d" / "model"), "--steps", "2", "-n", "4", "--out",
                 str(out)]) == 0
    assert main(["sample", "--model", str(tmp_path / "d" / "model"), "--steps", "3", "-n", "4", "--out",
                 str(out)]) == 2
    assert "distilled for 1, 2, 4 steps" in capsys.readouterr().err
    assert main(["distill", "--model", "digits-flow", "--out", str(tmp_path / "e"), "--iters", "1"]) == 2
    assert main(["distill", "--model", "digits", "--out", str(tmp_path / "d"), "--start-steps", "8", "--iters", "4",
                 "--batch-size", "8"]) == 2  # resuming with other settings
    assert "other settings (iters)" in capsys.readouterr().err


def test_distillation_with_a_higher_order_teacher_solver(tmp_path, capsys):
    from ddim.app.cli import main

    assert main(["distill", "--model", "digits", "--out", str(tmp_path / "d"), "--start-steps", "4",
                 "--final-steps", "2", "--iters", "2", "--batch-size", "8", "--teacher-solver", "dpmpp_2m",
                 "--teacher-substeps", "4"]) == 0
    assert (tmp_path / "d" / "round-2" / "diffusers" / "unet" / "config.json").is_file()
    assert main(["distill", "--model", "digits", "--out", str(tmp_path / "e"), "--teacher-substeps", "1"]) == 2
    assert "teacher_substeps must be at least 2" in capsys.readouterr().err


def test_consistency_distillation_exports_an_lcm_model(tmp_path):
    from ddim.app.cli import main
    from ddim.io.loader import load_model

    assert main(["distill", "--method", "consistency", "--model", "digits", "--out", str(tmp_path / "c"),
                 "--iters", "3", "--batch-size", "8"]) == 0
    m = load_model(tmp_path / "c" / "diffusers")
    assert m.resolve_sampling(4) == ("lcm", "lcm", 4)
    x = sample(m.denoiser, (2, 1, 8, 8), steps=4, sampler="lcm", spacing="lcm")
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_shipped_distilled_model_samples_at_its_step_counts():
    from ddim.io.loader import load_model

    m = load_model("digits-distilled")
    for k in (1, 2, 4):
        plan = m.plan(k)
        x = sample(plan.denoiser, (4, 1, 8, 8), steps=plan.steps, sampler=plan.sampler, spacing=plan.spacing)
        assert torch.isfinite(x).all() and float(x.abs().max()) < 3


def test_distillation_teacher_solver_converges_at_its_order_per_sample():
    """The first round's teacher targets: DPM-Solver++(2M) over a student step is far closer to the exact
    PF-ODE than the same number of DDIM steps, with per-sample start levels in one batch."""
    from ddim.training.distill import _teacher_solve, teacher_tables

    sched = NoiseSchedule.linear(1000)
    net = mog3().eps_model(sched)
    abar = torch.cat([sched.alphas_cumprod.float(), torch.ones(1)])
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))

    def solve(n: int, solver: str) -> torch.Tensor:
        """Sample b walks the b-th student step (of 4, trailing) of the 4n-step trailing list, n substeps."""
        levels = torch.cat([sched.timesteps(4 * n, "trailing").long(), torch.tensor([1000])])
        tables = teacher_tables(sched, levels[:-1])
        return _teacher_solve(net, "epsilon", x, levels, abar, tables, torch.arange(4) * n, n, solver)

    ref = solve(250, "dpmpp_2m")
    err = {(s, n): float((solve(n, s) - ref).norm()) for s in ("ddim", "dpmpp_2m") for n in (4, 8)}
    assert err[("dpmpp_2m", 8)] < 0.3 * err[("ddim", 8)]
    assert err[("dpmpp_2m", 8)] < 0.5 * err[("dpmpp_2m", 4)]
    assert err[("ddim", 8)] < err[("ddim", 4)]


def test_klub_matrix_matches_the_closed_form_for_a_gaussian():
    """AYS's KLUB on 1-D N(0, s²) data, where D(x0 + σ̃ε, σ̃) = s²/(s² + σ̃²)(x0 + σ̃ε): the trapezoid estimate
    from the exact denoiser matches the integral of the closed-form E‖ΔD‖² σ̃⁻³ (Monte Carlo on 40 000 samples)."""
    import numpy as np

    from ddim.models.mixture import GaussianMixture
    from ddim.ops.optimize import klub_matrix

    s2 = 0.25
    sched = NoiseSchedule.linear(1000)
    den = Denoiser(GaussianMixture([1.0], [[0.0]], [[[s2]]]).eps_model(sched), sched)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(40000, 1, generator=g, dtype=torch.float64) * s2 ** 0.5, torch.randn(
        40000, 1, generator=g, dtype=torch.float64)
    levels = list(range(999, 99, -5))
    k = klub_matrix(den, x0, eps, levels)
    abar = sched.alphas_cumprod.double().numpy()
    tilde = np.sqrt((1 - abar[levels]) / abar[levels])

    def exact(i: int, j: int) -> float:
        u = np.linspace(np.log(tilde[j]), np.log(tilde[i]), 20001)
        st = np.exp(u)
        c, ci = s2 / (s2 + st ** 2), s2 / (s2 + tilde[i] ** 2)
        f = (c - ci) ** 2 * s2 + (c * st - ci * tilde[i]) ** 2
        return float(np.trapezoid(f * st ** -2, u))  # dσ̃ = σ̃ du

    for i, j in [(0, 40), (10, 100), (60, 179), (0, 179)]:
        assert float(k[i, j]) == pytest.approx(exact(i, j), rel=0.03)
    assert float(k[5, 5]) == 0.0


def test_cheapest_path_is_the_brute_force_minimum():
    import itertools

    from ddim.ops.optimize import _cheapest_path

    g = torch.Generator().manual_seed(1)
    m, steps = 9, 4
    c = torch.rand(m, m + 1, generator=g).tolist()
    best = min((sum(c[a][b] for a, b in itertools.pairwise((0, *rest, m))), (0, *rest))
               for rest in itertools.combinations(range(1, m), steps - 1))
    assert tuple(_cheapest_path(c, steps)) == best[1]


def test_ays_schedule_search_from_the_cli(tmp_path, capsys):
    from ddim.app.cli import main
    from ddim.training.config import TrainConfig
    from ddim.training.train import train

    run = train(TrainConfig(data="mog3", steps=20, checkpoint_every=10), tmp_path / "r", progress=False,
                log=lambda *a: None)
    assert main(["schedule", "--model", str(run), "--nfe", "5", "--sampler", "ddim", "--method", "ays",
                 "--n-cal", "64", "--data", "mog3"]) == 0
    assert "ays schedule for ddim at NFE 5" in capsys.readouterr().out
    out = tmp_path / "x.npy"
    assert main(["sample", "--model", str(run), "--spacing", "optimised", "-n", "8", "--out", str(out)]) == 0
    assert main(["schedule", "--model", str(run), "--nfe", "5", "--method", "ays"]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert main(["schedule", "--model", str(run), "--nfe", "5", "--method", "ays", "--data", "digits"]) == 2


def test_fewstep_bench_adds_a_reflowed_flow_model_with_its_calibrated_sampler(tmp_path):
    """The reflowed rows: a flow model (here the shipped digits-flow) at each NFE with the sampler and spacing
    picked on the calibration seeds; a sampler whose step needs more calls than the budget is not a candidate."""
    from ddim.bench.classifier import DigitsJudge
    from ddim.bench.fewstep import _calibrated, fewstep_bench
    from ddim.io.loader import load_model

    den = load_model("digits-flow").denoiser
    assert _calibrated(DigitsJudge(), den, 1, [("pndm", "uniform")], 8) is None  # one step: 2 calls
    assert _calibrated(DigitsJudge(), den, 2, [("midpoint", "uniform"), ("ddim", "karras")], 8)[2] in (1, 2)
    text = fewstep_bench(tmp_path, True, "test", n=8, seeds=1, reflowed="digits-flow")
    rows = [line for line in text.splitlines() if line.startswith("| reflowed flow |")]
    assert [r.split("|")[2].strip() for r in rows] == ["1", "2", "4"]
    assert "reflowed flow: `digits-flow`" in text
    one = [line for line in text.splitlines() if line.startswith("| rectified, one-step distilled |")]
    assert [r.split("|")[2].strip() for r in one] == ["1"]
    assert "1 NFE ≤ 1.5× DDPM-1000 with a shipped model — " in text


def test_shipped_rectified_model_samples_at_its_measured_defaults():
    """digits-rectified: a built-in flow model whose sampling.json picks the sampler and spacing per NFE; the
    request API, and so the CLI and the server, sample it at 1, 2 and 4 NFE."""
    from ddim.api import parse_request, run
    from ddim.io.loader import load_model

    m = load_model("digits-rectified")
    assert m.denoiser.prediction_type == "flow_prediction"
    tuned = [1.0, 0.845, 0.6865, 0.17]  # the bench's FD-tuned levels at 4 NFE
    assert m.defaults.best_for(4) == {"sampler": "unipc", "spacing": "karras", "steps": 4, "timesteps": tuned}
    p = m.plan(4)
    assert p.sampler == "unipc" and p.timesteps.tolist() == tuned
    assert m.plan(5).timesteps is None and m.plan(5).spacing == "karras"  # another budget: the spacing
    assert m.plan(4, spacing="uniform").timesteps is None
    for steps in (1, 2, 4):
        out = run(parse_request({"task": "sample", "model": "digits-rectified", "steps": steps, "n": 2, "seed": 0}))
        assert out.main.shape[0] == 2 and np.isfinite(out.main).all()
        assert out.stats.nfe == steps
    assert out.provenance["plan"]["timesteps"] == tuned


def test_sampling_json_keys_are_checked(tmp_path):
    import shutil

    from ddim.core.errors import CheckpointError
    from ddim.io.loader import builtin_path, load_model

    folder = tmp_path / "rf"
    shutil.copytree(builtin_path("digits-rectified"), folder)
    for entry, what in (({"sampler": "ddim", "steps": 2, "spacng": "uniform"}, "unknown keys spacng"),
                        ({"sampler": "ddim", "steps": 2, "timesteps": [1.0]}, "timesteps must be")):
        (folder / "sampling.json").write_text(json.dumps({"nfe": {"2": entry}}))
        with pytest.raises(CheckpointError, match=what):
            load_model(str(folder))
    for whole, what in (({"nfe": {}, "stepz": [1]}, "unknown keys stepz"), ({"steps": [0]}, "positive integers"),
                        ({"steps": 1}, "positive integers")):
        (folder / "sampling.json").write_text(json.dumps(whole))
        with pytest.raises(CheckpointError, match=what):
            load_model(str(folder))
