"""gunicorn's settings for the HTTP target.

functions-framework's own launcher (``functions-framework --target ...``) fixes gunicorn's options
(``limit_request_line=0``: a request line of any length, read with a search for its end after every
chunk: a 64 MiB query string held a thread at 100 % CPU for over 60 s) and reads no config file, so
the image starts gunicorn itself with ``gunicorn.conf.py`` (which calls :func:`gunicorn_settings`)
and functions-framework's app (the Dockerfile's CMD)::

    gunicorn -c gunicorn.conf.py 'functions_framework:create_app(target="classify_http")'

The worker (:mod:`function.infra.worker`) reads each request head in its event loop, so idle and
slow-header connections hold no request thread, drops heads not in by ``HEADER_TIMEOUT_S``, and
refuses connections past ``MAX_CONNECTIONS`` at once. The body has its own deadline
(``BODY_TIMEOUT_S``, :mod:`function.infra.limits`).
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from .worker import header_deadline_worker

# gunicorn's ceiling for limit_request_line (gunicorn.http.message.MAX_REQUEST_LINE): it caps larger values.
MAX_REQUEST_LINE = 8190


def gunicorn_settings(config: Config) -> dict[str, Any]:
    """What ``gunicorn.conf.py`` sets: functions-framework's choices, plus the bounds above.

    The address comes from gunicorn itself (``0.0.0.0:$PORT``, or ``--bind``).
    """
    return {
        "workers": config.workers,
        "threads": config.threads,
        "worker_class": header_deadline_worker(config.header_timeout_s),
        "worker_connections": config.max_connections,  # per worker; past it, a 503 at once (the worker)
        "timeout": 0,  # as functions-framework: no arbiter kill; the request deadlines are the app's
        "loglevel": "error",
        "limit_request_line": MAX_REQUEST_LINE,
        # Idle kept-alive connections wait in the poller, not on a thread: gunicorn's default, kept.
        "keepalive": 2,
        # gunicorn's control socket (a Unix socket taking commands, served by an asyncio thread in the
        # arbiter) is not used here: off, the arbiter holds ~4 MB less and nothing answers on it.
        "control_socket_disable": True,
    }
