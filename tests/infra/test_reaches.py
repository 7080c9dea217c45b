"""What this code builds on in other libraries, where a change under it would not show elsewhere.

gunicorn offers an app no public way to close its connection (function/infra/worker.py reaches its
response through ``start_response``): the test says so by name when gunicorn changes. The SSRF
guard stands on urllib3's public connection hooks: the tests check, on real connections, that it
connects to the address it checked (no second lookup to rebind), and that the Host header and TLS
verification use the name.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from function.errors import BlockedAddress, Timeout
from function.infra import worker
from function.infra.fetch import HttpFetcher, new_session
from function.infra.guard import AddressPolicy, guard_session

TRUSTED = AddressPolicy.from_trusted(["127.0.0.1/32"])  # 127.0.0.1 only: 127.0.0.2 stays refused


class HostEcho(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (self.headers.get("Host") or "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serving(tls: ssl.SSLContext | None = None) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HostEcho)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def port() -> Iterator[int]:
    yield from serving()


@pytest.fixture
def tls_port(tmp_path) -> Iterator[tuple[int, str]]:
    """An HTTPS server on 127.0.0.1 whose certificate names photos.test only, and that certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", "/CN=photos.test", "-addext", "subjectAltName=DNS:photos.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    for p in serving(context):
        yield p, str(cert)


@pytest.fixture
def rebinding(monkeypatch) -> None:
    """A ``*.test`` name resolves to 127.0.0.1 once, then to 127.0.0.2 (where nothing listens): a DNS rebinding."""
    real, looked_up = socket.getaddrinfo, []

    def getaddrinfo(host, port, *args, **kwargs):
        if not str(host).rstrip(".").endswith(".test"):
            return real(host, port, *args, **kwargs)
        address = "127.0.0.2" if host in looked_up else "127.0.0.1"
        looked_up.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_the_guard_connects_to_the_address_it_checked_and_sends_the_name(port, rebinding):
    with guard_session(requests.Session(), TRUSTED) as session:
        assert session.get(f"http://photos.test:{port}/", timeout=5).text == f"photos.test:{port}"
    with guard_session(requests.Session(), TRUSTED) as session, pytest.raises(BlockedAddress, match="127.0.0.2"):
        session.get(f"http://photos.test:{port}/", timeout=5)  # a new connection is checked again


def test_the_guard_verifies_tls_against_the_name_while_connecting_to_the_address(tls_port, rebinding):
    port, cert = tls_port
    with guard_session(requests.Session(), TRUSTED) as session:
        session.verify = cert
        assert session.get(f"https://photos.test:{port}/", timeout=5).text == f"photos.test:{port}"
    with guard_session(requests.Session(), AddressPolicy.from_trusted(["127.0.0.0/8"])) as session:
        session.verify = cert
        with pytest.raises(requests.exceptions.SSLError):  # the certificate names photos.test only
            session.get(f"https://other.test:{port}/", timeout=5)


def test_a_fetch_deadline_cuts_a_kept_alive_connection_whose_next_answer_trickles():
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener, contextlib.suppress(OSError):  # cut by the fetch's deadline
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(65536)  # the next request, on the same connection
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":  # 5 s at this pace
                conn.sendall(bytes([byte]))
                time.sleep(0.1)

    threading.Thread(target=serve, daemon=True).start()
    fetcher = HttpFetcher(new_session(1, "test"), 1.0, 1.0, 100, deadline_s=1.0)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    try:
        assert fetcher.get(url) == b"ok"
        started = time.monotonic()
        with pytest.raises(Timeout):
            fetcher.get(url)
        assert time.monotonic() - started < 2.0, "the deadline did not reach the kept-alive connection"
    finally:
        fetcher.close()


def test_gunicorn_still_needs_and_still_has_the_way_limits_closes_a_connection():
    gunicorn_wsgi = pytest.importorskip("gunicorn.http.wsgi")

    class Request:
        version, method = (1, 1), "POST"

        def should_close(self) -> bool:
            return False

    response = gunicorn_wsgi.Response(Request(), None, None)
    close = worker.server_close(response.start_response)
    assert close == getattr(response, "force_close", None), (
        "gunicorn's start_response is no longer a method of a response with force_close(): "
        "function/infra/worker.py's server_close no longer closes a connection whose body is left unread")
    response.start_response("413 REQUEST ENTITY TOO LARGE", [("Content-Length", "2"), ("Connection", "close")])
    assert "Connection: keep-alive\r\n" in response.default_headers(), (
        "gunicorn now honours the app's Connection: close: function/infra/worker.py's server_close can go")
    close()
    assert "Connection: close\r\n" in response.default_headers() and response.should_close(), (
        "gunicorn's force_close() no longer closes the connection: function/infra/worker.py's server_close "
        "needs another way")
