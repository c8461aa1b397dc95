"""`ddim serve`: the batching engine's bit identity, every endpoint, the job store's restart recovery, auth and
limits — against a real uvicorn process on 127.0.0.1 and, where faster, FastAPI's TestClient."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from conftest import ServerProcess
from ddim.api import parse_request, run
from ddim.api.jobs import JobStore
from ddim.api.service import Limits, Service, ServiceError, served_models

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from ddim.app.server import create_app

MODELS = {"digits": "digits", "digits-cond": "digits-cond"}


def mixed_requests(k: int = 20) -> list[dict]:
    """k requests that differ in everything a job owns: model, sampler and options, steps, guidance, classes, n."""
    samplers = [("ddim", {}), ("dpmpp_2m", {}), ("heun", {}), ("unipc", {}), ("ddim", {"eta": 1.0}),
                ("dpmpp_3m", {}), ("pndm", {}), ("ddpm", {})]
    out = []
    for i in range(k):
        s, opts = samplers[i % len(samplers)]
        r = {"task": "sample", "model": "digits-cond" if i % 2 else "digits", "sampler": s, "options": opts,
             "steps": 4 + (i * 3) % 9, "n": 1 + (i * 5) % 6, "seed": 100 + i}
        if i % 2:
            r["classes"] = [i % 10, (i + 3) % 10]
            r["guidance"] = {"scale": 1.0 + (i % 4)}
        out.append(r)
    return out


def solo(r: dict) -> np.ndarray:
    """The request run alone in batch-invariant mode (what the server's result must equal bit for bit)."""
    return run(parse_request({**r, "batch_invariant": True})).main


def npy(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)


def wait_done(client, job_id: str, timeout: float = 120.0, headers: dict | None = None) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if st["status"] in ("done", "failed", "cancelled"):
            return st
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def service():
    svc = Service(MODELS, limits=Limits(max_rows=64, max_steps=500, max_body=64 << 10))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service))


# ------------------------------------------------------------------------------------ bit identity
def test_twenty_mixed_jobs_on_a_real_server_equal_their_solo_runs_bit_for_bit():
    reqs = mixed_requests(20)
    with ServerProcess("--models", "digits,digits-cond") as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        with ThreadPoolExecutor(20) as pool:  # all submitted at once: they share the engine's ticks
            ids = list(pool.map(lambda r: c.post("/v1/jobs", json=r).json()["id"], reqs))
        sts = [wait_done(c, i) for i in ids]
        assert [s["status"] for s in sts] == ["done"] * 20
        served = [npy(c.get(f"/v1/jobs/{i}/result", params={"format": "npy"}).content) for i in ids]
        metrics = c.get("/metrics").text
    for r, got in zip(reqs, served):
        want = solo(r)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want), r
    rows = float(next(ln.split()[1] for ln in metrics.splitlines() if ln.startswith("ddim_rows_per_network_call")))
    assert rows > 4, f"jobs did not share network calls ({rows} rows per call)"


def test_engine_jobs_with_prompts_equal_their_solo_runs(tmp_path):
    """A text-to-image folder through the engine: prompt rows and CFG branches share calls, bits unchanged."""
    pytest.importorskip("transformers")
    from ddim.io.random_folders import random_folder

    folder = random_folder(tmp_path / "tiny-sd")
    svc = Service({"tiny-sd": str(folder)})
    try:
        reqs = [{"task": "sample", "model": "tiny-sd", "prompt": ["a red cube"], "steps": 3, "n": 1, "seed": 1},
                {"task": "sample", "model": "tiny-sd", "prompt": ["a blue ball", "sky"], "negative_prompt": "dark",
                 "guidance": {"scale": 5.0}, "steps": 4, "n": 2, "seed": 7, "sampler": "dpmpp_2m"}]
        jobs = [svc.submit(r) for r in reqs]
        assert [svc.wait(j, 120) for j in jobs] == ["done", "done"]
        for r, j in zip(reqs, jobs):
            got = npy(svc.result(j.record.id, "local", "npy")[0])
            want = run(parse_request({**r, "model": str(folder), "batch_invariant": True})).main
            assert np.array_equal(got, want)
    finally:
        svc.close()


