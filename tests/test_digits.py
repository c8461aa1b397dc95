"""The shipped digits model: loads offline, samples digits, inverts and edits."""

import numpy as np
import pytest
import torch

from ddim import sample
from ddim.io.data import digits
from ddim.io.loader import load_model
from ddim.ops.inversion import invert, normality, reconstruct
from ddim.ops.latent import direction_from_examples, edit


@pytest.fixture(scope="module")
def model():
    return load_model("digits")


@pytest.fixture(scope="module")
def data():
    return digits()


def test_shipped_model_samples_look_like_digits(model, data):
    x, _ = data
    assert model.sample_shape == (1, 8, 8)
    with torch.no_grad():
        s = sample(model.denoiser, (128, 1, 8, 8), steps=10, seed=0)
    noise = torch.randn(128, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    # pixel statistics close to the data's (mean image, overall level and spread); noise is far off
    def stats(v):
        return float(v.mean()), float(v.std()), v.mean(0)

    m_s, sd_s, img_s = stats(s.clamp(-1, 1))
    m_x, sd_x, img_x = stats(x)
    assert abs(m_s - m_x) < 0.1 and abs(sd_s - sd_x) < 0.1
    assert float((img_s - img_x).abs().mean()) < 0.12
    assert float((noise.clamp(-1, 1).mean(0) - img_x).abs().mean()) > 0.3


def test_digits_round_trip_and_gaussian_encodings(model, data):
    x, _ = data
    x0 = x[:64]
    den = model.denoiser
    with torch.no_grad():
        rec = reconstruct(den, x0, 50, refine=3)
        z = invert(den, x0, 50, refine=3)
    mse = float((rec - x0).pow(2).mean())
    assert mse < 0.01 * float(x.var())
    st = normality(z)
    assert abs(st["mean"]) < 0.1 and abs(st["var"] - 1) < 0.2


def test_class_direction_edit(model, data):
    x, y = data
    den = model.denoiser
    with torch.no_grad():
        d = direction_from_examples(den, x[y == 0][:32], x[y == 1][:32], steps=20, refine=1)
        outs = edit(den, x[y == 1][:4], d, [0.0, 1.0], steps=20, refine=1)
    assert outs.shape == (2, 4, 1, 8, 8)
    # moving along "0 minus 1" makes a 1 look more like a 0 (closer to the class-0 mean image)
    m0 = x[y == 0].mean(0)
    assert float((outs[1] - m0).pow(2).mean()) < float((outs[0] - m0).pow(2).mean())


def test_cli_on_digits(tmp_path, capsys):
    from ddim.app.cli import main

    assert main(["sample", "--model", "digits", "--n", "16", "--steps", "5", "--out", str(tmp_path / "d.npy")]) == 0
    assert np.load(tmp_path / "d.npy").shape == (16, 1, 8, 8)
    assert main(["invert", "--n", "8", "--steps", "10", "--out", str(tmp_path / "z.npy")]) == 0
    assert np.load(tmp_path / "z.npy").shape == (8, 1, 8, 8) and (tmp_path / "z.png").is_file()
    assert main(["interpolate", "--seeds", "1", "2", "--n", "5", "--steps", "5", "--out", str(tmp_path / "i.png")]) == 0
    assert (tmp_path / "i.png").is_file() and (tmp_path / "i.gif").stat().st_size > 500
    assert main(["interpolate", "--index", "0", "5", "--n", "4", "--steps", "5", "--out", str(tmp_path / "j.png")]) == 0
    assert main(["edit", "--index", "1", "--direction", "class:0-1", "--examples", "8", "--steps", "5",
                 "--scales", "0,1", "--out", str(tmp_path / "e.png")]) == 0
    assert (tmp_path / "e.png").is_file()
    out = capsys.readouterr().out
    assert "wrote" in out
    assert main(["invert", "--eta", "0.5", "--n", "2", "--out", str(tmp_path / "q.npy")]) == 2
    assert "eta" in capsys.readouterr().err
