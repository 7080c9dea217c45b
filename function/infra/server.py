"""gunicorn's settings for the HTTP target, and a worker that bounds how long request headers take.

functions-framework's own launcher (``functions-framework --target ...``) fixes gunicorn's options
(``limit_request_line=0``: a request line of any length, read with a search for its end after every
chunk: a 64 MiB query string held a thread at 100 % CPU for over 60 s) and reads no config file, so
the image starts gunicorn itself with ``gunicorn.conf.py`` (which calls :func:`gunicorn_settings`)
and functions-framework's app (the Dockerfile's CMD)::

    gunicorn -c gunicorn.conf.py 'functions_framework:create_app(target="classify_http")'

gunicorn's threaded worker waits up to 5 s for a new connection's first byte off the thread pool,
then reads the headers on a pool thread with no deadline: four connections sending a header byte a
second held all four threads and ``/healthz`` timed out (issue 12, finding 6).
:func:`header_deadline_worker` arms a deadline when a pool thread takes a connection and cancels it
when the headers are complete; past it, the socket's read side is shut and the connection dropped.
The body has its own deadline (``BODY_TIMEOUT_S``, :mod:`function.infra.limits`).
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.gthread import ThreadWorker  # type: ignore[import-untyped]  # no stubs shipped

from ..config import Config
from .deadlines import Deadlines

# gunicorn's ceiling for limit_request_line (gunicorn.http.message.MAX_REQUEST_LINE): it caps larger values.
MAX_REQUEST_LINE = 8190


def header_deadline_worker(header_timeout_s: float) -> type[ThreadWorker]:
    """A gthread worker class whose connections must send complete headers within ``header_timeout_s``."""
    deadlines = Deadlines()  # its thread starts on first use, in the worker process

    class HeaderDeadlineWorker(ThreadWorker):  # type: ignore[misc]  # untyped base
        def handle(self, conn: Any) -> Any:
            conn.header_deadline = deadlines.shut_on(conn.sock, header_timeout_s)
            try:
                return super().handle(conn)
            finally:
                conn.header_deadline.cancel()

        def handle_request(self, req: Any, conn: Any) -> Any:
            conn.header_deadline.cancel()  # the headers are in
            return super().handle_request(req, conn)

    return HeaderDeadlineWorker


def gunicorn_settings(config: Config) -> dict[str, Any]:
    """What ``gunicorn.conf.py`` sets: functions-framework's choices, plus the bounds above.

    The address comes from gunicorn itself (``0.0.0.0:$PORT``, or ``--bind``).
    """
    return {
        "workers": config.workers,
        "threads": config.threads,
        "worker_class": header_deadline_worker(config.header_timeout_s),
        "timeout": 0,  # as functions-framework: no arbiter kill; the request deadlines are the app's
        "loglevel": "error",
        "limit_request_line": MAX_REQUEST_LINE,
        # Idle kept-alive connections wait in the poller, not on a thread: gunicorn's default, kept.
        "keepalive": 2,
    }
