"""What a request asks for: photo sources (JSON bodies, query parameters, uploads), a bucket notification
posted as a body, or a broker's delivery. Every problem is a :class:`~function.errors.RequestError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import flask

from ..config import Config
from ..core import buckets
from ..core.buckets import Notification
from ..errors import BodyTooLarge, InvalidJson, InvalidNotification, InvalidUrls, UnknownField, UnsupportedMediaType
from . import uploads
from .fields import ClassifyRequest, classify_request


@dataclass(frozen=True)
class Delivery:
    """A broker's delivery (a CloudEvent, an SNS message): its headers and body, answered by ``events.deliver``."""

    headers: dict[str, str]
    body: bytes


def read_request(request: flask.Request, config: Config) -> ClassifyRequest | Notification | Delivery:
    if request.method == "GET":
        urls = request.args.getlist("url") or None
        return classify_request(urls, request.args.get("top_k"), config)
    headers = dict(request.headers)
    if is_delivery(headers):
        return Delivery(headers, read_body(request, config.max_request_bytes))
    mimetype = request.mimetype or ""
    if mimetype == uploads.MULTIPART or mimetype.startswith("image/"):
        return uploads.parse(request, config)
    if mimetype not in ("", "application/json", "text/plain") and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"send application/json, multipart/form-data or image/*, not {mimetype}")
    return parse_json_body(read_body(request, config.max_request_bytes), config)


def read_delivery(request: flask.Request, config: Config) -> Notification | Delivery:
    """What a ``POST /events`` carries: a broker's delivery, or a bucket notification posted as a body."""
    headers = dict(request.headers)
    body = read_body(request, config.max_request_bytes)
    if is_delivery(headers):
        return Delivery(headers, body)
    parsed = parse_json_body(body, config)
    if not isinstance(parsed, Notification):
        raise InvalidNotification("/events takes bucket deliveries (CloudEvents, SNS, Pub/Sub push, S3 / MinIO "
                                  "notifications); send photos to /")
    return parsed


def is_delivery(headers: Mapping[str, str]) -> bool:
    """A CloudEvent (binary or structured), or an SNS HTTP(S) message (``x-amz-sns-message-type``)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return "ce-specversion" in lowered or sns_type(headers) is not None or (
        lowered.get("content-type", "").split(";")[0].strip().lower() == "application/cloudevents+json")


def sns_type(headers: Mapping[str, str]) -> str | None:
    return next((value for name, value in headers.items() if name.lower() == "x-amz-sns-message-type"), None)


_FIELDS = {"urls", "url", "top_k"}


def parse_json_body(body: bytes, config: Config) -> ClassifyRequest | Notification:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # [[[[... nested deeper than the parser's stack
        raise InvalidJson("the body is nested too deeply to be a classification request") from None
    if not isinstance(doc, dict):
        raise InvalidJson(f"the body must be a JSON object, got {type(doc).__name__}")
    if buckets.is_notification(doc):
        return buckets.notification(doc, None, config.max_urls)
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise UnknownField(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(_FIELDS))}")
    if "url" in doc and "urls" in doc:
        raise InvalidUrls("give either 'url' or 'urls', not both")
    if doc.get("url") is not None and not isinstance(doc["url"], str):
        raise InvalidUrls(f"url must be one URL string, got {type(doc['url']).__name__}; "
                          'give several as {"urls": [...]}')
    urls = doc.get("urls") if "urls" in doc else [doc["url"]] if doc.get("url") is not None else None
    return classify_request(urls, doc.get("top_k"), config)


def read_body(request: flask.Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes without reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"the body is {request.content_length} bytes; the limit is {limit}")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge(f"the body is over the limit of {limit} bytes")
    return body
