"""The HTTP API: request parsing, responses, errors, health endpoints.

Routes (the functions-framework target receives every path):

* ``POST /`` ``{"urls": [...], "top_k": 3}`` and ``GET /?url=...&url=...&top_k=3`` -> results
* ``GET /healthz`` liveness; ``GET /readyz`` readiness (starts the model load on first call)

Every answer is JSON. A malformed request is a 400 that says what to fix; a model that cannot be
loaded is a 503 with ``Retry-After``; one bad photo is an error inside a 200.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import flask

from . import logs
from .config import Config
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
    if isinstance(value, str) and value.strip().lstrip("+").isdigit():
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
    if not isinstance(doc, dict):
        raise RequestError("invalid_json", f"the body must be a JSON object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise RequestError("unknown_field", f"unknown field(s) {', '.join(unknown)}; "
                           f"expected {', '.join(sorted(_FIELDS))}")
    if "url" in doc and "urls" in doc:
        raise RequestError("invalid_urls", "give either 'url' or 'urls', not both")
    urls = doc.get("urls", doc.get("url"))
    return ClassifyRequest(parse_urls(urls, config), parse_top_k(doc.get("top_k"), config))


def parse_request(request: flask.Request, config: Config) -> ClassifyRequest:
    if request.method == "GET":
        urls = request.args.getlist("url") or None
        return ClassifyRequest(parse_urls(urls, config), parse_top_k(request.args.get("top_k"), config))
    mimetype = request.mimetype or ""
    if mimetype not in ("", "application/json", "text/plain") and not mimetype.endswith("+json"):
        raise RequestError("unsupported_media_type", f"send application/json, not {mimetype}", 415)
    return parse_json_body(request.get_data(cache=False), config)


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
    """The whole HTTP target: route, parse, classify, answer; one log line per request."""
    path = request.path.rstrip("/") or "/"
    if path == "/healthz":
        return json_response({"status": "ok"})
    if path == "/readyz":
        classifier.start()
        ready = classifier.ready()
        return json_response({"status": "ready" if ready else "not_ready", **classifier.status()},
                             200 if ready else 503)
    if path != "/":
        return error_response("not_found", f"no endpoint {request.path}; POST / to classify photos", 404)
    if request.method not in ("GET", "POST"):
        return error_response("method_not_allowed", f"{request.method} is not supported; use POST or GET",
                              405, {"Allow": "GET, POST"})
    rid = request.headers.get("X-Request-Id") or logs.new_request_id()
    with logs.request_context(rid):
        return _classify(request, classifier, rid)


def _classify(request: flask.Request, classifier: Classifier, rid: str) -> flask.Response:
    headers = {"X-Request-Id": rid}
    try:
        parsed = parse_request(request, classifier.config)
        result = classifier.classify(parsed.sources, parsed.top_k)
    except RequestError as err:
        log.info("request rejected: %s", err.message, extra=logs.fields(status=err.status, code=err.code))
        return error_response(err.code, err.message, err.status, {**headers, **err.headers})
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
