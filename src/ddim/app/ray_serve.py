"""`ddim serve --ray`: the same service past one machine. One ingress replica runs the FastAPI app, the job store
and admission; `Worker` replicas (scaled, or autoscaled) each run the batching engine on their own copy of the
models, so jobs routed to one replica share its network calls. A job streams its progress, previews and finally
its result files back to the ingress, which stores them as a local run would."""

from __future__ import annotations

import asyncio
import queue
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from ..core.errors import UsageError

APP = "ddim"


def require_ray() -> Any:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UsageError("ddim serve --ray needs the 'ray' extra: pip install 'ddim[ray]'") from None
    return ray, serve


def _worker_class(serve: Any) -> Any:
    class Worker:
        """A replica: the engine over its own models; `run` streams one job's events, then its files."""

        def __init__(self, models: dict[str, str], device: str, chunk: int) -> None:
            from ..api.engine import Engine, EngineStore

            self.engine = Engine(chunk)
            self.store = EngineStore(self.engine, models)
            self.device = device
            for name in self.store.names():
                self.store.get(name, device)
            self.tickets: dict[str, Any] = {}
            try:
                self.replica = serve.get_replica_context().replica_id.unique_id
            except Exception:  # outside a replica (never in service)
                self.replica = "local"

        def cancel(self, job_id: str) -> bool:
            t = self.tickets.get(job_id)
            if t is not None:
                t.cancelled.set()
            return t is not None

        async def run(self, job_id: str, request: dict[str, Any]):
            from ..api.engine import Cancelled, Ticket
            from ..api.request import parse_request
            from ..api.service import execute

            events: queue.Queue = queue.Queue()
            ticket = self.tickets[job_id] = Ticket(job_id)

            def work() -> None:
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        scratch = Path(tmp) / "result"
                        nfe, images = execute(self.engine, self.store, parse_request(request), ticket, scratch,
                                              lambda kind, **d: events.put({"event": kind, **d}))
                        files = {p.name: p.read_bytes() for p in scratch.iterdir()}
                        events.put({"event": "result", "files": files, "nfe": nfe, "images": images,
                                    "worker": self.replica})
                    except Cancelled:
                        events.put({"event": "cancelled"})
                    except Exception as e:
                        events.put({"event": "error", "message": str(e).splitlines()[0] if str(e) else
                                    type(e).__name__})

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            try:
                while True:
                    ev = await asyncio.to_thread(events.get)
                    yield ev
                    if ev["event"] in ("result", "cancelled", "error"):
                        return
            finally:
                self.tickets.pop(job_id, None)

    return Worker


class RayExecutor:
    """The ingress's executor: each job streamed from a Worker replica; cancel is forwarded to that job."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.workers: dict[str, str] = {}

    def __call__(self, job: Any, scratch: Path, emit: Any) -> tuple[int, int]:
        from ..api.engine import Cancelled

        jid = job.record.id
        stream = self.handle.options(stream=True).run.remote(jid, job.request.model_dump(mode="json"))
        forwarded = False
        for ev in stream:
            if job.ticket.cancelled.is_set() and not forwarded:
                self.handle.cancel.remote(jid)
                forwarded = True
            kind = ev.pop("event")
            if kind == "result":
                scratch.mkdir(parents=True, exist_ok=True)
                for name, data in ev["files"].items():
                    (scratch / name).write_bytes(data)
                self.workers[jid] = ev["worker"]
                emit("worker", worker=ev["worker"])
                return ev["nfe"], ev["images"]
            if kind == "cancelled":
                raise Cancelled(jid)
            if kind == "error":
                raise RuntimeError(ev["message"])
            emit(kind, **ev)
        raise RuntimeError("the worker replica stopped without a result")


def serve_ray(models: dict[str, str], options: dict[str, Any], host: str, port: int, *,
              cors: list[str] | None = None, replicas: int = 1, max_replicas: int | None = None) -> int:
    """Start a local Ray instance (or join RAY_ADDRESS), deploy ingress + workers, block until SIGINT/SIGTERM."""
    ray, serve = require_ray()
    if port == 0:
        from .server import bind

        sock = bind(host, 0)
        port = sock.getsockname()[1]
        sock.close()
    device = options.get("device", "cpu")
    scaling: dict[str, Any] = ({"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas}}
                               if max_replicas is not None else {"num_replicas": replicas})
    Worker = serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0}, **scaling)(
        _worker_class(serve))

    def build_app() -> Any:
        from ..api.service import Service
        from .server import create_app

        executor = RayExecutor(serve.get_deployment_handle("Worker", app_name=APP))
        return create_app(Service(models, executor=executor, **options), cors=cors)

    @serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
    @serve.ingress(build_app)
    class Ingress:
        def __init__(self, worker: Any) -> None:
            self.worker = worker

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(Ingress.bind(Worker.bind(models, device, options.get("chunk", 16))), name=APP, route_prefix="/")
        print(f"ddim serve: http://{host}:{port}/ (Ray Serve, {replicas} worker replica(s); models: "
              f"{', '.join(models)}; explorer at /, API docs at /docs)", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
