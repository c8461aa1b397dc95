"""`ddim bench reliability` (in the app layer: it measures the service, so it sits above it).

`ddim serve` under fuzzed input, load, soak, crashes, disconnects, full disks and
hostile clients — each part a real server process on 127.0.0.1, bounded in requests and seconds, returning the
checks it made (what was claimed, what was measured, whether it held) and its figures for the report.

Every part is a function the tests call with quick settings; the report runs them all (the long soak with the
full settings). A result is compared with the same request run alone in batch-invariant mode (bit for bit).
"""

from __future__ import annotations

import io
import json
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.process import ServerProcess, metric

FINISHED = ("done", "failed", "cancelled")


@dataclass
class Check:
    """One claim, what was measured, and whether the claim held."""

    what: str
    measured: str
    holds: bool


@dataclass
class Part:
    """A part of the report: its checks and its figures (numbers for report.json)."""

    title: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, what: str, measured: Any, holds: bool) -> None:
        self.checks.append(Check(what, str(measured), bool(holds)))

    @property
    def holds(self) -> bool:
        return all(c.holds for c in self.checks)

    def failed(self) -> list[str]:
        return [f"{c.what}: {c.measured}" for c in self.checks if not c.holds]


# ----------------------------------------------------------------------------------------------- helpers
def digits_requests(k: int = 16) -> list[dict[str, Any]]:
    """k sample requests on digits that differ in sampler, options, steps, n and seed."""
    samplers = [("ddim", {}), ("dpmpp_2m", {}), ("heun", {}), ("unipc", {}), ("ddim", {"eta": 1.0}), ("pndm", {})]
    return [{"task": "sample", "model": "digits", "sampler": samplers[i % len(samplers)][0],
             "options": samplers[i % len(samplers)][1], "steps": 4 + (i * 3) % 9, "n": 1 + (i * 5) % 4,
             "seed": 1000 + i} for i in range(k)]


class Solo:
    """Each request's result run alone in batch-invariant mode, computed once."""

    def __init__(self) -> None:
        from ..api.store import ModelStore

        self.store = ModelStore()
        self._done: dict[str, np.ndarray] = {}

    def __call__(self, request: dict[str, Any]) -> np.ndarray:
        from ..api.request import parse_request
        from ..api.run import run

        key = json.dumps(request, sort_keys=True)
        if key not in self._done:
            self._done[key] = run(parse_request({**request, "batch_invariant": True}), self.store).main
        return self._done[key]


def _npy(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)


def _wait(client: Any, job_id: str, timeout: float = 300.0, headers: dict | None = None) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = client.get(f"/v1/jobs/{job_id}", headers=headers).json()["status"]
        if st in FINISHED:
            return st
        time.sleep(0.05)
    return "timeout"


def _until_end(client: Any, job_id: str) -> str:
    """Follow a job's SSE stream to its end event; its final status."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as s:
        for line in s.iter_lines():
            if line.startswith("event: end"):
                break
    return client.get(f"/v1/jobs/{job_id}").json()["status"]


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(xs, p)) if xs else float("nan")


def _named(r: Any) -> bool:
    """A 4xx body names its field: {"error": {"field": non-empty, "message": ...}}."""
    try:
        err = r.json()["error"]
        return isinstance(err["field"], str) and bool(err["field"]) and bool(err["message"])
    except (ValueError, KeyError, TypeError):
        return False


def _raw(url: str, data: bytes, *, read: int | None = 65536, timeout: float = 10.0) -> bytes:
    """Send raw bytes to the server and read up to `read` bytes back (None: read nothing, just hang up)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        while read is not None and len(got) < read:
            try:
                chunk = s.recv(read - len(got))
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
            if read <= 4096 and b"\r\n\r\n" in got:  # a short read wants the status line and headers only
                break
        return got


def _server_errors(srv: ServerProcess) -> int:
    """Tracebacks and 5xx lines in what the server printed."""
    return sum(("Traceback" in ln) or (" 500 " in ln) for ln in srv.lines)


