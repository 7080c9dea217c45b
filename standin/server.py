"""A small HTTP server on 127.0.0.1 that plays the hub, the label-map host and the photo hosts.

Routes map a path (query string ignored unless registered with it) to either fixed content or a
handler function, so tests can serve odd answers (404, 500-then-200, a stalled body). The server
can add a per-request latency and cap each connection's bandwidth, to stand in for the internet
in benchmarks. Every request is recorded so tests can count downloads.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from harness import HOST


@dataclass
class Reply:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[BaseHTTPRequestHandler], Reply | None]


class StandInServer:
    """``with StandInServer() as s: s.add("/x.jpg", data, "image/jpeg"); s.url("/x.jpg")``."""

    def __init__(self, latency_s: float = 0.0, bandwidth_bps: float | None = None):
        self.latency_s = latency_s
        self.bandwidth_bps = bandwidth_bps
        self.routes: dict[str, Reply | Handler] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server._serve(self)

            def do_HEAD(self):
                server._serve(self, head=True)

        self.httpd = ThreadingHTTPServer((HOST, 0), _Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- set-up -----------------------------------------------------------------------------
    def add(self, path: str, body: bytes | str | Handler, content_type: str = "application/octet-stream",
            status: int = 200, headers: dict[str, str] | None = None) -> str:
        """Serve ``body`` at ``path``; returns the full URL."""
        if callable(body):
            self.routes[path] = body
        else:
            data = body.encode() if isinstance(body, str) else body
            self.routes[path] = Reply(data, status, content_type, dict(headers or {}))
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> StandInServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> StandInServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- serving ----------------------------------------------------------------------------
    def _serve(self, req: BaseHTTPRequestHandler, head: bool = False) -> None:
        path = req.path
        route = self.routes.get(path) or self.routes.get(urlsplit(path).path)
        with self._lock:
            self.hits[urlsplit(path).path] += 1
        if self.latency_s:
            time.sleep(self.latency_s)
        if route is None:
            reply: Reply | None = Reply(b"not found", 404, "text/plain")
        else:
            reply = route(req) if callable(route) else route
        if reply is None:  # the handler wrote its own answer (or hung up)
            return
        req.send_response(reply.status)
        req.send_header("Content-Type", reply.content_type)
        req.send_header("Content-Length", str(len(reply.body)))
        for k, v in reply.headers.items():
            req.send_header(k, v)
        req.end_headers()
        if not head:
            self._write(req, reply.body)

    def _write(self, req: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            if not self.bandwidth_bps:
                req.wfile.write(body)
                return
            chunk = 64 * 1024
            start = time.perf_counter()
            for offset in range(0, len(body), chunk):
                req.wfile.write(body[offset:offset + chunk])
                due = start + (offset + chunk) / self.bandwidth_bps
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass
