"""The service's job store: accepted requests and finished results survive a restart (stdlib sqlite3).

A job row is committed before the service answers 202, so nothing accepted is lost; results are written into a
scratch folder and renamed into place before the row says `done`, so nothing is served half-written. Because runs
are deterministic, a job that was queued or running when the process died is simply run again (same bits).
Results expire by age and by the total size of the results folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UsageError

STATES = ("queued", "running", "done", "failed", "cancelled", "expired")
FINISHED = ("done", "failed", "cancelled", "expired")
_SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, owner TEXT NOT NULL, request TEXT NOT NULL, status TEXT NOT NULL,
    submitted REAL NOT NULL, started REAL, finished REAL, error TEXT, step INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0, nfe INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0)"""
_COLUMNS = ("id", "seq", "owner", "request", "status", "submitted", "started", "finished", "error", "step",
            "steps", "nfe", "bytes")


@dataclass
class JobRecord:
    """One row of the job store."""

    id: str
    seq: int
    owner: str
    request: str
    status: str
    submitted: float
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    step: int = 0
    steps: int = 0
    nfe: int = 0
    bytes: int = 0


class JobStore:
    """Jobs and results under `folder` (jobs.sqlite3 and results/<id>/), or in memory when folder is None."""

    def __init__(self, folder: str | Path | None, *, ttl: float = 7 * 86400, max_bytes: int = 1 << 30) -> None:
        self.folder = None if folder is None else Path(folder)
        self.ttl, self.max_bytes = float(ttl), int(max_bytes)
        self._lock = threading.Lock()
        if self.folder is None:
            self._scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"ddim-serve-{os.getpid()}-{id(self)}"
            self.results = self._scratch / "results"
            db = ":memory:"
        else:
            self._scratch = None
            self.results = self.folder / "results"
            db = str(self.folder / "jobs.sqlite3")
        self._db = self._open(db)

    def _open(self, db: str) -> sqlite3.Connection:
        """Open (or create) the database and check it: a store that cannot be written or is corrupt is named
        at start-up, not at the first job."""
        where = db if self.folder is None else str(self.folder)
        try:
            self.results.mkdir(parents=True, exist_ok=True)
            probe = self.results / ".write-test"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            raise UsageError(f"job store {where}: cannot write ({e.strerror or e})") from None
        try:
            con = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            con.execute("PRAGMA journal_mode=WAL" if self.folder is not None else "PRAGMA journal_mode=MEMORY")
            con.execute("PRAGMA synchronous=FULL")
            con.execute(_SCHEMA)
            cols = [r[1] for r in con.execute("PRAGMA table_info(jobs)")]
            if tuple(cols) != _COLUMNS:
                raise sqlite3.DatabaseError(f"unexpected columns {cols}")
        except sqlite3.Error as e:
            raise UsageError(f"job store {where}/jobs.sqlite3 is unreadable or corrupt: {e}") from None
        return con

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ rows
    def add(self, job_id: str, owner: str, request: dict[str, Any]) -> JobRecord:
        """Record an accepted request (committed before the caller answers)."""
        now = time.time()
        with self._lock:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute("INSERT INTO jobs (id, seq, owner, request, status, submitted) VALUES (?, ?, ?, ?, ?, ?)",
                             (job_id, seq, owner, json.dumps(request), "queued", now))
        return JobRecord(job_id, seq, owner, json.dumps(request), "queued", now)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord(*row)

    def update(self, job_id: str, **fields: Any) -> None:
        bad = set(fields) - set(_COLUMNS[4:])
        if bad:
            raise ValueError(f"unknown job fields {sorted(bad)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def unfinished(self) -> list[JobRecord]:
        """Queued and interrupted jobs in submission order (what a restart runs again)."""
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE status IN ('queued', 'running') "
                                    "ORDER BY seq").fetchall()
        return [JobRecord(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in STATES} | dict(rows)

    # --------------------------------------------------------------------------------------- results
    def result_dir(self, job_id: str) -> Path:
        return self.results / job_id

    def commit_result(self, job_id: str, scratch: Path, **fields: Any) -> None:
        """Move a fully written scratch folder into place, then mark the job done (in that order)."""
        final = self.result_dir(job_id)
        if final.exists():  # a rerun after a crash between the rename and the row update
            shutil.rmtree(final)
        os.replace(scratch, final)
        size = sum(p.stat().st_size for p in final.iterdir())
        self.update(job_id, status="done", bytes=size, **fields)

    def expire(self, now: float | None = None) -> list[str]:
        """Drop finished results older than `ttl`, then the oldest while the total exceeds `max_bytes`."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute("SELECT id, finished, bytes FROM jobs WHERE status IN ('done', 'failed', "
                                    "'cancelled') ORDER BY finished").fetchall()
        total = sum(r[2] for r in rows)
        gone = []
        for job_id, finished, size in rows:
            if (finished or now) < now - self.ttl or total > self.max_bytes:
                shutil.rmtree(self.result_dir(job_id), ignore_errors=True)
                self.update(job_id, status="expired", bytes=0)
                total -= size
                gone.append(job_id)
        return gone
