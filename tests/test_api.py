"""The request layer: requests from flags and JSON give the same bits, batch-invariant mode is bit-exact,
loaded models are shared safely between threads, and bad requests name their field."""

import json
import threading

import numpy as np
import pytest
import torch

from ddim.api import ModelStore, parse_request, request_schema, run
from ddim.app.cli import main
from ddim.core.errors import UsageError
from ddim.core.sample import BATCH_INVARIANT_CHUNK, sample
from ddim.io.loader import load_model


def _req(**kw):
    return parse_request({"task": "sample", "model": "digits", "steps": 6, "batch_invariant": True, **kw})


def _alone_vs_batched(big, idx, **kw):
    """Sample idx's row inside a batch of `big`, and the same sample alone (its seed), both batch-invariant."""
    store = ModelStore()
    batch = run(_req(n=big, seed=0, **kw), store).main
    seeds = [idx]
    alone_kw = dict(kw)
    if "classes" in kw:  # the alone run gets the class sample idx had in the batch
        alone_kw["classes"] = [kw["classes"][idx % len(kw["classes"])]]
    alone = run(_req(seeds=seeds, **alone_kw), store).main
    return batch[idx], alone[0]


def test_alone_equals_inside_a_batch_of_64_bit_for_bit():
    row, alone = _alone_vs_batched(64, 37)
    assert np.array_equal(row, alone)


def test_plain_mode_is_not_batch_invariant_here_but_the_mode_is():
    den = load_model("digits").denoiser
    plain = [sample(den, (n, 1, 8, 8), steps=20, seed=0)[:4] for n in (4, 16)]
    inv = [sample(den, (n, 1, 8, 8), steps=20, seed=0, batch_invariant=True)[:4] for n in (4, 16)]
    assert torch.equal(inv[0], inv[1])
    # the reason the mode exists: without it the same seeds in another batch size differ in their last bits
    # (on this machine's BLAS; if some build is invariant by itself, the mode still is)
    assert not torch.equal(plain[0], plain[1]) or torch.equal(plain[0], inv[0])


@pytest.mark.parametrize("kw", [
    {"model": "digits-cond", "classes": [0, 3, 7, 9, 1]},  # mixed classes
    {"model": "digits-cond", "classes": [2, 5], "guidance": {"scale": 3.0}},  # CFG's doubled batch
    {"model": "digits-cond", "classes": [4], "guidance": {"scale": 2.0, "rule": "apg",
                                                          "options": {"momentum": -0.5}}},
    {"sampler": "dpmpp_2m_sde"},  # fresh noise per step from per-sample seeds
    {"sampler": "ddim", "options": {"eta": 1.0}},
])
def test_batch_invariance_bit_for_bit(kw):
    row, alone = _alone_vs_batched(2 * BATCH_INVARIANT_CHUNK + 5, BATCH_INVARIANT_CHUNK + 3, **kw)
    assert np.array_equal(row, alone)


