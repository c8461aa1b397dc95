"""The step-level batching engine: concurrent runs on the same model share network calls, bit for bit.

Each job runs `run(request, store)` in its own thread with its own plan, state, history and noise streams. Its
model's networks are replaced by `SharedNet` ports: a network call from a job thread waits for the engine's next
tick, where the rows of every waiting job on the same network (CFG branches included) are concatenated, cut into
calls of exactly `chunk` rows (the last padded) and split back. A row's arithmetic is then the same as in a
batch-invariant run of its request alone, whatever else shares the call — the guarantee the service tests assert.
Jobs join and leave between ticks; a cancelled job raises `Cancelled` at its next network call.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.prediction import _rows_padded, network_output
from ..core.sample import BATCH_INVARIANT_CHUNK
from ..models.contract import Model
from .store import ModelStore


class Cancelled(Exception):
    """Raised inside a job's thread at its next network call once the job is cancelled."""


@dataclass
class Ticket:
    """One job as the engine sees it: its cancel flag and its counts (network calls, rows)."""

    id: str
    cancelled: threading.Event = field(default_factory=threading.Event)
    calls: int = 0
    rows: int = 0


@dataclass
class _Call:
    ticket: Ticket
    net: Any
    x: torch.Tensor
    t: torch.Tensor
    cond: dict[str, Any]
    key: tuple
    since: float
    done: threading.Event = field(default_factory=threading.Event)
    out: torch.Tensor | None = None
    error: BaseException | None = None


@dataclass
class EngineCounts:
    """What the engine has done: ticks, fixed-size network calls, the real rows in them, network seconds."""

    ticks: int = 0
    calls: int = 0
    rows: int = 0
    net_seconds: float = 0.0
    last_tick_seconds: float = 0.0

    @property
    def rows_per_call(self) -> float:
        return self.rows / self.calls if self.calls else 0.0


_local = threading.local()


def _batched(v: Any, n: int) -> bool:
    return isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n


