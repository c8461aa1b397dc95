"""A real `ddim serve` process on 127.0.0.1 (a free port) for benchmarks and tests: started, waited for, its
address read from what it prints, its memory read from /proc, killed or stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


class ServerProcess:
    """`ddim serve --port 0 ARGS` (optionally behind a `prefix` command such as `unshare`), stopped by the context
    manager. `lines` holds everything it printed."""

    def __init__(self, *args: str, env: dict | None = None, timeout: float = 90.0,
                 prefix: list[str] | None = None) -> None:
        self.args = [*(prefix or []), sys.executable, "-m", "ddim", "serve", "--port", "0", *args]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=full_env)
        self.lines: list[str] = []
        self.url = self._wait_for_url(timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_for_url(self, timeout: float) -> str:
        import httpx

        found: list[str] = []

        def read() -> None:
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith("ddim serve: http://") and not found:
                    found.append(line.split()[2].rstrip("/"))
        threading.Thread(target=read, daemon=True).start()
        t0 = time.time()
        while not found and time.time() - t0 < timeout and self.proc.poll() is None:
            time.sleep(0.05)
        if not found:
            self.stop()
            raise RuntimeError(f"server did not start: {''.join(self.lines)[-2000:]}")
        while time.time() - t0 < timeout:  # the socket is bound before uvicorn answers
            try:
                if httpx.get(found[0] + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        return found[0]

    def _status_mb(self, key: str) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def rss_mb(self) -> float:
        """Resident memory now (MB)."""
        return self._status_mb("VmRSS")

    def peak_rss_mb(self) -> float:
        """The highest resident memory so far (MB)."""
        return self._status_mb("VmHWM")

    def kill(self) -> None:
        """SIGKILL: no drain, no clean-up (what a crash or the OOM killer does)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal (SIGTERM: drain) and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def metric(url: str, name: str) -> float:
    """One value of a server's Prometheus /metrics (a full sample name, labels included); NaN when absent."""
    import httpx

    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")
