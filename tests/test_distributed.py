"""Real torchrun processes (2 ranks, gloo, CPU): sharded sampling and DDP training."""

import os
import subprocess
import sys

import numpy as np
import pytest

from ddim.io import checkpoint as ck

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DDIM_DIST_TIMEOUT": "60"}


def _torchrun(*args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddim", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def _single(*args):
    return subprocess.run([sys.executable, "-m", "ddim", *args], capture_output=True, text=True, env=ENV, timeout=240)


def test_sharded_sampling_equals_single_process_and_resumes(tmp_path):
    common = ["sample", "--model", "mixture:mog3", "-n", "37", "--batch", "8", "--steps", "10", "--eta", "0.5",
              "--seed", "5", "--keep-shards"]
    r = _torchrun(*common, "--out", str(tmp_path / "dist.npy"))
    assert r.returncode == 0, r.stderr[-3000:]
    s = _single(*common, "--out", str(tmp_path / "single.npy"))
    assert s.returncode == 0, s.stderr[-3000:]
    a, b = np.load(tmp_path / "dist.npy"), np.load(tmp_path / "single.npy")
    assert a.shape == (37, 2) and np.array_equal(a, b)
    shards = sorted((tmp_path / "dist.shards").glob("shard-*.npy"))
    assert len(shards) == 5
    # interrupted: two shards lost → a rerun recomputes only those and gives the same output
    shards[1].unlink()
    shards[4].unlink()
    (tmp_path / "dist.npy").unlink()
    r = _torchrun(*common, "--out", str(tmp_path / "dist.npy"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert np.array_equal(np.load(tmp_path / "dist.npy"), b)


@pytest.mark.slow
def test_ddp_training_and_resume(tmp_path):
    run = tmp_path / "run"
    r = _torchrun("train", "--data", "mog3", "--steps", "40", "--checkpoint-every", "20", "--batch-size", "64",
                  "--out", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    latest = ck.latest_checkpoint(run)
    assert ck.read_json(latest / "state.json")["step"] == 40
    rng = ck.load_tensors(latest / "rng.safetensors")
    assert set(rng) == {"rank0", "rank1"}
    r = _torchrun("train", "--resume", str(run), "--steps", "60")
    assert r.returncode == 0, r.stderr[-3000:]
    assert ck.read_json(ck.latest_checkpoint(run) / "state.json")["step"] == 60
    # a single process may continue a 2-rank run: rank 0's RNG state is in the checkpoint
    s = _single("train", "--resume", str(run), "--steps", "80")
    assert s.returncode == 0
    bad = _torchrun("train", "--data", "mog3", "--steps", "10", "--batch-size", "63", "--out", str(tmp_path / "b"))
    assert bad.returncode != 0 and "not divisible" in bad.stderr


def test_a_dying_rank_ends_the_job_without_hanging(tmp_path):
    import signal
    import time

    out = tmp_path / "big.npy"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddim",
           "sample", "--model", "mixture:mog3", "-n", "20000", "--batch", "50", "--steps", "1000",
           "--sampler", "ddpm", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    shards = tmp_path / "big.shards"
    deadline = time.time() + 120
    while time.time() < deadline and not (shards.is_dir() and any(shards.glob("shard-*.npy"))):
        time.sleep(0.1)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    os.kill(int(children[1]), signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("torchrun hung after a rank died")
    assert proc.returncode != 0
    assert "SIGKILL" in err or "Signal 9" in err or "failed" in err.lower()
    assert not out.exists()