def test_threads_share_models_and_get_what_each_gets_alone():
    """Two threads on digits-distilled at 1 and 4 steps and on digits-cond at two guidance scales, at once."""
    store = ModelStore()
    jobs = [_req(model="digits-distilled", steps=1, n=8), _req(model="digits-distilled", steps=4, n=8),
            _req(model="digits-cond", classes=[3], guidance={"scale": 1.5}, n=8),
            _req(model="digits-cond", classes=[3], guidance={"scale": 4.0}, n=8)]
    alone = [run(j, ModelStore()).main for j in jobs]
    got: dict[int, np.ndarray] = {}

    def worker(ks):
        for _ in range(3):
            for k in ks:
                got.setdefault(k, run(jobs[k], store).main)
                assert np.array_equal(run(jobs[k], store).main, alone[k])

    threads = [threading.Thread(target=worker, args=(ks,)) for ks in ((0, 2), (1, 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(got[k], alone[k]) for k in range(4))
    assert not np.array_equal(alone[0], alone[1]) and not np.array_equal(alone[2], alone[3])


README_COMMANDS = [
    ["sample", "--model", "digits", "--steps", "5", "-n", "6"],
    ["sample", "--model", "digits-cond", "--class", "7", "--guidance", "3", "--steps", "4", "-n", "6"],
    ["sample", "--model", "digits-cond", "--class", "0,1,2", "--guidance", "5", "--guidance-rule", "apg", "--steps",
     "3", "-n", "6"],
    ["sample", "--model", "digits-flow", "--steps", "5", "-n", "4"],
    ["sample", "--model", "digits-flow", "--steps", "4", "--shift", "3", "-n", "4"],
    ["sample", "--model", "digits-distilled", "--steps", "4", "-n", "4"],
    ["sample", "--model", "mixture:mog3", "-n", "50", "--sampler", "unipc", "--steps", "6", "--spacing", "logsnr",
     "--option", "order=3"],
    ["edit", "--model", "digits-cond", "--index", "5", "--to-class", "8", "--strength", "0.3,0.6", "--guidance", "3",
     "--steps", "5"],
    ["invert", "--model", "digits", "--n", "3", "--steps", "6", "--refine", "1"],
    ["interpolate", "--model", "digits", "--seeds", "1", "2", "--n", "4", "--steps", "5"],
    ["edit", "--model", "digits", "--index", "1", "--direction", "class:0-1", "--scales=-1,0,1", "--steps", "4",
     "--examples", "4"],
    ["likelihood", "--model", "mixture:mog3", "--n", "5"],
]


@pytest.mark.parametrize("argv", README_COMMANDS, ids=lambda a: " ".join(a[:3]))
def test_readme_commands_as_flags_and_as_request_json_give_identical_bits(argv, tmp_path, capsys):
    ext = ".png" if argv[0] in ("edit", "interpolate") else ".npy"
    a, b = tmp_path / f"a{ext}", tmp_path / f"b{ext}"
    assert main([*argv, "--out", str(a)]) == 0
    capsys.readouterr()
    assert main([*argv, "--print-request"]) == 0
    text = capsys.readouterr().out
    req = tmp_path / "r.json"
    req.write_text(text)
    assert json.loads(text)["task"] == argv[0]
    assert main(["run", str(req), "--out", str(b)]) == 0
    assert np.array_equal(np.load(a.with_suffix(".npy")), np.load(b.with_suffix(".npy")))


@pytest.mark.parametrize("body, field", [
    ({"sampler": "unipc", "options": {"gamma": 0.3}}, "'gamma' is an option of tcd"),
    ({"sampler": "unipc", "options": {"order": "three"}}, "must be int"),
    ({"options": {"eta": 0.5}}, "'eta' is an option of ddim"),  # the model's default sampler is unipc
    ({"guidance": {"rule": "cfg", "options": {"momentum": -0.5}}}, "is an option of apg"),
    ({"guidance": {"rescale": 2}}, "guidance.rescale"),
    ({"steps": 0}, "steps"),
    ({"size": [16, 16]}, "makes 8×8 images"),
    ({"sampler": "nope"}, "unknown sampler"),
    ({"bogus": 1}, "bogus"),
    ({"task": "paint"}, "task must be one of"),
    ({"model": "digits-distilled", "steps": 3}, "distilled for 1, 2, 4 steps"),
    ({"classes": [3]}, "takes no classes"),
    ({"model": "digits-cond", "classes": [12]}, "out of range"),
])
def test_bad_requests_name_their_field(body, field):
    with pytest.raises(UsageError, match=field):
        run(parse_request({"task": "sample", "model": "digits", "steps": 10, "n": 2, **body}))


def test_schema_is_generated_from_the_definition_and_every_task_has_one():
    schema = request_schema()
    tasks = {v["properties"]["task"]["const"] for v in schema["$defs"].values() if "task" in v.get("properties", {})}
    assert tasks == {"sample", "img2img", "invert", "reconstruct", "edit", "interpolate", "likelihood"}
    assert "discriminator" in schema


def test_preview_callback_and_provenance():
    seen = []
    r = run(_req(n=3, preview_every=2), preview=seen.append)
    assert [p.step for p in seen] == [2, 4, 6] and seen[-1].images.shape == (3, 1, 8, 8)
    assert r.provenance["model"]["fingerprint"] == load_model("digits").fingerprint
    assert r.provenance["plan"]["chunk"] == BATCH_INVARIANT_CHUNK and "torch" in r.provenance["versions"]
    assert parse_request(r.provenance["request"]) == _req(n=3, preview_every=2)


def test_img2img_and_reconstruct_tasks():
    r = run(parse_request({"task": "img2img", "model": "digits-cond", "classes": [8], "n": 2, "strength": 0.5,
                           "steps": 6, "guidance": {"scale": 2.0}}))
    assert r.main.shape == (2, 1, 8, 8) and r.stats.nfe == 3 * 2
    r = run(parse_request({"task": "reconstruct", "model": "digits", "n": 2, "steps": 20}))
    assert r.summary["mse"] < 1e-3 and r.main.shape == (2, 1, 8, 8)


def test_sharded_run_removes_its_shards_unless_kept(tmp_path, capsys):
    out = tmp_path / "x.npy"
    assert main(["sample", "--model", "digits", "--steps", "2", "-n", "5", "--batch", "2", "--out", str(out)]) == 0
    assert out.is_file() and not (tmp_path / "x.shards").exists()
    assert main(["sample", "--model", "digits", "--steps", "2", "-n", "5", "--batch", "2", "--out", str(out),
                 "--keep-shards"]) == 0
    assert len(list((tmp_path / "x.shards").glob("shard-*.npy"))) == 3
    one = tmp_path / "y.npy"
    assert main(["sample", "--model", "digits", "--steps", "2", "-n", "5", "--out", str(one)]) == 0
    assert np.array_equal(np.load(out), np.load(one))  # shards of 2 = one batch of 5, bit for bit


def test_flow_shift_at_sampling_time():
    base = run(_req(model="digits-flow", sampler="ddim", steps=4, n=2)).main
    shifted = run(_req(model="digits-flow", sampler="ddim", steps=4, n=2, shift=3.0)).main
    assert not np.array_equal(base, shifted)
    with pytest.raises(UsageError, match="flow models only"):
        run(_req(shift=3.0))


def test_model_is_immutable_and_students_are_separate_denoisers():
    m = load_model("digits-distilled")
    with pytest.raises(AttributeError):
        m.denoiser = None
    assert m.denoiser_for(1) is not m.denoiser_for(4) and m.denoiser_for(1).net is not m.denoiser_for(4).net


def test_guidance_settings_without_a_condition_are_refused_not_ignored():
    for g in ({"rule": "apg"}, {"rescale": 0.5}, {"scale": 3.0}, {"two_calls": True}):
        with pytest.raises(UsageError, match="guidance needs classes"):
            run(_req(n=1, guidance=g))
    assert run(_req(n=1, guidance={"scale": 1.0})).main.shape == (1, 1, 8, 8)  # w = 1 is no guidance


def test_library_runs_above_batch_use_a_scratch_shard_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = run(_req(n=5, batch=2, steps=2)).main
    assert list(tmp_path.iterdir()) == [] and np.array_equal(a, run(_req(n=5, steps=2)).main)
