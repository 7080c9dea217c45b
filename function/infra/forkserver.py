"""Worker processes that can really be stopped: forked from a fork server, killed by pid.

:class:`ForkServer` is a fresh interpreter (not a fork of this multi-threaded process) that imports
the decoder once, so a worker forked from it starts in milliseconds and shares those pages, and
reports each worker's exit status. multiprocessing's fork server would re-import ``__main__`` in
each worker and keep the exit status that tells a kill by RLIMIT_CPU (SIGXCPU) to itself.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from . import procs

START_S = 30.0  # far past the server's start; reached only if it is broken
PRELOAD = "function.core.workers"
_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the ``function`` package


class ForkServer:
    """Started on first use; ends when this process closes it or exits (it reads EOF)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one fork request at a time: pids come back in order
        self._cond = threading.Condition()
        self._exits: dict[int, int] = {}
        self._pids: list[int] = []
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def fork(self, conn_fd: int, target: str, args: tuple[Any, ...]) -> int:
        """A new worker running ``target`` ("module:function") with its end of a connection
        (``conn_fd``) and ``args``; its pid."""
        with self._lock:
            sock = self._ensure()
            socket.send_fds(sock, [b"F" + pickle.dumps((target, args))], [conn_fd])
            with self._cond:
                if not self._cond.wait_for(lambda: self._pids, START_S):
                    self._pids.clear()
                    self._stop(kill=True)  # its late answer would be taken for the next fork's pid
                    raise RuntimeError("the decode fork server did not answer")
                return self._pids.pop(0)

    def exit_status(self, pid: int, timeout: float) -> int | None:
        """The worker's wait status once the fork server has reaped it (None if not within ``timeout``)."""
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits, timeout)
            return self._exits.pop(pid, None)

    def close(self) -> None:
        with self._lock:
            self._stop(kill=False)

    def _stop(self, kill: bool) -> None:
        """Called with the lock held; the next fork starts a new server."""
        if self._sock is not None:  # shut down first: a close alone would wait for the reader's recv()
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()  # the server reads EOF and exits; idle workers exit on their own EOF
        if self._proc is not None:
            if kill:
                self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
        self._sock, self._proc = None, None

    def _ensure(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = (f"import sys; sys.path.insert(0, {_ROOT!r}); import {PRELOAD}; "
                f"from function.infra.forkserver import serve; serve({theirs.fileno()})")
        self._proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(theirs.fileno(),),
                                      stdin=subprocess.DEVNULL, cwd=_ROOT)
        theirs.close()
        self._sock = mine
        threading.Thread(target=self._read, args=(mine,), name="decode-forkserver", daemon=True).start()
        return mine

    def _read(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # closed by close()
            while msg := sock.recv(64):
                with self._cond:
                    if msg[:1] == b"P" and sock is self._sock:  # not a server given up on
                        self._pids.append(struct.unpack("i", msg[1:5])[0])
                    elif msg[:1] == b"X":
                        pid, status = struct.unpack("ii", msg[1:9])
                        self._exits[pid] = status
                    self._cond.notify_all()


class Worker:
    """The parent's handle on one worker process, running ``target(conn, *args)``."""

    def __init__(self, server: ForkServer, target: str, *args: Any):
        mine, theirs = socket.socketpair()
        try:
            self.pid = server.fork(theirs.fileno(), target, args)
        finally:
            theirs.close()  # the worker has its copy: without closing ours, its death would not end recv()
        self.conn = Connection(mine.detach())
        self._server = server
        self.stopped: str | None = None  # why the parent killed it: "cpu" or "deadline"
        self._status: int | None = None

    def cpu_seconds(self) -> float | None:
        """User + system CPU the worker has used, from /proc (None once it is gone)."""
        return procs.cpu_seconds(self.pid)

    def kill(self, why: str) -> None:
        """SIGKILL, from the deadline thread: the decode blocked in C stops now, its memory goes."""
        self.stopped = self.stopped or why
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def exit_signal(self, timeout: float = 2.0) -> int | None:
        """The signal that ended the worker (SIGKILL, SIGXCPU...) once it is gone; None if it exited."""
        if self._status is None:
            self._status = self._server.exit_status(self.pid, timeout)
        if self._status is None or not os.WIFSIGNALED(self._status):
            return None
        return os.WTERMSIG(self._status)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()  # an idle worker reads EOF and exits
        if self.exit_signal(0.5) is None and self._status is None:
            self.kill("closed")


def serve(fd: int) -> None:
    """The fork server's loop: fork a worker for each request, report each worker's exit. One thread,
    so forking is safe; it ends when the parent closes its socket (the parent is gone)."""
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is for the server; the parent ends us
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 512)
        _reap(sock)
        if sock.fileno() not in ready:
            continue
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 1)
        if not msg:
            os._exit(0)
        target, args = pickle.loads(msg[1:])  # noqa: S301 - from the parent process, over its own socket pair
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sock.close()
                os.close(wake_r)
                os.close(wake_w)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                module, name = target.split(":")
                getattr(importlib.import_module(module), name)(Connection(fds[0]), *args)
                code = 0
            finally:
                os._exit(code)
        for extra in fds:
            os.close(extra)
        sock.send(b"P" + struct.pack("i", pid))


def _reap(sock: socket.socket) -> None:
    with contextlib.suppress(ChildProcessError):  # no children left
        while True:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            with contextlib.suppress(OSError):
                sock.send(b"X" + struct.pack("ii", pid, status))


