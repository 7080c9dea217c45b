"""The function as the image starts it, on a free loopback port, and the small helpers around it.

The Dockerfile's CMD is ``gunicorn --config gunicorn.conf.py 'functions_framework:create_app(
target="classify_http")'``: gunicorn's own launcher, with the settings of ``gunicorn.conf.py``
(header deadline, request-line limit), not ``functions-framework --target``, which fixes gunicorn's
options and reads no config file. :class:`FunctionProcess` runs exactly that command, bound to
127.0.0.1, in a process group of its own; ``launcher="functions-framework"`` runs the old launcher
instead, to measure what it did. Readiness is polled, never slept for; at the end the group is
ended by its id (SIGTERM, then SIGKILL after a grace period).

:func:`image_env` reads the settings the image's last stage sets with ``ENV`` (WORKERS, THREADS,
MALLOC_*...), so a caller can run the process with the container's settings too.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from .procfs import memory_mb, status_kb, tree

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
APP = 'functions_framework:create_app(target="classify_http")'
# Settings of the image that are paths or URLs of its own file system, or the build's: not copied.
IMAGE_ENV_SKIP = {"PORT", "MODEL_URL", "LABELS_URL", "MODEL_CACHE_DIR", "TFHUB_CACHE_DIR"}


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the kernel's pick; another process could still take it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float, alive: Callable[[], bool] | None = None, host: str = HOST) -> None:
    """Poll until ``port`` accepts a connection; raises when ``alive()`` turns false or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the process exited before port {port} accepted connections")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            threading.Event().wait(0.01)
    raise RuntimeError(f"port {port} did not accept connections within {timeout_s:.0f} s")


def http_get(port: int, path: str, timeout: float = 10.0, host: str = HOST) -> tuple[int, bytes]:
    """``GET path`` on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ("" when there is none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def image_env(dockerfile: Path = ROOT / "Dockerfile") -> dict[str, str]:
    """The settings the Dockerfile's last stage sets with ``ENV``, but its paths, URLs, pip's and
    Python's own: WORKERS, THREADS, MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_..."""
    text = dockerfile.read_text().replace("\\\n", " ")
    stages = re.split(r"(?im)^FROM\s", text)
    env: dict[str, str] = {}
    for line in stages[-1].splitlines():
        if re.match(r"(?i)^ENV\s", line.strip()):
            for token in shlex.split(line.strip()[4:]):
                if "=" in token:
                    k, v = token.split("=", 1)
                    env[k] = v
    return {k: v for k, v in env.items()
            if k not in IMAGE_ENV_SKIP and not k.startswith(("PIP_", "PYTHON", "TF_CPP"))}


def _gunicorn(*extra: str) -> Callable[[Path, int], list[str]]:
    return lambda bin_dir, port: [str(bin_dir / "gunicorn"), "--config", str(ROOT / "gunicorn.conf.py"),
                                  "--bind", f"{HOST}:{port}", *extra, APP]


def _functions_framework(*extra: str) -> Callable[[Path, int], list[str]]:
    return lambda bin_dir, port: [str(bin_dir / "functions-framework"), "--host", HOST, "--port", str(port),
                                  "--source", str(ROOT / "main.py"), *extra]


# Every way the function is started: the image's CMD; the same with --preload (the module imported in the
# arbiter, which then forks the worker); functions-framework's own launcher for each target, as a
# developer and Cloud Run functions' buildpack run it (it also imports in the arbiter and forks).
LAUNCHERS: dict[str, Callable[[Path, int], list[str]]] = {
    "gunicorn": _gunicorn(),
    "gunicorn-preload": _gunicorn("--preload"),
    "functions-framework": _functions_framework("--target", "classify_http"),
    "functions-framework-events": _functions_framework("--target", "classify_event",
                                                       "--signature-type", "cloudevent"),
}


class FunctionProcess:
    """The HTTP target in a subprocess of its own process group, bound to ``127.0.0.1:port``.

    ``env`` is the whole environment of the process (the caller decides what it inherits); output
    and errors go to ``log`` (appended). ``started`` is the ``time.perf_counter()`` of the spawn.
    """

    def __init__(self, env: Mapping[str, str], log: Path, *, port: int | None = None,
                 launcher: str = "gunicorn"):
        if launcher not in LAUNCHERS:
            raise ValueError(f"unknown launcher {launcher!r}; one of {', '.join(LAUNCHERS)}")
        self.env = dict(env)
        self.log = log
        self.port = port or free_port()
        self.launcher = launcher
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.ready_s: float | None = None
        self._out: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.pid

    def command(self) -> list[str]:
        return LAUNCHERS[self.launcher](Path(sys.executable).parent, self.port)

    def start(self) -> FunctionProcess:
        self._out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _failure(self, what: str) -> RuntimeError:
        return RuntimeError(f"{what}; the end of {self.log}:\n{tail(self.log, 25)}")

    def wait_port(self, timeout_s: float = 120.0) -> float:
        """Poll until the port accepts; returns seconds since the spawn."""
        try:
            wait_port(self.port, timeout_s, self.alive)
        except RuntimeError as exc:
            raise self._failure(str(exc)) from None
        return time.perf_counter() - self.started

    def wait_ready(self, timeout_s: float = 120.0, path: str = "/readyz", interval_s: float = 0.05) -> float:
        """Poll ``path`` until it answers 200; returns seconds since the spawn."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive():
                raise self._failure(f"the {self.launcher} process exited before {path} answered 200")
            if time.monotonic() > deadline:
                raise self._failure(f"{path} did not answer 200 within {timeout_s:.0f} s")
            try:
                if http_get(self.port, path, timeout=5)[0] == 200:
                    self.ready_s = time.perf_counter() - self.started
                    return self.ready_s
            except OSError:
                pass
            threading.Event().wait(interval_s)

    def pids(self) -> list[int]:
        """The arbiter and its workers."""
        return tree(self.proc.pid) if self.alive() and self.proc is not None else []

    def decode_pids(self) -> list[int]:
        """The decode workers' fork server and the workers it forked (their command line names the
        module the fork server preloads)."""
        found = []
        for pid in self.pids():
            try:
                if b"function.core.workers" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
        return found

    def worker_pid(self) -> int:
        """The first worker (the arbiter's first child), or the arbiter itself while it has none."""
        kids = self.pids()[1:]
        return kids[0] if kids else self.pid

    def memory_kib(self, field: str = "VmHWM") -> int:
        """``VmHWM`` (peak RSS), ``VmRSS``... of the worker, in KiB."""
        return status_kb(self.worker_pid(), field)

    def memory_mb(self) -> dict[str, float]:
        """RSS, PSS and VmHWM of the whole tree (``harness.procfs.memory_mb``)."""
        return memory_mb(self.pid) if self.alive() else {"rss_mb": 0.0, "pss_mb": 0.0, "hwm_mb": 0.0}

    def kill(self) -> None:
        """SIGKILL to the group this object started (by its id), as an OOM killer would."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM to the group, SIGKILL after ``grace_s`` (at once when 0); returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
                self.proc.wait(grace_s or 10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        code = self.proc.wait(10)
        if self._out is not None:
            self._out.close()
            self._out = None
        return code

    def __enter__(self) -> FunctionProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
