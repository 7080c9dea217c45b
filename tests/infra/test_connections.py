"""Connections that send nothing, or their headers a byte a second, hold no request thread; the
connections past MAX_CONNECTIONS are refused at once (the gunicorn worker, function/infra/worker.py).

Against a real server started as the image starts it (``tests/api/serving.py``) with THREADS=8. Before
the worker read heads in its event loop, each idle connection held a request thread for 5 s: with
64 idle connections ``/healthz`` took ~40 s, with 300 it got no answer within 15 s
(docs/reliability.md, "Idle connections").
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from function.infra.worker import HEAD_BYTES, head_ended
from harness import HOST, FunctionProcess
from harness import http_get as get
from tests.api.serving import serve
from tests.support import photo_url

HEADER_TIMEOUT_S = 4.0
THREADS = 8
PAUSE = threading.Event()  # never set: Event.wait() paces the clients below without time.sleep


@pytest.fixture(scope="module")
def served(server, tmp_path_factory) -> Iterator[FunctionProcess]:
    with serve(server, tmp_path_factory.mktemp("connections"), THREADS=str(THREADS),
               HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S)) as s:
        yield s


@pytest.fixture(scope="module", autouse=True)
def enough_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


@contextmanager
def idle_connections(port: int, n: int) -> Iterator[list[socket.socket]]:
    """``n`` open TCP connections that send nothing."""
    with ExitStack() as stack:
        yield [stack.enter_context(socket.create_connection((HOST, port), timeout=5)) for _ in range(n)]


def still_open(sock: socket.socket) -> bool:
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True  # nothing to read, not closed
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)


def timed_healthz(port: int) -> float:
    start = time.monotonic()
    assert get(port, "/healthz", timeout=15)[0] == 200
    return time.monotonic() - start


def timed_classification(port: int, url: str) -> float:
    start = time.monotonic()
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("POST", "/", body=json.dumps({"urls": [url], "top_k": 1}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200 and body["results"][0]["predictions"][0]["id"] == 5, body
    return time.monotonic() - start


def answer_status(sock: socket.socket) -> int:
    """The status of the next answer on ``sock``, read whole (the connection stays usable)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response.status


def closed_within(sock: socket.socket, limit_s: float) -> float | None:
    """Seconds until the server closes ``sock`` (None if still open after ``limit_s``)."""
    start = time.monotonic()
    sock.settimeout(limit_s)
    try:
        sock.recv(1)
    except TimeoutError:
        return None
    except OSError:
        pass  # reset: closed all the same
    return time.monotonic() - start


def waiting_threads(pid: int) -> int:
    """Threads of ``pid`` besides its event loop (the main thread) waiting in the kernel on a socket or a
    poller, by their wait channel; idle pool threads wait on a futex."""
    waits = ("epoll", "poll", "select", "wait_woken", "sk_wait", "tcp_recv")
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            channel = (task / "wchan").read_text()
        except OSError:
            continue  # the thread has just ended
        count += task.name != str(pid) and any(w in channel for w in waits)
    return count


@pytest.mark.parametrize("n", [64, 300])
def test_healthz_and_a_classification_answer_at_once_with_idle_connections_open(served, server, n):
    url = photo_url(server, 5)
    timed_classification(served.port, url)  # the model is warm
    with idle_connections(served.port, n) as idle:
        healthz_s = timed_healthz(served.port)
        classify_s = timed_classification(served.port, url)
        assert all(still_open(s) for s in idle), "the idle connections were closed during the measurement"
    # Before: 64 idle connections, /healthz in ~40 s; 300: no answer within 15 s.
    assert healthz_s < 2, f"/healthz took {healthz_s:.1f} s with {n} idle connections"
    assert classify_s < 5, f"a one-photo classification took {classify_s:.1f} s with {n} idle connections"


def test_idle_connections_hold_no_request_thread(served):
    pid = served.worker_pid()
    if all((task / "wchan").read_text() in ("", "0") for task in Path(f"/proc/{pid}/task").iterdir()):
        pytest.skip("this kernel does not show wait channels (/proc/PID/task/TID/wchan)")
    threads_before, waiting_before = len(os.listdir(f"/proc/{pid}/task")), waiting_threads(pid)
    with idle_connections(served.port, 300) as idle:
        assert timed_healthz(served.port) < 2  # the worker has accepted them all by now
        threads, waiting = len(os.listdir(f"/proc/{pid}/task")), waiting_threads(pid)
        assert all(still_open(s) for s in idle)
    # Before: every request thread sat in a poller on an idle connection (12 threads -> 18; 0 waiting -> 8).
    assert threads <= threads_before
    assert waiting_before == waiting == 0, f"{waiting} request threads wait on sockets"


def test_slow_header_clients_do_not_delay_healthz_or_a_classification(served, server):
    url = photo_url(server, 5)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60 + b"\r\n\r\n"
    stop = threading.Event()
    with idle_connections(served.port, 2 * THREADS) as slow:
        def drip() -> None:  # a byte a second on every slow connection
            for byte in head:
                for s in slow:
                    with contextlib.suppress(OSError):  # cut by the server
                        s.send(bytes([byte]))
                if stop.wait(1.0):
                    return

        dripper = threading.Thread(target=drip)
        dripper.start()
        try:
            PAUSE.wait(1.5)  # a couple of bytes sent on each: every one of them is mid-head
            healthz_s = timed_healthz(served.port)
            classify_s = timed_classification(served.port, url)
            assert all(still_open(s) for s in slow)
            cut = [closed_within(s, HEADER_TIMEOUT_S + 3) for s in slow]
        finally:
            stop.set()
            dripper.join(5)
    # Before: each held a thread until the header deadline: /healthz waited ~HEADER_TIMEOUT_S.
    assert healthz_s < 1 and classify_s < 3, (healthz_s, classify_s)
    assert None not in cut, "a slow-header connection outlived the header deadline"


