"""The fields a classification request has, however it came (JSON body, query string, form): checked here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..core.sources import PhotoSource
from ..errors import InvalidTopK, InvalidUrls, MissingUrls, TooManyUrls


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


def classify_request(urls: Any, top_k: Any, config: Config) -> ClassifyRequest:
    """The request ``urls`` and ``top_k`` make, each checked."""
    return ClassifyRequest(parse_urls(urls, config), parse_top_k(top_k, config))
