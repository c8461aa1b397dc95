"""Training, checkpoints, resume after SIGKILL, diffusers layout, corrupt files, the demo."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddim import Denoiser, sample
from ddim.io import checkpoint as ck
from ddim.io.config import schedule_from_config
from ddim.io.runs import load_run
from ddim.models import mog3
from ddim.training.config import TrainConfig
from ddim.training.train import train


def _quiet(*a, **k):
    pass


def test_loss_falls_and_trained_model_beats_untrained(tmp_path):
    run = train(TrainConfig(data="mog3", steps=600, checkpoint_every=300, lr=2e-3), tmp_path / "r",
                progress=False, log=_quiet)
    losses = ck.read_json(ck.latest_checkpoint(run) / "state.json")["losses"]
    assert np.mean(losses[-100:]) < 0.6 * np.mean(losses[:20])
    net, cfg = load_run(run)
    sched = schedule_from_config(cfg["schedule"])
    mix = mog3()
    trained = sample(Denoiser(net, sched), (500, 2), steps=50)
    torch.manual_seed(0)
    from ddim.models.registry import build_model

    untrained = sample(Denoiser(build_model(cfg["model"]).eval(), sched), (500, 2), steps=50)
    ll_t = float(mix.log_prob(trained.double()).mean())
    ll_u = float(mix.log_prob(untrained.double()).mean())
    assert ll_t > ll_u + 5 and ll_t > -3.5
    assert (run / "loss.png").stat().st_size > 1000


def _train_cmd(out, *extra):
    return [sys.executable, "-m", "ddim", "train", "--data", "mog3", "--steps", "1500", "--batch-size", "1024",
            "--hidden", "256", "--checkpoint-every", "100", "--seed", "3", "--out", str(out), *extra]


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight), check=True, capture_output=True, env=env)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "latest").exists():
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = ck.read_json(ck.latest_checkpoint(killed) / "state.json")["step"]
    assert 0 < stopped_at < 1500, "the kill should land mid-run"
    r = subprocess.run([sys.executable, "-m", "ddim", "train", "--resume", str(killed)], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(ck.latest_checkpoint(straight) / name)
        b = load_file(ck.latest_checkpoint(killed) / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_corrupt_truncated_and_pickle_checkpoints(tmp_path):
    run = train(TrainConfig(data="mog3", steps=20, checkpoint_every=10), tmp_path / "r", progress=False, log=_quiet)
    latest = ck.latest_checkpoint(run)
    ema = latest / "ema.safetensors"
    data = ema.read_bytes()
    ema.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match=r"(damaged|not a valid|not a) safetensors"):
        load_run(run)
    ema.write_bytes(b"\x00" * 64)
    with pytest.raises(ck.CheckpointError):
        load_run(run)
    # a pickle that would run code if unpickled: refused without being executed
    marker = tmp_path / "pwned"
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ema.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ck.CheckpointError, match="never unpickles"):
        load_run(run)
    torch.save({"x": torch.zeros(2)}, ema)
    with pytest.raises(ck.CheckpointError, match="never unpickles"):
        load_run(run)
    assert not marker.exists()
    # wrong-shape tensor
    good = load_file(latest / "model.safetensors")
    k = next(iter(good))
    good[k] = torch.zeros(3, 3)
    ck.save_tensors(ema, good)
    with pytest.raises(ck.CheckpointError, match="shape"):
        load_run(run)


def test_incompatible_run_and_bad_data(tmp_path):
    run = train(TrainConfig(data="mog3", steps=10, checkpoint_every=10), tmp_path / "r", progress=False, log=_quiet)
    cfg = ck.read_json(run / "config.json")
    cfg["format_version"] = 99
    ck.atomic_write_json(run / "config.json", cfg)
    with pytest.raises(ck.CheckpointError, match="incompatible"):
        load_run(run)
    with pytest.raises(ck.CheckpointError, match="incompatible"):
        train(None, run, resume=True, progress=False, log=_quiet)
    with pytest.raises(ValueError, match="unknown dataset"):
        train(TrainConfig(data="imagenet"), tmp_path / "x", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        train(TrainConfig(data=str(empty)), tmp_path / "y", progress=False)
    from PIL import Image

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("L", (8, 8)).save(mixed / "a.png")
    Image.new("L", (16, 16)).save(mixed / "b.png")
    with pytest.raises(ValueError, match="mixed sizes"):
        train(TrainConfig(data=str(mixed)), tmp_path / "z", progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train(TrainConfig(data="mog3", steps=10), tmp_path / "r", progress=False)


def test_full_disk_mid_checkpoint_keeps_previous(tmp_path, monkeypatch):
    run = tmp_path / "r"
    train(TrainConfig(data="mog3", steps=20, checkpoint_every=10), run, progress=False, log=_quiet)
    before = ck.latest_checkpoint(run)
    real = ck.save_tensors
    calls = {"n": 0}

    def failing(path, tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(path, tensors, metadata)

    monkeypatch.setattr(ck, "save_tensors", failing)
    with pytest.raises(OSError, match="No space"):
        train(None, run, resume=True, steps=40, progress=False, log=_quiet)
    assert ck.latest_checkpoint(run) == before
    assert not list(run.glob(".*partial"))
    net, _ = load_run(run)  # the previous checkpoint still loads
    assert net is not None


def test_image_folder_and_npz_data(tmp_path):
    from PIL import Image

    from ddim.io.data import load

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (12, 10), color=(i * 80, 0, 255)).save(folder / f"{i}.png")
    x = load(str(folder), image_size=8)
    assert x.shape == (3, 3, 8, 8) and float(x.min()) >= -1 and float(x.max()) <= 1
    np.savez(tmp_path / "d.npz", x=np.random.randn(5, 2))
    assert load(str(tmp_path / "d.npz")).shape == (5, 2)
    np.save(tmp_path / "bad.npy", np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        load(str(tmp_path / "bad.npy"))


def test_config_file_and_cli_train(tmp_path, capsys):
    cfgf = tmp_path / "c.yaml"
    cfgf.write_text("data: moons\nsteps: 30\ncheckpoint_every: 15\n")
    from ddim.app.cli import main

    assert main(["train", "--config", str(cfgf), "--steps", "20", "--out", str(tmp_path / "run")]) == 0
    saved = ck.read_json(tmp_path / "run" / "config.json")
    assert saved["train"]["data"] == "moons" and saved["train"]["steps"] == 20
    assert main(["sample", "--model", str(tmp_path / "run"), "--n", "50", "--steps", "5",
                 "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "q")]) == 2
    assert "unknown config keys" in capsys.readouterr().err


def test_unet_run_exports_diffusers_layout_loadable_by_diffusers(tmp_path):
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, UNet2DModel

    run = train(TrainConfig(data="digits", steps=4, batch_size=8, checkpoint_every=4, n_data=64), tmp_path / "u",
                progress=False, log=_quiet)
    folder = run / "diffusers"
    unet = UNet2DModel.from_pretrained(folder / "unet")
    net, _ = load_run(run)
    for k, v in net.state_dict().items():
        assert torch.equal(v, unet.state_dict()[k])
    pipe = DDPMPipeline.from_pretrained(folder)
    img = pipe(batch_size=1, num_inference_steps=3, output_type="np").images
    assert img.shape == (1, 8, 8, 1)
    ddim_pipe = DDIMPipeline(unet=pipe.unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
    assert ddim_pipe(batch_size=1, num_inference_steps=3, output_type="np").images.shape == (1, 8, 8, 1)
    # and we load theirs back
    from ddim.io.loader import load_model

    den = load_model(folder).denoiser
    assert den.sample_shape == (1, 8, 8)
    x = sample(den, (2, 1, 8, 8), steps=3)
    assert bool(torch.isfinite(x).all())


def test_demo_quick_mode_writes_report(tmp_path):
    from ddim.app.demo import run_demo

    report = run_demo(tmp_path / "demo", quick=True, log=_quiet)
    text = report.read_text()
    assert "DDIM η=0, 50 steps" in text and "bit-identical = True" in text
    for name in ("forward_process.png", "samplers.png", "slerp.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 2000
    assert Path(tmp_path / "demo" / "run" / "loss.png").is_file()


@pytest.mark.parametrize("extra", [{"data": "digits", "conditional": True}, {"data": "moons", "objective": "flow",
                                                                              "prediction_type": "flow",
                                                                              "time_sampling": "logit_normal"},
                                   {"data": "digits", "objective": "meanflow", "prediction_type": "flow"}])
def test_conditional_and_flow_runs_resume_bit_identically(tmp_path, extra):
    """Label dropout and flow-matching draws come from the run's generator: 12 steps straight equal 6 + resume 6."""
    base = {"steps": 12, "batch_size": 16, "checkpoint_every": 6, **extra}
    straight = train(TrainConfig.from_dict(base), tmp_path / "a", progress=False, log=_quiet)
    half = train(TrainConfig.from_dict({**base, "steps": 6}), tmp_path / "b", progress=False, log=_quiet)
    train(None, half, resume=True, steps=12, progress=False, log=_quiet)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(ck.latest_checkpoint(straight) / name), load_file(ck.latest_checkpoint(half) / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
