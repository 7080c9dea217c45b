"""A real HTTP server process for the tests that need sockets: gunicorn with ``gunicorn.conf.py`` and
functions-framework's app, started the way the image's CMD starts it (or, to measure the old
behaviour, with ``functions-framework --target classify_http``).

Readiness is polled, never slept for; the process group is killed by its id at the end.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import LABELS_PATH, MODEL_PATH, ROOT

HOST = "127.0.0.1"
START_S = 120.0  # TensorFlow import + model load on a busy two-core machine; reached only on failure
APP = 'functions_framework:create_app(target="classify_http")'


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def worker_pid(self) -> int:
        """The gunicorn worker (the arbiter's one child), or the arbiter itself if it has none yet."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0]) if children else self.proc.pid

    def memory_kib(self, field: str = "VmHWM") -> int:
        """``VmHWM`` (peak RSS) or ``VmRSS`` of the worker, in KiB, from /proc/PID/status."""
        for line in Path(f"/proc/{self.worker_pid()}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.worker_pid()}/status")


@contextmanager
def serve(server, tmp_path: Path, launcher: str = "gunicorn", **env: str) -> Iterator[Served]:
    """The HTTP target on a free loopback port, ready (``/readyz`` 200); ``env`` adds settings."""
    port = free_port()
    environ = {**os.environ, "MODEL_URL": server.url(MODEL_PATH), "LABELS_URL": server.url(LABELS_PATH),
               "TRUSTED_HOSTS": HOST, "WORKERS": "1", "THREADS": "4", "PYTHONUNBUFFERED": "1", **env}
    bin_dir = Path(sys.executable).parent
    if launcher == "gunicorn":
        command = [str(bin_dir / "gunicorn"), "--config", str(ROOT / "gunicorn.conf.py"),
                   "--bind", f"{HOST}:{port}", APP]
    else:
        command = [str(bin_dir / "functions-framework"), "--target", "classify_http", "--host", HOST,
                   "--port", str(port)]
    log = tmp_path / "function.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_S
        while True:
            assert proc.poll() is None, f"the server exited:\n{log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"/readyz not 200 within {START_S} s:\n{log.read_text()[-2000:]}"
            try:
                if get(port, "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            threading.Event().wait(0.1)
        yield Served(proc, port, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this helper started, by its id
        proc.wait(10)