# --------------------------------------------------------------------------------------- endpoints
def test_submit_status_events_with_previews_and_every_result_format(client):
    r = client.post("/v1/jobs", json={"task": "sample", "model": "digits", "n": 3, "steps": 6, "preview_every": 2})
    assert r.status_code == 202 and set(r.json()) == {"id", "status", "position"}
    jid = r.json()["id"]
    events = []
    with client.stream("GET", f"/v1/jobs/{jid}/events") as s:
        for line in s.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    kinds = [e.get("event", "end") for e in events]
    assert kinds.count("progress") == 6 and kinds.count("preview") == 3 and kinds[-1] == "end"
    steps = [e["step"] for e in events if e.get("event") == "progress"]
    assert steps == [1, 2, 3, 4, 5, 6]
    from PIL import Image

    png = base64.b64decode(next(e["png"] for e in events if e.get("event") == "preview"))
    assert Image.open(io.BytesIO(png)).size[0] > 8
    st = client.get(f"/v1/jobs/{jid}").json()
    assert st["status"] == "done" and st["step"] == st["steps"] == 6 and st["nfe"] == 6 and st["position"] == -1
    arr = npy(client.get(f"/v1/jobs/{jid}/result?format=npy").content)
    assert np.array_equal(arr, solo({"task": "sample", "model": "digits", "n": 3, "steps": 6}))
    assert client.get(f"/v1/jobs/{jid}/result?format=png").content[:8] == b"\x89PNG\r\n\x1a\n"
    body = client.get(f"/v1/jobs/{jid}/result?format=json").json()
    assert len(body["images"]) == 3 and body["provenance"]["plan"]["chunk"] == 16
    assert body["provenance"]["request"]["batch_invariant"] is True
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))), dtype=np.float32)
    assert np.abs(img / 127.5 - 1 - np.clip(arr[0, 0], -1, 1)).max() <= 1 / 127.5 + 1e-6  # pixel for pixel


def test_the_result_npy_is_byte_identical_to_what_ddim_run_writes(client, tmp_path):
    req = {"task": "sample", "model": "digits", "n": 2, "steps": 5, "seed": 3, "batch_invariant": True}
    (tmp_path / "r.json").write_text(json.dumps(req))
    subprocess.run([sys.executable, "-m", "ddim", "run", str(tmp_path / "r.json"), "--out", str(tmp_path / "o.npy")],
                   check=True, capture_output=True)
    jid = client.post("/v1/jobs", json=req).json()["id"]
    wait_done(client, jid)
    assert client.get(f"/v1/jobs/{jid}/result?format=npy").content == (tmp_path / "o.npy").read_bytes()


def test_other_tasks_run_through_the_engine(client):
    for req in ({"task": "reconstruct", "model": "digits", "n": 2, "steps": 8},
                {"task": "img2img", "model": "digits-cond", "n": 2, "steps": 6, "strength": 0.5, "classes": [3]},
                {"task": "likelihood", "model": "digits", "data": "digits", "n": 1, "probes": 1}):
        jid = client.post("/v1/jobs", json=req).json()["id"]
        assert wait_done(client, jid)["status"] == "done", client.get(f"/v1/jobs/{jid}").json()
        got = npy(client.get(f"/v1/jobs/{jid}/result?format=npy").content)
        assert np.array_equal(got, solo(req)), req["task"]
    r = client.get(f"/v1/jobs/{jid}/result?format=png")
    assert r.status_code == 400 and r.json()["error"]["field"] == "format"


