"""`ddim serve`: the HTTP front end of `ddim.api.service.Service` (FastAPI + uvicorn). It parses and presents:
bodies are read with a size cap and handed to the service as bytes, refusals become JSON errors naming the field.
"""


import asyncio
import json
from pathlib import Path
from typing import Any

from ..core.errors import UsageError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: paths that need no key: liveness and the explorer page (its scripts and styles are under /static/)
PUBLIC = ("/healthz", "/")


def require_serve() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError("ddim serve needs the 'serve' extra: pip install 'ddim[serve]' (fastapi, uvicorn)") from None


def create_app(service: Any, *, cors: list[str] | None = None) -> Any:
    """The FastAPI app over a Service: jobs, events, results, the OpenAI-shaped images endpoint, listings."""
    require_serve()
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from ..api import catalog
    from ..api.service import ServiceError

    app = FastAPI(title="ddim", version=_version(), description="Deterministic, batched diffusion sampling. "
                  "Every job's result is bit-identical to `ddim run` of its request alone in batch-invariant mode.")
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])

    @app.exception_handler(ServiceError)
    async def _refused(request: Request, e: ServiceError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        name = ".".join(str(p) for p in err["loc"][1:]) or "request"
        return JSONResponse(ServiceError(400, name, f"{name}: {err['msg']}").body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(ServiceError(e.status_code, "path", str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:  # a bug must not look like the client's fault
        return JSONResponse(ServiceError(500, "server", f"internal error: {type(e).__name__}").body(), 500)

    if service.keys.required:
        @app.middleware("http")
        async def _key(request: Request, call_next: Any) -> Any:
            """With keys configured every path but /healthz and the explorer's static files (no data: the page
            asks for the key and sends it on every API call) needs one, /docs and /openapi.json and unknown
            paths included (CORS pre-flights carry no credentials: the CORS layer answers them)."""
            if request.url.path not in PUBLIC and not request.url.path.startswith("/static/") \
                    and request.method != "OPTIONS":
                try:
                    owner(request)
                except ServiceError as e:
                    return JSONResponse(e.body(), status_code=e.status)
            return await call_next(request)

    def owner(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        key = auth[7:] if auth[:7].lower() == "bearer " else request.headers.get("x-api-key")
        return service.keys.owner(key)

    async def body(request: Request) -> bytes:
        """The request body, refused with 413 as soon as it passes the cap (before any parsing) and with 408 when
        it takes longer than the client timeout (a slow client holds no worker: this read is asynchronous)."""
        from starlette.requests import ClientDisconnect

        cap, limit = service.limits.max_body, service.limits.client_timeout
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise ServiceError(413, "body", f"the body is over {cap} bytes")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(limit):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > cap:
                        raise ServiceError(413, "body", f"the body is over {cap} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise ServiceError(408, "body", f"the body did not arrive within {limit:g} s") from None
        except ClientDisconnect:
            raise ServiceError(400, "body", "the client disconnected before the body arrived") from None
        return b"".join(chunks)

    request_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Request"}}}}}

    @app.post("/v1/jobs", status_code=202, openapi_extra=request_body, summary="Submit a job (the request JSON)")
    async def submit(request: Request) -> JSONResponse:
        who = owner(request)
        job = await run_in_threadpool(service.submit, await body(request), who)
        return JSONResponse({"id": job.record.id, "status": "queued", "position": service.position(job)},
                            status_code=202)

    @app.get("/v1/jobs/{job_id}", summary="Job status: state, step i of N, network calls, times")
    def status(job_id: str, request: Request) -> dict[str, Any]:
        return service.status(job_id, owner(request))

    @app.delete("/v1/jobs/{job_id}", summary="Cancel: its rows leave the batch at the next step")
    def cancel(job_id: str, request: Request) -> dict[str, Any]:
        return service.cancel(job_id, owner(request))

    @app.get("/v1/jobs/{job_id}/result", summary="The result: PNG grid, .npy as `ddim run` writes it, or JSON")
    def result(job_id: str, request: Request, format: str = "png") -> Response:
        data, media = service.result(job_id, owner(request), format)
        return Response(data, media_type=media)

    @app.get("/v1/jobs/{job_id}/events", summary="Server-Sent Events: status, progress, x̂0 previews")
    async def events(job_id: str, request: Request) -> StreamingResponse:
        who = owner(request)
        service.record(job_id, who)
        start = int(request.headers.get("last-event-id", "-1")) + 1 if request.headers.get(
            "last-event-id", "").isdigit() else 0

        async def stream():
            i = start
            while True:
                job = service.live(job_id, who)
                evs = job.events if job is not None else []
                while i < len(evs):
                    e = evs[i]
                    yield f"id: {i}\nevent: {e['event']}\ndata: {json.dumps(e)}\n\n"
                    i += 1
                if job is None or job.record.status in ("done", "failed", "cancelled"):
                    st = service.status(job_id, who)
                    yield f"event: end\ndata: {json.dumps(st)}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.05)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    images_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ImagesRequest"}}}}}

    @app.post("/v1/images/generations", openapi_extra=images_body,
              summary="Synchronous generation in the OpenAI images API's shape (b64_json)")
    async def generations(request: Request) -> dict[str, Any]:
        who = owner(request)
        return await run_in_threadpool(service.generate, await body(request), who)

    @app.get("/v1/models", summary="The served models (by name)")
    def models(request: Request) -> dict[str, Any]:
        owner(request)
        return {"object": "list", "data": service.describe_models()}

    @app.get("/v1/samplers", summary="Samplers with their declared options, guidance rules, spacings")
    def samplers(request: Request) -> dict[str, Any]:
        owner(request)
        return {"samplers": catalog.samplers(), "guidance_rules": catalog.guidance_rules(),
                "spacings": catalog.spacings()}

    static = Path(__file__).parent / "static"
    media = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
             ".css": "text/css; charset=utf-8"}
    files = {p.name: p for p in static.iterdir() if p.suffix in media}

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(files["index.html"].read_bytes(), media_type=media[".html"])

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:  # only the page's own files, by exact name: no path reaches the disk
        if name not in files:
            raise ServiceError(404, "path", f"no file {name!r}")
        return Response(files[name].read_bytes(), media_type=media[files[name].suffix],
                        headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", summary="Liveness (no key needed)")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "queued": service.queue_depth(), "running": service.running()}

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics(request: Request) -> PlainTextResponse:
        owner(request)
        return PlainTextResponse(service.metrics(), media_type="text/plain; version=0.0.4")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            from ..api.request import request_schema
            from ..api.service import images_schema

            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            req = request_schema(ref_template="#/components/schemas/{model}")
            comps.update(req.pop("$defs", {}))
            comps["Request"] = req
            img = images_schema(ref_template="#/components/schemas/{model}")
            comps.update(img.pop("$defs", {}))
            comps["ImagesRequest"] = img
            _served(comps, service)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def _served(comps: dict[str, Any], service: Any) -> None:
    """This server's own request schema: `model` is one of the served names; steps and rows within its limits."""
    names, lim = service.models.names(), service.limits
    for name, part in comps.items():
        props = part.get("properties", {})
        if not name.endswith("Request") or "model" not in props:
            continue
        served = {"type": "string", "enum": names, "description": "a model this server serves"}
        if "anyOf" in props["model"]:  # the images request's model is optional (default: the first served)
            props["model"] = {"anyOf": [served, {"type": "null"}], "default": None}
        else:  # a job names its model (the library's default, the mixture, is not served)
            props["model"] = served
            part["required"] = [*part.get("required", []), "model"]
        for key, cap in (("steps", lim.max_steps), ("n", lim.max_rows)):
            for branch in props.get(key, {}).get("anyOf", [props.get(key, {})]):
                if branch.get("type") == "integer":
                    branch["maximum"] = min(branch.get("maximum", cap), cap)


def _protocol(header_timeout: float) -> Any:
    """uvicorn's h11 protocol with a deadline for a new connection's request line and headers (uvicorn itself
    waits for them forever), so idle or slow-header connections cannot pile up."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._deadline = self.loop.call_later(header_timeout, self._headers_late)

        def _headers_late(self) -> None:
            import h11

            if self.conn.their_state is h11.IDLE:  # still no complete request line and headers: hang up
                self.timeout_keep_alive_handler()

        def connection_lost(self, exc: Exception | None) -> None:
            self._deadline.cancel()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            """A request h11 cannot parse (malformed, or headers over its 16 KiB limit): a JSON 400 like ours."""
            import h11

            body = json.dumps({"error": {"field": "headers", "message": f"headers: {msg}", "status": 400}}).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                       (b"content-length", str(len(body)).encode())]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return Protocol


def _version() -> str:
    from .. import __version__

    return __version__


def bind(host: str, port: int) -> Any:
    """A listening socket on host:port (port 0: a free one), so the real address can be printed first."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot bind {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(service: Any, host: str, port: int, *, cors: list[str] | None = None, log_level: str = "warning") -> None:
    """Run the app under uvicorn until interrupted (SIGINT/SIGTERM drain it); the service is closed on the way
    out, its running jobs left recorded as running so the next start runs them again."""
    import uvicorn

    app = create_app(service, cors=cors)
    sock = bind(host, port)
    sock.listen(2048)  # listening before the address is printed: early clients wait in the backlog
    real = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, timeout_keep_alive=5, limit_concurrency=512,
                            timeout_graceful_shutdown=10, http=_protocol(service.limits.client_timeout))
    print(f"ddim serve: http://{host}:{real}/ (models: {', '.join(service.models.names())}; explorer at /, "
          "API docs at /docs)", flush=True)
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):  # uvicorn re-raises the signal after its graceful shutdown;
        signal.signal(sig, lambda *_: None)      # caught here, the service drains and the process exits 0
    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:  # stop admitting at once, not when the loop notices
            service.stop_admitting()
            super().handle_exit(sig, frame)

    try:
        Server(config).run(sockets=[sock])
    finally:
        service.close()
    print("ddim serve: stopped (queued and running jobs stay recorded and run at the next start)", flush=True)
