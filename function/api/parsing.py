"""Request documents -> photo sources: JSON bodies and query parameters (a bucket notification posted
as a JSON body is handed on as one, to the bucket door: ``core/buckets.py``).

Every problem is a :class:`~function.errors.RequestError` that says what to fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import flask

from ..config import Config
from ..core import buckets
from ..core.buckets import Notification
from ..core.sources import PhotoSource
from ..errors import BodyTooLarge, InvalidJson, InvalidTopK, InvalidUrls, MissingUrls, TooManyUrls, UnknownField


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
        raise InvalidTopK(f"top_k must be an integer from 1 to {config.max_top_k}, got {value!r}")
    return value


def parse_urls(urls: Any, config: Config) -> list[PhotoSource]:
    if urls is None:
        raise MissingUrls('give the photos as {"urls": ["https://...", ...]} (or ?url=... on a GET)')
    if not isinstance(urls, list):
        raise InvalidUrls(f"urls must be a list of strings, got {type(urls).__name__}"
                          + ('; give one URL as {"url": "https://..."}' if isinstance(urls, str) else ""))
    if not urls:
        raise MissingUrls("urls is empty: give at least one photo URL")
    if len(urls) > config.max_urls:
        raise TooManyUrls(f"{len(urls)} URLs given; at most {config.max_urls} per request")
    bad = [i for i, u in enumerate(urls) if not isinstance(u, str)]
    if bad:
        raise InvalidUrls(f"urls[{bad[0]}] is not a string: {urls[bad[0]]!r}")
    return [PhotoSource.url(u.strip()) for u in urls]


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
    return ClassifyRequest(parse_urls(urls, config), parse_top_k(doc.get("top_k"), config))


def read_body(request: flask.Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes without reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"the body is {request.content_length} bytes; the limit is {limit}")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge(f"the body is over the limit of {limit} bytes")
    return body
