"""Every error the service names, and the one place they become answers.

One base class, :class:`ServiceError`, carries a stable ``code``, a message that says what to fix,
the HTTP status and, for what a later try may fix, a ``retry_after_s``. Photo problems
(:class:`PhotoError`) are values inside a 200; request problems are 4xx; the model not being there
yet (:class:`NotReady`) is a 503 with ``Retry-After``. :func:`answer` is the only function that
turns an error into status, headers and body, for the HTTP target and for CloudEvent deliveries
alike (Starlette's leaf ``exceptions.py`` and KServe's ``errors.py`` follow the same idea).

A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field


class ServiceError(Exception):
    """Base of every error the service reports by name."""

    code = "internal"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 retry_after_s: float | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ConfigError(ServiceError, ValueError):
    """An environment value that cannot be used; the message names the variable."""

    code = "invalid_config"


class RequestError(ServiceError):
    """A request the service cannot act on (4xx); retrying the same request will not help."""

    status = 400

    def __init__(self, code: str, message: str, status: int = 400, headers: Mapping[str, str] | None = None):
        super().__init__(message, code=code, status=status, headers=headers)


class EventError(RequestError):
    """An event that cannot be acted on (wrong type, missing fields): a redelivery will not help."""

    def __init__(self, message: str, code: str = "invalid_event"):
        super().__init__(code, message, 400)


class NotReady(ServiceError):
    """The model or the label map cannot be had now (still loading past the wait, or failed)."""

    code = "model_unavailable"
    status = 503

    def __init__(self, name: str, state: str, reason: str | None, retry_after_s: float):
        self.name, self.state, self.reason = name, state, reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"{name} is {state.replace('_', ' ')}{detail}", retry_after_s=retry_after_s)


class TransientEventError(ServiceError):
    """Classifying a bucket object failed in a way a redelivery may fix (host down)."""

    code = "object_unavailable"
    status = 503

    def __init__(self, message: str, retry_after_s: float = 5.0):
        super().__init__(message, retry_after_s=retry_after_s)


class PhotoError(ServiceError):
    """Why one photo has no predictions: a value in its result, next to the other photos' results."""

    status = 422

    def __init__(self, code: str, message: str, retryable: bool = False, retry_after_s: float | None = None):
        super().__init__(message, code=code, retry_after_s=retry_after_s)
        self.retryable = retryable


class ModelError(ServiceError):
    """The model at the configured URL cannot be used (no fitting signature, wrong input shape...)."""

    code = "model_invalid"


class LabelMapError(ServiceError, ValueError):
    """The label map could not be fetched or does not have the expected shape."""

    code = "label_map_invalid"


class BlockedAddress(ServiceError):
    """A connection the SSRF guard refused; deliberately not an OSError, so no retry layer swallows it."""

    code = "blocked_address"

    def __init__(self, host: str, address: str, why: str):
        super().__init__(f"{host} resolves to {address}, a {why} address; only public addresses may be fetched")
        self.host, self.address, self.why = host, address, why


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, transport-free: the HTTP target and CloudEvent deliveries both send these."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def answer(err: ServiceError, headers: Mapping[str, str] | None = None) -> Answer:
    """The one mapping of an error to an answer: its status, a JSON error body, ``Retry-After`` if any."""
    out = {"Content-Type": "application/json", **(headers or {}), **err.headers}
    if err.retry_after_s is not None and err.status >= 500:
        out["Retry-After"] = str(max(1, math.ceil(err.retry_after_s)))
    return Answer(err.status, error_body(err.code, err.message), out)
