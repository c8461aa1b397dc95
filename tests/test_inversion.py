"""Inversion, reconstruction, slerp, interpolation and editing."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import exact_denoiser, random_mlp
from ddim import Denoiser, NoiseSchedule
from ddim.ops.inversion import invert, normality, reconstruct, reconstruction_table
from ddim.ops.latent import edit, interpolate, lerp, path, slerp


@pytest.fixture(scope="module")
def mix_setup():
    from ddim.models import mog3

    mix = mog3()
    den = exact_denoiser(mix)
    x0 = mix.sample(400, generator=torch.Generator().manual_seed(0))
    return mix, den, x0


def _rel(a, b):
    return float(((a - b).norm(dim=1) / b.norm(dim=1)).max())


def test_round_trip_error_falls_with_steps(mix_setup):
    _, den, x0 = mix_setup
    errs = [float((reconstruct(den, x0, s) - x0).pow(2).mean()) for s in (10, 20, 50, 100)]
    assert all(b < a for a, b in itertools.pairwise(errs))


def test_refined_inversion_is_exact_and_far_tighter(mix_setup):
    _, den, x0 = mix_setup
    naive = reconstruct(den, x0, 50)
    refined = reconstruct(den, x0, 50, refine=6)
    assert _rel(refined, x0) <= 1e-6
    assert float((refined - x0).pow(2).mean()) * 10 <= float((naive - x0).pow(2).mean())
    _, stats = invert(den, x0, 50, refine=6, return_stats=True)
    assert stats.nfe == 50 * 7


def test_encodings_of_true_data_are_near_gaussian(mix_setup):
    _, den, x0 = mix_setup
    st_ = normality(invert(den, x0, 200, refine=3))
    assert abs(st_["mean"]) < 0.1 and abs(st_["var"] - 1) < 0.1 and st_["ks"] < 0.06


def test_reconstruction_table_rows(mix_setup):
    _, den, x0 = mix_setup
    rows = reconstruction_table(den, x0[:100], (10, 50), refine=3)
    assert [r.steps for r in rows] == [10, 50]
    assert rows[1].mse_refined < rows[1].mse_naive and rows[1].nfe_refined == 50 * 4 + 50


def test_inversion_bad_input(mix_setup):
    _, den, x0 = mix_setup
    with pytest.raises(ValueError, match="eta"):
        invert(den, x0, 10, eta=0.5)
    with pytest.raises(ValueError, match="between 1 and T"):
        invert(den, x0, 0)
    with pytest.raises(ValueError, match="takes"):
        invert(den, torch.randn(3, 5, dtype=torch.float64), 10)
    clipped = Denoiser(den.net, den.path, clip_sample=1.0)
    with pytest.raises(ValueError, match="clipping"):
        invert(clipped, x0, 10)


# ---------------------------------------------------------------------------------------------- slerp
def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 10, generator=g, dtype=torch.float64)
    b = torch.randn(4, 10, generator=g, dtype=torch.float64)
    b = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    for w in (0.1, 0.5, 0.77):
        m = slerp(a, b, w)
        assert torch.allclose(m.norm(dim=1), a.norm(dim=1), rtol=1e-12)
        # on the great circle: angle to a is w·θ
        cos = lambda u, v: (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1))  # noqa: E731
        theta = torch.arccos(cos(a, b))
        assert torch.allclose(torch.arccos(cos(a, m).clamp(-1, 1)), w * theta, atol=1e-9)
    # lerp shrinks the norm in the middle, slerp does not
    assert bool((lerp(a, b, 0.5).norm(dim=1) < a.norm(dim=1)).all())


@settings(max_examples=30, deadline=None)
@given(w=st.floats(0, 1), scale=st.floats(0.1, 10))
def test_slerp_parallel_and_antiparallel(w, scale):
    a = torch.tensor([[1.0, 2.0, -0.5]], dtype=torch.float64)
    par = slerp(a, a * scale, w)
    assert torch.allclose(par, a * ((1 - w) + w * scale), atol=1e-9)
    anti = slerp(a, -a, w)
    assert bool(torch.isfinite(anti).all())
    assert torch.allclose(anti.norm(dim=1), a.norm(dim=1), rtol=1e-9)
    if w in (0.0, 1.0):
        assert torch.allclose(anti, a if w == 0 else -a)


def test_slerp_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        slerp(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        interpolate(Denoiser(random_mlp(4), NoiseSchedule.linear(1000)), torch.zeros(1, 4), torch.zeros(1, 3), 5)


def test_interpolation_deterministic_and_endpoints(mix_setup):
    _, den, x0 = mix_setup
    a, b = x0[:1], x0[1:2]
    p1 = interpolate(den, a, b, 7, encode=True, steps=50, refine=6)
    p2 = interpolate(den, a, b, 7, encode=True, steps=50, refine=6)
    assert torch.equal(p1, p2) and p1.shape == (7, 2)
    assert _rel(p1[:1], a) < 1e-6 and _rel(p1[-1:], b) < 1e-6
    z = path(torch.randn(1, 2), torch.randn(1, 2), 5)
    assert z.shape == (5, 2)


def test_edit_scale_zero_is_reconstruction(mix_setup):
    _, den, x0 = mix_setup
    outs = edit(den, x0[:5], torch.tensor([0.3, -0.2], dtype=torch.float64), [0.0, 1.0], steps=50, refine=6)
    assert outs.shape == (2, 5, 2)
    assert _rel(outs[0], x0[:5]) < 1e-6
    assert float((outs[1] - outs[0]).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="direction"):
        edit(den, x0[:5], torch.zeros(3), [1.0])


def test_sample_of_inversion_uses_same_top_timestep(mix_setup):
    _, den, x0 = mix_setup
    seen = []
    invert(den, x0[:3], 20, callback=lambda d: seen.append(d.t))
    assert seen == sorted(seen) and seen[-1] == int(den.path.timesteps(20)[0])
