"""Logging set-up: JSON lines for the service, readable text for the CLI, request ids.

Structured fields (``extra=logs.fields(photos=3)``) go at the top level of a JSON line, beside ``severity``
and ``message`` (what Cloud Logging and most Knative log pipelines read), or after a text line as ``key=value``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
trace_var: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("trace", default={})  # noqa: B039

TRACE = "logging.googleapis.com/trace"
SPAN = "logging.googleapis.com/spanId"
SAMPLED = "logging.googleapis.com/trace_sampled"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_CLOUD_TRACE = re.compile(r"^([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([01]))?$")
_NOISY = ("tensorflow", "absl", "h5py", "urllib3", "werkzeug", "PIL")  # start-up chatter, quiet at INFO


def fields(**values: Any) -> dict[str, Any]:
    return {"fields": values}


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


@contextmanager
def _bound(var: contextvars.ContextVar[Any], value: Any) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def request_context(request_id: str) -> AbstractContextManager[None]:
    """Every record logged inside (in this thread) carries the request id."""
    return _bound(request_id_var, request_id)


def trace_context(values: Mapping[str, Any]) -> AbstractContextManager[None]:
    """Every record logged inside (in this thread, and in the photo fetches it starts) carries ``values``."""
    return _bound(trace_var, dict(values))


def trace_fields(traceparent: str | None, cloud_trace: str | None, project: str | None) -> dict[str, Any]:
    """The request's trace for Cloud Logging, from W3C ``traceparent``, else ``X-Cloud-Trace-Context``:
    ``projects/P/traces/T`` with ``GOOGLE_CLOUD_PROJECT`` (linking Cloud Trace), else a bare ``trace_id``.
    Malformed or all-zero ids are ignored: a caller's header must not break or forge the log's structure."""
    trace = span = None
    sampled: bool | None = None
    match = _TRACEPARENT.match((traceparent or "").strip().lower())
    if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
        trace, span, sampled = match.group(1), match.group(2), bool(int(match.group(3), 16) & 1)
    else:
        match = _CLOUD_TRACE.match((cloud_trace or "").strip())
        if match and match.group(1) != "0" * 32:
            trace = match.group(1).lower()
            if match.group(2) and int(match.group(2)) < 2**64:
                span = f"{int(match.group(2)):016x}"
            sampled = None if match.group(3) is None else match.group(3) == "1"
    if trace is None:
        return {}
    out: dict[str, Any] = {TRACE: f"projects/{project}/traces/{trace}"} if project else {"trace_id": trace}
    if span:
        out[SPAN] = span
    if sampled is not None:
        out[SAMPLED] = sampled
    return out


def http_request(method: str, url: str, status: int, response_size: int | None, user_agent: str | None,
                 remote_ip: str | None, latency_s: float, protocol: str | None) -> dict[str, Any]:
    """Cloud Logging's ``httpRequest`` field (LogEntry.HttpRequest) for the request's log line."""
    optional = {"responseSize": None if response_size is None else str(response_size),
                "userAgent": (user_agent or "")[:500], "remoteIp": remote_ip, "protocol": protocol}
    return {"requestMethod": method, "requestUrl": url[:2000], "status": status, "latency": f"{latency_s:.3f}s",
            **{k: v for k, v in optional.items() if v}}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {"severity": record.levelname, "message": record.getMessage(),
                                 "time": f"{created}.{int(record.msecs):03d}Z", "logger": record.name}
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            entry["request_id"] = rid
        entry.update(trace_var.get())
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


NOTICE = "function.notice"  # what a CLI run is doing and why: shown at its default level, which hides INFO


def setup(level: str, json_lines: bool, notices: bool = False) -> None:
    """Configure the root logger (calling it again replaces the handler)."""
    handler = logging.StreamHandler(sys.stderr)
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
    logging.getLogger(NOTICE).setLevel(min(logging.INFO, logging.getLevelName(level)) if notices else logging.NOTSET)
