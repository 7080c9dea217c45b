"""Log lines an operator reads: the request's trace in Cloud Logging's fields, and an httpRequest field."""

from __future__ import annotations

import io
import json
import logging

import functions_framework
import pytest

from function import app as service
from function.infra import logs
from tests.support import ROOT

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(("traceparent", "cloud", "project", "expected"), [
    (f"00-{TRACE}-{SPAN}-01", None, "birds-prod",
     {logs.TRACE: f"projects/birds-prod/traces/{TRACE}", logs.SPAN: SPAN, logs.SAMPLED: True}),
    (f"00-{TRACE}-{SPAN}-00", None, None, {"trace_id": TRACE, logs.SPAN: SPAN, logs.SAMPLED: False}),
    (None, f"{TRACE}/1;o=1", "p", {logs.TRACE: f"projects/p/traces/{TRACE}", logs.SPAN: "0000000000000001",
                                   logs.SAMPLED: True}),
    (None, TRACE.upper(), "p", {logs.TRACE: f"projects/p/traces/{TRACE}"}),
    (f"00-{TRACE}-{SPAN}-01", f"{'1' * 32}/5", "p",  # W3C wins over Google's own header
     {logs.TRACE: f"projects/p/traces/{TRACE}", logs.SPAN: SPAN, logs.SAMPLED: True}),
])
def test_the_trace_comes_from_traceparent_or_x_cloud_trace_context(traceparent, cloud, project, expected):
    assert logs.trace_fields(traceparent, cloud, project) == expected


@pytest.mark.parametrize("bad", ["", "garbage", f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01",
                                 f'00-{TRACE}-{SPAN}-01", "severity": "ERROR', "x" * 10_000])
def test_a_malformed_trace_header_adds_nothing(bad):
    assert logs.trace_fields(bad, bad, "p") == {}


@pytest.fixture
def log_lines(monkeypatch):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    monkeypatch.setattr(root, "level", logging.INFO)
    monkeypatch.setattr(logging.getLogger("function"), "level", logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)


def test_the_request_line_carries_the_trace_and_an_http_request_field(env, serve_photo, log_lines):
    env.setenv("GOOGLE_CLOUD_PROJECT", "birds-prod")
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    service.serving()._model.get(timeout=120)
    r = client.post("/?top_k=2", json={"urls": [serve_photo(71)]},
                    headers={"traceparent": f"00-{TRACE}-{SPAN}-01", "User-Agent": "birdwatcher/2"})
    assert r.status_code == 200
    (line,) = [x for x in log_lines() if x["message"].startswith("classified 1 photo")]
    assert line[logs.TRACE] == f"projects/birds-prod/traces/{TRACE}" and line[logs.SPAN] == SPAN
    http = line["httpRequest"]
    assert http["requestMethod"] == "POST" and http["requestUrl"] == "/?top_k=2" and http["status"] == 200
    assert http["userAgent"] == "birdwatcher/2" and int(http["responseSize"]) == len(r.data)
    assert http["latency"].endswith("s") and float(http["latency"][:-1]) >= 0
    # The photo fetch's own records (other threads) carry the same trace.
    assert all(x.get(logs.TRACE) == line[logs.TRACE] for x in log_lines() if x.get("request_id") == line["request_id"])


def test_a_rejected_request_line_has_its_status_in_http_request(env, log_lines):
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    r = client.post("/", json={"urls": []}, headers={"X-Cloud-Trace-Context": f"{TRACE}/7;o=1"})
    assert r.status_code == 400
    (line,) = [x for x in log_lines() if x["message"].startswith("request rejected")]
    assert line["httpRequest"]["status"] == 400 and line["trace_id"] == TRACE