def test_idle_connections_are_closed_at_the_header_deadline(served):
    with idle_connections(served.port, 10) as idle:
        start = time.monotonic()
        for s in idle:
            assert closed_within(s, HEADER_TIMEOUT_S + 5) is not None
        took = time.monotonic() - start
    # Before: a thread waited 5 s for a first byte, then the poller 2 s more (keepalive).
    assert HEADER_TIMEOUT_S - 0.5 < took < HEADER_TIMEOUT_S + 1.5, f"closed after {took:.1f} s"


def test_pipelined_requests_are_answered_in_order_on_one_connection(served):
    two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((HOST, served.port), timeout=10) as s:
        s.sendall(two)
        answers = b""
        while answers.count(b"HTTP/1.1 ") < 2:
            data = s.recv(65536)
            assert data, answers
            answers += data
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answers) == [b"200", b"404"]


def test_a_kept_alive_connection_takes_a_next_request_whose_head_comes_in_pieces(served):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((HOST, served.port), timeout=10) as s:
        s.sendall(request)
        assert answer_status(s) == 200
        for piece in (request[:5], request[5:20], request[20:]):
            s.sendall(piece)
            PAUSE.wait(0.3)
        assert answer_status(s) == 200


def open_connections(port: int) -> int:
    """Connections to the server at ``port`` that it has not closed (ESTABLISHED or CLOSE_WAIT on its
    side, in /proc/net/tcp): each one counts against MAX_CONNECTIONS."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        count += int(local.split(":")[1], 16) == port and state in ("01", "08")
    return count


def test_connections_past_max_connections_are_answered_503_at_once(server, tmp_path):
    with serve(server, tmp_path, THREADS="4", MAX_CONNECTIONS="16") as s:
        deadline = time.monotonic() + 5
        while open_connections(s.port):  # serve()'s last readiness probe may hold a slot a moment longer
            assert time.monotonic() < deadline, "the readiness probe's connection was never closed"
            PAUSE.wait(0.01)
        with idle_connections(s.port, 16) as idle:
            start = time.monotonic()
            with socket.create_connection((HOST, s.port), timeout=2) as extra:
                answer = extra.recv(4096)  # before: left in the backlog, no answer
            assert time.monotonic() - start < 1
            assert answer.startswith(b"HTTP/1.1 503") and b"Connection: close" in answer
            assert b"too_many_connections" in answer
            assert get(s.port, "/healthz", timeout=1)[0] == 503
            for sock in idle[:8]:
                sock.close()
            deadline = time.monotonic() + 5
            while get(s.port, "/healthz", timeout=2)[0] != 200:  # the worker sees the closes in its next loop
                assert time.monotonic() < deadline, "still refused after half of the connections closed"
                PAUSE.wait(0.05)


def test_sigterm_with_idle_connections_open_exits_within_seconds(server, tmp_path):
    # Heads on their way get the few seconds kept-alive connections get, not HEADER_TIMEOUT_S (30 here).
    with serve(server, tmp_path, HEADER_TIMEOUT_S="30") as s, idle_connections(s.port, 50):
        assert timed_healthz(s.port) < 2
        start = time.monotonic()
        os.kill(s.proc.pid, signal.SIGTERM)
        assert s.proc.wait(20) == 0
        assert time.monotonic() - start < 8


@pytest.mark.parametrize(("head", "ended"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", True),  # body bytes read with it go back too
    (b"GET / HTTP/1.1\r\nHost: x\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r", False),
    (b"", False),
    (b"GET / HTTP/1.1\nHost: x\n", True),  # a bare LF: gunicorn's 400, at once
    (b"GET /?q=" + b"x" * HEAD_BYTES, True),  # past HEAD_BYTES: gunicorn's limits answer it
])
def test_a_head_is_handed_to_a_thread_when_it_ends(head, ended):
    assert head_ended(head) is ended


def test_a_head_end_split_across_reads_is_found():
    head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    for cut in range(1, len(head)):
        assert not head_ended(head[:cut])
        assert head_ended(head, cut), cut  # the new bytes start at cut: the blank line may straddle it


def test_sigterm_gives_a_head_on_its_way_a_short_while_not_the_whole_header_deadline(server, tmp_path):
    # With a 60 s header deadline, a client half-way through its headers would hold the stopping worker for
    # a minute; it gets the short linger kept-alive connections get, then the tree exits.
    with serve(server, tmp_path, HEADER_TIMEOUT_S="60") as s, socket.create_connection((HOST, s.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head is not in
        assert get(s.port, "/healthz")[0] == 200  # the worker is serving: the half head reached its poller
        os.kill(s.pid, signal.SIGTERM)
        stopped = time.monotonic()
        assert s.proc.wait(20) == 0
        assert time.monotonic() - stopped < 15
