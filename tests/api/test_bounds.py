"""Every route bounded, against a real server process.

The server is started as the image starts it (``tests/api/serving.py``) with short deadlines, so
each attack ends in seconds. ``BOUNDS_LAUNCHER=functions-framework`` runs the same tests against
functions-framework's own launcher and no limits: how the numbers in docs/reliability.md's "before"
column were measured.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
import requests

from tests.api.serving import HOST, get, serve

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def served(server, tmp_path_factory):
    with serve(server, tmp_path_factory.mktemp("bounds"), os.environ.get("BOUNDS_LAUNCHER", "gunicorn"),
               HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), BODY_TIMEOUT_S=str(BODY_TIMEOUT_S)) as s:
        yield s


def send_big(port: int, head: bytes, body_size: int, results: list, timeout: float = 10.0) -> None:
    """Send ``head`` then up to ``body_size`` bytes in 1 MiB pieces; record the status line (or the error)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            s.sendall(head)
            piece = b"x" * MIB
            for _ in range(body_size // MIB):
                s.sendall(piece)
        except OSError:
            pass  # the server answered and stopped reading: its answer is still to be read
        try:
            results.append(s.recv(200).split(b"\r\n", 1)[0])
        except OSError as exc:
            results.append(exc)


@pytest.mark.parametrize("path", ["/healthz", "/nothing-here"])
def test_big_bodies_on_any_path_are_refused_without_being_read(served, path):
    # Before: all got 200/404 and the worker read each body into memory (4 x 512 MiB: RSS 2.6 GB).
    peak_before = served.memory_kib("VmHWM")
    results: list = []
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {64 * MIB}\r\n\r\n").encode()
    senders = [threading.Thread(target=send_big, args=(served.port, head, 64 * MIB, results)) for _ in range(4)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(60)
    grown_mib = (served.memory_kib("VmHWM") - peak_before) / 1024
    assert results == [b"HTTP/1.1 413 REQUEST ENTITY TOO LARGE"] * 4, results
    assert grown_mib < 32, f"peak RSS grew {grown_mib:.0f} MiB for 4 x 64 MiB bodies"


def test_a_query_string_bomb_is_refused_fast(served):
    # Before: a 64 MiB query string held a thread at 100 % CPU for over 60 s.
    results: list = []
    start = time.monotonic()
    send_big(served.port, b"GET /?url=", 64 * MIB, results, timeout=15)
    took = time.monotonic() - start
    assert results and isinstance(results[0], bytes) and results[0].split()[1] in (b"400", b"414"), results
    assert took < 5, f"{took:.1f} s"
    assert get(served.port, "/healthz", timeout=5)[0] == 200


def test_a_query_over_the_limit_is_414_json(served):
    status, body = get(served.port, "/?url=" + "x" * 8190)
    assert status in (400, 414)
    status, body = get(served.port, "/?url=" + "x" * 4100)
    assert status == 414 and b"query_too_long" in body


def test_a_session_can_go_on_after_a_413(served):
    # Before: the 413 announced keep-alive, the server closed anyway, and the Session's next
    # request failed 14-18 times in 20.
    base = f"http://{HOST}:{served.port}"
    failures = []
    with requests.Session() as session:
        for i in range(20):
            try:
                r = session.post(base + "/", data=b"{" + b" " * (2 * MIB) + b"}",
                                 headers={"Content-Type": "application/json"}, timeout=10)
                assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
                assert session.get(base + "/healthz", timeout=10).status_code == 200
            except requests.RequestException as exc:
                failures.append((i, repr(exc)))
    assert not failures, failures


def test_a_413_for_a_body_too_big_to_drain_says_connection_close(served):
    base = f"http://{HOST}:{served.port}"
    with requests.Session() as session:
        for _ in range(5):
            try:
                r = session.post(base + "/healthz", data=b"x" * (9 * MIB), timeout=10)
                assert r.status_code == 413 and r.headers["Connection"] == "close"
            except requests.ConnectionError:
                pass  # the server closed while the client was still sending: allowed, the next must work
            assert session.get(base + "/healthz", timeout=10).status_code == 200


def drip(port: int, data: bytes, cut: dict, key: int, stop: threading.Event) -> None:
    """Send ``data`` one byte a second; record when the server cut the connection."""
    start = time.monotonic()
    with socket.create_connection((HOST, port), timeout=30) as s:
        try:
            for byte in data:
                s.sendall(bytes([byte]))
                s.settimeout(1.0)
                try:
                    if not s.recv(4096, socket.MSG_PEEK):
                        break  # closed by the server
                except TimeoutError:
                    pass  # still open: the wait was the one-byte-a-second pace
                if stop.is_set():
                    return
        except OSError:
            pass
        cut[key] = time.monotonic() - start


def test_slow_clients_are_cut_and_do_not_block_liveness(served):
    # Before: four connections at 1 byte/s held all four threads; /healthz timed out after 30 s.
    cut: dict[int, float] = {}
    stop = threading.Event()
    headers = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60 + b"\r\n\r\n"
    body = b'{"urls": ["http://127.0.0.1/x.jpg"], "top_k": 1}' + b" " * 40
    json_head = (f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n").encode()
    slow = [threading.Thread(target=drip, args=(served.port, headers, cut, i, stop)) for i in range(4)]
    body_senders = []
    for i in range(4, 8):
        def body_drip(key: int = i) -> None:
            with socket.create_connection((HOST, served.port), timeout=30) as s:
                s.sendall(json_head)
                start = time.monotonic()
                s.settimeout(1.0)
                for byte in body:
                    try:
                        s.sendall(bytes([byte]))
                        if not s.recv(4096, socket.MSG_PEEK):
                            break
                        break  # an answer arrived (the 408)
                    except TimeoutError:
                        pass
                    except OSError:
                        break
                    if stop.is_set():
                        return
                cut[key] = time.monotonic() - start
        body_senders.append(threading.Thread(target=body_drip))
    try:
        for t in slow + body_senders:
            t.start()
        threading.Event().wait(0.5)  # the drippers have connected and sent their first bytes
        # The liveness probe (knative/service.yaml: tcpSocket) is answered by the kernel's backlog.
        start = time.monotonic()
        socket.create_connection((HOST, served.port), timeout=1).close()
        assert time.monotonic() - start < 1
        # And an HTTP /healthz answers once the deadlines have cut the slow connections.
        start = time.monotonic()
        assert get(served.port, "/healthz", timeout=HEADER_TIMEOUT_S + BODY_TIMEOUT_S + 5)[0] == 200
        assert time.monotonic() - start < max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + 2
        for t in slow + body_senders:
            t.join(HEADER_TIMEOUT_S + BODY_TIMEOUT_S + 10)
    finally:
        stop.set()
    assert sorted(cut) == list(range(8)), f"connections not cut: {sorted(set(range(8)) - set(cut))}"
    assert max(cut.values()) < max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + 3, cut


def test_a_short_body_dripped_a_byte_a_second_is_cut_well_before_body_timeout(server, tmp_path):
    # BODY_TIMEOUT_S stays at its default (60 s); the declared 90 bytes may take 5 s + 90 B / 64 KiB/s.
    body = b'{"urls": ["http://127.0.0.1/x.jpg"], "top_k": 1}' + b" " * 40
    with serve(server, tmp_path, "gunicorn") as s, socket.create_connection((HOST, s.port), timeout=30) as conn:
        conn.sendall((f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode())
        start = time.monotonic()
        conn.settimeout(1.0)
        answer = b""
        for byte in body:
            try:
                conn.sendall(bytes([byte]))
                answer = conn.recv(4096)
                break  # the server answered (or closed)
            except TimeoutError:
                continue
            except OSError:
                break
        elapsed = time.monotonic() - start
    assert elapsed < 9, f"a 90-byte body dripped for {elapsed:.1f} s"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:80]
