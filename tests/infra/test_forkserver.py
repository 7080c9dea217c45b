"""The decode workers' fork server: a server that stops answering is replaced, never half-trusted."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from function.infra import forkserver
from function.infra.forkserver import ForkServer, Worker

TARGET = "tests.infra.test_forkserver:wait_for_eof"


def wait_for_eof(conn) -> None:
    """A worker that lives until its parent closes the connection."""
    with contextlib.suppress(EOFError, OSError):
        conn.recv_bytes()


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_fork_server_that_stops_answering_is_replaced_and_its_late_answer_never_taken(monkeypatch):
    server = ForkServer()
    workers = [Worker(server, TARGET)]
    old = server._proc.pid
    try:
        os.kill(old, signal.SIGSTOP)  # alive, but answering nothing
        monkeypatch.setattr(forkserver, "START_S", 0.5)
        with pytest.raises(RuntimeError, match="did not answer"):
            Worker(server, TARGET)
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGCONT)  # were it still there, it would answer the fork it was asked for now
        workers.append(Worker(server, TARGET))
        assert server._proc.pid != old
        assert parent_of(workers[-1].pid) == server._proc.pid, "a worker of the server given up on was taken"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGCONT)
        for w in workers:
            w.close()
        server.close()
