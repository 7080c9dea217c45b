"""gunicorn's settings for the HTTP target.

The image starts gunicorn itself with ``gunicorn.conf.py`` rather than functions-framework's
launcher, which reads no config file and sets ``limit_request_line=0`` (a request line of any
length, searched for its end after every chunk: a huge query string holds a thread at full CPU).
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from .worker import header_deadline_worker

# gunicorn's ceiling for limit_request_line (gunicorn.http.message.MAX_REQUEST_LINE): it caps larger values.
MAX_REQUEST_LINE = 8190


def gunicorn_settings(config: Config) -> dict[str, Any]:
    """What ``gunicorn.conf.py`` sets: functions-framework's choices, plus the bounds above (the address
    comes from gunicorn itself: ``0.0.0.0:$PORT``, or ``--bind``)."""
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
        # gunicorn's control socket (a Unix socket served by an asyncio thread in the arbiter) is unused:
        # off, the arbiter holds less memory and nothing answers on it.
        "control_socket_disable": True,
    }