def _group_key(net: Any, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> tuple:
    """Calls with equal keys can share one network call: same network, dtypes, row shapes and shared arguments."""
    n = x.shape[0]
    parts: list[Any] = [id(net), x.dtype, x.device, tuple(x.shape[1:]), t.dtype, tuple(t.shape[1:])]
    for k in sorted(cond):
        v = cond[k]
        if _batched(v, n):
            parts.append((k, v.dtype, tuple(v.shape[1:])))
        elif isinstance(v, torch.Tensor):
            parts.append((k, "shared", id(v)))
        else:
            parts.append((k, repr(v)))
    return tuple(parts)


class SharedNet:
    """A network port: called from a job thread, it hands the rows to the engine and waits for its tick. Under
    autograd (likelihoods) the job computes its own fixed-size calls instead: gradients stay in its thread."""

    def __init__(self, engine: Engine, net: Any) -> None:
        self.engine = engine
        self.net = net
        #: the port makes fixed-size calls itself (`ddim.core.sample.invariant` leaves the denoiser unchunked)
        self.fixed_rows = engine.chunk

    def parameters(self):
        params = getattr(self.net, "parameters", None)
        return params() if callable(params) else iter(())

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        ticket: Ticket | None = getattr(_local, "ticket", None)
        if ticket is not None and ticket.cancelled.is_set():
            raise Cancelled(ticket.id)
        if ticket is None or torch.is_grad_enabled():
            return self.engine.fixed_calls(self.net, x, t, cond)
        return self.engine.submit(ticket, self.net, x, t, cond)


class Engine:
    """Gathers the network calls of concurrent jobs into ticks. `linger`: how long a tick waits for jobs that are
    between calls (preparing, decoding a preview) before it runs the calls it has."""

    def __init__(self, chunk: int | None = BATCH_INVARIANT_CHUNK, linger: float = 0.005) -> None:
        self.chunk = chunk
        self.linger = linger
        self.counts = EngineCounts()
        self._cv = threading.Condition()
        self._pending: list[_Call] = []
        self._active: set[str] = set()
        #: the jobs of the last tick: a tick waits (up to `linger`) for those still attached, not for new ones
        self._last: set[str] = set()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="ddim-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ jobs
    def attach(self, ticket: Ticket) -> None:
        """Mark the calling thread as `ticket`'s job thread; the engine waits for its calls at each tick."""
        _local.ticket = ticket
        with self._cv:
            self._active.add(ticket.id)

    def detach(self, ticket: Ticket) -> None:
        _local.ticket = None
        with self._cv:
            self._active.discard(ticket.id)
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=5)

    # ----------------------------------------------------------------------------------------- calls
    def submit(self, ticket: Ticket, net: Any, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]
               ) -> torch.Tensor:
        """Queue one network call for the next tick and wait for its rows."""
        call = _Call(ticket, net, x, t, cond, _group_key(net, x, t, cond), time.perf_counter())
        with self._cv:
            self._pending.append(call)
            self._cv.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        ticket.calls += 1
        ticket.rows += x.shape[0]
        return call.out

    def fixed_calls(self, net: Any, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """net over the rows of (x, t, cond) in calls of exactly `chunk` rows (the batch-invariant calls); one
        unpadded call when chunk is None (the serial baseline, not batch-invariant)."""
        c, n = self.chunk or x.shape[0], x.shape[0]
        outs = []
        for a in range(0, n, c):
            b = min(n, a + c)
            ca = {k: _rows_padded(v, a, b, c) if _batched(v, n) else v for k, v in cond.items()}
            outs.append(network_output(net(_rows_padded(x, a, b, c), _rows_padded(t, a, b, c), **ca))[: b - a])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _ready(self) -> bool:
        if not self._pending:
            return False
        waiting = {c.ticket.id for c in self._pending}
        return waiting >= (self._last & self._active) or time.perf_counter() - self._pending[0].since >= self.linger

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._ready():
                    self._cv.wait(timeout=self.linger if self._pending else None)
                if self._stop:
                    for c in self._pending:
                        c.error = Cancelled(c.ticket.id)
                        c.done.set()
                    return
                calls, self._pending = self._pending, []
                self._last = {c.ticket.id for c in calls}
            self._tick(calls)

    def _tick(self, calls: list[_Call]) -> None:
        """One tick: each group of compatible calls as one sequence of fixed-size network calls."""
        t0 = time.perf_counter()
        groups: dict[tuple, list[_Call]] = {}
        for c in calls:
            groups.setdefault(c.key, []).append(c)
        rows = chunks = 0
        for group in groups.values():
            sizes = [c.x.shape[0] for c in group]
            try:
                x = torch.cat([c.x for c in group]) if len(group) > 1 else group[0].x
                t = torch.cat([c.t for c in group]) if len(group) > 1 else group[0].t
                cond = {k: (torch.cat([c.cond[k] for c in group]) if len(group) > 1 else v)
                        if _batched(v, sizes[0]) else v for k, v in group[0].cond.items()}
                with torch.no_grad():
                    out = self.fixed_calls(group[0].net, x, t, cond)
                a = 0
                for c, s in zip(group, sizes):
                    c.out, a = out[a:a + s], a + s
            except Exception as e:  # the network failed on these rows: each job reports it
                for c in group:
                    c.error = e
            rows += sum(sizes)
            chunks += -(-sum(sizes) // self.chunk) if self.chunk else 1
            for c in group:
                c.done.set()
        dt = time.perf_counter() - t0
        k = self.counts
        k.ticks, k.calls, k.rows, k.net_seconds, k.last_tick_seconds = (k.ticks + 1, k.calls + chunks,
                                                                       k.rows + rows, k.net_seconds + dt, dt)


def shared_model(model: Model, engine: Engine) -> Model:
    """The model with each denoiser's network behind an engine port (same fingerprint, nothing else changed)."""
    def port(den):
        return den.replace(net=SharedNet(engine, den.net), chunk=None)

    shared = dataclasses.replace(model, denoiser=port(model.denoiser),
                                 students={k: port(d) for k, d in model.students.items()})
    shared.__dict__["fingerprint"] = model.fingerprint  # the same weights: provenance names the real network
    return shared


class EngineStore(ModelStore):
    """A ModelStore whose models share the engine's network calls (what the server's jobs run against)."""

    def __init__(self, engine: Engine, allowed: Any = None) -> None:
        super().__init__(allowed)
        self.engine = engine
        self._shared: dict[int, Model] = {}

    def get(self, name: str, device: str = "cpu", dtype: str = "float32", compile: bool = False) -> Model:
        model = super().get(name, device, dtype, compile)
        with self._lock:
            shared = self._shared.get(id(model))
            if shared is None:
                shared = self._shared[id(model)] = shared_model(model, self.engine)
        return shared


def run_job(engine: Engine, ticket: Ticket, fn: Callable[[], Any]) -> Any:
    """fn() (a `run(...)` call) in the calling thread as the job `ticket`."""
    engine.attach(ticket)
    try:
        return fn()
    finally:
        engine.detach(ticket)
