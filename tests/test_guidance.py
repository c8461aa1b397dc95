"""Conditioning and guidance against the exact conditional Gaussian mixture (closed-form ε_c, ε_u, guided ε)."""

import math

import pytest
import torch

from ddim import NoiseSchedule
from ddim.core.errors import UsageError
from ddim.core.guidance import ClassLabels, Guidance, bind
from ddim.core.path import ContinuousPath
from ddim.core.prediction import Denoiser
from ddim.core.sample import sample
from ddim.core.samplers import SAMPLERS
from ddim.models.mixture import cmog
from ddim.ops.inversion import invert
from ddim.ops.reference import pf_ode_reference

SCHED = NoiseSchedule.linear(1000)
MIX = cmog()


def den(pred: str = "epsilon") -> Denoiser:
    return Denoiser(MIX.eps_model(SCHED), SCHED, sample_shape=(2,), conditioning=MIX.conditioning)


def x_T(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


def guided_eps(x: torch.Tensor, t: int, labels: torch.Tensor, w: float) -> torch.Tensor:
    a = SCHED.alpha_bar(t)
    al = torch.full((len(x),), math.sqrt(a), dtype=torch.float64)
    sg = torch.full((len(x),), math.sqrt(1 - a), dtype=torch.float64)
    return -math.sqrt(1 - a) * MIX.score_at(x, al, sg, labels, guidance=w)


def test_cfg_output_is_the_closed_form_guided_eps_batched_or_not():
    x = x_T()
    for w in (0.0, 1.0, 3.0, 7.5):
        for batched in (True, False):
            d = bind(den(), LABELS, Guidance(w, batched=batched))
            for t in (999, 500, 20):
                assert torch.allclose(d.call_net(x, t), guided_eps(x, t, LABELS, w), atol=1e-12)


@pytest.mark.parametrize("sampler,order", [("ddim", 1), ("dpmpp_2m", 2), ("heun", 2), ("unipc", 2)])
def test_samplers_converge_to_the_guided_pf_ode_at_their_order(sampler, order):
    """Under CFG w = 3 the guided PF-ODE has the closed-form score s_u + w (s_c − s_u): each sampler reaches
    its DOP853 solution at its order (cosine-VP path, continuous time)."""
    path = ContinuousPath("vp_cosine", t_max=0.97, t_min=0.002)
    d = Denoiser(MIX.eps_model(path), path, sample_shape=(2,), conditioning=MIX.conditioning)
    a, _s = path.alpha_sigma(0.97)
    abar = a * a
    x_vp = x_T(24)
    labels = LABELS.repeat(4)
    ref = pf_ode_reference(lambda z, ab: MIX.score_at(z, ab.sqrt(), (1 - ab).sqrt(), labels, guidance=3.0), x_vp,
                           abar)
    errs = [float((sample(d, x_T=x_vp / math.sqrt(abar) * a, timesteps=path.timesteps(n, "logsnr"), sampler=sampler,
                          condition=labels, guidance=3.0) - ref).pow(2).mean().sqrt()) for n in (40, 80)]
    assert math.log2(errs[0] / errs[1]) > order - 0.4, errs


def test_every_sampler_runs_under_cfg_and_counts_both_branches():
    x = x_T()
    for name, spec in SAMPLERS.items():
        out, st = sample(den(), x_T=x, steps=10, sampler=name, condition=LABELS, guidance=2.0, return_stats=True)
        assert torch.isfinite(out).all(), name
        assert st.nfe == 2 * spec.nfe(10), name


def test_guidance_interval_runs_one_branch_outside_the_band():
    x = x_T()
    ts = SCHED.timesteps(10)
    g = Guidance(3.0, interval=(0.5, 5.0))
    inside = [t for t in ts.tolist() if 0.5 < math.sqrt((1 - SCHED.alpha_bar(int(t))) / SCHED.alpha_bar(int(t))) <= 5]
    assert 0 < len(inside) < 10
    _, st = sample(den(), x_T=x, timesteps=ts, condition=LABELS, guidance=g, return_stats=True)
    assert st.nfe == 10 + len(inside)
    d = bind(den(), LABELS, g)
    for t in ts.tolist():
        w = 3.0 if t in inside else 1.0
        assert torch.allclose(d.call_net(x, t), guided_eps(x, int(t), LABELS, w), atol=1e-12)


def test_cfg_rescale_matches_the_conditional_std():
    x = x_T() * 3
    d0 = bind(den(), LABELS, Guidance(5.0, rescale=0.0))
    d1 = bind(den(), LABELS, Guidance(5.0, rescale=1.0))
    dc = bind(den(), LABELS, 1.0)
    for t in (900, 300):
        assert torch.allclose(d0.call_net(x, t), guided_eps(x, t, LABELS, 5.0), atol=1e-12)
        assert torch.allclose(d1.call_net(x, t).std(1), dc.call_net(x, t).std(1), atol=1e-10)


def test_apg_reduces_to_cfg_and_projects():
    x = x_T()
    t = 400
    cfg = bind(den(), LABELS, 4.0).call_net(x, t)
    full = bind(den(), LABELS, Guidance(4.0, rule="apg", options={"eta": 1.0})).call_net(x, t)
    assert torch.allclose(full, cfg, atol=1e-10)  # Δ∥ + Δ⊥ = Δ: plain CFG
    d = bind(den(), LABELS, Guidance(4.0, rule="apg"))
    out = d.call_net(x, t)
    x0 = d.x0_from_output(x, t, out)
    x0c = d.x0_from_output(x, t, bind(den(), LABELS, 1.0).call_net(x, t))
    assert torch.allclose(((x0 - x0c) * x0c).sum(1), torch.zeros(6, dtype=torch.float64), atol=1e-10)
    capped = bind(den(), LABELS, Guidance(4.0, rule="apg", options={"eta": 1.0, "threshold": 0.01}))
    x0cap = capped.x0_from_output(x, t, capped.call_net(x, t))
    assert float(((x0cap - x0c) / 3).norm(dim=1).max()) <= 0.01 + 1e-9  # (w − 1) Δ with ‖Δ‖ ≤ r


def test_apg_momentum_state_is_per_run():
    x = x_T()
    g = Guidance(4.0, rule="apg", options={"momentum": -0.5})
    a = sample(den(), x_T=x, steps=10, condition=LABELS, guidance=g)
    b = sample(den(), x_T=x, steps=10, condition=LABELS, guidance=g)
    assert torch.equal(a, b)
    bound = bind(den(), LABELS, g)
    assert torch.equal(sample(bound, x_T=x, steps=10), sample(bound, x_T=x, steps=10))


def test_cfg_pp_is_ddim_with_the_unconditional_renoising_direction():
    x = x_T()
    ts = SCHED.timesteps(2)
    t, s = int(ts[0]), int(ts[1])
    lam = 0.6
    out = sample(den(), x_T=x, timesteps=[*ts[:1].tolist(), s], condition=LABELS,
                 guidance=Guidance(lam, rule="cfg++"), return_trajectory=True)[1][1]
    eps_l, eps_u = guided_eps(x, t, LABELS, lam), guided_eps(x, t, LABELS, 0.0)
    a_t, a_s = SCHED.alpha_bar(t), SCHED.alpha_bar(s)
    x0 = (x - math.sqrt(1 - a_t) * eps_l) / math.sqrt(a_t)
    assert torch.allclose(out, math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps_u, atol=1e-12)
    # λ = 0 is unconditional DDIM
    assert torch.allclose(sample(den(), x_T=x, steps=10, condition=LABELS, guidance=Guidance(0.0, rule="cfg++")),
                          sample(den(), x_T=x, steps=10, condition=LABELS, guidance=0.0), atol=1e-12)
    with pytest.raises(UsageError, match="DDIM-type"):
        sample(den(), x_T=x, steps=10, sampler="dpmpp_2m", condition=LABELS, guidance=Guidance(0.5, rule="cfg++"))
    with pytest.raises(UsageError, match="cfg\\+\\+"):
        invert(den(), x, 10, condition=LABELS, guidance=Guidance(0.5, rule="cfg++"))


def test_mixed_class_batches_keep_per_sample_bits():
    full = sample(den(), (6, 2), steps=10, eta=1.0, seed=5, condition=LABELS, guidance=3.0, dtype=torch.float64)
    for i in range(6):
        one = sample(den(), (1, 2), steps=10, eta=1.0, seeds=[5 + i], condition=LABELS[i:i + 1], guidance=3.0,
                     dtype=torch.float64)
        assert torch.allclose(one[0], full[i], atol=1e-12)


def test_guided_inversion_naive_drifts_refined_holds():
    """Naive inversion drifts more as w grows; the refined (fixed-point) inversion of the guided step holds
    at 50 steps (at w = 7.5 the guided map is stiff and needs more iterations)."""
    x0, _ = MIX.sample(6, generator=torch.Generator().manual_seed(3), labels=LABELS)
    naive = []
    for w, refine, gain in ((1.0, 6, 1e4), (3.0, 6, 1e4), (7.5, 12, 100)):
        errs = {}
        for k in (0, refine):
            z = invert(den(), x0, 50, refine=k, condition=LABELS, guidance=w)
            errs[k] = float((sample(den(), x_T=z, steps=50, condition=LABELS, guidance=w) - x0).pow(2).mean())
        naive.append(errs[0])
        assert errs[refine] < errs[0] / gain, (w, errs)
    assert naive[0] < naive[1] < naive[2]


def test_swap_and_sdedit():
    from ddim.ops.editing import sdedit, swap_condition

    x0, _ = MIX.sample(3, generator=torch.Generator().manual_seed(4), labels=torch.tensor([0, 0, 0]))
    r = swap_condition(den(), x0, 0, 1, steps=20, guidance=3.0, inversion="negative")
    assert float((r.reconstruction - x0).abs().max()) < 1e-3
    # class 1 sits to the right (x > 0) of class 0
    assert bool((r.edited[:, 0] > x0[:, 0]).all())
    for mode in ("naive", "refined"):
        assert swap_condition(den(), x0, 0, 1, steps=20, guidance=3.0, inversion=mode).edited.shape == x0.shape
    a = sdedit(den(), x0, 0.5, condition=1, guidance=3.0, steps=20)
    b = sdedit(den(), x0[1:2], 0.5, condition=1, guidance=3.0, steps=20, seeds=[1])
    assert torch.allclose(a[1], b[0], atol=1e-12)
    with pytest.raises(UsageError, match="strength"):
        sdedit(den(), x0, 0.0)


def test_likelihood_and_interpolation_take_a_condition():
    from ddim.ops.latent import interpolate
    from ddim.ops.likelihood import log_likelihood

    x0, _ = MIX.sample(2, generator=torch.Generator().manual_seed(5), labels=torch.tensor([2, 2]))
    ll_c = log_likelihood(den(), x0, condition=2)
    ll_u = log_likelihood(den(), x0)
    true_c = MIX.component(2).log_prob(x0, SCHED.alpha_bar(0))
    assert torch.allclose(ll_c, true_c, atol=5e-3)
    assert bool((ll_c > ll_u).all())  # class 2's own density is higher than the marginal there
    path = interpolate(den(), x0[:1], x0[1:], 5, steps=20, condition=2, guidance=2.0)
    assert path.shape == (5, 2)


@pytest.mark.parametrize("call,match", [
    (lambda: sample(den(), (2, 2), condition=3), "out of range"),
    (lambda: sample(den(), (2, 2), condition=[-1, 0]), "out of range"),
    (lambda: sample(den(), (2, 2), condition=0.5), "integers"),
    (lambda: sample(Denoiser(MIX.marginal.eps_model(SCHED), SCHED), (2, 2), condition=1), "unconditional"),
    (lambda: sample(den(), (2, 2), condition=1, guidance=-1.0), ">= 0"),
    (lambda: sample(den(), (2, 2), condition=1, guidance=float("nan")), "finite"),
    (lambda: sample(den(), (2, 2), guidance=3.0), "needs a condition"),
    (lambda: sample(den(), (3, 2), condition=[0, 1]), "batch"),
    (lambda: sample(Denoiser(MIX.eps_model(SCHED), SCHED, conditioning=ClassLabels(3, None)), (2, 2), condition=1,
                    guidance=3.0), "unconditional branch"),
    (lambda: Guidance(2.0, rule="pag"), "unknown guidance rule"),
    (lambda: Guidance(2.0, interval=(2.0, 1.0)), "interval"),
])
def test_bad_conditions_are_one_line_errors(call, match):
    with pytest.raises(UsageError, match=match):
        call()


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    from ddim.training.config import TrainConfig
    from ddim.training.train import train

    out = tmp_path_factory.mktemp("cond") / "run"
    return train(TrainConfig(data="digits", conditional=True, steps=20, batch_size=16, checkpoint_every=10), out,
                 progress=False, log=lambda *a: None)


def test_conditional_run_records_its_classes_and_exports_them(cond_run):
    from ddim.io.loader import load_model

    for spec in (cond_run, cond_run / "diffusers"):
        d = load_model(spec).denoiser
        assert d.conditioning == ClassLabels(10, null=10)
    x = sample(load_model(cond_run).denoiser, (3, 1, 8, 8), steps=3, condition=[1, 2, 3], guidance=2.0)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def test_cli_class_guidance_sharded_equals_plain(cond_run, tmp_path):
    import numpy as np

    from ddim.app.cli import main

    common = ["sample", "--model", str(cond_run), "--class", "7,1", "--guidance", "3", "--steps", "4", "-n", "5"]
    assert main([*common, "--out", str(tmp_path / "a.npy")]) == 0
    assert main([*common, "--batch", "2", "--out", str(tmp_path / "b.npy")]) == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (5, 1, 8, 8)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # batch size changes conv numerics a little
    assert (tmp_path / "a.png").is_file()


def test_cli_edit_to_class_and_sdedit(cond_run, tmp_path):
    from ddim.app.cli import main

    assert main(["edit", "--model", str(cond_run), "--index", "5", "6", "--to-class", "8", "--strength", "0.5",
                 "--steps", "4", "--guidance", "2", "--out", str(tmp_path / "e.png")]) == 0
    assert (tmp_path / "e.png").is_file()
    assert main(["invert", "--model", str(cond_run), "--n", "2", "--steps", "4", "--guidance", "2",
                 "--out", str(tmp_path / "z.npy")]) == 0


@pytest.mark.parametrize("argv", [
    ["sample", "--class", "12"],
    ["sample", "--class", "x"],
    ["sample", "--class", "1", "--guidance", "-1"],
    ["sample", "--class", "1", "--guidance", "nan"],
    ["sample", "--class", "1", "--guidance", "3", "--guidance-rule", "cfg++", "--sampler", "heun"],
])
def test_cli_bad_conditions_exit_2(cond_run, tmp_path, argv, capsys):
    from ddim.app.cli import main

    out = tmp_path / "x.npy"
    assert main([*argv, "--model", str(cond_run), "--steps", "2", "-n", "2", "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert "error:" in err.splitlines()[-1] and "Traceback" not in err  # argparse may print usage above it


def test_cli_condition_on_unconditional_model_exits_2(tmp_path, capsys):
    from ddim.app.cli import main

    assert main(["sample", "--model", "digits", "--class", "3", "--out", str(tmp_path / "x.npy")]) == 2
    assert "unconditional" in capsys.readouterr().err
