"""Bounds on every request before any route sees it: one WSGI middleware around the whole app.

functions-framework reads the whole body after every answer that is not streamed (its
``read_request`` hook), whatever the route: a ``POST /healthz`` with 512 MiB is read into memory
unless something below stops it. So the bounds live below the routes, on ``wsgi.input`` itself:

* **one body limit** for every path and method (:func:`body_limit`): a declared length past it is
  answered 413 without calling the app; a chunked body is cut one byte past it, so the route's own
  check answers 413 and nothing after it (functions-framework included) can read more;
* **a query-string limit**: 414 before anything parses it (gunicorn's ``limit_request_line`` bounds
  the request line before this, see ``function/infra/server.py``);
* **a body deadline**: a body not in by ``BODY_TIMEOUT_S`` after the headers is cut (the socket's
  read side is shut, which wakes a blocked read) and answered 408: a client sending a byte a
  second cannot hold a request thread. A body of declared length gets less: ``BODY_GRACE_S`` plus
  its length at ``BODY_MIN_RATE`` bytes/s, so a 200-byte JSON body dripped at a byte a second is
  cut after 5 s, not 60 (four such clients would otherwise hold every request thread for a minute:
  docs/reliability.md);
* **a usable connection after the answer**: when a body is left unread, the answer says
  ``Connection: close`` and the server closes it (gunicorn drains at most 64 KiB and then closes a
  connection it had announced as kept alive, and a ``requests.Session`` reusing it fails its next
  request).
* **every answer counted once**, whoever gave it (a route, or these bounds: 413, 414, 408), by the
  request meter.

Plain WSGI, no web framework: answers are built by :func:`function.errors.answer`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

from ..errors import BodyTimeout, BodyTooLarge, InvalidContentLength, QueryTooLong, RequestError, answer
from . import logs
from .deadlines import Deadline, Deadlines
from .worker import server_close

Environ = dict[str, Any]
Headers = list[tuple[str, str]]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None] | None
StartResponse = Callable[..., Callable[[bytes], object]]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]
Answered = tuple[str, Headers, Iterable[bytes], bool]  # status, headers, body, and whether the body is left unread

UPLOAD_TYPES = ("multipart/form-data", "image/")
# A refused body this small is read and dropped (within DRAIN_S) so the client gets its 413 on a
# connection it can reuse; past it the connection is closed instead. 8 MiB on loopback: ~10 ms.
DRAIN_BYTES = 8 * 1024 * 1024
DRAIN_S = 2.0


def body_limit(environ: Environ, max_request_bytes: int, max_upload_bytes: int) -> int:
    """The one body limit: uploads to ``POST /`` get ``MAX_UPLOAD_BYTES``, every other request
    (JSON, CloudEvents, health checks, 404/405/415 answers) ``MAX_REQUEST_BYTES``."""
    path = (environ.get("PATH_INFO") or "/").rstrip("/") or "/"
    media = (environ.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower()
    if environ.get("REQUEST_METHOD") == "POST" and path == "/" and media.startswith(UPLOAD_TYPES):
        return max_upload_bytes
    return max_request_bytes


# A body of known length must arrive at this rate after a grace period (a phone on a slow network
# sends far more than 64 KiB/s; a byte a second is an attack, not a client).
BODY_GRACE_S = 5.0
BODY_MIN_RATE = 64 * 1024


def body_seconds(length: int | None, body_timeout_s: float) -> float:
    """How long a body may take after its headers: BODY_TIMEOUT_S, less for a short declared length."""
    if length is None:
        return body_timeout_s
    return min(body_timeout_s, BODY_GRACE_S + length / BODY_MIN_RATE)


class Meter(Protocol):
    """Counts requests in flight and answers by route and status (``function.infra.metrics.RequestMeter``)."""

    def started(self) -> None: ...

    def answered(self, path: str, status: int) -> None: ...


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class BoundedInput:
    """``wsgi.input`` that hands out at most ``limit + 1`` bytes and knows whether the body is all read."""

    def __init__(self, inner: _Readable, limit: int, length: int | None, deadline: Deadline | None):
        self._inner = inner
        self._left = limit + 1  # one past the limit: enough for a route to see that it is over
        self._length = length  # None: chunked (gunicorn ends it; wsgi.input_terminated)
        self._deadline = deadline
        self.read_bytes = 0
        self.at_end = length == 0
        self.timed_out = False

    def read(self, size: int | None = -1) -> bytes:
        if self._left <= 0 or self.at_end or self.timed_out:
            return b""
        n = self._left if size is None or size < 0 else min(size, self._left)
        try:
            data = self._inner.read(n)
        except Exception:
            if self._deadline is not None and self._deadline.fired:
                data = b""
            else:
                raise
        if self._deadline is not None and self._deadline.fired and (not data or self._short(data, n)):
            self.timed_out = True
            return b""
        self._account(data, n)
        return data

    def _short(self, data: bytes, asked: int) -> bool:
        return self._length is not None and len(data) < asked and self.read_bytes + len(data) < self._length

    def _account(self, data: bytes, asked: int) -> None:
        self.read_bytes += len(data)
        self._left -= len(data)
        if (not data and asked > 0) or (self._length is not None and self.read_bytes >= self._length):
            self.at_end = True
        if self.at_end and self._deadline is not None:
            self._deadline.cancel()  # all in: the deadline must not cut the next request on this connection

    def readline(self, size: int | None = -1) -> bytes:  # Werkzeug reads multipart bodies by lines
        inner = getattr(self._inner, "readline", None)
        if inner is None or self._left <= 0 or self.at_end or self.timed_out:
            return b""
        n = self._left if size is None or size < 0 else min(size, self._left)
        try:
            data: bytes = inner(n)
        except Exception:
            if self._deadline is not None and self._deadline.fired:
                self.timed_out = True
                return b""
            raise
        if self._deadline is not None and self._deadline.fired and not data:
            self.timed_out = True
            return b""
        self._account(data, n)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def finished(self) -> bool:
        """Whether the whole body has been read (then the connection can serve another request)."""
        if self.timed_out:
            return False
        return self.at_end or (self._length is not None and self.read_bytes >= self._length)


class BoundedRequests:
    """The WSGI middleware (see the module's docstring)."""

    def __init__(self, app: WsgiApp, *, max_request_bytes: int, max_upload_bytes: int, max_query_bytes: int,
                 body_timeout_s: float, deadlines: Deadlines | None = None,
                 meter: Callable[[], Meter] | None = None):
        self.app = app
        # Every answer, whoever gave it (a route or these bounds), counted once, by the meter of the app
        # serving the request: asked per request, since that app is built in the process that serves.
        self.meter = meter
        self.max_request_bytes = max_request_bytes
        self.max_upload_bytes = max_upload_bytes
        self.max_query_bytes = max_query_bytes
        self.body_timeout_s = body_timeout_s
        self._deadlines = deadlines

    @property
    def deadlines(self) -> Deadlines:
        # Made on first use, in the process that serves: this middleware is installed at import, which
        # may be in a server's parent process that then forks the worker.
        if self._deadlines is None:
            self._deadlines = Deadlines()
        return self._deadlines

    def _drain(self, environ: Environ, length: int) -> bool:
        """Read and drop a refused body of up to ``DRAIN_BYTES`` within ``DRAIN_S``, so that a client
        still sending it gets the answer, on a connection it can use again; a bigger or slower body
        is left unread and the connection closed."""
        sock = environ.get("gunicorn.socket")
        if length > DRAIN_BYTES or not isinstance(sock, socket.socket):
            return False
        deadline = self.deadlines.shut_on(sock, DRAIN_S)
        body = BoundedInput(environ["wsgi.input"], length, length, deadline)
        try:
            while body.read(64 * 1024):
                pass
        finally:
            deadline.cancel()
        return body.finished()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        meter = self.meter() if self.meter is not None else None
        if meter is not None:
            meter.started()
        status = "500 INTERNAL SERVER ERROR"  # what the server answers when the app raises
        try:
            status, headers, body, body_unread = self._bounded(environ)
            if body_unread:  # the connection cannot carry another request: close it, and say so
                server_close(start_response)()
                headers = [(k, v) for k, v in headers if k.lower() != "connection"] + [("Connection", "close")]
            start_response(status, headers)
            return body
        finally:
            if meter is not None:
                meter.answered(str(environ.get("PATH_INFO") or "/"), int(status.split(" ", 1)[0]))

    def _bounded(self, environ: Environ) -> Answered:
        query = environ.get("QUERY_STRING") or ""
        if len(query) > self.max_query_bytes:
            return _refuse(environ, QueryTooLong(
                f"the query string is {len(query)} bytes; the limit is {self.max_query_bytes} "
                "(MAX_QUERY_BYTES): POST the URLs as JSON instead"), body_unread=True)
        limit = body_limit(environ, self.max_request_bytes, self.max_upload_bytes)
        raw_length = (environ.get("CONTENT_LENGTH") or "").strip()
        chunked = "chunked" in (environ.get("HTTP_TRANSFER_ENCODING") or "").lower()
        length: int | None = 0
        if chunked:
            length = None
        elif raw_length:
            if not raw_length.isdigit():
                return _refuse(environ, InvalidContentLength(
                    f"Content-Length {raw_length[:40]!r} is not a number"), body_unread=True)
            length = int(raw_length)
        if length is not None and length > limit:
            return _refuse(environ, BodyTooLarge(f"the body is {length} bytes; the limit for this request is {limit}"),
                           body_unread=not self._drain(environ, length))
        sock = environ.get("gunicorn.socket")
        deadline = None
        allowed_s = body_seconds(length, self.body_timeout_s)
        if length != 0 and isinstance(sock, socket.socket) and self.body_timeout_s > 0:
            deadline = self.deadlines.shut_on(sock, allowed_s)
        body = BoundedInput(environ["wsgi.input"], limit, length, deadline)
        environ["wsgi.input"] = body
        if length is None:
            environ["wsgi.input_terminated"] = True
        captured: dict[str, Any] = {}

        def capture(status: str, headers: Headers, exc_info: ExcInfo = None) -> Callable[[bytes], object]:
            captured["status"], captured["headers"] = status, headers
            return _no_write

        try:
            result = self.app(environ, capture)
        finally:
            if deadline is not None:
                deadline.cancel()
        if body.timed_out:
            _close(result)
            return _refuse(environ, BodyTimeout(
                f"the body did not arrive within {allowed_s:g} s ({BODY_GRACE_S:g} s plus its length "
                f"at {BODY_MIN_RATE // 1024} KiB/s, at most BODY_TIMEOUT_S)"), body_unread=True)
        return (captured.get("status", "500 INTERNAL SERVER ERROR"), list(captured.get("headers", [])), result,
                not body.finished())


def _no_write(_data: bytes) -> object:
    raise RuntimeError("the app must return its body, not write it")


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _refuse(environ: Environ, err: RequestError, body_unread: bool) -> Answered:
    reply = answer(err, {"X-Request-Id": environ.get("HTTP_X_REQUEST_ID") or logs.new_request_id()})
    headers = list(reply.headers.items()) + [("Content-Length", str(len(reply.body)))]
    return f"{reply.status} {_REASONS.get(reply.status, '')}".strip(), headers, [reply.body], body_unread


_REASONS = {400: "BAD REQUEST", 408: "REQUEST TIMEOUT", 413: "REQUEST ENTITY TOO LARGE", 414: "URI TOO LONG"}
