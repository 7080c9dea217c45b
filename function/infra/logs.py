"""Logging set-up: JSON lines for the service, readable text for the CLI, request ids.

Records carry structured fields one way: ``log.info("msg", extra=logs.fields(photos=3))``; the JSON formatter puts them
at the top level next to ``severity`` and ``message`` (the keys Cloud Logging and most Knative log
pipelines read), the text formatter appends them as ``key=value``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Loggers of libraries whose start-up chatter an operator does not need at INFO.
_NOISY = ("tensorflow", "absl", "h5py", "urllib3", "werkzeug", "PIL")


def fields(**values: Any) -> dict[str, Any]:
    """``log.info("msg", extra=fields(photos=3))``: structured fields for a record."""
    return {"fields": values}


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


@contextmanager
def request_context(request_id: str | None = None) -> Iterator[str]:
    """Tag every record logged inside (in this thread) with the request id."""
    rid = request_id or new_request_id()
    token = request_id_var.set(rid)
    try:
        yield rid
    finally:
        request_id_var.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "logger": record.name,
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            entry["request_id"] = rid
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = getattr(record, "fields", None)
        if extra:
            text += "  " + " ".join(f"{k}={_short(v)}" for k, v in extra.items())
        return text


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def setup(level: str = "INFO", json_lines: bool = True, stream: TextIO | None = None) -> None:
    """Configure the root logger once per process (calling it again replaces the handler)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_bird_classifier", False):
            root.removeHandler(old)
    handler._bird_classifier = True  # type: ignore[attr-defined]  # our mark, to find our handler again
    root.addHandler(handler)
    root.setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING if level == "DEBUG" else logging.ERROR)
    logging.getLogger("function").setLevel(level)
