"""Bad input as a careless user or an attacker would give it: one line, exit 2, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ddim.app.cli import main
from ddim.io import checkpoint as ck


def _run(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_every_valid_safetensors_header_length_loads(tmp_path):
    """A safetensors file starts with its header length (little-endian): a low byte of 0x80 is no pickle."""
    lows = set()
    for pad in range(0, 300):
        path = tmp_path / f"w{pad}.safetensors"
        save_file({"w": torch.arange(pad % 7 + 1, dtype=torch.float32)}, str(path), metadata={"pad": "x" * pad})
        lows.add(path.read_bytes()[0])
        out = ck.load_tensors(path)
        assert torch.equal(out["w"], torch.arange(pad % 7 + 1, dtype=torch.float32))
    assert 0x80 in lows


def test_stale_shards_are_not_reused_and_damaged_shards_recover(tmp_path, capsys):
    out = str(tmp_path / "s.npy")
    base = ["sample", "--model", "mixture:mog3", "-n", "40", "--batch", "20", "--out", out, "--keep-shards"]
    assert main([*base, "--steps", "5"]) == 0
    first = np.load(out)
    with pytest.warns(UserWarning, match="different run"):
        assert main([*base, "--steps", "20", "--sampler", "dpmpp_2m"]) == 0
    second = np.load(out)
    assert "NFE 20 per batch" in capsys.readouterr().out
    assert not np.array_equal(first, second)
    shard = sorted((tmp_path / "s.shards").glob("shard-*.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:40])  # truncated
    assert main([*base, "--steps", "20", "--sampler", "dpmpp_2m"]) == 0
    assert np.array_equal(np.load(out), second)


@pytest.mark.parametrize("text,needle", [
    ("steps: abc\n", "steps must be int"),
    ("frobnicate: 3\n", "unknown config keys"),
    ("steps: !!python/object/apply:os.system ['touch /tmp/ddim_pwned']\n", "not plain YAML"),
    ("lr: -1\n", "lr must be a positive number"),
])
def test_bad_config_files(tmp_path, capsys, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    code, err = _run(["train", "--config", str(cfg), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "run").exists()
    assert not Path("/tmp/ddim_pwned").exists()


def _tiny_run(tmp_path):
    from ddim.training.config import TrainConfig
    from ddim.training.train import train

    return train(TrainConfig(data="mog3", steps=4, checkpoint_every=4, hidden=8, depth=1), tmp_path / "r",
                 progress=False, log=lambda *a: None)


@pytest.mark.parametrize("key,value", [("model", "mlp"), ("sample_shape", 3), ("prediction_type", 7),
                                       ("schedule", [1, 2])])
def test_bad_run_config_types(tmp_path, capsys, key, value):
    run = _tiny_run(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg[key] = value
    (run / "config.json").write_text(json.dumps(cfg))
    code, err = _run(["sample", "--model", str(run), "-n", "2", "--steps", "2", "--out", str(tmp_path / "x.npy")],
                     capsys)
    assert code == 2 and len(err) == 1 and (key in err[0] or "model spec" in err[0]), err


def test_bad_model_config_value(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["config"]["hidden"] = "wide"
    (run / "config.json").write_text(json.dumps(cfg))
    code, err = _run(["sample", "--model", str(run), "-n", "2", "--out", str(tmp_path / "x.npy")], capsys)
    assert code == 2 and len(err) == 1 and "invalid config" in err[0], err


def test_scheduler_config_holding_a_list(tmp_path, capsys):
    from ddim.io.config import schedule_from_config

    (tmp_path / "scheduler_config.json").write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="does not hold a JSON object"):
        schedule_from_config(tmp_path)
    with pytest.raises(ValueError, match="beta_end must be float"):
        schedule_from_config({"beta_end": "high"})


@pytest.mark.parametrize("args,needle", [
    (["sample", "--device", "nosuchdevice"], "device"),
    (["sample", "--device", "cuda:7"], "device"),
    (["likelihood", "--no-exact", "--probes", "0"], "--probes"),
    (["likelihood", "--probes", "-3"], "--probes"),
    (["train", "--hidden", "0", "--out", "x"], "--hidden"),
    (["train", "--hidden", "-4", "--out", "x"], "--hidden"),
    (["sample", "--eta", "nan"], "--eta"),
    (["edit", "--direction", "class:3-12"], "0..9"),
    (["edit", "--scales", "a,b"], "--scales"),
])
def test_bad_flags_exit_2(tmp_path, capsys, args, needle):
    code, err = _run([*args, "--out", str(tmp_path / "o.npy")] if "--out" not in args else args, capsys)
    assert code == 2 and needle in err[-1], err


def test_nan_start_is_refused():
    from ddim import Denoiser, NoiseSchedule, sample

    den = Denoiser(lambda x, t: torch.zeros_like(x), NoiseSchedule.linear(100))
    with pytest.raises(ValueError, match="NaN"):
        sample(den, x_T=torch.tensor([[float("nan"), 0.0]]), steps=5)
