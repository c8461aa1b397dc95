"""The service behind `ddim serve`, framework-free: admission, limits, owners, the job store and the engine.

The HTTP app (`ddim.app.server`) only parses and presents; everything a request can be refused for and
everything a job does lives here, where tests reach it without a socket. Jobs are admitted first in, first out
while their rows fit `max_rows`; each runs `run(request, store)` in its own thread against the engine's shared
networks, so its result is bit-identical to the same request run alone in batch-invariant mode.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import shutil
import sqlite3
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UsageError
from ..core.sample import BATCH_INVARIANT_CHUNK
from .engine import Cancelled, Engine, EngineStore, Ticket, run_job
from .jobs import FINISHED, JobRecord, JobStore
from .request import ImagesRequest, parse_images_request, parse_request

RESULT_FORMATS = ("png", "npy", "json")


class ServiceError(Exception):
    """A refusal: HTTP status, the request field it names and a one-line message."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict[str, Any]:
        return {"error": {"field": self.field, "message": self.message, "status": self.status}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask and how much the service holds at once."""

    max_rows: int = 64
    max_queue: int = 256
    max_steps: int = 1000
    max_size: int = 1024
    max_prompt: int = 2000
    max_body: int = 1 << 20
    #: seconds a client may take to send its request headers or its body (408 / connection closed after)
    client_timeout: float = 30.0


def field_of(message: str) -> str:
    """The request field a library error names ("request field steps: ..." → "steps")."""
    if message.startswith("request field "):
        return message[len("request field "):].split(":", 1)[0]
    return "request"


class Keys:
    """API keys, one owner each (a key's sha256 prefix); None: no keys, every caller is 'local'."""

    def __init__(self, keys: Iterable[str] | None) -> None:
        self._keys = None if keys is None else [k.encode() for k in keys]
        if self._keys is not None and not self._keys:
            raise UsageError("the API key file holds no keys")

    @property
    def required(self) -> bool:
        return self._keys is not None

    def owner(self, presented: str | None) -> str:
        """The owner of a presented key, compared against every key in constant time; 401 otherwise."""
        if self._keys is None:
            return "local"
        given = (presented or "").encode()[:4096]
        match = None
        for k in self._keys:  # no early exit: the time does not depend on which key (if any) matched
            if hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(k).digest()):
                match = k
        if match is None:
            raise ServiceError(401, "authorization", "a valid API key is required (Authorization: Bearer KEY "
                                                     "or X-API-Key)")
        return hashlib.sha256(match).hexdigest()[:16]


@dataclass
class Job:
    """A job in memory: its row, its request, its ticket in the engine, its progress events."""

    record: JobRecord
    request: Any
    rows: int
    ticket: Ticket
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def emit(self, kind: str, **data: Any) -> None:
        with self.changed:
            self.events.append({"event": kind, **data})
            self.changed.notify_all()


def served_models(entries: Iterable[str]) -> dict[str, str]:
    """`--models` entries → {name: spec}: built-in names as themselves, a folder under its folder name."""
    from ..io.loader import BUILTIN_MODELS

    out: dict[str, str] = {}
    for e in (e.strip() for e in entries):
        if not e:
            continue
        name = e if e in BUILTIN_MODELS or e.startswith("mixture:") else Path(e).resolve().name
        if name in out:
            raise UsageError(f"--models: two entries are served as {name!r}")
        out[name] = e
    if not out:
        raise UsageError("--models: serve at least one model")
    return out


class Service:
    """Accepts, runs, persists and serves jobs on the configured models."""

    def __init__(self, models: Mapping[str, str], *, store: str | Path | None = None, limits: Limits = Limits(),
                 keys: Iterable[str] | None = None, device: str = "cpu", ttl: float = 7 * 86400,
                 max_bytes: int = 1 << 30, linger: float = 0.005, serial: bool = False,
                 chunk: int = BATCH_INVARIANT_CHUNK,
                 executor: Callable[[Job, Path, Callable[..., None]], tuple[int, int]] | None = None) -> None:
        if not models:
            raise UsageError("serve at least one model (--models)")
        self.limits, self.device, self.serial = limits, device, serial
        self.keys = Keys(keys)
        #: serial: the one-request-at-a-time queue of A1111 / ComfyUI (whole-batch calls, no padding), the
        #: baseline `ddim bench serve` measures against; results are then not batch-invariant
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise UsageError(f"chunk (rows per network call) must be an integer >= 1, got {chunk!r}")
        #: rows per network call: results equal `ddim run` with batch_invariant = chunk (True for the default 16)
        self.chunk = chunk
        self.engine = Engine(None if serial else chunk, linger)
        self.models = EngineStore(self.engine, dict(models))
        #: runs a job and writes its result files: here on the engine, or on Ray Serve replicas
        self.executor = executor or self._local
        self.jobs = JobStore(store, ttl=ttl, max_bytes=max_bytes)
        self._live: dict[str, Job] = {}
        #: recently finished jobs, kept so that a stream that started late still gets every event
        self._recent: OrderedDict[str, Job] = OrderedDict()
        self._queue: deque[Job] = deque()
        self._rows_running = 0
        self._cv = threading.Condition()
        self._closing = False
        self._draining = False
        self._threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self.started = time.time()
        self.finished_images = 0
        self.step_seconds: deque[float] = deque(maxlen=512)
        for name in self.models.names():  # load now: a broken folder is named at start-up, not at the first job
            self.models.get(name, device)
        self.jobs.expire()
        for rec in self.jobs.unfinished():  # accepted before a restart: run again, same bits
            req = parse_request(rec.request)
            self._enqueue(Job(rec, req, self._rows(req), Ticket(rec.id)))
        self._admitter = threading.Thread(target=self._admit_loop, name="ddim-admit", daemon=True)
        self._admitter.start()

    # -------------------------------------------------------------------------------------- submit
    def submit(self, body: bytes | str | dict[str, Any], owner: str = "local") -> Job:
        """Validate, check the limits, record (committed) and queue one request; ServiceError if refused."""
        self._check_body(body)
        try:
            req = parse_request(body)
        except UsageError as e:
            raise ServiceError(400, field_of(str(e)), str(e)) from None
        req = self.check(req)
        with self._cv:
            if self._closing or self._draining:
                raise ServiceError(503, "server", "the server is shutting down; retry when it is back")
            if len(self._queue) >= self.limits.max_queue:
                raise ServiceError(429, "queue", f"the queue is full ({self.limits.max_queue} jobs); retry later")
            job_id = uuid.uuid4().hex
            try:
                rec = self.jobs.add(job_id, owner, req.model_dump(mode="json"))
            except (OSError, sqlite3.Error) as e:  # a full disk: refused, so nothing accepted is lost
                raise ServiceError(507, "store", f"the job store cannot record the job ({e}); nothing was "
                                                 "accepted, retry later") from None
            job = Job(rec, req, self._rows(req), Ticket(job_id))
            self._enqueue(job)
        return job

    def _check_body(self, body: Any) -> None:
        if isinstance(body, bytes | str) and len(body) > self.limits.max_body:
            raise ServiceError(413, "body", f"the body is over {self.limits.max_body} bytes")

    def check(self, req: Any) -> Any:
        """The service's own limits and rules on a parsed request; the request as it will run."""
        lim = self.limits
        try:
            self.models.spec(req.model)
        except UsageError as e:
            raise ServiceError(400, "model", str(e)) from None
        if req.device != self.device:
            raise ServiceError(400, "device", f"this server runs on {self.device}; device must be {self.device!r}")
        if req.compile:
            raise ServiceError(400, "compile", "the server decides compilation; compile must be false")
        mine = True if self.chunk == BATCH_INVARIANT_CHUNK else self.chunk
        if "batch_invariant" in req.model_fields_set and req.batch_invariant not in (mine, self.chunk):
            raise ServiceError(400, "batch_invariant", f"this server always makes batch-invariant calls of "
                                                       f"{self.chunk} rows (batch_invariant: {json.dumps(mine)})")
        if self._rows(req) > lim.max_rows:
            raise ServiceError(400, "n", f"{self._rows(req)} rows is over this server's max_rows={lim.max_rows}")
        if req.steps > lim.max_steps or (req.timesteps is not None and len(req.timesteps) > lim.max_steps):
            given = "" if "steps" in req.model_fields_set or req.timesteps is not None else \
                f" (steps {req.steps} is the default: give steps)"
            raise ServiceError(400, "steps", f"steps is over this server's max_steps={lim.max_steps}{given}")
        size = getattr(req, "size", None)
        if size is not None and max(size) > lim.max_size:
            raise ServiceError(400, "size", f"size {size[0]}x{size[1]} is over this server's max_size={lim.max_size}")
        for p in [*(req.prompt or []), req.negative_prompt or "", getattr(req, "to_prompt", None) or ""]:
            if len(p) > lim.max_prompt:
                raise ServiceError(400, "prompt", f"a prompt is over {lim.max_prompt} characters")
        data = getattr(req, "data", None)
        if data is not None:
            from ..io.data import BUILTIN

            if data not in BUILTIN and not data.startswith("data:"):
                raise ServiceError(400, "data", f"the server reads built-in datasets ({', '.join(BUILTIN)}) or "
                                                f"base64 data URIs, never a path; got {data[:80]!r}")
        direction = getattr(req, "direction", None)
        if direction is not None and not direction.startswith("class:"):
            raise ServiceError(400, "direction", "the server takes class:A-B directions, never a path")
        req = req.model_copy(update={"batch_invariant": False if self.serial else mine})
        self._resolve(req)
        return req

    def _resolve(self, req: Any) -> None:
        """Resolve the plan now (model defaults, sampler, options, size) so a bad one is a 400, not a failed job."""
        from .run import check_condition, input_rows, resolve_plan

        try:
            model = self.models.get(req.model, req.device, req.dtype)
            check_condition(req, model)
            rows = None
            if getattr(req, "data", None) is not None and getattr(req, "endpoints", None) is None:
                rows = input_rows(req, model)[0]
            resolve_plan(req, model, rows)
        except UsageError as e:
            raise ServiceError(400, field_of(str(e)), str(e)) from None

    @staticmethod
    def _rows(req: Any) -> int:
        n = len(req.seeds) if getattr(req, "seeds", None) is not None else getattr(req, "n", 1)
        index = getattr(req, "index", None)
        return len(index) if index else n

    # ------------------------------------------------------------------------------------- running
    def _enqueue(self, job: Job) -> None:
        with self._cv:
            self._live[job.record.id] = job
            self._queue.append(job)
            self._cv.notify_all()

    def position(self, job: Job) -> int:
        """0-based place in the queue (0: next); -1 once admitted."""
        with self._cv:
            for i, j in enumerate(self._queue):
                if j is job:
                    return i
        return -1

    def _admit_loop(self) -> None:
        while True:
            with self._cv:
                while not self._closing and not self._admissible():
                    self._cv.wait()
                if self._closing:
                    return
                job = self._queue.popleft()
                self._rows_running += job.rows
            worker = threading.Thread(target=self._work, args=(job,), name=f"job-{job.record.id[:8]}", daemon=True)
            self._threads.add(worker)
            worker.start()

    def _admissible(self) -> bool:
        if not self._queue:
            return False
        if self.serial:  # the one-request-at-a-time queue the benchmark compares against
            return self._rows_running == 0
        return self._rows_running == 0 or self._rows_running + self._queue[0].rows <= self.limits.max_rows

    def _local(self, job: Job, scratch: Path, emit: Callable[..., None]) -> tuple[int, int]:
        return execute(self.engine, self.models, job.request, job.ticket, scratch, emit)

    def _work(self, job: Job) -> None:
        rid = job.record.id
        scratch = self.jobs.results / f".{rid}.tmp"
        try:
            if job.ticket.cancelled.is_set():
                raise Cancelled(rid)
            t0 = time.time()
            self._record(rid, status="running", started=t0)
            job.record.status, job.record.started = "running", t0
            job.emit("status", status="running")
            last = [time.perf_counter()]

            def emit(kind: str, **data: Any) -> None:
                if kind == "progress":
                    now = time.perf_counter()
                    self.step_seconds.append(now - last[0])
                    last[0] = now
                    job.record.step, job.record.steps = data["step"], data["steps"]
                job.emit(kind, **data)

            nfe, images = self.executor(job, scratch, emit)
            self.jobs.commit_result(rid, scratch, finished=time.time(), nfe=nfe, step=job.record.step,
                                    steps=job.record.steps)
            self.finished_images += images
            self._finish(job, "done")
        except Cancelled:
            if self._closing:  # shutting down, not cancelled by a client: the row stays as it was, to rerun
                return
            self._record(rid, status="cancelled", finished=time.time(), step=job.record.step,
                         steps=job.record.steps, nfe=job.ticket.calls)
            self._finish(job, "cancelled")
        except Exception as e:  # a failed job is reported on the job, never takes the service down
            if self._closing:
                return
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            self._record(rid, status="failed", finished=time.time(), error=msg, step=job.record.step,
                         steps=job.record.steps, nfe=job.ticket.calls)
            job.record.error = msg
            self._finish(job, "failed")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            with self._cv:
                self._rows_running -= job.rows
                self._cv.notify_all()

    def _record(self, job_id: str, **fields: Any) -> None:
        """Update a job's row; if the store cannot be written (a full disk) the row keeps its last state, so a
        restart runs the job again rather than losing it."""
        try:
            self.jobs.update(job_id, **fields)
        except (OSError, sqlite3.Error):
            pass

    def _finish(self, job: Job, status: str) -> None:
        job.record.status, job.record.finished = status, time.time()
        job.emit("status", status=status, error=job.record.error)
        with self._cv:
            self._live.pop(job.record.id, None)
            self._recent[job.record.id] = job
            while len(self._recent) > 256:
                self._recent.popitem(last=False)
        try:
            self.jobs.expire()
        except (OSError, sqlite3.Error):  # a full disk: expiry waits for the next finished job
            pass

    def wait(self, job: Job, timeout: float | None = None) -> str:
        """Block until the job has finished (or the timeout passed); its status."""
        with job.changed:
            job.changed.wait_for(lambda: job.record.status in FINISHED, timeout)
        return job.record.status

    def generate(self, body: bytes | str, owner: str = "local") -> dict[str, Any]:
        """The OpenAI images API's synchronous call: a sample job, waited for, its images as base64 PNGs."""
        self._check_body(body)
        try:
            ir = parse_images_request(body)
        except UsageError as e:
            raise ServiceError(400, field_of(str(e)), str(e)) from None
        try:
            job = self.submit(self.images_job(ir), owner)
        except ServiceError as e:  # name the field of the images request, not of the job behind it
            field = {"guidance": "guidance_scale", "classes": "prompt"}.get(e.field, e.field)
            raise ServiceError(e.status, field, e.message) from None
        status = self.wait(job)
        if status != "done":
            raise ServiceError(422 if status == "failed" else 409, "request",
                               f"the generation {status}" + (f": {job.record.error}" if job.record.error else ""))
        data = json.loads(self.result(job.record.id, owner, "json")[0])
        return {"created": int(job.record.submitted), "id": job.record.id,
                "data": [{"b64_json": b} for b in data["images"]]}

    def images_job(self, ir: ImagesRequest) -> dict[str, Any]:
        """The sample request behind an OpenAI-shaped one."""
        name = ir.model or self.models.names()[0]
        try:
            model = self.models.get(name, self.device)
        except UsageError as e:
            raise ServiceError(400, "model", str(e)) from None
        req: dict[str, Any] = {"task": "sample", "model": name, "n": ir.n, "seed": ir.seed}
        kind = model.condition_kind
        if kind == "prompt":
            req["prompt"] = [ir.prompt or ""]
            if ir.negative_prompt is not None:
                req["negative_prompt"] = ir.negative_prompt
        elif ir.negative_prompt is not None:
            raise ServiceError(400, "negative_prompt", f"{name} takes no prompts")
        elif kind == "class":
            if ir.prompt is not None:
                if not ir.prompt.strip().isdigit():
                    raise ServiceError(400, "prompt", f"{name} is class-conditional: the prompt is a class index, "
                                                      "e.g. \"7\" (or leave it out for unconditional samples)")
                req["classes"] = [int(ir.prompt)]
        elif ir.prompt:
            raise ServiceError(400, "prompt", f"{name} is unconditional: leave the prompt out")
        if ir.size is not None:
            w, h = (int(v) for v in ir.size.split("x"))
            req["size"] = [h, w]
        for k, v in (("steps", ir.steps), ("sampler", ir.sampler)):
            if v is not None:
                req[k] = v
        if ir.guidance_scale is not None:
            req["guidance"] = {"scale": ir.guidance_scale}
        return req

    def describe_models(self) -> list[dict[str, Any]]:
        from .catalog import describe_model

        return [describe_model(n, self.models.get(n, self.device)) for n in self.models.names()]

    # ------------------------------------------------------------------------------------ queries
    def record(self, job_id: str, owner: str) -> JobRecord:
        """The job's current row for its owner (404 for anyone else: another key's job does not exist for you)."""
        live = self._live.get(job_id)
        rec = live.record if live is not None else self.jobs.get(job_id)
        if rec is None or (rec.owner != owner):
            raise ServiceError(404, "id", f"no job {job_id!r}")
        return rec

    def status(self, job_id: str, owner: str) -> dict[str, Any]:
        rec = self.record(job_id, owner)
        live = self._live.get(job_id)
        return {"id": rec.id, "status": rec.status, "step": rec.step, "steps": rec.steps,
                "nfe": rec.nfe if live is None else live.ticket.calls, "position": -1 if live is None else
                self.position(live), "submitted": rec.submitted, "started": rec.started, "finished": rec.finished,
                "error": rec.error}

    def live(self, job_id: str, owner: str) -> Job | None:
        """The job with its events (running, queued or recently finished); None once only its row is left."""
        self.record(job_id, owner)
        with self._cv:
            return self._live.get(job_id) or self._recent.get(job_id)

    def cancel(self, job_id: str, owner: str) -> dict[str, Any]:
        """Cancel a queued or running job (its rows leave the batch at its next network call); a finished job
        is left as it is."""
        rec = self.record(job_id, owner)
        with self._cv:
            job = self._live.get(job_id)
            if job is not None:
                job.ticket.cancelled.set()
                if job in self._queue:
                    self._queue.remove(job)
                    self._live.pop(job_id, None)
                    self._recent[job_id] = job
                    self.jobs.update(job_id, status="cancelled", finished=time.time())
                    job.record.status = "cancelled"
                    job.emit("status", status="cancelled", error=None)
        return self.status(rec.id, owner)

    def result(self, job_id: str, owner: str, fmt: str = "png") -> tuple[bytes, str]:
        """The finished result as PNG, .npy (as `ddim run` writes it) or JSON (base64 images + provenance)."""
        if fmt not in RESULT_FORMATS:
            raise ServiceError(400, "format", f"format must be one of {', '.join(RESULT_FORMATS)}")
        rec = self.record(job_id, owner)
        if rec.status == "expired":
            raise ServiceError(410, "id", f"the result of job {job_id} has expired")
        if rec.status != "done":
            raise ServiceError(409, "id", f"job {job_id} is {rec.status}" + (f": {rec.error}" if rec.error else ""))
        folder = self.jobs.result_dir(job_id)
        name = {"png": "result.png", "npy": "result.npy", "json": "result.json"}[fmt]
        media = {"png": "image/png", "npy": "application/octet-stream", "json": "application/json"}[fmt]
        if fmt == "png" and not (folder / name).exists() and (folder / "result.npy").exists():
            raise ServiceError(400, "format", f"a {json.loads(rec.request)['task']} result has no picture; "
                                              "use npy or json")
        try:
            return (folder / name).read_bytes(), media
        except FileNotFoundError:
            raise ServiceError(410, "id", f"the result of job {job_id} is gone") from None

    def queue_depth(self) -> int:
        with self._cv:
            return len(self._queue)

    def running(self) -> int:
        with self._cv:
            return len(self._live) - len(self._queue)

    def metrics(self) -> str:
        """Prometheus text: queue depth, jobs by state, rows per network call, images/s, step latency."""
        k = self.engine.counts
        steps = sorted(self.step_seconds)

        def q(p: float) -> float:
            return steps[min(len(steps) - 1, int(p * len(steps)))] if steps else 0.0
        up = max(time.time() - self.started, 1e-9)
        lines = ["# TYPE ddim_queue_depth gauge", f"ddim_queue_depth {self.queue_depth()}",
                 "# TYPE ddim_jobs_running gauge", f"ddim_jobs_running {self.running()}",
                 "# TYPE ddim_jobs gauge"]
        lines += [f'ddim_jobs{{status="{s}"}} {c}' for s, c in self.jobs.counts().items()]
        lines += ["# TYPE ddim_network_calls_total counter", f"ddim_network_calls_total {k.calls}",
                  "# TYPE ddim_network_rows_total counter", f"ddim_network_rows_total {k.rows}",
                  "# TYPE ddim_rows_per_network_call gauge", f"ddim_rows_per_network_call {k.rows_per_call:.4f}",
                  "# TYPE ddim_ticks_total counter", f"ddim_ticks_total {k.ticks}",
                  "# TYPE ddim_images_total counter", f"ddim_images_total {self.finished_images}",
                  "# TYPE ddim_images_per_second gauge", f"ddim_images_per_second {self.finished_images / up:.6f}",
                  "# TYPE ddim_step_seconds summary"]
        lines += [f'ddim_step_seconds{{quantile="{p}"}} {q(p):.6f}' for p in (0.5, 0.95, 0.99)]
        return "\n".join(lines) + "\n"

    def stop_admitting(self) -> None:
        """The drain's first step (on SIGTERM): new submissions get 503; queued and running jobs carry on."""
        with self._cv:
            self._draining = True

    def close(self) -> None:
        """Stop admitting; running jobs are cancelled and, being recorded as running, rerun at the next start."""
        with self._cv:
            self._closing = True
            live = list(self._live.values())
            self._cv.notify_all()
        for j in live:
            j.ticket.cancelled.set()
        self.engine.close()
        for t in list(self._threads):  # each stops at its next network call; its row stays 'running'
            t.join(timeout=30)
        self.jobs.close()


def images_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The JSON schema of the OpenAI-shaped images request."""
    return ImagesRequest.model_json_schema(ref_template=ref_template)


def _png(images: Any) -> bytes:
    """A grid of images in [-1, 1] as PNG bytes."""
    import torch
    from PIL import Image

    from ..io.plots import image_grid_array

    grid = image_grid_array(images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images)))
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return buf.getvalue()


def _b64_pngs(images: Any) -> list[str]:
    """One PNG per image (N, C, H, W) in [-1, 1] (a tensor or an array), pixel for pixel (no border), as base64
    text; 2-D points have no pictures."""
    import torch
    from PIL import Image

    from ..io.plots import images_uint8

    if images.ndim != 4:
        return []
    x = images_uint8(images if isinstance(images, torch.Tensor) else torch.from_numpy(images)).transpose(0, 2, 3, 1)
    out = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def execute(engine: Engine, store: EngineStore, request: Any, ticket: Ticket, scratch: Path,
            emit: Callable[..., None]) -> tuple[int, int]:
    """Run one job as `ticket` on the engine's shared networks, write its result files into `scratch`, emit
    progress and previews; (NFE, images made)."""
    from .run import run

    def on_step(i: int, steps: int) -> None:
        emit("progress", step=i, steps=steps, calls=ticket.calls)

    def on_preview(p: Any) -> None:  # the x̂0 grid, and x̂0 and x_t per sample (the explorer's trajectory)
        emit("preview", step=p.step, steps=p.steps, png=base64.b64encode(_png(p.images)).decode(),
             images=_b64_pngs(p.images), states=_b64_pngs(p.states) if p.states is not None else [])

    result = run_job(engine, ticket, lambda: run(request, store, preview=on_preview, on_step=on_step))
    _write_result(result, scratch)
    return result.stats.nfe, len(result.main) if result.task in ("sample", "img2img") else 0


def _write_result(result: Any, folder: Path) -> None:
    """result.npy (exactly as `ddim run` writes it), result.png (its picture), result.json (base64 + provenance)."""
    from ..io.checkpoint import atomic_save_npy
    from .outputs import PICTURE_TASKS, save_result

    folder.mkdir(parents=True, exist_ok=True)
    if result.task in ("sample", "img2img") and result.main.ndim == 4:  # the grid from the pixels, no figure
        atomic_save_npy(folder / "result.npy", result.main)
        (folder / "result.png").write_bytes(_png(result.main))
    else:
        save_result(result, folder / ("result.png" if result.task in PICTURE_TASKS else "result.npy"))
    shown = result.task in ("sample", "img2img")  # the main array's pictures are `images`, not repeated
    body = {"task": result.task, "output": result.output, "shape": list(result.main.shape),
            "images": _b64_pngs(result.main) if shown else [],
            "pictures": {k: _b64_pngs(v) if v.ndim == 4 else [_b64_pngs(row) for row in v]
                         for k, v in result.arrays.items() if v.ndim in (4, 5) and not (shown and k == result.output)},
            "summary": result.summary, "labels": result.labels, "provenance": result.provenance,
            "nfe": result.stats.nfe, "seconds": result.seconds}
    (folder / "result.json").write_text(json.dumps(body))
