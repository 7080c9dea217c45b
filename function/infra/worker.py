"""gunicorn's gthread worker, changed so that a connection holds no request thread until its request head is in.

The one module that depends on how gunicorn is built (tests/infra/test_gunicorn_surface.py and
test_reaches.py check what it uses). gthread hands every accepted connection to a pool thread at
once, which waits up to 5 s for a first byte: a few idle connections delay every request.
:class:`HeadFirstWorker` reads the head in the event loop without blocking and hands the connection
(the bytes read put back into gunicorn's parser) to a thread once the head has ended. A head not in
within ``HEADER_TIMEOUT_S`` is dropped; connections past ``worker_connections`` are answered 503 at
once instead of waiting unseen in the listen backlog. TLS and HTTP/2 prior knowledge keep gunicorn's
own path.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from gunicorn.http2 import negotiation  # type: ignore[import-untyped]  # no stubs shipped
from gunicorn.workers.gthread import ThreadWorker  # type: ignore[import-untyped]

from ..errors import TooManyConnections, answer
from .deadlines import Deadlines

# Read in the poller at most this much of a head (memory: MAX_CONNECTIONS x this, at worst); gunicorn's
# own limits answer a longer one.
HEAD_BYTES = 64 * 1024
# After SIGTERM, how long a request head still on its way may take (gunicorn's linger for kept-alive ones).
STOP_LINGER_S = 2.0
_BARE_LF = re.compile(rb"(?<!\r)\n")  # gunicorn refuses a line ended by LF alone (RFC 9112 section 2.2)

_REFUSED = answer(TooManyConnections("this instance holds as many connections as it takes (MAX_CONNECTIONS); "
                                     "retry, or use fewer connections", retry_after_s=1))
REFUSAL = (f"HTTP/1.1 {_REFUSED.status} Service Unavailable\r\n"
           + "".join(f"{name}: {value}\r\n" for name, value in _REFUSED.headers.items())
           + f"Connection: close\r\nContent-Length: {len(_REFUSED.body)}\r\n\r\n").encode() + _REFUSED.body


def head_ended(head: bytes | bytearray, start: int = 0) -> bool:
    """Whether a pool thread can take the head now (``start``: where the new bytes begin): at the blank
    line that ends it, at :data:`HEAD_BYTES`, or at a bare LF, which gunicorn refuses at once."""
    return (len(head) >= HEAD_BYTES or head.find(b"\r\n\r\n", max(0, start - 3)) >= 0
            or _BARE_LF.search(head, start) is not None)


def refuse(sock: socket.socket) -> None:
    """Answer 503 and close, without blocking the event loop. A request already here is read first:
    closing with unread data sends a reset, which can destroy the answer before the client reads it."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.recv(HEAD_BYTES)
        sock.send(REFUSAL)  # fits in a fresh socket's send buffer
    sock.close()


class HeadFirstWorker(ThreadWorker):  # type: ignore[misc]  # untyped base
    """gthread, with request heads read in the event loop and connections past the cap refused."""

    header_timeout_s = 10.0  # set by header_deadline_worker() from HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.heads: deque[Any] = deque()  # connections waiting for their head, oldest deadline first
        self.deadlines = Deadlines()  # its thread starts on first use, in the worker process

    def set_accept_enabled(self, enabled: bool) -> None:
        # gunicorn turns accepting off at worker_connections; this worker accepts while it runs, to refuse.
        super().set_accept_enabled(enabled or self.alive)

    def accept(self, listener: socket.socket) -> None:
        if self.nr_conns < self.worker_connections:
            super().accept(listener)  # counts it and calls enqueue_req
            return
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):  # gone already, or taken by another worker
            return
        refuse(sock)

    def enqueue_req(self, conn: Any) -> None:
        """Wait in the poller for the connection's head; a thread takes it once it is in."""
        if self.cfg.is_ssl or negotiation.prior_knowledge_allowed(self.cfg, conn.client):
            super().enqueue_req(conn)
            return
        conn.head = bytearray(conn.parser.unreader.take_buffered() if conn.parser else b"")
        conn.head_deadline = time.monotonic() + self.header_timeout_s
        if conn.head and head_ended(conn.head):
            super().enqueue_req(conn)
            return
        conn.sock.setblocking(False)
        self.heads.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_head_readable, conn))
        self.on_head_readable(conn)  # often in already (a kept-alive connection, a fast client)

    def on_head_readable(self, conn: Any, _sock: Any = None) -> None:
        try:
            data = conn.sock.recv(HEAD_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the client
            data = b""
        if not data:  # closed before its request was in: nothing to answer
            self._drop(conn)
            return
        conn.head += data
        if head_ended(conn.head, len(conn.head) - len(data)):
            self._leave_poller(conn)
            super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        """Runs on a pool thread: gunicorn's handling, reading the head from the bytes already read."""
        head, conn.head = getattr(conn, "head", None), None
        if head is None:  # gunicorn's own path (TLS): its thread reads the head, under the whole deadline
            conn.header_deadline = self.deadlines.shut_on(conn.sock, self.header_timeout_s)
        else:
            conn.init()  # the parser, on a blocking socket (a kept-alive connection has both)
            conn.parser.unreader.unread(bytes(head))
            conn.header_deadline = None
            if b"\r\n\r\n" not in head:  # handed over unfinished: gunicorn reads on, within what is left
                conn.header_deadline = self.deadlines.shut_on(conn.sock, conn.head_deadline - time.monotonic())
        try:
            return super().handle(conn)
        finally:
            if conn.header_deadline is not None:
                conn.header_deadline.cancel()

    def handle_request(self, req: Any, conn: Any) -> Any:
        if conn.header_deadline is not None:
            conn.header_deadline.cancel()  # the headers are in
        return super().handle_request(req, conn)

    def murder_pending(self) -> None:
        """Also drop the heads not in by their deadline (run() calls this every second, and while stopping)."""
        super().murder_pending()
        now = time.monotonic()
        if not self.alive:
            # Stopping: a head on its way gets gunicorn's linger for kept-alive connections, not the
            # whole header deadline. The first capped deadline stays the earliest.
            for conn in self.heads:
                conn.head_deadline = min(conn.head_deadline, now + STOP_LINGER_S)
        while self.heads and self.heads[0].head_deadline <= now:
            self._drop(self.heads[0])

    def _leave_poller(self, conn: Any) -> None:
        self.heads.remove(conn)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _drop(self, conn: Any) -> None:
        self._leave_poller(conn)
        self.nr_conns -= 1
        conn.close()


def header_deadline_worker(header_timeout_s: float) -> type[HeadFirstWorker]:
    """The worker class for gunicorn: heads must be in within ``header_timeout_s`` (``HEADER_TIMEOUT_S``)."""
    return type("Worker", (HeadFirstWorker,), {"header_timeout_s": header_timeout_s})


def server_close(start_response: Callable[..., object]) -> Callable[[], object]:
    """What closes the connection after this answer: gunicorn drops an app's ``Connection: close``, but its
    ``start_response`` is a method of a response whose ``force_close()`` does (tests/infra/test_reaches.py
    checks it). Under another server, nothing: the header closes it."""
    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    return force_close if callable(force_close) else lambda: None
