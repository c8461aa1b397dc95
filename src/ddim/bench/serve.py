"""`ddim bench serve`: our step-level batching server beside a one-request-at-a-time queue (the A1111 / ComfyUI
model: whole-request calls, no padding), both real `ddim serve` processes on 127.0.0.1 driven by the same
bounded clients in the same run. Counts and seconds are capped; the clients stop by themselves."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .process import ServerProcess, metric


@dataclass
class Load:
    """One measured configuration: model, clients, the request mix and the caps."""

    name: str
    models: str
    requests: list[dict[str, Any]]
    clients: int
    max_requests: int
    max_seconds: float


@dataclass
class Measured:
    mode: str
    done: int = 0
    failed: int = 0
    rejected: int = 0
    images: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    rows_per_call: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        return float(np.percentile(self.latencies, p)) if self.latencies else float("nan")


#: the servers measured: ours at the default chunk, ours at chunk 64, and the baseline
MODES = (("ddim serve, chunk 16", ["--chunk", "16"]), ("ddim serve, chunk 64", ["--chunk", "64"]),
         ("one request at a time", ["--serial"]))


def drive(url: str, load: Load, mode: str) -> Measured:
    """`load.clients` threads, each submitting a request and waiting for its end event, until the caps."""
    import httpx

    m = Measured(mode)
    lock = threading.Lock()
    counter = [0]
    t0 = time.perf_counter()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            while True:
                with lock:
                    i = counter[0]
                    if i >= load.max_requests or time.perf_counter() - t0 > load.max_seconds:
                        return
                    counter[0] += 1
                req = load.requests[i % len(load.requests)]
                start = time.perf_counter()
                r = c.post("/v1/jobs", json=req)
                if r.status_code == 429:
                    with lock:
                        m.rejected += 1
                    time.sleep(0.05)
                    continue
                jid = r.json()["id"]
                status = "failed"
                with c.stream("GET", f"/v1/jobs/{jid}/events") as s:
                    for line in s.iter_lines():
                        if line.startswith("event: end"):
                            status = "end"
                st = c.get(f"/v1/jobs/{jid}").json()["status"]
                with lock:
                    if status == "end" and st == "done":
                        m.done += 1
                        m.images += req.get("n", 1)
                        m.latencies.append(time.perf_counter() - start)
                    else:
                        m.failed += 1

    threads = [threading.Thread(target=client) for _ in range(load.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m.seconds = time.perf_counter() - t0
    m.rows_per_call = metric(url, "ddim_rows_per_network_call")
    return m


def measure(load: Load) -> list[Measured]:
    """The same load against the batching server (chunks of 16 and of 64 rows) and the serial queue, one after
    the other, each warmed up first."""
    from tqdm import tqdm

    out = []
    for mode, flags in tqdm(MODES, desc=f"serve bench: {load.name}", unit="server"):
        with ServerProcess("--models", load.models, "--max-queue", "4096", "--max-rows", "64", *flags,
                           timeout=300) as srv:
            warm = Load(load.name, load.models, load.requests[:2], 2, 2, 60)
            drive(srv.url, warm, mode)
            m = drive(srv.url, load, mode)
            m.peak_rss_mb = srv.peak_rss_mb()
            out.append(m)
    return out


def loads(quick: bool, sd_folder: str | None) -> list[Load]:
    clients = 4 if quick else 16
    cap, secs = (12, 60) if quick else (128, 180)
    mix = [{"task": "sample", "model": "digits", "n": 1 + i % 4, "steps": (20, 30, 10, 25)[i % 4],
            "sampler": ("ddim", "dpmpp_2m", "unipc", "heun")[i % 4], "seed": i} for i in range(16)]
    guided = [{"task": "sample", "model": "digits-cond", "n": 1 + i % 3, "steps": (20, 15, 25)[i % 3],
               "classes": [i % 10], "guidance": {"scale": (1.0, 2.0, 3.5, 5.0)[i % 4]}, "seed": i}
              for i in range(16)]
    out = [Load("digits, mixed samplers", "digits", mix, clients, cap, secs),
           Load("digits-cond, mixed guidance", "digits-cond", guided, clients, cap, secs)]
    if sd_folder is not None:
        name = Path(sd_folder).resolve().name
        sd = [{"task": "sample", "model": name, "prompt": [p], "n": 1, "steps": 8, "seed": i,
               "guidance": {"scale": 4.0}} for i, p in enumerate(("a red cube", "a blue ball", "green", "sky"))]
        out.append(Load("tiny SD folder, prompts + CFG", sd_folder, sd, clients, cap // 4, secs))
    return out


def serve_report(out: Path, quick: bool, command: str, sd_folder: str | None = None) -> str:
    """Measure every load, write the figure, return the report text."""
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # the tiny random folder is scratch, not part of the report
        if sd_folder is None and not quick:
            from ..io.random_folders import random_folder

            sd_folder = str(random_folder(Path(tmp) / "tiny-sd"))
        return _report(out, quick, command, sd_folder)


def _report(out: Path, quick: bool, command: str, sd_folder: str | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import header

    rows, results = [], []
    for load in loads(quick, sd_folder):
        ms = measure(load)
        results.append((load, ms))
        for m in ms:
            rows.append(f"| {load.name} | {m.mode} | {load.clients} | {m.done} | {m.rejected} | {m.failed} | "
                        f"{m.images_per_s:.2f} | {m.pct(50):.2f} | {m.pct(95):.2f} | {m.rows_per_call:.2f} | "
                        f"{m.peak_rss_mb:.0f} |")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [r[0].name for r in results]
    xs = np.arange(len(names))
    width = 0.8 / len(MODES)
    for k, (label, fn) in enumerate((("images/s", lambda m: m.images_per_s), ("p95 latency (s)",
                                                                             lambda m: m.pct(95)))):
        for j, (mode, _) in enumerate(MODES):
            axes[k].bar(xs + (j - 1) * width, [fn(r[1][j]) for r in results], width, label=mode)
        axes[k].set_xticks(xs, names, fontsize=7)
        axes[k].set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "serve.png", dpi=120)
    plt.close(fig)
    lines = [header("Serving: step-level batching vs one request at a time", command), "",
             "All servers are real `ddim serve` processes on 127.0.0.1: ours with `--chunk 16` (the default: "
             "results equal `ddim run` in its default batch-invariant mode) and `--chunk 64` (results equal "
             "`ddim run` with `batch_invariant: 64`), and the baseline `--serial` — one job at a time, "
             "whole-request network calls without padding, as AUTOMATIC1111's and ComfyUI's queues run. The same "
             "bounded clients (each: submit, wait for the SSE end event, repeat) drive each in this run, after a "
             "two-request warm-up. Latency is submit → end event. CPU only here (2 cores).", "",
             "| load | server | clients | done | 429 | failed | images/s | p50 s | p95 s | rows/call | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows, ""]
    verdicts = []
    for load, ms in results:
        serial = ms[-1]
        for m in ms[:-1]:
            ratio = m.images_per_s / serial.images_per_s if serial.images_per_s else float("nan")
            lines.append(f"- {load.name}, {m.mode}: **{ratio:.2f}×** the serial throughput at {load.clients} "
                         f"clients; p95 {m.pct(95):.2f} s vs {serial.pct(95):.2f} s.")
            if load is results[0][0]:
                verdicts.append(f"{m.mode}: {'met' if ratio >= 3 and m.pct(95) <= serial.pct(95) else 'not met'}"
                                f" ({ratio:.2f}×)")
    lines += ["", f"Goal (digits, 16 clients: ≥ 3× serial throughput, p95 no worse) — {'; '.join(verdicts)}"
                  f"{' — quick run' if quick else ''}.", "", "![throughput and latency](serve.png)", ""]
    (out / "serve.json").write_text(json.dumps([{"load": ld.name, "clients": ld.clients, **{
        m.mode: {"done": m.done, "rejected": m.rejected, "failed": m.failed, "images_per_s": m.images_per_s,
                 "p50": m.pct(50), "p95": m.pct(95), "rows_per_call": m.rows_per_call, "peak_rss_mb": m.peak_rss_mb}
        for m in ms}} for ld, ms in results], indent=2))
    return "\n".join(lines)
