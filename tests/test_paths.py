"""The one noise-level model: λ = log(α/σ) everywhere, grid and continuous paths, and the same samplers on
VP, flow-matching and variance-exploding paths converging to the same exact PF-ODE solution."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import ddim
from ddim import ContinuousPath, Denoiser, NoiseSchedule, sample
from ddim.models import mog3
from ddim.ops.reference import pf_ode_reference


def test_lambda_is_half_the_log_snr_and_inverts_on_the_grid():
    s = NoiseSchedule.linear(1000)
    for t in (0, 1, 17, 500, 999):
        a = s.alpha_bar(t)
        assert s.lam(t) == pytest.approx(0.5 * math.log(a / (1 - a)), rel=1e-12)
        assert s.t_at_lambda(s.lam(t)) == pytest.approx(t, abs=1e-9)
    t = s.t_at_lambda(0.5 * (s.lam(300) + s.lam(301)))  # between grid points: interpolated λ
    assert 300 < t < 301 and s.lam(t) == pytest.approx(0.5 * (s.lam(300) + s.lam(301)), rel=1e-9)


@pytest.mark.parametrize("kind", ["flow", "ve", "vp_cosine"])
def test_continuous_paths(kind):
    p = ContinuousPath(kind, t_max=0.9 if kind != "ve" else 50.0, t_min=0.0 if kind != "ve" else 0.01)
    for t in (0.05, 0.3, 0.7):
        a, s = p.alpha_sigma(t)
        if kind == "flow":
            assert a == pytest.approx(1 - s)
        elif kind == "ve":
            assert a == 1.0
        else:
            assert a * a + s * s == pytest.approx(1.0)
        assert p.t_at_lambda(p.lam(t)) == pytest.approx(t, rel=1e-12)
    for spacing in ("uniform", "logsnr", "karras"):
        ts = p.timesteps(12, spacing)
        assert ts.dtype == torch.float64 and ts[0] == p.t_max and bool((ts[1:] < ts[:-1]).all())
    assert p.final == (1.0, 0.0)


def test_bad_paths_and_lists_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown path kind"):
        ContinuousPath("edm2")
    with pytest.raises(ValueError, match="t_max"):
        ContinuousPath("flow", t_max=1.5)
    p = ContinuousPath("flow", t_max=0.9)
    with pytest.raises(ValueError, match="strictly decreasing"):
        p.validate_timesteps([0.5, 0.6])
    with pytest.raises(ValueError, match="lie in"):
        p.validate_timesteps([0.95, 0.5])


def _start(mix, path, t_top, n=64, seed=0):
    """x_T on `path` at t_top, its VP-equivalent level, and the exact PF-ODE solution down to the data."""
    a, s = path.alpha_sigma(t_top)
    abar = a * a / (a * a + s * s)  # same σ/α: the PF-ODE in x/α depends on the path only through σ/α
    x_vp = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ref = pf_ode_reference(mog3(), x_vp, abar)
    return x_vp / math.sqrt(abar) * a, ref


@pytest.mark.parametrize("kind,t_max,t_min", [("flow", 0.98, 0.0), ("ve", 20.0, 0.002), ("vp_cosine", 0.97, 0.002)])
def test_same_samplers_converge_on_every_path(kind, t_max, t_min):
    """DDIM (order 1) and DPM-Solver++(2M) (order 2) on flow / VE / cosine-VP paths reach the exact solution."""
    mix = mog3()
    path = ContinuousPath(kind, t_max=t_max, t_min=t_min)
    den = Denoiser(mix.eps_model(path), path, sample_shape=(2,))
    x_T, ref = _start(mix, path, t_max)
    for name, order in (("ddim", 1), ("dpmpp_2m", 2)):
        errs = [float((sample(den, x_T=x_T, timesteps=path.timesteps(n, "logsnr"), sampler=name) - ref)
                      .pow(2).mean().sqrt()) for n in (40, 80)]
        rate = math.log2(errs[0] / errs[1])
        assert rate > order - 0.4, (kind, name, errs)
    fine = sample(den, x_T=x_T, timesteps=path.timesteps(200, "logsnr"), sampler="unipc", order=3)
    assert float((fine - ref).abs().max()) < 2e-3


def test_inversion_runs_on_a_continuous_path():
    mix = mog3()
    path = ContinuousPath("flow", t_max=0.98)
    den = Denoiser(mix.eps_model(path), path, sample_shape=(2,))
    x0 = mix.sample(32, generator=torch.Generator().manual_seed(3))
    ts = path.timesteps(50, "logsnr")
    z = ddim.invert(den, x0, timesteps=ts, refine=6)
    rec = sample(den, x_T=z, timesteps=ts)
    assert float((rec - x0).abs().max()) < 1e-6


def test_sampler_options_are_declared():
    assert ddim.SAMPLERS["ddim"].options == {"eta": 0.0, "use_clipped_model_output": False}
    assert ddim.SAMPLERS["unipc"].options == {"order": 2, "variant": "bh2", "corrector": True}
    assert ddim.SAMPLERS["heun"].options == {}
    den = Denoiser(mog3().eps_model(NoiseSchedule.linear(1000)), NoiseSchedule.linear(1000))
    with pytest.raises(ValueError, match="sampler 'heun' takes no options; got eta"):
        sample(den, (2, 2), steps=5, sampler="heun", eta=0.5)
    with pytest.raises(ValueError, match="x_T contains NaN"):
        sample(den, x_T=torch.full((2, 2), float("nan")), steps=5)


LAYERS = ["core", "models", "ops", "io", "training", "bench", "api", "app"]


def test_imports_point_one_way():
    """A module may import its own layer and the layers before it, never a later one."""
    root = Path(ddim.__file__).parent
    bad = []
    for f in root.rglob("*.py"):
        rel = f.relative_to(root).parts
        if len(rel) < 2 or rel[0] not in LAYERS:
            continue
        mine = LAYERS.index(rel[0])
        pkg = ["ddim", *rel[:-1]]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                target = (pkg[: len(pkg) - node.level + 1] + (node.module or "").split("."))
                if len(target) > 1 and target[1] in LAYERS and LAYERS.index(target[1]) > mine:
                    bad.append(f"{'/'.join(rel)} imports {'.'.join(target)}")
    assert not bad, bad
