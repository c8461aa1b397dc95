"""Reflow and its one-step distillation (time_sampling 'endpoint': t = 1 only, InstaFlow's L2 recipe)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddim.app.cli import main
from ddim.core.errors import UsageError
from ddim.training.config import TrainConfig
from ddim.training.train import noised_batch

FLOW = {"objective": "flow_matching", "prediction_type": "flow_prediction"}


@pytest.mark.parametrize("extra, msg", [
    ({}, "needs pairs"),
    ({"objective": "meanflow", "pairs": "p.npz"}, "objective flow_matching"),
])
def test_endpoint_time_sampling_refuses_what_it_cannot_distil(extra, msg):
    with pytest.raises(UsageError, match=msg):
        TrainConfig.from_dict({**FLOW, "time_sampling": "endpoint", **extra})


def test_endpoint_batch_is_the_noise_with_its_straight_line_target():
    """At t = 1 the input is the coupled noise z itself, the network sees t·T = T, and the target ε − x0 makes
    one Euler step z − u land on the coupled sample."""
    cfg = TrainConfig.from_dict({**FLOW, "time_sampling": "endpoint", "pairs": "p.npz"})
    g = torch.Generator().manual_seed(0)
    x0, z = torch.randn(5, 1, 4, 4, generator=g), torch.randn(5, 1, 4, 4, generator=g)
    x_t, t, target = noised_batch(cfg, x0, torch.Generator().manual_seed(1), None, z)
    assert torch.equal(x_t, z) and torch.equal(t, torch.full((5,), 1000.0))
    assert torch.equal(target, z - x0) and torch.allclose(z - target, x0, atol=1e-6)


def _pairs_mse(model: str, pairs: dict[str, np.ndarray]) -> float:
    """The one-step (t = 1) prediction's MSE against the coupled samples."""
    from ddim.core.sample import sample
    from ddim.io.loader import load_model

    den = load_model(model).denoiser
    with torch.no_grad():
        x = sample(den, x_T=torch.from_numpy(pairs["noise"]), steps=1, sampler="ddim", spacing="uniform")
    return float((x - torch.from_numpy(pairs["x0"])).square().mean())


def test_reflow_cli_distils_the_coupling_into_one_step(tmp_path, capsys):
    """`ddim reflow --init-from digits-rectified --time-sampling endpoint`: pairs from digits-flow's ODE, the
    rectified network fine-tuned at t = 1 only; its one-step error on the pairs falls, the folder loads."""
    out = tmp_path / "onestep"
    argv = ["reflow", "--model", "digits-flow", "--init-from", "digits-rectified", "--time-sampling", "endpoint",
            "--pairs", "32", "--pair-steps", "4", "--steps", "40", "--batch-size", "32", "--lr", "5e-4",
            "--warmup", "0", "--ema-decay", "0", "--checkpoint-every", "40", "--out", str(out)]
    assert main(argv) == 0
    assert "diffusers pipeline folder" in capsys.readouterr().out
    with np.load(out / "pairs.npz", allow_pickle=False) as z:
        pairs = {k: z[k] for k in ("noise", "x0")}
    cfg = (out / "run" / "config.json").read_text()
    assert '"time_sampling": "endpoint"' in cfg and "digits-rectified" in cfg
    assert _pairs_mse(str(out / "run" / "diffusers"), pairs) < 0.8 * _pairs_mse("digits-rectified", pairs)


def test_reflow_init_from_a_non_flow_model_is_a_one_line_error(tmp_path, capsys):
    argv = ["reflow", "--model", "digits-flow", "--init-from", "digits", "--pairs", "4", "--steps", "1",
            "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "init_from digits predicts epsilon" in err


def test_pseudo_huber_loss_is_ict_formula_and_refused_where_it_does_not_apply():
    """√(‖Δ‖² + c²) − c per sample, c = 0.00054·√d, re-derived in float64; the plain MSE is what is logged."""
    from ddim.training.train import objective_loss

    cfg = TrainConfig.from_dict({**FLOW, "loss": "pseudo_huber"})
    g = torch.Generator().manual_seed(0)
    out, target = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 1, 8, 8, generator=g)
    loss, mse = objective_loss(cfg, out, target)
    d = (out.double() - target.double()).flatten(1)
    c = 0.00054 * 8.0
    assert float(loss) == pytest.approx(float(((d.square().sum(1) + c * c).sqrt() - c).mean()), rel=1e-6)
    assert float(mse) == pytest.approx(float(d.square().mean()), rel=1e-6)
    with pytest.raises(UsageError, match="unknown loss"):
        TrainConfig.from_dict({**FLOW, "loss": "l1"})
    with pytest.raises(UsageError, match="adaptive"):
        TrainConfig.from_dict({"objective": "meanflow", "prediction_type": "flow_prediction", "loss": "pseudo_huber"})


def test_shipped_one_step_model_beats_its_init_at_one_step_and_samples_by_every_budget(tmp_path):
    """digits-rectified-1step: one network call (request API, so CLI and server); other step counts are refused
    (its network is trained at t = 1 only: 4 steps score FD 178); on fresh digits-flow ODE pairs (seeds it was
    not trained on) its one step lands nearer than digits-rectified's."""
    from ddim.api import parse_request, run
    from ddim.io.loader import load_model
    from ddim.training.reflow import make_pairs

    m = load_model("digits-rectified-1step")
    p = m.plan(1)
    assert (p.sampler, p.spacing, p.steps) == ("ddim", "uniform", 1)
    out = run(parse_request({"task": "sample", "model": "digits-rectified-1step", "steps": 1, "n": 2}))
    assert np.isfinite(out.main).all() and out.stats.nfe == 1
    for req in ({"steps": 4}, {"task": "invert", "steps": 10}, {"timesteps": [1.0, 0.5]}):
        with pytest.raises(UsageError, match="trained for 1 step"):
            run(parse_request({"task": "sample", "model": "digits-rectified-1step", "n": 2, **req}))
    z, x0 = make_pairs(load_model("digits-flow").denoiser, 64, steps=8, sampler="unipc", seed=10**7)
    fresh = {"noise": z.numpy(), "x0": x0.numpy()}
    assert _pairs_mse("digits-rectified-1step", fresh) < 0.9 * _pairs_mse("digits-rectified", fresh)
    assert main(["sample", "--model", "digits-rectified-1step", "--steps", "1", "-n", "4",
                 "--out", str(tmp_path / "x.npy")]) == 0
    assert np.load(tmp_path / "x.npy").shape == (4, 1, 8, 8)


def test_every_built_in_model_is_small_documented_and_loads():
    from ddim.io.loader import BUILTIN_MODELS, builtin_path, load_model

    for name in BUILTIN_MODELS:
        folder = builtin_path(name)
        assert (folder / "TRAINING.md").is_file(), name
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert size < 10 * 2**20, (name, size)
        assert load_model(name).denoiser.sample_shape == (1, 8, 8)
