"""Bucket objects as photo sources, read by their own fetcher: the store's credentials, no caller URLs.

A storage event names an object; the service works out its URL from configuration
(``STORAGE_EMULATOR_HOST``, ``GCS_ENDPOINT``, ``S3_ENDPOINT``), so that URL is trusted in a way a
caller's photo URL is not. :class:`ObjectSource` marks such a source; :class:`RoutingFetcher` reads
it with the object fetcher (signed requests, the configured endpoints exempt from the SSRF guard)
and everything else with the photo fetcher. A caller can only make plain ``PhotoSource`` values, so
no caller-supplied URL is ever sent with the store's credentials or past the guard.
"""

from __future__ import annotations

from dataclasses import dataclass

from .photos import PhotoFetcher
from .sources import PhotoSource


@dataclass(frozen=True)
class ObjectSource(PhotoSource):
    """A bucket object's URL, worked out by the service from the event and the configuration."""

    @classmethod
    def of(cls, url: str) -> ObjectSource:
        return cls(url, "url")


class RoutingFetcher:
    """The photo fetcher for caller-supplied sources; ``objects`` for :class:`ObjectSource`."""

    def __init__(self, photos: PhotoFetcher, objects: PhotoFetcher):
        self.photos, self.objects = photos, objects

    def close(self) -> None:
        self.photos.close()
        self.objects.close()

    def read(self, source: PhotoSource) -> bytes:
        if isinstance(source, ObjectSource):
            return self.objects.read(PhotoSource.url(source.ref))
        return self.photos.read(source)