# ------------------------------------------------------------------------------------------------ fuzz
def fuzz(examples: int = 25, seed: int = 0) -> Part:
    """schemathesis against the server's own OpenAPI schema: every operation, valid and invalid inputs."""
    try:
        import schemathesis
        from hypothesis import HealthCheck, given, settings
        from hypothesis import seed as fix_seed
        from hypothesis.errors import Unsatisfiable
    except ImportError:
        from ..core.errors import UsageError

        raise UsageError("the fuzzing part needs schemathesis: pip install 'ddim[reliability]'") from None
    import httpx

    part = Part("Property-based fuzzing (schemathesis)")
    cases: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    five, unnamed, transport, accepted = [], [], [0], []

    def record(label: str, what: str, r: Any, submits: bool) -> None:
        cases[label] += 1
        statuses[r.status_code] += 1
        if r.status_code >= 500:
            five.append(f"{what} → {r.status_code}: {r.text[:120]}")
        elif r.status_code >= 400 and not _named(r):
            unnamed.append(f"{what} → {r.status_code}: {r.text[:120]}")
        elif r.status_code == 202 and submits:
            accepted.append(r.json()["id"])

    def caller(op: Any, mode: Any, url: str) -> Any:
        def one(case: Any) -> None:
            try:
                r = case.call(base_url=url, timeout=120)
            except Exception:  # a dropped connection is counted, not raised
                transport[0] += 1
                return
            record(f"{op.method.upper()} {op.path} ({mode.value})", f"{op.method.upper()} {case.formatted_path}", r,
                   op.path == "/v1/jobs")
        return one

    with ServerProcess("--models", "digits,digits-cond", "--max-rows", "8", "--max-steps", "60",
                       "--max-queue", "256") as srv:
        schema = schemathesis.openapi.from_url(srv.url + "/openapi.json")
        ops = [r.ok() for r in schema.get_all_operations()]
        for op in ops:
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                test = fix_seed(seed)(settings(max_examples=examples, deadline=None, database=None,
                                               suppress_health_check=list(HealthCheck))(given(
                                                   op.as_strategy(generation_mode=mode))(caller(op, mode, srv.url))))
                try:
                    test()
                except Unsatisfiable:  # an operation without inputs has no invalid ones
                    pass
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            @fix_seed(seed)
            @settings(max_examples=examples * 4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(_job_bodies())
            def plausible(body: dict[str, Any]) -> None:
                """Bodies a user would send (served models, real samplers and spacings, in-range numbers): each
                accepted, or refused with a 4xx naming its field."""
                record("POST /v1/jobs (plausible, hypothesis)", f"POST /v1/jobs {body}", c.post("/v1/jobs", json=body),
                       True)
            plausible()
            alive = c.get("/healthz").status_code == 200
            ends = Counter(_wait(c, i) for i in accepted)
            why = sorted({c.get(f"/v1/jobs/{i}").json()["error"] or "" for i in accepted
                          if c.get(f"/v1/jobs/{i}").json()["status"] == "failed"})
            solo, valid = Solo(), digits_requests(4)
            ids = [c.post("/v1/jobs", json=r).json()["id"] for r in valid]
            same = sum(_wait(c, i) == "done" and np.array_equal(
                _npy(c.get(f"/v1/jobs/{i}/result?format=npy").content), solo(r)) for i, r in zip(ids, valid))
        errors = _server_errors(srv)
    total = sum(cases.values())
    part.figures = {"cases": total, "operations": len(ops), "failed_jobs": why, "by_operation": dict(cases),
                    "statuses": {str(k): v for k, v in sorted(statuses.items())}, "accepted": len(accepted),
                    "accepted_end": dict(ends), "transport_errors": transport[0]}
    part.check(f"cases over {len(ops)} operations, valid and invalid", total, total > 0)
    part.check("responses with a 5xx", len(five) if not five else f"{len(five)}: {five[0]}", not five)
    part.check("4xx without a JSON body naming the field", len(unnamed) if not unnamed else
               f"{len(unnamed)}: {unnamed[0]}", not unnamed)
    part.check("dropped connections", transport[0], transport[0] == 0)
    part.check("server tracebacks / 500 lines in its log", errors, errors == 0)
    part.check("/healthz answers after the fuzzing", alive, alive)
    part.check("generated jobs the server accepted that then failed (a check it missed)",
               f"{ends.get('failed', 0)} of {len(accepted)} ({dict(ends)}{'; ' + why[0] if why else ''})",
               ends.get("failed", 0) == 0
               and ends.get("timeout", 0) == 0)
    part.check("valid jobs after the fuzzing finish with their solo bits", f"{same}/{len(valid)}", same == len(valid))
    return part


def _job_bodies() -> Any:
    """A hypothesis strategy of plausible sample requests on digits / digits-cond: mostly valid, some not."""
    from hypothesis import strategies as st

    from ..api import catalog

    samplers = [s["name"] for s in catalog.samplers()]
    spacings = [None, *catalog.spacings()["grid"]]
    base = {"task": st.just("sample"), "sampler": st.sampled_from(samplers), "steps": st.integers(1, 30),
            "n": st.integers(1, 4), "seed": st.integers(0, 2 ** 31), "spacing": st.sampled_from(spacings)}
    plain = st.fixed_dictionaries({**base, "model": st.just("digits")},
                                  optional={"options": st.sampled_from([{"eta": 0.5}, {"eta": 1.0}, {}])})
    guided = st.fixed_dictionaries({**base, "model": st.just("digits-cond"),
                                    "classes": st.lists(st.integers(0, 9), min_size=1, max_size=3),
                                    "guidance": st.fixed_dictionaries(
                                        {"scale": st.floats(0, 8), "rule": st.sampled_from(["cfg", "apg", "cfg++"])},
                                        optional={"rescale": st.floats(0, 1)})})
    return plain | guided


# ----------------------------------------------------------------------------------------- load and soak
@dataclass
class _Tally:
    accepted: int = 0
    rejected: int = 0
    other: int = 0
    ends: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    wrong: int = 0
    checked: int = 0


def _drive(url: str, requests: list[dict[str, Any]], solo: Solo, clients: int, seconds: float,
           max_jobs: int) -> _Tally:
    """`clients` threads until `seconds` or `max_jobs`: submit (a 429 is counted and retried after a pause),
    follow the SSE stream to the end, check the result against its solo run; every 8th job is cancelled."""
    import httpx

    t, lock, n = _Tally(), threading.Lock(), [0]
    stop = time.perf_counter() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            while True:
                with lock:
                    if n[0] >= max_jobs or time.perf_counter() > stop:
                        return
                    i = n[0]
                    n[0] += 1
                req = requests[i % len(requests)]
                t0 = time.perf_counter()
                r = c.post("/v1/jobs", json=req)
                if r.status_code == 429:
                    with lock:
                        t.rejected += 1
                    time.sleep(0.1)
                    continue
                if r.status_code != 202:
                    with lock:
                        t.other += 1
                    continue
                jid = r.json()["id"]
                if i % 8 == 7:
                    c.delete(f"/v1/jobs/{jid}")
                status = _until_end(c, jid)
                ok = None
                if status == "done":
                    ok = np.array_equal(_npy(c.get(f"/v1/jobs/{jid}/result?format=npy").content), solo(req))
                with lock:
                    t.accepted += 1
                    t.ends[status] += 1
                    if status == "done":
                        t.latencies.append(time.perf_counter() - t0)
                        t.checked += 1
                        t.wrong += not ok

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return t


def load_and_soak(clients: int = 64, seconds: float = 60.0, soak_jobs: int = 1000, warm_seconds: float = 10.0,
                  max_queue: int | None = None) -> Part:
    """`clients` concurrent clients for `seconds` of mixed requests (queue capped so some get 429), then
    `soak_jobs` jobs one after another; RSS sampled throughout (warm-up first, so the baseline is steady)."""
    import httpx

    part = Part(f"Load ({clients} clients, {seconds:g} s) and soak ({soak_jobs} jobs in sequence)")
    reqs, solo = digits_requests(16), Solo()
    for r in reqs:
        solo(r)
    series: list[tuple[float, float]] = []
    max_queue = max(2, clients // 4) if max_queue is None else max_queue  # small enough that some get 429
    with ServerProcess("--models", "digits", "--max-rows", "32", "--max-queue", str(max_queue)) as srv:
        done = threading.Event()
        t_start = time.perf_counter()

        def sample() -> None:
            while not done.wait(0.25):
                series.append((time.perf_counter() - t_start, srv.rss_mb()))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _drive(srv.url, reqs, solo, clients, warm_seconds, 10 ** 9)  # warm-up: the same load, not counted
        time.sleep(1.0)
        warm_rss, t_load = srv.rss_mb(), time.perf_counter() - t_start
        load = _drive(srv.url, reqs, solo, clients, seconds, 10 ** 9)
        t_soak = time.perf_counter() - t_start
        time.sleep(1.0)
        after_load = srv.rss_mb()
        soak = _Tally()
        with httpx.Client(base_url=srv.url, timeout=300) as c:
            for i in range(soak_jobs):
                req = reqs[i % len(reqs)]
                t0 = time.perf_counter()
                jid = c.post("/v1/jobs", json=req).json()["id"]
                st = _wait(c, jid)
                soak.accepted += 1
                soak.ends[st] += 1
                soak.latencies.append(time.perf_counter() - t0)
                if st == "done" and i % 10 == 0:
                    soak.checked += 1
                    soak.wrong += not np.array_equal(_npy(c.get(f"/v1/jobs/{jid}/result?format=npy").content),
                                                     solo(req))
        time.sleep(1.0)
        final_rss, peak = srv.rss_mb(), srv.peak_rss_mb()
        rows_per_call = metric(srv.url, "ddim_rows_per_network_call")
        done.set()
        sampler.join()
        errors = _server_errors(srv)
    lost = load.accepted - sum(load.ends[s] for s in FINISHED)
    part.figures = {
        "load": {"clients": clients, "seconds": seconds, "max_queue": max_queue, "accepted": load.accepted,
                 "rejected_429": load.rejected,
                 "other_refusals": load.other, "ends": dict(load.ends), "p50": _pct(load.latencies, 50),
                 "p95": _pct(load.latencies, 95), "p99": _pct(load.latencies, 99), "checked": load.checked,
                 "wrong_bits": load.wrong, "jobs_per_s": load.accepted / seconds},
        "soak": {"jobs": soak_jobs, "ends": dict(soak.ends), "p50": _pct(soak.latencies, 50),
                 "p95": _pct(soak.latencies, 95), "p99": _pct(soak.latencies, 99), "checked": soak.checked,
                 "wrong_bits": soak.wrong},
        "rss_mb": {"after_warm_up": warm_rss, "after_load": after_load, "final": final_rss, "peak": peak},
        "rows_per_network_call": rows_per_call, "series": series, "t_load": t_load, "t_soak": t_soak,
        "lost": lost + soak_jobs - sum(soak.ends[s] for s in FINISHED)}
    part.check("load: jobs accepted (202)", load.accepted, load.accepted > 0)
    part.check("load: refused with 429 (counted, retried by the client)", load.rejected, True)
    part.check("load: refusals other than 429", load.other, load.other == 0)
    part.check("load: accepted jobs lost (no end)", lost, lost == 0)
    part.check("load: jobs failed", load.ends.get("failed", 0), load.ends.get("failed", 0) == 0)
    part.check("load: done results that differ from their solo run", f"{load.wrong} of {load.checked}",
               load.wrong == 0 and load.checked > 0)
    part.check("load: latency p50 / p95 / p99 (s)", f"{_pct(load.latencies, 50):.2f} / "
               f"{_pct(load.latencies, 95):.2f} / {_pct(load.latencies, 99):.2f}", True)
    part.check("soak: jobs done in sequence", f"{soak.ends.get('done', 0)} of {soak_jobs}",
               soak.ends.get("done", 0) == soak_jobs)
    part.check("soak: checked results that differ from their solo run", f"{soak.wrong} of {soak.checked}",
               soak.wrong == 0)
    growth = final_rss / warm_rss - 1
    part.check("RSS: final vs after warm-up (≤ 10 % growth: no leak)", f"{warm_rss:.0f} → {final_rss:.0f} MB "
               f"({growth:+.1%}; peak {peak:.0f} MB)", growth <= 0.10)
    part.check("rows per network call", f"{rows_per_call:.2f}", rows_per_call > 1)
    part.check("server tracebacks / 500 lines in its log", errors, errors == 0)
    return part


# -------------------------------------------------------------------------------------------------- faults
def _rows(store: Path) -> dict[str, str]:
    """The job store's rows (id → status), read without touching it."""
    con = sqlite3.connect(f"file:{store / 'jobs.sqlite3'}?mode=ro", uri=True)
    try:
        return dict(con.execute("SELECT id, status FROM jobs").fetchall())
    finally:
        con.close()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
        return st.st_ino, st.st_mtime_ns
    except OSError:
        return None


def kills(points: int = 5, jobs_per_point: int = 8, seed: int = 0) -> Part:
    """SIGKILL at `points` random moments of a loaded run on one job store, restart each time; then every
    accepted job must finish with its solo bits, no finished result may be written again, nothing half-written."""
    import httpx

    part = Part(f"SIGKILL at {points} random points of a loaded run")
    rng, solo = random.Random(seed), Solo()
    reqs = [{**r, "steps": 20 + r["steps"] * 3} for r in digits_requests(jobs_per_point)]
    accepted: dict[str, dict[str, Any]] = {}
    stamps: dict[str, tuple[int, int] | None] = {}
    rewritten, interrupted, delays = 0, 0, []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        for _ in range(points):
            with ServerProcess("--models", "digits", "--store", str(store), "--max-rows", "8") as srv:
                with httpx.Client(base_url=srv.url, timeout=60) as c:
                    for r in reqs:
                        resp = c.post("/v1/jobs", json=r)
                        if resp.status_code == 202:
                            accepted[resp.json()["id"]] = r
                delay = rng.uniform(0.2, 3.0)
                delays.append(round(delay, 2))
                time.sleep(delay)
                srv.kill()
            rows = _rows(store)
            interrupted += sum(rows.get(i) in ("queued", "running") for i in accepted)
            for jid, st in rows.items():
                if st == "done":
                    now = _stamp(store / "results" / jid / "result.npy")
                    if jid in stamps and stamps[jid] != now:
                        rewritten += 1
                    stamps.setdefault(jid, now)
        with ServerProcess("--models", "digits", "--store", str(store)) as srv, \
                httpx.Client(base_url=srv.url, timeout=120) as c:
            ends = Counter(_wait(c, i) for i in accepted)
            wrong = sum(not np.array_equal(_npy(c.get(f"/v1/jobs/{i}/result?format=npy").content), solo(r))
                        for i, r in accepted.items())
            pngs = sum(c.get(f"/v1/jobs/{i}/result?format=png").content[:8] == b"\x89PNG\r\n\x1a\n" for i in accepted)
        rewritten += sum(_stamp(store / "results" / j / "result.npy") != s for j, s in stamps.items())
        scratch = list((store / "results").glob(".*.tmp"))
    part.figures = {"points": points, "kill_delays_s": delays, "accepted": len(accepted), "ends": dict(ends),
                    "interrupted_and_rerun": interrupted, "lost": len(accepted) - ends.get("done", 0)}
    part.check("accepted jobs (over all restarts)", len(accepted), len(accepted) == points * len(reqs))
    part.check("jobs queued or running at a kill, run again after the restart (summed over the kills)", interrupted,
               True)
    part.check("accepted jobs done after the last restart", f"{ends.get('done', 0)} of {len(accepted)}",
               ends.get("done", 0) == len(accepted))
    part.check("results that differ from their solo run", wrong, wrong == 0)
    part.check("results that load as whole PNGs", f"{pngs} of {len(accepted)}", pngs == len(accepted))
    part.check("finished results written again (served twice)", rewritten, rewritten == 0)
    part.check("half-written scratch folders left", len(scratch), not scratch)
    return part


def drain() -> Part:
    """SIGTERM mid-run: stop admitting, exit 0 with running jobs persisted; the next start finishes them."""
    import httpx

    part = Part("SIGTERM drain")
    solo = Solo()
    reqs = [{**r, "steps": 150} for r in digits_requests(4)]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        srv = ServerProcess("--models", "digits", "--store", str(store), "--max-rows", "4")
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            ids = [c.post("/v1/jobs", json=r).json()["id"] for r in reqs]
            t0 = time.time()
            while c.get(f"/v1/jobs/{ids[0]}").json()["step"] < 5 and time.time() - t0 < 60:
                time.sleep(0.02)
        t0 = time.perf_counter()
        srv.proc.send_signal(15)
        try:  # admission stops: a submission during the drain is refused (or finds no listener)
            late = httpx.post(srv.url + "/v1/jobs", json=reqs[0], timeout=5).status_code
        except httpx.HTTPError:
            late = "connection refused"
        code = srv.stop()
        seconds = time.perf_counter() - t0
        rows = _rows(store)
        kept = sum(rows[i] in ("queued", "running") for i in ids)
        with ServerProcess("--models", "digits", "--store", str(store)) as srv2, \
                httpx.Client(base_url=srv2.url, timeout=120) as c:
            ends = [_wait(c, i) for i in ids]
            same = sum(np.array_equal(_npy(c.get(f"/v1/jobs/{i}/result?format=npy").content), solo(r))
                       for i, r in zip(ids, reqs))
    part.figures = {"exit_code": code, "drain_seconds": seconds, "kept": kept, "late_submission": late,
                    "lost": len(ids) - ends.count("done")}
    part.check("exit code after SIGTERM", code, code == 0)
    part.check("seconds from SIGTERM to exit", f"{seconds:.1f}", seconds < 60)
    part.check("a submission during the drain (503 or no listener)", late, late in (503, "connection refused"))
    part.check("unfinished jobs recorded as queued/running at exit", f"{kept} of {len(ids)}", kept == len(ids))
    part.check("after restart: done with their solo bits", f"{same} of {len(ids)} ({Counter(ends)})",
               same == len(ids))
    return part


def disconnects(repeats: int = 5) -> Part:
    """Clients that hang up mid-stream, mid-upload and mid-download change nothing for anyone."""
    import httpx

    part = Part("Clients that vanish")
    solo = Solo()
    with ServerProcess("--models", "digits", "--max-rows", "64") as srv, \
            httpx.Client(base_url=srv.url, timeout=120) as c:
        threads0 = _threads(srv.pid)
        long_req = {"task": "sample", "model": "digits", "n": 2, "steps": 60, "seed": 5}
        ids = []
        for _ in range(repeats):  # mid-SSE: read one line, hang up
            jid = c.post("/v1/jobs", json=long_req).json()["id"]
            ids.append(jid)
            with httpx.Client(base_url=srv.url, timeout=60) as other, other.stream("GET",
                                                                                  f"/v1/jobs/{jid}/events") as s:
                next(s.iter_lines())
        body = json.dumps(long_req).encode()
        for _ in range(repeats):  # mid-upload: declare the body, send a third of it, hang up
            head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            _raw(srv.url, head + body[: len(body) // 3], read=None)
        big = c.post("/v1/jobs", json={"task": "sample", "model": "digits", "n": 64, "steps": 2}).json()["id"]
        _wait(c, big)
        for fmt in ("json", "npy", "png"):  # mid-download: read a few bytes of the result, hang up
            for _ in range(repeats):
                _raw(srv.url, f"GET /v1/jobs/{big}/result?format={fmt} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), read=64)
        ends = [_wait(c, i) for i in ids]
        same = sum(np.array_equal(_npy(c.get(f"/v1/jobs/{i}/result?format=npy").content), solo(long_req))
                   for i in ids)
        alive = c.get("/healthz").status_code == 200
        after = c.post("/v1/jobs", json=long_req).json()["id"]
        after_ok = _wait(c, after) == "done"
        time.sleep(0.5)
        threads1 = _threads(srv.pid)
        errors = _server_errors(srv)
        jobs = sum(metric(srv.url, f'ddim_jobs{{status="{s}"}}') for s in ("queued", "running", *FINISHED))
        from_uploads = int(jobs) - len(ids) - 2
    part.figures = {"repeats": repeats, "threads_before": threads0, "threads_after": threads1}
    part.check(f"jobs whose SSE client hung up ({repeats}) done with their solo bits", f"{same} of {len(ids)}",
               same == len(ids) and ends.count("done") == len(ids))
    part.check(f"half-sent uploads ({repeats}) that became jobs", from_uploads, from_uploads == 0)
    part.check("/healthz and a new job after all hang-ups", f"healthz {alive}, job done {after_ok}", alive and
               after_ok)
    part.check("server tracebacks / 500 lines in its log", errors, errors == 0)
    part.check("server threads before → after", f"{threads0} → {threads1}", threads1 <= threads0 + 8)
    return part


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def cancel_frees() -> Part:
    """Cancelling a running job frees its rows at its next network call: the queued job behind it starts."""
    import httpx

    part = Part("Cancel frees rows at the next step")
    with ServerProcess("--models", "digits", "--max-rows", "8") as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as c:
        a = c.post("/v1/jobs", json={"task": "sample", "model": "digits", "n": 8, "steps": 1000}).json()["id"]
        b = c.post("/v1/jobs", json={"task": "sample", "model": "digits", "n": 8, "steps": 5}).json()["id"]
        t0 = time.time()
        while c.get(f"/v1/jobs/{a}").json()["step"] < 3 and time.time() - t0 < 60:
            time.sleep(0.01)
        queued = c.get(f"/v1/jobs/{b}").json()["status"]
        at_cancel = c.delete(f"/v1/jobs/{a}").json()["step"]
        t1 = time.perf_counter()
        while c.get(f"/v1/jobs/{b}").json()["status"] == "queued" and time.perf_counter() - t1 < 30:
            time.sleep(0.005)
        waited = time.perf_counter() - t1
        end_a, end_b = _wait(c, a), _wait(c, b)
        after = c.get(f"/v1/jobs/{a}").json()["step"] - at_cancel
    part.figures = {"steps_after_cancel": after, "queued_job_started_after_s": waited}
    part.check("the queued job waits while the running one holds every row", queued, queued == "queued")
    part.check("steps the cancelled job ran after the cancel", after, after <= 2)
    part.check("seconds until the queued job started", f"{waited:.3f}", waited < 5)
    part.check("ends (cancelled, queued job)", f"{end_a}, {end_b}", end_a == "cancelled" and end_b == "done")
    return part


# ------------------------------------------------------------------------------------------- the job store
def _in_tmpfs(folder: Path, size: str, setup: str) -> list[str]:
    """A command prefix that runs the server in a private mount namespace with a small tmpfs at `folder` (no
    root needed beyond an unprivileged user namespace): `setup` fills it or makes it read-only first."""
    return ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs {folder} && {setup} && exec \"$@\"",
            "sh"]


def namespaces_work() -> bool:
    """Whether this machine lets an unprivileged process mount a tmpfs in its own namespace."""
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def store_faults() -> Part:
    """A full disk, a read-only folder and a corrupt database: named at start-up (exit 2, one line); a disk that
    fills while serving: submissions refused with 507 naming the store, the server unharmed, back once freed."""
    import httpx

    part = Part("The job store on a full, read-only or corrupt disk")
    serve = [sys.executable, "-m", "ddim", "serve", "--port", "0", "--models", "digits"]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "disk"
        d.mkdir()
        bad = Path(tmp) / "corrupt"
        bad.mkdir()
        (bad / "jobs.sqlite3").write_bytes(b"not a database " * 200)
        r = subprocess.run([*serve, "--store", str(bad)], capture_output=True, text=True, timeout=120)
        part.check("corrupt jobs.sqlite3: exit 2, one line naming it", f"exit {r.returncode}: {r.stderr.strip()}",
                   r.returncode == 2 and "jobs.sqlite3" in r.stderr and r.stderr.count("\n") == 1)
        if not namespaces_work():
            part.check("full and read-only disks (private tmpfs via unshare)", "unshare unavailable here", True)
            return part
        fill = f"(dd if=/dev/zero of={d}/fill bs=4k 2>/dev/null; true)"
        r = subprocess.run([*_in_tmpfs(d, "256k", fill), *serve, "--store", str(d / "store")],
                           capture_output=True, text=True, timeout=120)
        part.check("full disk at start-up: exit 2, one line", f"exit {r.returncode}: {r.stderr.strip()}",
                   r.returncode == 2 and "No space left" in r.stderr and r.stderr.count("\n") == 1)
        ro = f"mkdir {d}/store && mount -o remount,ro {d}"
        r = subprocess.run([*_in_tmpfs(d, "256k", ro), *serve, "--store", str(d / "store")],
                           capture_output=True, text=True, timeout=120)
        part.check("read-only folder at start-up: exit 2, one line", f"exit {r.returncode}: {r.stderr.strip()}",
                   r.returncode == 2 and "Read-only" in r.stderr and r.stderr.count("\n") == 1)
        req = {"task": "sample", "model": "digits", "n": 4, "steps": 3}
        with ServerProcess("--models", "digits", "--store", str(d / "store"),
                           prefix=_in_tmpfs(d, "4m", "true")) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            first = _wait(c, c.post("/v1/jobs", json=req).json()["id"])
            filler = Path(f"/proc/{srv.pid}/root") / str(d).lstrip("/") / "fill"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True, timeout=60)
            full = [c.post("/v1/jobs", json={**req, "seed": s}) for s in range(5)]
            codes = Counter(r.status_code for r in full)
            named = all(r.json()["error"]["field"] == "store" for r in full if r.status_code == 507)
            ran = Counter(_wait(c, r.json()["id"]) for r in full if r.status_code == 202)
            alive = c.get("/healthz").status_code == 200
            filler.unlink()
            again = _wait(c, c.post("/v1/jobs", json={**req, "seed": 9}).json()["id"])
            errors = _server_errors(srv)
        part.check("disk fills while serving: submissions refused with 507 naming the store (or run)",
                   f"{dict(codes)}; accepted ones ended {dict(ran)}", named and set(codes) <= {202, 507}
                   and first == "done")
        part.check("the server answers /healthz on the full disk", alive, alive)
        part.check("space freed: the next job is done", again, again == "done")
        part.check("server tracebacks / 500 lines in its log", errors, errors == 0)
    return part


# ------------------------------------------------------------------------------------------ who may do what
BAD_KEYS = {"no key": {}, "bearer without a key": {"Authorization": "Bearer"},
            "another scheme": {"Authorization": "Basic YWxwaGE6a2V5"}, "empty X-API-Key": {"X-API-Key": ""},
            "wrong key": {"Authorization": "Bearer not-the-key"},
            "one character off": {"Authorization": "Bearer alpha-key-0000000000000001"},
            "8 KiB key": {"X-API-Key": "k" * 8192}}
PATHLIKE_MODELS = ["../digits", "../../etc/passwd", "/etc/passwd", "digits/../digits", "..%2Fdigits",
                   "%2e%2e%2fdigits", "file:///etc/passwd", "C:\\digits", "~/digits", "digits\x00", "./digits"]


def access(timing_calls: int = 2000, slow_clients: int = 20) -> Part:
    """Keys on every endpoint, owners per job, constant-time refusals, path-like names, body caps, slow clients."""
    import httpx

    from ..api.service import Keys

    part = Part("Who may do what")
    keys = {"alpha": "alpha-key-0000000000000000", "beta": "beta-key-1111111111111111"}
    with tempfile.TemporaryDirectory() as tmp:
        kf = Path(tmp) / "keys"
        kf.write_text("\n".join(keys.values()) + "\n")
        with ServerProcess("--models", "digits", "--api-key-file", str(kf), "--client-timeout", "2",
                           "--max-body", "65536") as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            a, b = ({"Authorization": f"Bearer {keys['alpha']}"}, {"X-API-Key": keys["beta"]})
            req = {"task": "sample", "model": "digits", "n": 2, "steps": 3}
            jid = c.post("/v1/jobs", json=req, headers=a).json()["id"]
            _wait(c, jid, headers=a)
            spec = c.get("/openapi.json", headers=a).json()
            routes = [(m.upper(), p.replace("{job_id}", jid)) for p, ms in spec["paths"].items() for m in ms
                      if p != "/healthz"]
            routes += [("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json"), ("GET", "/no/such/path")]
            matrix = Counter()
            for method, path in routes:
                for h in BAD_KEYS.values():
                    r = c.request(method, path, headers=h, json=req if method == "POST" else None)
                    matrix[r.status_code == 401 and _named(r)] += 1
            huge = c.get("/v1/models", headers={"X-API-Key": "k" * 65536})
            garbled = _raw(srv.url, b"NOT HTTP AT ALL\r\n\r\n")
            healthz = c.get("/healthz").status_code
            cross = 0
            for method, path in (("GET", ""), ("GET", "/events"), ("GET", "/result?format=png"),
                                 ("GET", "/result?format=npy"), ("GET", "/result?format=json"), ("DELETE", "")):
                r = c.request(method, f"/v1/jobs/{jid}{path}", headers=b)
                cross += r.status_code != 404
            still = c.get(f"/v1/jobs/{jid}", headers=a).json()["status"]
            http_times = {}
            for kind in ("wrong key", "one character off", "8 KiB key"):
                ts = []
                for _ in range(40):
                    t0 = time.perf_counter()
                    c.get("/v1/models", headers=BAD_KEYS[kind])
                    ts.append(time.perf_counter() - t0)
                http_times[kind] = statistics.median(ts) * 1e3
            paths = Counter()
            for m in PATHLIKE_MODELS:
                for url, body in (("/v1/jobs", {**req, "model": m}), ("/v1/images/generations", {"model": m})):
                    r = c.post(url, json=body, headers=a)
                    paths[r.status_code == 400 and r.json()["error"]["field"] == "model"] += 1
            odd_ids = Counter()
            for i in ("..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..", jid + "%00", "a" * 300):
                for suffix in ("", "/result", "/events"):
                    r = c.get(f"/v1/jobs/{i}{suffix}", headers=a)
                    odd_ids[r.status_code in (404, 400) and _named(r)] += 1
            over = c.post("/v1/jobs", content=b"{" + b" " * 70000 + b"}", headers={**a, "Content-Type":
                                                                                    "application/json"})

            def chunks():
                for _ in range(20):
                    yield b" " * 8192
            chunked = c.post("/v1/jobs", content=chunks(), headers=a)
            auth = f"Authorization: Bearer {keys['alpha']}\r\n"
            early = _raw(srv.url, (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                                   f"Content-Length: 10000000\r\n\r\n").encode(), read=4096)
            slow = _slow_clients(srv.url, auth, slow_clients)
            t0 = time.perf_counter()
            during = [_wait(c, c.post("/v1/jobs", json={**req, "seed": s}, headers=a).json()["id"], headers=a)
                      for s in range(3)]
            during_s = (time.perf_counter() - t0) / 3
            slow_result = slow.result()
            errors = _server_errors(srv)
    keys_obj = Keys(keys.values())
    inproc = {}
    for kind, presented in (("wrong key", "not-the-key"), ("one character off", "alpha-key-0000000000000001"),
                            ("8 KiB key", "k" * 8192), ("the right key", keys["alpha"])):
        ts = []
        for _ in range(timing_calls):
            t0 = time.perf_counter_ns()
            try:
                keys_obj.owner(presented)
            except Exception:  # the refusal is what is timed
                pass
            ts.append(time.perf_counter_ns() - t0)
        inproc[kind] = statistics.median(ts) / 1e3
    part.figures = {"matrix_cases": sum(matrix.values()), "routes": len(routes), "http_401_ms": http_times,
                    "inprocess_us": inproc, "slow": slow_result, "job_seconds_during_slow": during_s}
    part.check(f"every route but /healthz ({len(routes)}, /docs and unknown paths included) × "
               f"{len(BAD_KEYS)} bad credentials → 401 naming authorization",
               f"{matrix[True]} of {sum(matrix.values())}", matrix[False] == 0)
    # whole in one read it reaches the key check (401); in pieces, h11's 16 KiB limit on incomplete headers
    # answers first (400 naming headers): either is a named refusal, which one depends on how the bytes arrive
    huge_field = huge.json()["error"]["field"] if _named(huge) else None
    part.check("a 64 KiB key → 401 (or 400 naming headers from the HTTP layer's 16 KiB limit)",
               f"{huge.status_code} {huge_field}", (huge.status_code, huge_field) in ((401, "authorization"),
                                                                                      (400, "headers")))
    part.check("a request that is not HTTP → 400 JSON naming headers", garbled.split(b"\r\n")[0].decode() + " " +
               garbled.rsplit(b"\r\n", 1)[-1].decode()[:60], garbled.startswith(b"HTTP/1.1 400") and
               b'"field": "headers"' in garbled)
    part.check("/healthz without a key", healthz, healthz == 200)
    part.check("another key reads, streams, downloads or cancels a job (of 6 tries)", cross, cross == 0)
    part.check("the owner's job after those tries", still, still == "done")
    spread = max(inproc.values()) / min(inproc.values())
    close = inproc["one character off"] / inproc["wrong key"]
    part.check("key check time, median µs (wrong / one off / 8 KiB / right): a near miss takes as long as a wrong "
               "key (the compare is of sha256 digests, every key compared)", " / ".join(
                   f"{v:.1f}" for v in inproc.values()) + f" (one off / wrong {close:.2f}, max/min {spread:.2f})", True)
    part.check("401 over HTTP, median ms (wrong / one off / 8 KiB)", " / ".join(f"{v:.1f}" for v in
                                                                                  http_times.values()), True)
    part.check(f"path-like model names ({len(PATHLIKE_MODELS)} × 2 endpoints) → 400 naming model",
               f"{paths[True]} of {sum(paths.values())}", paths[False] == 0)
    part.check("path-like or oversized job ids → 404 naming the id", f"{odd_ids[True]} of {sum(odd_ids.values())}",
               odd_ids[False] == 0)
    part.check("a 70 kB body over a 64 KiB cap → 413", over.status_code, over.status_code == 413 and _named(over))
    part.check("a chunked body over the cap → 413", chunked.status_code, chunked.status_code == 413)
    part.check("a declared 10 MB body → 413 before a byte of it is sent", early.split(b"\r\n")[0].decode(),
               early.startswith(b"HTTP/1.1 413"))
    part.check(f"{slow_clients} slow-header + {slow_clients // 4} slow-body clients: closed / 408 after the 2 s "
               "client timeout", slow_result, slow_result["headers_closed"] == slow_clients
               and slow_result["body_408"] == slow_clients // 4)
    part.check("meanwhile a normal job (submit → done, s)", f"{during_s:.2f} ({Counter(during)})",
               during.count("done") == 3)
    part.check("server tracebacks / 500 lines in its log", errors, errors == 0)
    return part


class _Future:
    def __init__(self, fn: Any) -> None:
        self._out: list[Any] = []
        self._t = threading.Thread(target=lambda: self._out.append(fn()), daemon=True)
        self._t.start()

    def result(self) -> Any:
        self._t.join()
        return self._out[0]


def _slow_clients(url: str, auth: str, n: int) -> _Future:
    """n connections that send half a request line and stop, n/4 that trickle a body a byte at a time; how
    many the server closed and how many got 408, within 3× the client timeout."""
    host, port = url.removeprefix("http://").split(":")

    def go() -> dict[str, Any]:
        heads = [socket.create_connection((host, int(port)), timeout=10) for _ in range(n)]
        for s in heads:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        bodies = []
        for _ in range(n // 4):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                       f"Content-Length: 1000\r\n\r\n{{").encode())
            bodies.append(s)
        t0, got408 = time.time(), 0
        for s in bodies:
            data = b""
            while time.time() - t0 < 6:
                try:
                    s.sendall(b" ")
                except OSError:
                    break
                s.settimeout(0.3)
                try:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                    if b"\r\n\r\n" in data:
                        break
                except TimeoutError:
                    continue
            got408 += data.startswith(b"HTTP/1.1 408")
        closed = 0
        for s in heads:
            s.settimeout(max(0.1, 6 - (time.time() - t0)))
            try:
                closed += s.recv(1) == b""
            except (TimeoutError, OSError):
                pass
        for s in heads + bodies:
            s.close()
        return {"headers_closed": closed, "body_408": got408, "seconds": round(time.time() - t0, 2)}

    return _Future(go)


# ------------------------------------------------------------------------------------------------ report
def parts(quick: bool) -> list[Any]:
    """The report's parts as (name, thunk): the full run is the issue's 64 clients × 60 s and 1 000-job soak;
    quick shrinks counts and seconds (what `make test` runs)."""
    return [("fuzz", lambda: fuzz(examples=10 if quick else 60)),
            ("load", lambda: load_and_soak(clients=16 if quick else 64, seconds=8 if quick else 60,
                                           soak_jobs=60 if quick else 1000, warm_seconds=3 if quick else 10)),
            ("kills", lambda: kills(points=5 if not quick else 2, jobs_per_point=8 if not quick else 4)),
            ("drain", drain), ("disconnects", lambda: disconnects(5 if not quick else 2)),
            ("cancel", cancel_frees), ("store", store_faults), ("access", access)]


def reliability_report(out: Path, quick: bool, command: str) -> str:
    """Run every part, write report.json and the figure, return the report text."""
    from tqdm import tqdm

    from ..bench.report import header

    out.mkdir(parents=True, exist_ok=True)
    done: list[Part] = []
    for _name, thunk in tqdm(parts(quick), desc="reliability", unit="part"):
        done.append(thunk())
    load = next((p for p in done if p.title.startswith("Load")), None)
    if load is not None:
        _figure(load, out / "rss.png")
    summary = {
        "lost jobs": sum(p.figures.get("lost", 0) for p in done),
        "5xx": sum(int(k) >= 500 for p in done for k in p.figures.get("statuses", {})),
        "cross-key access": sum(0 if c.holds else 1 for p in done for c in p.checks if "another key" in c.what),
        "RSS growth": next((f"{p.figures['rss_mb']['final'] / p.figures['rss_mb']['after_warm_up'] - 1:+.1%}"
                            for p in done if "rss_mb" in p.figures), "n/a")}
    lines = [header("Service reliability: load, faults and hostile input", command), "",
             "Every part starts real `ddim serve` processes on 127.0.0.1 and drives them with bounded clients "
             "(counts and seconds capped; nothing leaves loopback). A result is checked against the same request "
             "run alone in batch-invariant mode, bit for bit. CPU only here (2 cores)" +
             (" — quick settings: counts and seconds scaled down." if quick else "."), "",
             "**Summary:** " + ", ".join(f"{k}: {v}" for k, v in summary.items()) +
             f"; checks held: {sum(c.holds for p in done for c in p.checks)} of "
             f"{sum(len(p.checks) for p in done)}.", ""]
    for p in done:
        lines += [f"## {p.title}", "", "| check | measured | holds |", "| --- | --- | --- |"]
        lines += [f"| {c.what} | {c.measured.replace('|', '/')} | {'yes' if c.holds else '**NO**'} |"
                  for c in p.checks]
        lines.append("")
    if load is not None:
        lines += ["![server RSS over the load and the soak](rss.png)", ""]
    lines += ["Deliberate 5xx, the only ones the service gives: a disk that fills while serving is a **507** "
              "(Insufficient Storage) naming `store` — the job could not be recorded, so it was not accepted; a "
              "submission during a SIGTERM drain is a **503** naming `server`. A request that is not HTTP gets a "
              "JSON 400 naming `headers` from the HTTP layer.", ""]
    (out / "report.json").write_text(json.dumps([{"title": p.title, "holds": p.holds, "checks": [c.__dict__ for c in
                                                 p.checks], "figures": p.figures} for p in done], indent=2,
                                                default=str))
    return "\n".join(lines)


def _figure(load: Part, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = load.figures["series"]
    fig, ax = plt.subplots(figsize=(8, 3))
    if series:
        ts, rs = zip(*series)
        ax.plot(ts, rs, lw=1)
    ax.axvline(load.figures["t_load"], color="grey", ls="--", lw=0.8, label="load starts")
    ax.axvline(load.figures["t_soak"], color="grey", ls=":", lw=0.8, label="soak starts")
    ax.set_xlabel("seconds")
    ax.set_ylabel("server RSS (MB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
