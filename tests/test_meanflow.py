"""MeanFlow (Geng et al. 2025): the training target is the JVP identity, runs resume bit-identically, and a
MeanFlow folder samples its n-step views through the request API and the CLI, other samplers at h = 0."""

import numpy as np
import pytest
import torch

from ddim.app.cli import main
from ddim.core.errors import UsageError
from ddim.core.sample import sample
from ddim.models.meanflow import IntervalNet, forward_ad_ready
from ddim.models.registry import build_model, model_spec
from ddim.training.config import TrainConfig
from ddim.training.train import meanflow_target, objective_loss


def _quiet(*a, **k):
    pass


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(model_spec("unet", (1, 8, 8), interval=True))
    forward_ad_ready(net)
    return net


def test_target_is_v_minus_interval_times_the_total_time_derivative():
    """u_tgt = v − (t − r)(v·∂_z u + ∂_t u) on the r < t rows (checked by central differences along the
    path's tangent), exactly v on the r = t rows."""
    cfg = TrainConfig.from_dict({"data": "digits", "objective": "meanflow", "prediction_type": "flow",
                                 "interval_fraction": 0.5})
    net, T = _net(), 1000.0
    g = torch.Generator().manual_seed(1)
    z, v = torch.randn(32, 1, 8, 8, generator=g), torch.randn(32, 1, 8, 8, generator=g)
    t0 = torch.rand(32, generator=g) * T
    z1, t_in, h_in, target = meanflow_target(cfg, net, z, t0, v, g)
    picked = h_in > 0
    assert 4 <= int(picked.sum()) <= 28 and bool((h_in <= t_in).all()) and bool((t_in >= t0).all())
    assert torch.equal(target[~picked], v[~picked]) and torch.equal(z1[~picked], z[~picked])
    # a picked row moved along its own path: z' − z = (t' − t) v
    assert torch.allclose(z1 - z, ((t_in - t0) / T).reshape(-1, 1, 1, 1) * v, atol=1e-5)
    z = z1
    eps = 2e-4  # the network sees t·1000: a step of 0.2 in its time input
    with torch.no_grad():
        def u(s):
            return net(z + s * v, t_in + s * T, class_labels=h_in + s * T).sample
        dudt = (u(eps) - u(-eps)) / (2 * eps)
    ref = v - (h_in / T).reshape(-1, 1, 1, 1) * dudt
    err = (target - ref)[picked].abs().max() / ref[picked].abs().max()
    assert float(err) < 1e-2


def test_adaptive_weight_and_its_plain_limit():
    cfg = TrainConfig.from_dict({"data": "digits", "objective": "meanflow", "prediction_type": "flow"})
    out, target = torch.zeros(4, 3), torch.tensor([[1.0] * 3, [2.0] * 3, [0.0] * 3, [3.0] * 3])
    loss, mse = objective_loss(cfg, out, target)
    err = target.square().mean(1)
    assert torch.allclose(loss, (err / (err + 1e-3)).mean()) and torch.allclose(mse, err.mean())
    plain = TrainConfig.from_dict({"data": "digits", "objective": "meanflow", "prediction_type": "flow",
                                   "adaptive_power": 0.0})
    assert torch.equal(*objective_loss(plain, out, target))


@pytest.mark.parametrize("bad,msg", [({"conditional": True}, "unconditional UNet"), ({"model": "mlp"}, "UNet"),
                                     ({"interval_fraction": 0.0}, "interval_fraction"),
                                     ({"prediction_type": "epsilon"}, "flow_prediction")])
def test_meanflow_config_refusals(bad, msg):
    with pytest.raises(UsageError, match=msg):
        TrainConfig.from_dict({"data": "digits", "objective": "meanflow", "prediction_type": "flow", **bad})
    with pytest.raises(UsageError, match="meanflow options"):
        TrainConfig.from_dict({"objective": "flow", "prediction_type": "flow", "adaptive_power": 0.5})


def test_meanflow_run_samples_its_views_by_every_front_end(tmp_path, capsys):
    """A short run: `--steps n` (1, 2, 4) is n uniform Euler steps of the view at h = 1/n with n network
    calls; one step is z_0 = ε − u(ε, 0, 1); another sampler runs at h = 0; run folder and diffusers export
    load alike."""
    from ddim.api import parse_request, run
    from ddim.io.loader import load_model

    assert main(["train", "--data", "digits", "--objective", "meanflow", "--steps", "8", "--batch-size", "16",
                 "--checkpoint-every", "8", "--out", str(tmp_path / "r")]) == 0
    folder = tmp_path / "r" / "diffusers"
    assert (folder / "meanflow.json").is_file()
    m = load_model(str(folder))
    assert m.format == "meanflow" and sorted(load_model(str(tmp_path / "r")).students) == list(range(1, 9))
    for n in (1, 2, 4):
        p = m.plan(n)
        assert (p.sampler, p.spacing) == ("ddim", "uniform") and p.denoiser.net.h_input == 1000.0 / n
        out = run(parse_request({"task": "sample", "model": str(folder), "steps": n, "n": 2, "seed": 0}))
        assert out.stats.nfe == n and np.isfinite(out.main).all()
    assert m.plan(4, "heun").denoiser.net.h_input == 0.0 and m.plan(20).denoiser.net.h_input == 0.0
    one = run(parse_request({"task": "sample", "model": str(folder), "steps": 1, "n": 2, "seed": 0})).main
    from ddim.core.noise import SeededNoise

    eps = SeededNoise([0, 1], (1, 8, 8)).initial()
    unet = m.denoiser.net.net
    with torch.no_grad():
        ref = eps - unet(eps, torch.full((2,), 1000.0), class_labels=torch.full((2,), 1000.0)).sample
    assert np.allclose(one, ref.numpy(), atol=1e-5)
    assert isinstance(m.students[3].net, IntervalNet)
    assert main(["sample", "--model", str(folder), "--steps", "2", "-n", "3", "--out", str(tmp_path / "s.npy")]) == 0
    assert "NFE 2" in capsys.readouterr().out
    assert main(["train", "--data", "digits", "--objective", "meanflow", "--conditional", "--out",
                 str(tmp_path / "c")]) == 2


def test_shipped_digits_meanflow_samples_at_1_2_4_nfe():
    """The built-in MeanFlow model: one network call per step, its interval view per step count."""
    from ddim.io.loader import load_model

    m = load_model("digits-meanflow")
    for k in (1, 2, 4):
        p = m.plan(k)
        assert p.steps == k and p.denoiser is not m.denoiser
        x = sample(p.denoiser, (4, 1, 8, 8), steps=k, sampler=p.sampler, spacing=p.spacing, seeds=range(4))
        assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
