"""Where a photo comes from: a URL to fetch, a local path (CLI only), bytes already at hand, or a bucket object."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class PhotoSource:
    """One photo to classify, named as the caller named it."""

    ref: str  # what the caller called it: the URL, the path, the uploaded file's name
    kind: str = "url"  # "url" | "path" | "bytes"
    data: bytes | None = None

    @classmethod
    def url(cls, url: str) -> PhotoSource:
        return cls(url, "url")

    @classmethod
    def path(cls, path: str) -> PhotoSource:
        return cls(path, "path")

    @classmethod
    def upload(cls, name: str, data: bytes) -> PhotoSource:
        return cls(name, "bytes", data)

    @classmethod
    def from_argument(cls, arg: str) -> PhotoSource:
        """A command-line argument: an http(s) URL, or else a local file path."""
        return cls.url(arg) if urlsplit(arg).scheme.lower() in ("http", "https") else cls.path(arg)


@dataclass(frozen=True)
class ObjectSource(PhotoSource):
    """A bucket object's URL, worked out from an event and the configuration, read signed and past the
    SSRF guard: callers can only make plain :class:`PhotoSource` values."""
