"""Metrics, PF-ODE likelihood, the shipped classifier, and the bench suites' quick modes."""

import math

import numpy as np
import pytest
import torch

from ddim import Denoiser, NoiseSchedule, metrics
from ddim.models import mog3
from ddim.ops.likelihood import log_likelihood


def test_frechet_distance_zero_for_same_set_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2000, 8, generator=g, dtype=torch.float64)
    assert abs(metrics.frechet_distance_features(f, f)) < 1e-8
    d1 = metrics.frechet_distance_features(f, f + 0.5)
    d2 = metrics.frechet_distance_features(f, f + 1.0)
    assert d1 == pytest.approx(8 * 0.25, rel=1e-6) and d2 == pytest.approx(8 * 1.0, rel=1e-6) and d2 > d1
    # covariance term: N(0, I) vs N(0, 4I) in 1-D is (1 - 2)^2 = 1 per dimension
    mu = np.zeros(3)
    assert metrics.frechet_distance(mu, np.eye(3), mu, 4 * np.eye(3)) == pytest.approx(3.0)


def test_mmd_unbiased_near_zero_for_same_law_and_positive_for_different():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(800, 2, generator=g), torch.randn(800, 2, generator=g)
    same = metrics.mmd_rbf(a, b)
    diff = metrics.mmd_rbf(a, b + 1.0)
    assert abs(same) < 0.01 and diff > 20 * abs(same) and diff > 0.05


def test_sliced_wasserstein_known_1d_case():
    x = torch.linspace(0, 1, 1001)[:, None].double()
    assert metrics.sliced_wasserstein(x, x + 0.3, n_projections=16) == pytest.approx(0.3, rel=1e-6)
    # scaling: W2 between U(0,1) and U(0,2) in 1-D is sqrt(∫(u - 2u)^2 du) = 1/sqrt(3)
    assert metrics.sliced_wasserstein(x, 2 * x, n_projections=4) == pytest.approx(1 / math.sqrt(3), rel=1e-3)


def test_precision_recall_and_coverage():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(500, 2, generator=g)
    p, r = metrics.precision_recall(real, torch.randn(500, 2, generator=g))
    assert p > 0.9 and r > 0.9
    p2, r2 = metrics.precision_recall(real, 0.1 * torch.randn(500, 2, generator=g))  # mode collapse
    assert p2 > 0.9 and r2 < 0.5
    cov = metrics.class_coverage(torch.tensor([0] * 50 + [1] * 50), 2)
    assert cov["tv_to_uniform"] == pytest.approx(0.0)
    w = metrics.class_balanced_weights(torch.tensor([0, 0, 0, 1]), 2)
    assert torch.allclose(w, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0], dtype=torch.float64))


def test_feature_extractor_loading_with_a_tiny_torchscript_network(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    ext = metrics.load_feature_extractor(str(path))
    x = torch.randn(30, 1, 8, 8)
    f = metrics.extract(ext, x, batch=7)
    assert f.shape == (30, 5) and torch.allclose(f, net(x), atol=1e-6)
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="TorchScript"):
        metrics.load_feature_extractor(str(tmp_path / "bad.pt"))


def test_shipped_classifier_is_accurate():
    from ddim.bench.classifier import load_digits_classifier
    from ddim.io.data import digits

    x, y = digits()
    clf = load_digits_classifier()
    with torch.no_grad():
        acc = float((clf(x).argmax(1) == y).float().mean())
    assert acc > 0.95


def test_pf_ode_likelihood_matches_true_density():
    """Exact divergence in 2-D, float64: the PF-ODE log-likelihood equals log p_0 of the exact mixture up
    to the solver tolerance (1e-5 relative) and the prior's mismatch (with the exact prior: ≤ 1e-3 nats)."""
    mix = mog3()
    sched = NoiseSchedule.linear(1000)
    den = Denoiser(mix.eps_model(sched), sched, sample_shape=(2,))
    x = mix.sample(40, generator=torch.Generator().manual_seed(0))
    true = mix.log_prob(x, sched.alpha_bar(0))
    ll = log_likelihood(den, x, prior=lambda z: mix.log_prob(z, sched.alpha_bar(999)))
    assert float((ll - true).abs().max()) < 1e-3
    ll_gauss = log_likelihood(den, x)  # the usual N(0, I) prior: ᾱ_999 = 4e-5 makes it almost exact
    assert float((ll_gauss - true).abs().max()) < 1e-2
    bpd = log_likelihood(den, x, bits_per_dim=True, prior=lambda z: mix.log_prob(z, sched.alpha_bar(999)))
    assert torch.allclose(bpd, -ll / (2 * math.log(2)), atol=1e-3)
    hutch = log_likelihood(den, x, exact=False, probes=8, prior=lambda z: mix.log_prob(z, sched.alpha_bar(999)))
    assert abs(float(hutch.mean() - true.mean())) < 0.1  # unbiased: the mean is close, single values noisy


@pytest.mark.parametrize("suite", ["quality", "speed", "eta-variance", "reconstruction", "guidance", "flow",
                                   "fewstep"])
def test_bench_quick_modes_write_reports(tmp_path, suite):
    from ddim.bench.suites import run as run_suite

    report = run_suite(suite, tmp_path, quick=True)
    text = report.read_text()
    assert "Command:" in text and "Versions:" in text and "Machine:" in text
    assert list(tmp_path.glob("*.png")) or suite in ("speed", "reconstruction")
    if suite == "eta-variance":
        first = next(line for line in text.splitlines() if line.startswith("| 0 |"))
        assert first.split("|")[2].strip() == "0.000000" and first.split("|")[3].strip() == "0.000000"


def test_bench_overhead_cli_quick(tmp_path, capsys):
    from ddim.app.cli import main

    assert main(["bench", "overhead", "--quick", "--steps", "10", "--out", str(tmp_path)]) == 0
    assert "µs/step" in (tmp_path / "report.md").read_text()


def test_peak_memory_is_measured_in_a_fresh_process():
    from ddim.bench.memory import peak_sampling_mb

    assert peak_sampling_mb("digits", 64, 20) > 0
    # a kept trajectory holds steps+1 states; at 20 000 × 2 floats × 501 states (76 MB) that growth is far above
    # the ±10 MB noise of CPU peak-RSS between processes
    plain = peak_sampling_mb("mixture:mog3", 20000, 500)
    kept = peak_sampling_mb("mixture:mog3", 20000, 500, trajectory=True)
    assert plain > 0
    assert kept - plain > 0.8 * 501 * 20000 * 2 * 4 / 2**20
