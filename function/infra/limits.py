"""Bounds on every request before any route sees it: one WSGI middleware around the whole app, on
``wsgi.input`` itself, since functions-framework reads the whole body after every unstreamed answer.

* one body limit (:func:`body_limit`): a declared length past it is 413 without calling the app; a
  chunked body is cut one byte past it, so the route's own check answers 413;
* a query-string limit: 414 before anything parses it;
* a body deadline (:func:`body_seconds`): the socket's read side is shut, waking a blocked read, and
  the answer is 408, so a client dripping bytes cannot hold a request thread;
* a body left unread means ``Connection: close``, and the server closes it (gunicorn would drain at
  most 64 KiB of it and then fail the client's next request on that connection);
* every answer, whoever gave it, counted once by the request meter.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from ..errors import BodyTimeout, BodyTooLarge, InvalidContentLength, QueryTooLong, RequestError, answer
from . import logs
from .deadlines import Deadline, Deadlines
from .worker import server_close

if TYPE_CHECKING:
    from .metrics import RequestMeter

Headers = list[tuple[str, str]]
Answered = tuple[str, Headers, Iterable[bytes], bool]  # status, headers, body, and whether the body is left unread

UPLOAD_TYPES = ("multipart/form-data", "image/")
# A refused body this small is read and dropped (within DRAIN_S) so the client gets its 413 on a
# connection it can reuse; past it the connection is closed instead.
DRAIN_BYTES = 8 * 1024 * 1024
DRAIN_S = 2.0
# A body of known length must arrive at this rate after a grace period (a phone on a slow network
# sends far more than 64 KiB/s; a byte a second is an attack, not a client).
BODY_GRACE_S = 5.0
BODY_MIN_RATE = 64 * 1024


def body_limit(environ: WSGIEnvironment, max_request_bytes: int, max_upload_bytes: int) -> int:
    """``MAX_UPLOAD_BYTES`` for uploads to ``POST /``, ``MAX_REQUEST_BYTES`` for every other request."""
    path = (environ.get("PATH_INFO") or "/").rstrip("/") or "/"
    media = (environ.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower()
    if environ.get("REQUEST_METHOD") == "POST" and path == "/" and media.startswith(UPLOAD_TYPES):
        return max_upload_bytes
    return max_request_bytes


def body_seconds(length: int | None, body_timeout_s: float) -> float:
    """How long a body may take after its headers: BODY_TIMEOUT_S, less for a short declared length."""
    return body_timeout_s if length is None else min(body_timeout_s, BODY_GRACE_S + length / BODY_MIN_RATE)


class BoundedInput:
    """``wsgi.input`` that hands out at most ``limit + 1`` bytes and knows whether the body is all read."""

    def __init__(self, inner: IO[bytes], limit: int, length: int | None, deadline: Deadline | None):
        self._inner = inner
        self._left = limit + 1  # one past the limit: enough for a route to see that it is over
        self._length = length  # None: chunked (gunicorn ends it; wsgi.input_terminated)
        self._deadline = deadline
        self.read_bytes = 0
        self.at_end = length == 0
        self.timed_out = False

    def read(self, size: int | None = -1) -> bytes:
        return self._take(self._inner.read, size, whole=True)

    def readline(self, size: int | None = -1) -> bytes:  # Werkzeug reads multipart bodies by lines
        return self._take(self._inner.readline, size, whole=False)

    def _take(self, read: Callable[[int], bytes], size: int | None, whole: bool) -> bytes:
        """One read of at most ``size``; once the deadline has fired, an empty read (or, with ``whole``, a
        short one before the declared end) is the body cut off."""
        if self._left <= 0 or self.at_end or self.timed_out:
            return b""
        n = self._left if size is None or size < 0 else min(size, self._left)
        try:
            data = read(n)
        except Exception:
            if self._deadline is None or not self._deadline.fired:
                raise
            data = b""
        fired = self._deadline is not None and self._deadline.fired
        short = whole and self._length is not None and len(data) < n and self.read_bytes + len(data) < self._length
        if fired and (not data or short):
            self.timed_out = True
            return b""
        self.read_bytes += len(data)
        self._left -= len(data)
        if (not data and n > 0) or (self._length is not None and self.read_bytes >= self._length):
            self.at_end = True
        if self.at_end and self._deadline is not None:
            self._deadline.cancel()  # all in: the deadline must not cut the next request on this connection
        return data

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def finished(self) -> bool:
        """Whether the whole body has been read (then the connection can serve another request)."""
        return self.at_end and not self.timed_out


class BoundedRequests:
    """The WSGI middleware (see the module's docstring)."""

    def __init__(self, app: WSGIApplication, *, max_request_bytes: int, max_upload_bytes: int, max_query_bytes: int,
                 body_timeout_s: float, meter: Callable[[], RequestMeter]):
        self.app = app
        # Asked per request: the serving app, and so its meter, is built in the process that serves.
        self.meter = meter
        self.max_request_bytes = max_request_bytes
        self.max_upload_bytes = max_upload_bytes
        self.max_query_bytes = max_query_bytes
        self.body_timeout_s = body_timeout_s

    @functools.cached_property
    def deadlines(self) -> Deadlines:
        # Made on first use, in the process that serves: this middleware is installed at import, which
        # may be in a server's parent process that then forks the worker.
        return Deadlines()

    def _drain(self, environ: WSGIEnvironment, length: int) -> bool:
        """Read and drop a refused body of up to ``DRAIN_BYTES`` within ``DRAIN_S``; whether it is all read."""
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

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        meter = self.meter()
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
            meter.answered(str(environ.get("PATH_INFO") or "/"), int(status.split(" ", 1)[0]))

    def _bounded(self, environ: WSGIEnvironment) -> Answered:
        query = environ.get("QUERY_STRING") or ""
        if len(query) > self.max_query_bytes:
            return _refuse(environ, QueryTooLong(
                f"the query string is {len(query)} bytes; the limit is {self.max_query_bytes} "
                "(MAX_QUERY_BYTES): POST the URLs as JSON instead"), body_unread=True)
        limit = body_limit(environ, self.max_request_bytes, self.max_upload_bytes)
        raw_length = (environ.get("CONTENT_LENGTH") or "").strip()
        length: int | None = 0
        if "chunked" in (environ.get("HTTP_TRANSFER_ENCODING") or "").lower():
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
        allowed_s = body_seconds(length, self.body_timeout_s)  # BODY_TIMEOUT_S is positive (Config.validate)
        deadline = self.deadlines.shut_on(sock, allowed_s) if length != 0 and isinstance(sock, socket.socket) else None
        body = BoundedInput(environ["wsgi.input"], limit, length, deadline)
        environ["wsgi.input"] = body
        if length is None:
            environ["wsgi.input_terminated"] = True
        captured: dict[str, Any] = {}

        def capture(status: str, headers: Headers, exc_info: object = None) -> Callable[[bytes], object]:
            captured["status"], captured["headers"] = status, headers
            return _no_write

        try:
            result = self.app(environ, capture)
        finally:
            if deadline is not None:
                deadline.cancel()
        if body.timed_out:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            return _refuse(environ, BodyTimeout(
                f"the body did not arrive within {allowed_s:g} s ({BODY_GRACE_S:g} s plus its length "
                f"at {BODY_MIN_RATE // 1024} KiB/s, at most BODY_TIMEOUT_S)"), body_unread=True)
        return (captured.get("status", "500 INTERNAL SERVER ERROR"), list(captured.get("headers", [])), result,
                not body.finished())


def _no_write(_data: bytes) -> object:
    raise RuntimeError("the app must return its body, not write it")


def _refuse(environ: WSGIEnvironment, err: RequestError, body_unread: bool) -> Answered:
    reply = answer(err, {"X-Request-Id": environ.get("HTTP_X_REQUEST_ID") or logs.new_request_id()})
    headers = list(reply.headers.items()) + [("Content-Length", str(len(reply.body)))]
    return f"{reply.status} {_REASONS.get(reply.status, '')}".strip(), headers, [reply.body], body_unread


_REASONS = {400: "BAD REQUEST", 408: "REQUEST TIMEOUT", 413: "REQUEST ENTITY TOO LARGE", 414: "URI TOO LONG"}
