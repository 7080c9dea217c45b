"""A real HTTP server process for the tests that need sockets: the function started the way the
image's CMD starts it (gunicorn with ``gunicorn.conf.py`` and functions-framework's app; or, to
measure the old behaviour, ``functions-framework --target classify_http``), by ``harness``.

Readiness is polled, never slept for; the process group is killed by its id at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import HOST, FunctionProcess, http_get
from tests.support import LABELS_PATH, MODEL_PATH

START_S = 120.0  # TensorFlow import + model load on a busy two-core machine; reached only on failure

__all__ = ["HOST", "get", "serve"]
get = http_get


@contextmanager
def serve(server, tmp_path: Path, launcher: str = "gunicorn", *, wait: bool = True,
          **env: str) -> Iterator[FunctionProcess]:
    """The function on a free loopback port, ready (``/readyz`` 200) unless ``wait`` is false (the
    CloudEvent target has no ``/readyz``); ``env`` adds settings."""
    environ = {**os.environ, "MODEL_URL": server.url(MODEL_PATH), "LABELS_URL": server.url(LABELS_PATH),
               "TRUSTED_HOSTS": HOST, "WORKERS": "1", "THREADS": "4", "PYTHONUNBUFFERED": "1", **env}
    process = FunctionProcess(environ, tmp_path / "function.log", launcher=launcher).start()
    try:
        if wait:
            process.wait_ready(START_S)
        yield process
    finally:
        process.stop(grace_s=0)