def test_openai_images_endpoint(client):
    r = client.post("/v1/images/generations", json={"model": "digits-cond", "prompt": "7", "n": 2, "steps": 5,
                                                    "response_format": "b64_json"})
    assert r.status_code == 200
    body = r.json()
    assert len(body["data"]) == 2 and isinstance(body["created"], int)
    want = solo({"task": "sample", "model": "digits-cond", "classes": [7], "n": 2, "steps": 5})
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["data"][1]["b64_json"]))), dtype=np.float32)
    assert np.abs(img / 127.5 - 1 - np.clip(want[1, 0], -1, 1)).max() <= 1 / 127.5 + 1e-6
    for bad, field in (({"model": "digits", "prompt": "a cat"}, "prompt"), ({"response_format": "url"},
                       "response_format"), ({"size": "big"}, "size"), ({"model": "nope"}, "model"),
                       ({"quality": "hd"}, "quality"), ({"model": "digits-cond", "prompt": "cat"}, "prompt")):
        r = client.post("/v1/images/generations", json=bad)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, (bad, r.json())


def test_listings_health_metrics_and_openapi(client):
    models = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["digits", "digits-cond"]
    assert models[1]["condition"] == "class" and "/" not in json.dumps(models)  # names, never paths
    samplers = client.get("/v1/samplers").json()
    by = {s["name"]: s for s in samplers["samplers"]}
    assert "eta" in by["ddim"]["options"] and by["unipc"]["options"]
    assert "cfg" in {g["name"] for g in samplers["guidance_rules"]} and "trailing" in samplers["spacings"]["grid"]
    assert client.get("/healthz").json()["ok"] is True
    text = client.get("/metrics").text
    for name in ("ddim_queue_depth", "ddim_rows_per_network_call", "ddim_images_per_second", "ddim_step_seconds"):
        assert name in text
    spec = client.get("/openapi.json").json()
    assert "Request" in spec["components"]["schemas"] and "GuidanceSpec" in spec["components"]["schemas"]
    assert spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"] \
        == "#/components/schemas/Request"
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("body, status, field", [
    (b"{", 400, "request"),
    (b'{"task": "sample", "n": "x"}', 400, "n"),
    (b'{"task": "paint"}', 400, "task"),
    (b'{"task": "sample", "model": "../../etc/passwd"}', 400, "model"),
    (b'{"task": "sample", "model": "/abs/folder"}', 400, "model"),
    (b'{"task": "sample", "model": "digits", "steps": 501}', 400, "steps"),
    (b'{"task": "sample", "model": "digits", "n": 65}', 400, "n"),
    (b'{"task": "sample", "model": "digits", "sampler": "euler_a"}', 400, "sampler"),
    (b'{"task": "sample", "model": "digits", "sampler": "unipc", "options": {"eta": 1}}', 400, "options"),
    (b'{"task": "sample", "model": "digits", "guidance": {"scale": NaN}}', 400, "guidance.scale"),
    (b'{"task": "sample", "model": "digits", "steps": Infinity}', 400, "steps"),
    (b'{"task": "sample", "model": "digits", "surprise": 1}', 400, "surprise"),
    (b'{"task": "sample", "model": "digits", "device": "cuda"}', 400, "device"),
    (b'{"task": "sample", "model": "digits", "batch_invariant": false}', 400, "batch_invariant"),
    (b'{"task": "sample", "model": "digits", "size": [16, 16]}', 400, "size"),
    (b'{"task": "sample", "model": "digits", "classes": [3]}', 400, "classes"),
    (b'{"task": "sample", "model": "digits", "prompt": ["a cat"]}', 400, "prompt"),
    (b'{"task": "invert", "model": "digits", "data": "/etc/passwd"}', 400, "data"),
    (b'{"task": "invert", "model": "digits", "data": "mog3"}', 400, "data"),
    (b'{"task": "sample", "model": "digits-cond", "prompt": ["' + b"x" * 2001 + b'"]}', 400, "prompt"),
])
def test_bad_requests_get_a_4xx_naming_the_field(client, body, status, field):
    r = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["message"] and "\n" not in err["message"]
    assert client.get("/healthz").json()["ok"]


