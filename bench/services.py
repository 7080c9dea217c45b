"""Processes and servers the scenarios run: the function under functions-framework, a round-robin
proxy in front of several instances, and CPU accounting of processes by id.

Every server listens on 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import http.client
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class FunctionServer:
    """``functions-framework --target classify_http`` as a subprocess in its own process group.

    THREADS/WORKERS are whatever the environment says (functions-framework's defaults otherwise):
    the benchmark measures the service as configured, it does not tune it.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path, port: int | None = None):
        self.env = dict(env)
        self.log_path = log_path
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> FunctionServer:
        ff = Path(sys.executable).with_name("functions-framework")
        cmd = [str(ff), "--target", "classify_http", "--host", HOST, "--port", str(self.port)]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 240.0, interval_s: float = 0.1) -> float:
        """Poll ``/readyz`` until it answers 200; returns seconds from start to ready."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"functions-framework exited before it was ready:\n{tail(self.log_path)}")
            try:
                if requests.get(self.url + "/readyz", timeout=5).status_code == 200:
                    self.ready_s = time.perf_counter() - self._started
                    return self.ready_s
            except requests.RequestException:
                pass
            time.sleep(interval_s)
        raise RuntimeError(f"{self.url}/readyz was not 200 within {timeout_s:.0f} s:\n{tail(self.log_path)}")

    def pids(self) -> list[int]:
        """The gunicorn arbiter and its workers (the process group this server started)."""
        if self.proc is None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this object started, by its id
            self.proc.wait(timeout_s)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None
        self._log.close()

    def __enter__(self) -> FunctionServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- CPU accounting -----------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the live processes ``pids`` (from /proc; 0 for a gone one)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy since boot (all processes, not only ours)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


class CpuMeter:
    """Cores kept busy by named groups of processes between :meth:`start` and :meth:`stop`, and by
    everything else on the machine (``other_cores``: other people's work on a shared machine)."""

    def __init__(self, groups: Mapping[str, list[int]]):
        self.groups = dict(groups)

    def start(self) -> CpuMeter:
        self._t0 = time.perf_counter()
        self._m0 = machine_busy_seconds()
        self._c0 = {name: cpu_seconds(p) for name, p in self.groups.items()}
        return self

    def stop(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._t0
        used = {name: cpu_seconds(p) - self._c0[name] for name, p in self.groups.items()}
        machine = machine_busy_seconds() - self._m0
        cores = {f"{name}_cores": round(s / elapsed, 2) for name, s in used.items()}
        return cores | {"machine_cores": round(machine / elapsed, 2),
                        "other_cores": round(max(0.0, machine - sum(used.values())) / elapsed, 2),
                        "elapsed_s": round(elapsed, 2)}


# -- round-robin proxy ----------------------------------------------------------------------------
class RoundRobinProxy:
    """A tiny HTTP proxy that hands each request to the next backend in turn, like a Knative
    service URL in front of several instances. ``set_backends`` changes the pool between runs."""

    _HEADERS = ("Content-Type", "X-Request-Id", "Server-Timing", "Retry-After")

    def __init__(self, backends: list[str], timeout_s: float = 300.0):
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self.forwarded: dict[str, int] = {}
        self.set_backends(backends)
        proxy = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy._forward(self)

            def do_POST(self):
                proxy._forward(self)

        self.httpd = ThreadingHTTPServer((HOST, 0), _Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.httpd.server_address[1]}"

    def set_backends(self, backends: list[str]) -> None:
        with self._lock:
            self.backends = list(backends)
            self._cycle = itertools.cycle(self.backends)

    def _forward(self, req: BaseHTTPRequestHandler) -> None:
        with self._lock:
            backend = next(self._cycle)
            self.forwarded[backend] = self.forwarded.get(backend, 0) + 1
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else None
        parts = urlsplit(backend)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout_s)
        try:
            headers = {k: req.headers[k] for k in self._HEADERS if req.headers.get(k)}
            conn.request(req.command, req.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
            out_headers = {k: resp.getheader(k) for k in self._HEADERS if resp.getheader(k)}
        except OSError as exc:
            data, status, out_headers = f"proxy: {backend}: {exc}".encode(), 502, {"Content-Type": "text/plain"}
        finally:
            conn.close()
        req.send_response(status)
        for k, v in out_headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
