"""Helpers for tests that write results: the function's clients, clean credentials, a stand-in sink."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import functions_framework
import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from function import app as service
from harness import HOST
from tests.api import stores
from tests.support import ROOT


def no_host_credentials(env, tmp_path) -> None:
    """The stores' tests' clean credentials (``stores.no_host_credentials``), no results configured unless
    a test sets them, and deliveries that need no proof of sender (the point here is what is written)."""
    stores.no_host_credentials(env, tmp_path)
    for name in ("K_SINK", "RESULTS_URL", "RESULTS_METADATA", "EVENT_TOKENS"):
        env.delenv(name, raising=False)
    env.setenv("EVENT_AUTH", "none")


def http_client():
    service.reset()
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    assert service.serving().wait_until_ready(120).ready
    return client


def event_client():
    service.reset()
    client = functions_framework.create_app(target="classify_event", source=str(ROOT / "main.py"),
                                            signature_type="cloudevent").test_client()
    assert service.serving().wait_until_ready(120).ready
    return client


def check_record(doc: dict) -> None:
    """The document is a ``ResultRecord`` as openapi.yaml describes it."""
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    registry = Registry().with_resource("urn:contract", Resource.from_contents(spec, default_specification=DRAFT202012))
    schema = {"$ref": "urn:contract#/components/schemas/ResultRecord"}
    jsonschema.Draft202012Validator(schema, registry=registry, format_checker=jsonschema.FormatChecker()).validate(doc)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def data(self) -> dict:
        return json.loads(self.body)


@dataclass
class StandInSink:
    """A Knative sink on 127.0.0.1: records each POST; answers ``status(n)`` to the n-th (from 0)."""

    status: Callable[[int], int] = lambda n: 202
    received: list[Received] = field(default_factory=list)
    attempts: int = 0

    def __post_init__(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink._lock:
                    n, sink.attempts = sink.attempts, sink.attempts + 1
                status = sink.status(n)
                if status < 300:
                    sink.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.httpd.server_address[1]}/"

    def __enter__(self) -> StandInSink:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
