"""The service under fuzzing, load, kills, disconnects, full disks and hostile clients (`ddim bench reliability`
at quick settings: every part on real loopback servers), and the submission-time checks the fuzzing found."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from ddim.api.service import Limits, Service, ServiceError
from ddim.app.server import create_app

MODELS = {"digits": "digits", "digits-cond": "digits-cond"}


@pytest.fixture(scope="module")
def service():
    svc = Service(MODELS, limits=Limits(max_rows=8, max_steps=60))
    yield svc
    svc.close()


def test_bench_reliability_quick_holds_every_check_and_writes_its_report(tmp_path):
    out = tmp_path / "rel"
    r = subprocess.run([sys.executable, "-m", "ddim", "bench", "reliability", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    parts = json.loads((out / "report.json").read_text())
    failed = [f"{p['title']}: {c['what']}: {c['measured']}" for p in parts for c in p["checks"] if not c["holds"]]
    assert not failed, "\n".join(failed)
    titles = [p["title"] for p in parts]
    for prefix in ("Property-based fuzzing", "Load", "SIGKILL", "SIGTERM drain", "Clients that vanish", "Cancel frees",
                   "The job store on a full", "Who may do what"):
        assert any(t.startswith(prefix) for t in titles), prefix
    report = (out / "report.md").read_text()
    assert "lost jobs: 0" in report and "5xx: 0" in report and "cross-key access: 0" in report
    assert (out / "rss.png").stat().st_size > 1000
    fuzz = next(p for p in parts if p["title"].startswith("Property-based"))
    assert fuzz["figures"]["cases"] >= 100 and fuzz["figures"]["accepted"] > 10


@pytest.mark.parametrize("body, field, words", [
    ({"sampler": "dpmpp_2m", "classes": [1], "guidance": {"rule": "cfg++", "scale": 2}}, "guidance", "DDIM-type"),
    ({"sampler": "ddim", "classes": [1], "guidance": {"rule": "apg", "scale": 2, "rescale": 0.5}}, "guidance",
     "rescale"),
    ({"model": "digits", "guidance": {"scale": 3}}, "guidance", "needs classes"),
    ({"steps": 5, "": 1}, "''", "Extra inputs"),
])
def test_what_fails_at_run_time_is_refused_at_submission(service, body, field, words):
    with pytest.raises(ServiceError) as e:
        service.submit({"task": "sample", "model": "digits-cond", "n": 1, "steps": 5, **body})
    assert (e.value.status, e.value.field) == (400, field) and words in e.value.message


def test_images_endpoint_names_its_own_fields(service):
    with pytest.raises(ServiceError) as e:
        service.generate(json.dumps({"model": "digits", "guidance_scale": 4.0, "steps": 5}))
    assert e.value.field == "guidance_scale" and "needs classes" in e.value.message


def test_steps_over_the_cap_by_default_says_so():
    svc = Service({"digits": "digits"}, limits=Limits(max_steps=20))
    try:
        with pytest.raises(ServiceError) as e:
            svc.submit({"task": "sample", "model": "digits", "n": 1})
        assert e.value.field == "steps" and "default" in e.value.message
    finally:
        svc.close()


def test_the_served_schema_is_this_servers(service):
    spec = TestClient(create_app(service)).get("/openapi.json").json()["components"]["schemas"]
    sample = spec["SampleRequest"]
    assert sample["properties"]["model"]["enum"] == ["digits", "digits-cond"]
    assert {"task", "model"} <= set(sample["required"])
    assert sample["properties"]["steps"]["maximum"] == 60 and sample["properties"]["n"]["maximum"] == 8
    images = spec["ImagesRequest"]["properties"]["model"]["anyOf"][0]
    assert images["enum"] == ["digits", "digits-cond"]


def test_with_keys_every_path_but_healthz_needs_one():
    svc = Service({"digits": "digits"}, keys=["k1"])
    try:
        c = TestClient(create_app(svc))
        for path in ("/docs", "/openapi.json", "/redoc", "/no/such/path", "/v1/models"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"]["field"] == "authorization", path
            assert c.get(path, headers={"X-API-Key": "k1"}).status_code in (200, 404)
        assert c.get("/healthz").status_code == 200
    finally:
        svc.close()


def test_client_timeout_flag_is_checked():
    r = subprocess.run([sys.executable, "-m", "ddim", "serve", "--client-timeout", "0"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--client-timeout" in r.stderr
