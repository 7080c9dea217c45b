"""The HTTP target: routes, responses, health endpoints; one log line per request.

* ``POST /`` JSON ``{"urls": [...]}``, ``GET /?url=...``, uploads (``uploads.py``) -> results; ``GET /``
  from a browser: the page, ``GET /openapi.json``: the contract (``web.py``)
* ``GET /healthz``, ``GET /readyz`` (starts the model load), ``GET /metrics``
* ``POST /events`` (and ``/``, where older subscriptions send them): bucket deliveries, each proving
  its sender first (``events.py``)

Routes raise; errors become answers in one place, the ``try`` of :func:`handle`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flask

from ..app import App
from ..config import Config
from ..core.buckets import Notification
from ..core.fanout import HEADER as FANOUT_HEADER
from ..core.results import Classification
from ..errors import (
    Answer,
    DeliveryMethodNotAllowed,
    Internal,
    MethodNotAllowed,
    NotFound,
    RequestError,
    ServiceError,
    answer,
)
from ..infra import logs
from ..infra.limits import BoundedRequests
from ..infra.metrics import CONTENT_TYPE, RequestMeter
from . import events, web
from .parsing import Delivery, read_delivery, read_request

log = logging.getLogger(__name__)


def install(flask_app: flask.Flask, config: Config, meter: Callable[[Sequence[str]], RequestMeter]) -> None:
    """Wrap functions-framework's WSGI app in the bounds every request gets (function/infra/limits.py): below
    the routes, as the framework reads every unstreamed body after the answer; ``meter`` is asked per request."""
    flask_app.wsgi_app = BoundedRequests(  # type: ignore[method-assign]  # the WSGI middleware hook
        flask_app.wsgi_app, max_request_bytes=config.max_request_bytes, max_upload_bytes=config.max_upload_bytes,
        max_query_bytes=config.max_query_bytes, body_timeout_s=config.body_timeout_s,
        meter=functools.partial(meter, ROUTES))


def json_response(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> flask.Response:
    return flask.Response(json.dumps(doc, allow_nan=False), status, headers=headers, mimetype="application/json")


def answer_response(reply: Answer) -> flask.Response:
    response = flask.Response(reply.body, reply.status, headers=reply.headers)
    if reply.status == 413:
        # Streamed, so functions-framework does not read (and hold) the rest of a body refused as too large.
        response.response = iter([response.get_data()])
    return response


def handle(request: flask.Request, app: App) -> flask.Response:
    """The whole HTTP target: route, answer, one log line per classification or refusal; anything but a
    :class:`ServiceError` is logged with its stack trace and answered as a JSON 500 with the request id."""
    started = time.perf_counter()
    rid = request.headers.get("X-Request-Id") or logs.new_request_id()
    trace = logs.trace_fields(request.headers.get("traceparent"), request.headers.get("X-Cloud-Trace-Context"),
                              app.config.google_cloud_project)
    with logs.trace_context(trace), logs.request_context(rid):
        try:
            response = _route(request, app, rid, started)
        except ServiceError as err:
            response = answer_response(answer(err))
            level = logging.INFO if isinstance(err, RequestError) else logging.WARNING
            log.log(level, "request %s: %s", "rejected" if level == logging.INFO else "refused", err.message,
                    extra=logs.fields(status=err.status, code=err.code,
                                      httpRequest=_http_request(request, response, started)))
        except Exception:
            response = answer_response(answer(Internal(f"internal error; request id {rid}")))
            log.exception("request failed", extra=logs.fields(
                status=500, path=request.path, httpRequest=_http_request(request, response, started)))
    response.headers["X-Request-Id"] = rid
    return response


ROUTES = ("/", "/events", "/healthz", "/readyz", "/openapi.json", "/metrics")


def _route(request: flask.Request, app: App, rid: str, started: float) -> flask.Response:
    path = request.path.rstrip("/") or "/"
    if path == "/healthz":
        return json_response({"status": "ok"})
    if path == "/readyz":
        readiness = app.readiness()
        return json_response({"status": "ready" if readiness.ready else "not_ready", **readiness.status},
                             200 if readiness.ready else 503)
    if path == "/openapi.json":
        return web.openapi_response()
    if path == "/metrics":
        return flask.Response(app.metrics_text(), 200, content_type=CONTENT_TYPE)
    if path == "/events":
        if request.method != "POST":
            raise DeliveryMethodNotAllowed(f"{request.method} is not supported; POST bucket deliveries to /events")
        return _delivered(read_delivery(request, app.config), request, app)
    if path != "/":
        raise NotFound(f"no endpoint {request.path}; POST / to classify photos")
    if request.method not in ("GET", "POST"):
        raise MethodNotAllowed(f"{request.method} is not supported; use POST or GET")
    if request.method == "GET" and "url" not in request.args and web.wants_page(request):
        return web.page_response()
    parsed = read_request(request, app.config)
    if isinstance(parsed, (Delivery, Notification)):
        return _delivered(parsed, request, app)
    origin = request.headers.get(FANOUT_HEADER)
    result = app.classify(parsed.sources, parsed.top_k, request_id=rid, fanned_out=origin is not None,
                          fanout_origin=origin)
    # Server-Timing: fetch;dur=81.2, inference;dur=40.3, ... for browser dev tools and curl
    timing = ", ".join(f"{name};dur={ms:.1f}" for name, ms in result.timings_ms.items() if math.isfinite(ms))
    response = json_response(result.to_dict(), 200, {"Server-Timing": timing})
    log_classification(result, _http_request(request, response, started))
    return response


def _delivered(parsed: Delivery | Notification, request: flask.Request, app: App) -> flask.Response:
    if isinstance(parsed, Delivery):
        return answer_response(events.deliver(parsed.headers, parsed.body, app))
    return answer_response(events.posted(parsed, dict(request.headers), app))  # a notification posted as a plain body


def _http_request(request: flask.Request, response: flask.Response, started: float) -> dict[str, Any]:
    # The Content-Length header, not calculate_content_length(): that would turn a streamed answer (a
    # 413 that leaves the body unread) into a sequence, and functions-framework would then read the body.
    return logs.http_request(
        request.method, request.full_path.rstrip("?"), response.status_code, response.content_length,
        request.headers.get("User-Agent"), request.remote_addr, time.perf_counter() - started,
        request.environ.get("SERVER_PROTOCOL"))


def log_classification(result: Classification, http_request: dict[str, Any]) -> None:
    """The request's one INFO line: counts, error codes and the phase timings (DEBUG: each photo)."""
    log.info("classified %d photo(s), %d failed", len(result.results), result.failed, extra=logs.fields(
        photos=len(result.results), failed=result.failed,
        errors=sorted({r.error.code for r in result.results if r.error}),
        timings_ms={k: round(v, 1) for k, v in result.timings_ms.items()}, httpRequest=http_request))
    for r in result.results:
        log.debug("photo result", extra=logs.fields(
            photo=r.source.ref, top=[(p.label, round(p.score, 4)) for p in r.predictions[:1]],
            error=r.error.code if r.error else None))
