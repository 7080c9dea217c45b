"""Graceful shutdown: SIGTERM to a real server process (gunicorn, as the image runs it) (as Knative sends it when it
scales an instance down) lets the request in flight finish, takes no new ones, and exits 0.

Between SIGTERM and the exit, gunicorn stops accepting but its worker still holds the listening
socket: a connection made then waits in the backlog and is reset when the worker exits (measured;
docs/reliability.md). Under Knative no such connection comes: the user container's preStop hook
waits for the queue-proxy to drain before the SIGTERM is sent.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

from standin import photos
from standin.server import Reply
from tests.api.serving import HOST, serve

SLOW_S = 2.0  # how long the slow photo takes to arrive


def request(port: int, method: str, path: str, body: dict | None = None, timeout: float = 30.0):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def function_process(server, tmp_path):
    """The HTTP target started as the image starts it (gunicorn + gunicorn.conf.py), ready to serve."""
    with serve(server, tmp_path) as served:
        yield served.proc, served.port, served.log


def refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0_and_refuses_connections(server, function_process):
    proc, port, log = function_process
    arrived, answer = threading.Event(), {}

    def slow_photo(_req):
        arrived.set()
        threading.Event().wait(SLOW_S)  # the photo host is slow: the request is in flight at SIGTERM
        return Reply(photos.solid(photos.class_colour(808)), 200, "image/jpeg")

    url = server.add("/shutdown/slow.jpg", slow_photo)

    def client():
        try:
            answer["status"], answer["body"] = request(port, "POST", "/", {"urls": [url], "top_k": 1})
        except OSError as exc:
            answer["error"] = exc

    caller = threading.Thread(target=client)
    caller.start()
    assert arrived.wait(30), "the slow request never reached the photo host"
    os.kill(proc.pid, signal.SIGTERM)  # to the gunicorn arbiter, as the container runtime does
    terminated = time.monotonic()

    caller.join(30)
    assert "error" not in answer, f"the request in flight was cut off: {answer.get('error')!r}"
    assert answer["status"] == 200
    assert json.loads(answer["body"])["results"][0]["predictions"][0]["id"] == 808

    assert proc.wait(20) == 0, log.read_text()[-2000:]
    assert time.monotonic() - terminated < 15  # gunicorn's graceful_timeout (30 s) was not what ended it
    assert refused(port)


def test_sigterm_stops_the_app_after_the_requests_in_flight(server, function_process):
    # The worker's exit runs App.stop(): pools, fan-out and the model's call queue shut down, with a
    # record saying so. It comes after the last request's answer, never before.
    proc, port, log = function_process
    assert request(port, "POST", "/", {"urls": [server.add("/shutdown/one.jpg", photos.solid(
        photos.class_colour(5)), "image/jpeg")], "top_k": 1})[0] == 200
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(20) == 0, log.read_text()[-2000:]
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    messages = [r["message"] for r in records]
    assert "stopped" in messages, messages[-5:]
    assert messages.index("stopped") > max(i for i, m in enumerate(messages) if m.startswith("classified"))