def test_oversized_bodies_are_refused_before_parsing(client):
    r = client.post("/v1/jobs", content=b"x" * (65 << 10))
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"

    def chunks():  # no content-length: counted while streaming
        for _ in range(80):
            yield b"x" * 1024
    r = client.post("/v1/jobs", content=chunks())
    assert r.status_code == 413


def test_unknown_job_and_bad_result_format(client):
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.delete("/v1/jobs/nope").status_code == 404
    jid = client.post("/v1/jobs", json={"task": "sample", "model": "digits", "n": 1, "steps": 2}).json()["id"]
    wait_done(client, jid)
    r = client.get(f"/v1/jobs/{jid}/result?format=gif")
    assert r.status_code == 400 and r.json()["error"]["field"] == "format"


# ------------------------------------------------------------------------------------ cancel, queue
def test_cancel_a_running_job_frees_its_rows_and_leaves_others_alone():
    svc = Service(MODELS, limits=Limits(max_rows=8))
    try:
        long = svc.submit({"task": "sample", "model": "digits", "n": 4, "steps": 1000, "sampler": "ddpm"})
        t0 = time.time()
        while svc.status(long.record.id, "local")["step"] < 3 and time.time() - t0 < 60:
            time.sleep(0.01)
        other = svc.submit({"task": "sample", "model": "digits", "n": 4, "steps": 5})
        blocked = svc.submit({"task": "sample", "model": "digits", "n": 8, "steps": 5})  # waits for rows
        assert svc.status(blocked.record.id, "local")["status"] == "queued"
        svc.cancel(long.record.id, "local")
        assert svc.wait(long, 60) == "cancelled"
        assert svc.status(long.record.id, "local")["step"] < 1000
        assert svc.wait(other, 60) == "done" and svc.wait(blocked, 60) == "done"
        got = npy(svc.result(other.record.id, "local", "npy")[0])
        assert np.array_equal(got, solo({"task": "sample", "model": "digits", "n": 4, "steps": 5}))
        with pytest.raises(ServiceError) as e:
            svc.result(long.record.id, "local", "npy")
        assert e.value.status == 409
        before = svc.status(other.record.id, "local")
        assert svc.cancel(other.record.id, "local") == before  # cancelling a finished job changes nothing
    finally:
        svc.close()


def test_a_full_queue_is_a_429_and_a_queued_job_can_be_cancelled():
    svc = Service(MODELS, limits=Limits(max_rows=4, max_queue=2), serial=True)
    try:
        first = svc.submit({"task": "sample", "model": "digits", "n": 4, "steps": 300})
        t0 = time.time()
        while svc.position(first) != -1 and time.time() - t0 < 30:  # admitted: the queue is empty again
            time.sleep(0.01)
        queued = [svc.submit({"task": "sample", "model": "digits", "n": 1, "steps": 2}) for _ in range(2)]
        with pytest.raises(ServiceError) as e:
            svc.submit({"task": "sample", "model": "digits", "n": 1, "steps": 2})
        assert e.value.status == 429 and e.value.field == "queue"
        assert svc.position(queued[1]) in (0, 1)
        assert svc.cancel(queued[1].record.id, "local")["status"] == "cancelled"
        svc.cancel(first.record.id, "local")
        assert svc.wait(queued[0], 60) == "done"
    finally:
        svc.close()


