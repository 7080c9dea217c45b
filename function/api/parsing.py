"""Request documents -> photo sources: JSON bodies, query parameters, S3 / MinIO notifications.

Every problem is a :class:`~function.errors.RequestError` that says what to fix.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import flask

from ..config import Config
from ..core.sources import PhotoSource
from ..errors import EventError, RequestError
from . import storage

log = logging.getLogger(__name__)


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
    if not isinstance(urls, list):
        raise RequestError("invalid_urls", f"urls must be a list of strings, got {type(urls).__name__}"
                           + ('; give one URL as {"url": "https://..."}' if isinstance(urls, str) else ""))
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
    if "Records" in doc or storage.is_pubsub_push(doc) or storage.is_sns_envelope(doc):
        return parse_s3_notification(doc, config)
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise RequestError("unknown_field", f"unknown field(s) {', '.join(unknown)}; "
                           f"expected {', '.join(sorted(_FIELDS))}")
    if "url" in doc and "urls" in doc:
        raise RequestError("invalid_urls", "give either 'url' or 'urls', not both")
    if doc.get("url") is not None and not isinstance(doc["url"], str):
        raise RequestError("invalid_urls", f"url must be one URL string, got {type(doc['url']).__name__}; "
                           'give several as {"urls": [...]}')
    urls = doc.get("urls") if "urls" in doc else [doc["url"]] if doc.get("url") is not None else None
    return ClassifyRequest(parse_urls(urls, config), parse_top_k(doc.get("top_k"), config))


def parse_s3_notification(doc: dict[str, Any], config: Config) -> ClassifyRequest:
    """A bucket notification: classify the created objects that may be images.

    S3 / MinIO ``Records`` (MinIO webhooks, SNS raw message delivery), a Cloud Storage Pub/Sub push
    body (other event types than OBJECT_FINALIZE name no object: answered 200 with no results), or
    an SNS Notification envelope posted without SNS's headers. Objects are read with the store's
    credentials (``ObjectSource``). SNS deliveries with their headers go to ``events.deliver``.
    """
    try:
        if storage.is_pubsub_push(doc):
            found = storage.pubsub_object(doc)
            objects = [found] if isinstance(found, storage.StorageObject) else []
            if isinstance(found, storage.Skip):
                log.info("notification skipped: %s", found.reason)
        elif storage.is_sns_envelope(doc):
            if doc.get("Type") != storage.SNS_NOTIFICATION:
                raise EventError("SNS confirmations are only taken with SNS's x-amz-sns-message-type header")
            objects = storage.sns_records(doc)
        else:
            objects = storage.s3_objects(doc)
    except EventError as err:
        raise RequestError(err.code if err.code != "invalid_event" else "invalid_notification", str(err),
                           err.status) from None
    images = [o for o in objects if o.is_image is not False]
    for o in objects:
        if o.is_image is False:
            log.info("skipped %s: content type %s is not an image", o.uri, o.content_type)
    if len(images) > config.max_urls:
        raise RequestError("too_many_urls", f"{len(images)} objects; at most {config.max_urls} per request")
    return ClassifyRequest([o.source(config) for o in images], config.top_k)


def read_body(request: flask.Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes without reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestError("body_too_large", f"the body is {request.content_length} bytes; the limit is {limit}", 413)
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise RequestError("body_too_large", f"the body is over the limit of {limit} bytes", 413)
    return body
