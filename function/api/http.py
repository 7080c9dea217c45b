"""The HTTP target: routes, responses, health endpoints; one log line per request.

Routes (the functions-framework target receives every path):

* ``POST /`` ``{"urls": [...], "top_k": 3}`` and ``GET /?url=...&url=...&top_k=3`` -> results
* ``POST /`` ``multipart/form-data`` (files in ``photo``, ``urls``) or ``image/*``: uploads (see ``uploads.py``)
* ``GET /`` without ``url`` from a browser: the web page; ``GET /openapi.json``: the contract (see web.py)
* ``GET /healthz`` liveness; ``GET /readyz`` readiness (starts the model load on first call)
* a CloudEvent (binary or structured) posted to ``/``: a Trigger delivery, answered with a CloudEvent
* an S3 / MinIO bucket notification (``{"Records": [...]}``) posted to ``/``

Every answer is JSON. A malformed request is a 400 that says what to fix; a model that cannot be
loaded is a 503 with ``Retry-After``; one bad photo is an error inside a 200. Errors become answers
in one place, :func:`function.errors.answer`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flask

from ..app import App
from ..config import Config
from ..core.fanout import HEADER as FANOUT_HEADER
from ..core.results import Classification
from ..core.sources import PhotoSource
from ..errors import NotReady, RequestError, ServiceError, answer
from ..infra import logs
from ..infra.limits import BoundedRequests
from ..infra.metrics import CONTENT_TYPE
from . import events, uploads, web
from .parsing import ClassifyRequest, parse_json_body, parse_top_k, parse_urls, read_body

log = logging.getLogger(__name__)


def install(flask_app: flask.Flask, app: App) -> None:
    """Wrap functions-framework's WSGI app in the bounds every request gets (function/infra/limits.py).

    Below the routes on purpose: functions-framework reads every unstreamed request's body after
    the answer, whatever the route, so a body limit in a route leaves /healthz and 404s unbounded.
    """
    config = app.config
    flask_app.wsgi_app = BoundedRequests(  # type: ignore[method-assign]  # the WSGI middleware hook
        flask_app.wsgi_app, max_request_bytes=config.max_request_bytes, max_upload_bytes=config.max_upload_bytes,
        max_query_bytes=config.max_query_bytes, body_timeout_s=config.body_timeout_s,
        on_refused=lambda path, status: app.metrics.requests.labels(route_name(path), str(status)).inc())


def parse_request(request: flask.Request, config: Config) -> ClassifyRequest:
    """The photos and ``top_k`` of a classification request, whatever form it came in."""
    if request.method == "GET":
        urls = request.args.getlist("url") or None
        return ClassifyRequest(parse_urls(urls, config), parse_top_k(request.args.get("top_k"), config))
    mimetype = request.mimetype or ""
    if uploads.accepts(mimetype):
        return uploads.parse(request, config)
    if mimetype not in ("", "application/json", "text/plain") and not mimetype.endswith("+json"):
        raise RequestError("unsupported_media_type",
                           f"send application/json, multipart/form-data or image/*, not {mimetype}", 415)
    return parse_json_body(read_body(request, config.max_request_bytes), config)


def leave_body_unread(response: flask.Response) -> flask.Response:
    """Answer without reading the rest of a body refused as too large.

    functions-framework reads the whole request after every response that is not streamed, which
    would hold that body in memory; it skips streamed ones, and the server discards what is left.
    """
    response.response = iter([response.get_data()])
    return response


def json_response(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> flask.Response:
    response = flask.Response(json.dumps(doc, allow_nan=False), status, mimetype="application/json")
    for k, v in (headers or {}).items():
        response.headers[k] = v
    return response


def error_response(err: ServiceError, headers: Mapping[str, str] | None = None) -> flask.Response:
    """The answer :func:`function.errors.answer` gives for ``err``, as a Flask response."""
    reply = answer(err, headers)
    response = flask.Response(reply.body, reply.status, headers=reply.headers)
    return leave_body_unread(response) if reply.status == 413 else response


def server_timing(timings_ms: Mapping[str, float]) -> str:
    """``Server-Timing: fetch;dur=81.2, inference;dur=40.3, ...`` for browser dev tools and curl."""
    return ", ".join(f"{name};dur={ms:.1f}" for name, ms in timings_ms.items() if math.isfinite(ms))


def handle(request: flask.Request, app: App) -> flask.Response:
    """The whole HTTP target: route, parse, classify, answer; one log line per request.

    Nothing escapes as a bare 500: an unexpected error is logged with its stack trace and the
    caller gets a JSON error with the request id.
    """
    app.metrics.in_flight.inc()
    response: flask.Response | None = None
    try:
        trace = logs.trace_fields(request.headers.get("traceparent"), request.headers.get("X-Cloud-Trace-Context"),
                                  app.config.google_cloud_project)
        with logs.trace_context(trace):
            response = _route(request, app)
    except Exception:
        rid = request.headers.get("X-Request-Id") or logs.new_request_id()
        log.exception("request failed", extra=logs.fields(status=500, request_id=rid, path=request.path))
        response = error_response(ServiceError(f"internal error; request id {rid}"), {"X-Request-Id": rid})
    finally:
        app.metrics.in_flight.dec()
        status = response.status_code if response is not None else 500
        app.metrics.requests.labels(route_name(request.path), str(status)).inc()
        request.environ["bird.counted"] = True  # a 408 given later below the routes is not counted again
    return response


ROUTES = ("/", "/healthz", "/readyz", "/openapi.json", "/metrics")


def route_name(path: str) -> str:
    """The route a path belongs to, for metric labels: a bounded set, whatever paths clients send."""
    path = path.rstrip("/") or "/"
    return path if path in ROUTES else "other"


def _route(request: flask.Request, app: App) -> flask.Response:
    path = request.path.rstrip("/") or "/"
    if path == "/healthz":
        return json_response({"status": "ok"})
    if path == "/readyz":
        app.start()
        ready = app.ready()
        return json_response({"status": "ready" if ready else "not_ready", **app.status()}, 200 if ready else 503)
    if path == "/openapi.json":
        return web.openapi_response()
    if path == "/metrics":
        return flask.Response(app.metrics.exposition(), 200, content_type=CONTENT_TYPE)
    if path != "/":
        return error_response(RequestError("not_found", f"no endpoint {request.path}; POST / to classify photos", 404))
    if request.method not in ("GET", "POST"):
        return error_response(RequestError("method_not_allowed", f"{request.method} is not supported; use POST or GET",
                                           405, {"Allow": "GET, POST"}))
    if request.method == "GET" and "url" not in request.args and web.wants_page(request):
        return web.page_response()
    if request.method == "POST" and events.is_cloudevent(dict(request.headers)):
        try:
            body = read_body(request, app.config.max_request_bytes)
        except RequestError as err:
            return error_response(err)
        reply = events.deliver(dict(request.headers), body, app)
        return flask.Response(reply.body, reply.status, headers=reply.headers)
    rid = request.headers.get("X-Request-Id") or logs.new_request_id()
    with logs.request_context(rid):
        return _classify(request, app, rid)


def _classify(request: flask.Request, app: App, rid: str) -> flask.Response:
    """Classify, answer, and log the request's one INFO line (with Cloud Logging's ``httpRequest``)."""
    started = time.perf_counter()
    headers = {"X-Request-Id": rid}
    try:
        parsed = parse_request(request, app.config)
        if not parsed.sources:  # a bucket notification with nothing to classify
            return json_response({"results": [], "timings_ms": {}}, 200, headers)
        if app.fanout is not None and FANOUT_HEADER not in request.headers:
            result = app.fanout.classify(app.classifier.classify, parsed.sources, parsed.top_k, rid)
        else:
            result = app.classifier.classify(parsed.sources, parsed.top_k)
    except RequestError as err:
        response = error_response(err, headers)
        log.info("request rejected: %s", err.message, extra=logs.fields(
            status=err.status, code=err.code, httpRequest=_http_request(request, response, started)))
        return response
    except NotReady as err:
        response = error_response(err, headers)
        log.warning("request refused: %s", err, extra=logs.fields(
            status=503, httpRequest=_http_request(request, response, started)))
        return response
    except Exception:
        response = error_response(ServiceError(f"internal error; request id {rid}"), headers)
        log.exception("request failed", extra=logs.fields(
            status=500, httpRequest=_http_request(request, response, started)))
        return response
    app.metrics.observe_timings(result.timings_ms)
    for r in result.results:
        if r.error:
            app.metrics.photo_errors.labels(r.error.code).inc()
    headers["Server-Timing"] = server_timing(result.timings_ms)
    response = json_response(result.to_dict(), 200, headers)
    log_classification(result, parsed.sources, _http_request(request, response, started))
    return response


def _http_request(request: flask.Request, response: flask.Response, started: float) -> dict[str, Any]:
    # The Content-Length header, not calculate_content_length(): that would turn a streamed answer (a
    # 413 that leaves the body unread) into a sequence, and functions-framework would then read the body.
    return logs.http_request(
        request.method, request.full_path.rstrip("?"), response.status_code, response.content_length,
        request.headers.get("User-Agent"), request.remote_addr, time.perf_counter() - started,
        request.environ.get("SERVER_PROTOCOL"))


def log_classification(result: Classification, sources: Sequence[PhotoSource],
                       http_request: dict[str, Any] | None = None) -> None:
    """The request's one INFO line: counts, error codes and the phase timings (DEBUG: each photo)."""
    log.info("classified %d photo(s), %d failed", len(sources), result.failed, extra=logs.fields(
        photos=len(sources), failed=result.failed,
        errors=sorted({r.error.code for r in result.results if r.error}),
        timings_ms={k: round(v, 1) for k, v in result.timings_ms.items()},
        **({"httpRequest": http_request} if http_request else {})))
    for r in result.results:
        log.debug("photo result", extra=logs.fields(
            photo=r.source.ref, top=[(p.label, round(p.score, 4)) for p in r.predictions[:1]],
            error=r.error.code if r.error else None))
