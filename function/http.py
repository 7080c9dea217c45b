"""The HTTP API: request parsing, responses, errors, health endpoints.

Routes (the functions-framework target receives every path):

* ``POST /`` ``{"urls": [...], "top_k": 3}`` and ``GET /?url=...&url=...&top_k=3`` -> results
* ``POST /`` ``multipart/form-data`` (files in ``photo``, ``urls``) or ``image/*``: uploads (see uploads.py)
* ``GET /`` without ``url`` from a browser: the web page; ``GET /openapi.json``: the contract (see web.py)
* ``GET /healthz`` liveness; ``GET /readyz`` readiness (starts the model load on first call)
* a CloudEvent (binary or structured) posted to ``/``: a Trigger delivery, answered with a CloudEvent
* an S3 / MinIO bucket notification (``{"Records": [...]}``) posted to ``/``

Every answer is JSON. A malformed request is a 400 that says what to fix; a model that cannot be
loaded is a 503 with ``Retry-After``; one bad photo is an error inside a 200.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import flask

from . import events, logs, uploads, web
from .config import Config
from .fanout import HEADER as FANOUT_HEADER
from .photos import PhotoSource
from .pipeline import Classification, Classifier
from .resource import NotReady

log = logging.getLogger(__name__)


class RequestError(Exception):
    """A request the service cannot act on; ``status`` is the HTTP status to answer with."""

    def __init__(self, code: str, message: str, status: int = 400, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class ClassifyRequest:
    sources: list[PhotoSource]
    top_k: int


def parse_top_k(value: Any, config: Config) -> int:
    if value is None:
        return config.top_k
    if isinstance(value, str) and re.fullmatch(r"\+?[0-9]{1,9}", value.strip()):  # not "²", "++3", 5000 digits
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= config.max_top_k:
        raise RequestError("invalid_top_k", f"top_k must be an integer from 1 to {config.max_top_k}, got {value!r}")
    return value


def parse_urls(urls: Any, config: Config) -> list[PhotoSource]:
    if urls is None:
        raise RequestError("missing_urls", 'give the photos as {"urls": ["https://...", ...]} '
                           "(or ?url=... on a GET)")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list):
        raise RequestError("invalid_urls", f"urls must be a list of strings, got {type(urls).__name__}")
    if not urls:
        raise RequestError("missing_urls", "urls is empty: give at least one photo URL")
    if len(urls) > config.max_urls:
        raise RequestError("too_many_urls", f"{len(urls)} URLs given; at most {config.max_urls} per request")
    bad = [i for i, u in enumerate(urls) if not isinstance(u, str)]
    if bad:
        raise RequestError("invalid_urls", f"urls[{bad[0]}] is not a string: {urls[bad[0]]!r}")
    return [PhotoSource.url(u.strip()) for u in urls]


_FIELDS = {"urls", "url", "top_k"}


def parse_json_body(body: bytes, config: Config) -> ClassifyRequest:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError("invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # [[[[... nested deeper than the parser's stack
        raise RequestError("invalid_json", "the body is nested too deeply to be a classification request") from None
    if not isinstance(doc, dict):
        raise RequestError("invalid_json", f"the body must be a JSON object, got {type(doc).__name__}")
    if "Records" in doc:
        return parse_s3_notification(doc, config)
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise RequestError("unknown_field", f"unknown field(s) {', '.join(unknown)}; "
                           f"expected {', '.join(sorted(_FIELDS))}")
    if "url" in doc and "urls" in doc:
        raise RequestError("invalid_urls", "give either 'url' or 'urls', not both")
    urls = doc.get("urls", doc.get("url"))
    return ClassifyRequest(parse_urls(urls, config), parse_top_k(doc.get("top_k"), config))


def parse_s3_notification(doc: dict[str, Any], config: Config) -> ClassifyRequest:
    """An S3 / MinIO bucket notification: classify the created objects that may be images."""
    try:
        objects = events.s3_objects(doc)
    except events.EventError as err:
        raise RequestError("invalid_notification", str(err)) from None
    images = [o for o in objects if o.is_image is not False]
    for o in objects:
        if o.is_image is False:
            log.info("skipped %s: content type %s is not an image", o.uri, o.content_type)
    if len(images) > config.max_urls:
        raise RequestError("too_many_urls", f"{len(images)} objects; at most {config.max_urls} per request")
    return ClassifyRequest([PhotoSource.url(o.url(config.storage_emulator_host, config.s3_endpoint))
                            for o in images], config.top_k)


def parse_request(request: flask.Request, config: Config) -> ClassifyRequest:
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


def read_body(request: flask.Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes without reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestError("body_too_large", f"the body is {request.content_length} bytes; the limit is {limit}", 413)
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise RequestError("body_too_large", f"the body is over the limit of {limit} bytes", 413)
    return body


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


def error_response(code: str, message: str, status: int, headers: Mapping[str, str] | None = None):
    return json_response({"error": {"code": code, "message": message}}, status, headers)


def server_timing(timings_ms: Mapping[str, float]) -> str:
    """``Server-Timing: fetch;dur=81.2, inference;dur=40.3, ...`` for browser dev tools and curl."""
    return ", ".join(f"{name};dur={ms:.1f}" for name, ms in timings_ms.items() if math.isfinite(ms))


def handle(request: flask.Request, classifier: Classifier) -> flask.Response:
    """The whole HTTP target: route, parse, classify, answer; one log line per request.

    Nothing escapes as a bare 500: an unexpected error is logged with its stack trace and the
    caller gets a JSON error with the request id.
    """
    try:
        return _route(request, classifier)
    except Exception:
        rid = request.headers.get("X-Request-Id") or logs.new_request_id()
        log.exception("request failed", extra=logs.fields(status=500, request_id=rid, path=request.path))
        return error_response("internal", f"internal error; request id {rid}", 500, {"X-Request-Id": rid})


def _route(request: flask.Request, classifier: Classifier) -> flask.Response:
    path = request.path.rstrip("/") or "/"
    if path == "/healthz":
        return json_response({"status": "ok"})
    if path == "/readyz":
        classifier.start()
        ready = classifier.ready()
        return json_response({"status": "ready" if ready else "not_ready", **classifier.status()},
                             200 if ready else 503)
    if path == "/openapi.json":
        return web.openapi_response()
    if path != "/":
        return error_response("not_found", f"no endpoint {request.path}; POST / to classify photos", 404)
    if request.method not in ("GET", "POST"):
        return error_response("method_not_allowed", f"{request.method} is not supported; use POST or GET",
                              405, {"Allow": "GET, POST"})
    if request.method == "GET" and "url" not in request.args and web.wants_page(request):
        return web.page_response()
    if request.method == "POST" and events.is_cloudevent(request.headers):
        try:
            body = read_body(request, classifier.config.max_request_bytes)
        except RequestError as err:
            return leave_body_unread(error_response(err.code, err.message, err.status))
        reply = events.deliver(request.headers, body, classifier, _recent_deliveries,
                               f"/services/{classifier.config.k_service}")
        return flask.Response(reply.body, reply.status, headers=reply.headers)
    rid = request.headers.get("X-Request-Id") or logs.new_request_id()
    with logs.request_context(rid):
        return _classify(request, classifier, rid)


_recent_deliveries = events.RecentDeliveries()


def _classify(request: flask.Request, classifier: Classifier, rid: str) -> flask.Response:
    headers = {"X-Request-Id": rid}
    try:
        parsed = parse_request(request, classifier.config)
        if not parsed.sources:  # a bucket notification with nothing to classify
            return json_response({"results": [], "timings_ms": {}}, 200, headers)
        result = classifier.classify(parsed.sources, parsed.top_k, fan_out=FANOUT_HEADER not in request.headers,
                                     request_id=rid)
    except RequestError as err:
        log.info("request rejected: %s", err.message, extra=logs.fields(status=err.status, code=err.code))
        response = error_response(err.code, err.message, err.status, {**headers, **err.headers})
        return leave_body_unread(response) if err.status == 413 else response
    except NotReady as err:
        log.warning("request refused: %s", err, extra=logs.fields(status=503))
        return error_response("model_unavailable", str(err), 503,
                              {**headers, "Retry-After": str(math.ceil(err.retry_after_s))})
    except Exception:
        log.exception("request failed", extra=logs.fields(status=500))
        return error_response("internal", f"internal error; request id {rid}", 500, headers)
    log_classification(result, parsed.sources)
    headers["Server-Timing"] = server_timing(result.timings_ms)
    return json_response(result.to_dict(), 200, headers)


def log_classification(result: Classification, sources: Sequence[PhotoSource]) -> None:
    log.info("classified %d photo(s), %d failed", len(sources), result.failed, extra=logs.fields(
        photos=len(sources), failed=result.failed,
        errors=sorted({r.error.code for r in result.results if r.error}),
        timings_ms={k: round(v, 1) for k, v in result.timings_ms.items()}))
    for r in result.results:
        log.debug("photo result", extra=logs.fields(
            photo=r.source.ref, top=[(p.label, round(p.score, 4)) for p in r.predictions[:1]],
            error=r.error.code if r.error else None))