# ---------------------------------------------------------------------------------- the job store
def test_sigkill_mid_run_then_restart_finishes_every_accepted_job_with_the_same_bits(tmp_path):
    reqs = mixed_requests(10)
    for r in reqs:
        r["steps"] = 40
    store = tmp_path / "store"
    with ServerProcess("--models", "digits,digits-cond", "--store", str(store), "--max-rows", "8") as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            early = c.post("/v1/jobs", json={"task": "sample", "model": "digits", "n": 1, "steps": 3}).json()["id"]
            wait_done(c, early)
            ids = [c.post("/v1/jobs", json=r).json()["id"] for r in reqs]
            t0 = time.time()  # kill once some have started and none can have finished every job
            while c.get(f"/v1/jobs/{ids[0]}").json()["step"] < 5 and time.time() - t0 < 60:
                time.sleep(0.02)
        srv.kill()
    assert JobStore(store).counts()["done"] < 11
    with ServerProcess("--models", "digits,digits-cond", "--store", str(store)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as c:
        sts = [wait_done(c, i) for i in ids]
        assert [s["status"] for s in sts] == ["done"] * 10
        for r, i in zip(reqs, ids):
            assert np.array_equal(npy(c.get(f"/v1/jobs/{i}/result?format=npy").content), solo(r))
        assert c.get(f"/v1/jobs/{early}/result?format=npy").status_code == 200  # finished before: still served
    assert not list((store / "results").glob(".*.tmp"))  # nothing half-written left behind


def test_results_expire_by_age_and_by_total_size(tmp_path):
    svc = Service(MODELS, store=tmp_path / "s", ttl=3600, max_bytes=10 << 20)
    try:
        jobs = [svc.submit({"task": "sample", "model": "digits", "n": 2, "steps": 2, "seed": s}) for s in range(3)]
        assert [svc.wait(j, 60) for j in jobs] == ["done"] * 3
        by_age = sorted((svc.jobs.get(j.record.id) for j in jobs), key=lambda r: r.finished)
        svc.jobs.max_bytes = by_age[1].bytes + by_age[2].bytes  # room for the two newest (sizes differ by seed)
        assert svc.jobs.expire() == [by_age[0].id]
        with pytest.raises(ServiceError) as e:
            svc.result(by_age[0].id, "local", "npy")
        assert e.value.status == 410
        assert svc.jobs.expire(now=time.time() + 7200) == [r.id for r in by_age[1:]]  # then by age
        assert not (tmp_path / "s" / "results" / by_age[1].id).exists()
    finally:
        svc.close()


def test_unwritable_or_corrupt_job_store_is_named_at_start_up(tmp_path):
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "jobs.sqlite3").write_bytes(b"this is not a database" * 100)
    r = subprocess.run([sys.executable, "-m", "ddim", "serve", "--store", str(bad), "--port", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "corrupt" in r.stderr and "jobs.sqlite3" in r.stderr
    blocker = tmp_path / "a-file"  # a store under a regular file cannot be created (even by root)
    blocker.write_text("x")
    r = subprocess.run([sys.executable, "-m", "ddim", "serve", "--store", str(blocker / "store"), "--port", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot write" in r.stderr and r.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------- auth
def test_keys_owners_and_constant_time_refusals(tmp_path):
    svc = Service(MODELS, keys=["alpha-key", "beta-key"])
    try:
        c = TestClient(create_app(svc))
        body = {"task": "sample", "model": "digits", "n": 1, "steps": 2}
        for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": ""}, {"X-API-Key": "k" * 100_000}):
            r = c.post("/v1/jobs", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"
        for path in ("/v1/models", "/v1/samplers", "/metrics"):
            assert c.get(path).status_code == 401
        assert c.get("/healthz").status_code == 200
        a, b = {"Authorization": "Bearer alpha-key"}, {"X-API-Key": "beta-key"}
        jid = c.post("/v1/jobs", json=body, headers=a).json()["id"]
        assert wait_done(c, jid, headers=a)["status"] == "done"
        for verb, path in (("get", ""), ("get", "/result"), ("get", "/events"), ("delete", "")):
            assert getattr(c, verb)(f"/v1/jobs/{jid}{path}", headers=b).status_code == 404  # not yours: not there
        assert c.get(f"/v1/jobs/{jid}/result?format=npy", headers=a).status_code == 200
    finally:
        svc.close()


def test_binding_beyond_loopback_needs_a_key_and_the_extra_is_named(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ddim", "serve", "--host", "0.0.0.0"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--api-key-file" in r.stderr
    code = "import sys; sys.modules['fastapi'] = None; from ddim.app.cli import main; sys.exit(main(['serve']))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "ddim[serve]" in r.stderr
    empty = tmp_path / "keys"
    empty.write_text("\n")
    r = subprocess.run([sys.executable, "-m", "ddim", "serve", "--api-key-file", str(empty)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "no keys" in r.stderr


def test_served_model_names():
    assert served_models(["digits", "/data/models/my-sd/", " mixture:mog3 "]) == {
        "digits": "digits", "my-sd": "/data/models/my-sd/", "mixture:mog3": "mixture:mog3"}
    with pytest.raises(Exception, match="two entries"):
        served_models(["/a/x", "/b/x"])


def test_a_client_that_disconnects_mid_stream_changes_nothing():
    with ServerProcess("--models", "digits") as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        jid = c.post("/v1/jobs", json={"task": "sample", "model": "digits", "n": 2, "steps": 200}).json()["id"]
        with c.stream("GET", f"/v1/jobs/{jid}/events") as s:
            for _ in s.iter_lines():
                break  # hang up after the first line
        assert wait_done(c, jid)["status"] == "done"
        got = npy(c.get(f"/v1/jobs/{jid}/result?format=npy").content)
        assert np.array_equal(got, solo({"task": "sample", "model": "digits", "n": 2, "steps": 200}))


# -------------------------------------------------------------------------------------------- Ray
def test_ray_serve_two_replicas_on_loopback_give_the_solo_bits():
    pytest.importorskip("ray.serve")
    reqs = mixed_requests(8)
    with ServerProcess("--ray", "--replicas", "2", "--models", "digits,digits-cond", timeout=240) as srv, \
            httpx.Client(base_url=srv.url, timeout=120) as c:
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda r: c.post("/v1/jobs", json=r).json()["id"], reqs))
        workers = set()
        for i in ids:
            with c.stream("GET", f"/v1/jobs/{i}/events") as s:
                for line in s.iter_lines():
                    if line.startswith("data: ") and '"worker"' in line:
                        workers.add(json.loads(line[6:]).get("worker"))
        assert [wait_done(c, i)["status"] for i in ids] == ["done"] * 8
        for r, i in zip(reqs, ids):
            assert np.array_equal(npy(c.get(f"/v1/jobs/{i}/result?format=npy").content), solo(r))
    workers.discard(None)
    assert len(workers) == 2, workers


def test_bench_serve_quick_writes_its_report(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ddim", "bench", "serve", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert "one request at a time" in report and "Goal" in report and (tmp_path / "serve.png").exists()
    data = json.loads((tmp_path / "serve.json").read_text())
    for row in data:
        for mode in ("ddim serve, chunk 16", "ddim serve, chunk 64", "one request at a time"):
            assert row[mode]["done"] == 12 and row[mode]["failed"] == 0


def test_a_server_with_a_larger_chunk_equals_ddim_run_with_that_chunk():
    svc = Service(MODELS, chunk=64)
    try:
        reqs = mixed_requests(4)
        jobs = [svc.submit(r) for r in reqs]
        assert [svc.wait(j, 120) for j in jobs] == ["done"] * 4
        for r, j in zip(reqs, jobs):
            assert j.request.batch_invariant == 64
            want = run(parse_request({**r, "batch_invariant": 64})).main
            assert np.array_equal(npy(svc.result(j.record.id, "local", "npy")[0]), want)
        with pytest.raises(ServiceError) as e:
            svc.submit({**reqs[0], "batch_invariant": True})
        assert e.value.field == "batch_invariant" and "64" in e.value.message
    finally:
        svc.close()


def test_sigterm_drains_exits_0_and_the_next_start_finishes_the_running_job(tmp_path):
    req = {"task": "sample", "model": "digits", "n": 2, "steps": 400, "seed": 5}
    store = tmp_path / "store"
    srv = ServerProcess("--models", "digits", "--store", str(store))
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            jid = c.post("/v1/jobs", json=req).json()["id"]
            t0 = time.time()
            while c.get(f"/v1/jobs/{jid}").json()["step"] < 3 and time.time() - t0 < 60:
                time.sleep(0.02)
    finally:
        assert srv.stop() == 0  # SIGTERM: stop admitting, persist the running job, exit 0
    assert JobStore(store).get(jid).status == "running"
    with ServerProcess("--models", "digits", "--store", str(store)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as c:
        assert wait_done(c, jid)["status"] == "done"
        assert np.array_equal(npy(c.get(f"/v1/jobs/{jid}/result?format=npy").content), solo(req))


def test_uploaded_images_as_data_uris_and_bad_ones(client):
    from PIL import Image

    from ddim.io.data import digits

    x = digits()[0][:1]
    img = ((x[0, 0].numpy() + 1) * 127.5).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    png_uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    arr = io.BytesIO()
    np.save(arr, x.numpy())
    npy_uri = "data:application/x-npy;base64," + base64.b64encode(arr.getvalue()).decode()
    for uri in (png_uri, npy_uri):
        req = {"task": "reconstruct", "model": "digits", "data": uri, "steps": 8}
        jid = client.post("/v1/jobs", json=req).json()["id"]
        assert wait_done(client, jid)["status"] == "done"
        got = npy(client.get(f"/v1/jobs/{jid}/result?format=npy").content)
        assert got.shape == (1, 1, 8, 8) and np.array_equal(got, solo(req))
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for bad in ("data:image/png;base64,%%%not-base64", "data:image/png;base64," + base64.b64encode(b"no").decode(),
                "data:text/html;base64,PGI+", "data:application/x-npy;base64," +
                base64.b64encode(pickled.getvalue()).decode(), png_uri.replace("image/png", "image/png;x")):
        r = client.post("/v1/jobs", json={"task": "reconstruct", "model": "digits", "data": bad, "steps": 4})
        assert r.status_code == 400 and r.json()["error"]["field"] == "data", r.text
        assert "\n" not in r.json()["error"]["message"]


def test_what_the_explorer_reads_previews_per_sample_scores_and_pictures(client):
    jid = client.post("/v1/jobs", json={"task": "sample", "model": "digits-cond", "n": 4, "steps": 4, "classes": [3],
                                        "preview_every": 1, "score": True}).json()["id"]
    with client.stream("GET", f"/v1/jobs/{jid}/events") as s:
        previews = [json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: ") and '"preview"' in ln]
    assert [len(p["images"]) for p in previews] == [4] * 4 and [len(p["states"]) for p in previews] == [4] * 4
    assert previews[0]["states"][0] != previews[-1]["states"][0]  # x_t moves from noise to the sample
    body = client.get(f"/v1/jobs/{jid}/result?format=json").json()
    q = body["summary"]["quality"]
    assert set(q) >= {"fd", "fd_bal", "acc", "n"} and q["n"] == 4 and 0 <= q["acc"] <= 1
    assert body["provenance"]["plan"]["sampler"]
    inv = client.post("/v1/jobs", json={"task": "invert", "model": "digits-cond", "data": "digits", "index": [5],
                                        "steps": 5}).json()["id"]
    assert wait_done(client, inv)["status"] == "done"
    pics = client.get(f"/v1/jobs/{inv}/result?format=json").json()["pictures"]
    assert {k: len(v) for k, v in pics.items()} == {"encodings": 1, "reconstruction": 1, "inputs": 1}
    from ddim.core.errors import UsageError

    with pytest.raises(UsageError, match="request field score"):  # the digit classifier scores 8×8 digits only
        run(parse_request({"task": "sample", "model": "mixture:mog3", "n": 2, "steps": 2, "score": True}))
