"""Photos: a source's bytes decoded for the model. A photo fails on its own: every problem becomes a
:class:`~function.errors.PhotoError`, kept without its traceback (whose frames hold the pixels).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import CorruptImage, FetchFailed, PhotoError
from ..infra import logs
from ..infra.files import checked_size, read_file
from .inputs import Size, bare
from .sources import ObjectSource, PhotoSource

log = logging.getLogger(__name__)


class UrlReader(Protocol):
    """What reads a URL's bytes within the photos' limits (``function.infra.fetch.HttpFetcher``)."""

    def get(self, url: str) -> bytes: ...

    def close(self) -> None: ...


class PhotoDecoder(Protocol):
    """What turns a photo's bytes into pixels at the model's size (``function.core.decoding.Decoder``)."""

    def decode(self, data: bytes, size: Size, deadline: float | None = None, share: object = None) -> np.ndarray: ...


class PhotoReader:
    """A source's bytes: caller URLs through ``photos`` (the SSRF guard), bucket objects through ``objects``."""

    def __init__(self, photos: UrlReader, objects: UrlReader, max_bytes: int):
        self.photos, self.objects, self.max_bytes = photos, objects, max_bytes

    def read(self, source: PhotoSource) -> bytes:
        if isinstance(source, ObjectSource):
            return self.objects.get(source.ref)
        if source.kind == "bytes":
            return checked_size(source.data or b"", self.max_bytes)
        if source.kind == "path":
            return read_file(source.ref, self.max_bytes)
        return self.photos.get(source.ref)

    def close(self) -> None:
        self.photos.close()
        self.objects.close()


@dataclass
class LoadedPhoto:
    pixels: np.ndarray | None
    error: PhotoError | None
    fetch_ms: float
    decode_ms: float
    nbytes: int


def _unexpected(source: PhotoSource, exc: Exception, error: type[PhotoError]) -> PhotoError:
    log.error("unexpected error on photo %s", source.ref, exc_info=exc)
    exc.__traceback__ = None  # logged; its frames would hold the photo
    return error(f"could not process the photo ({type(exc).__name__})", retryable=False)


def load(reader: PhotoReader, decoder: PhotoDecoder, source: PhotoSource, size: Callable[[], Size],
         deadline: float | None = None, share: object = None) -> LoadedPhoto:
    """Read and decode one photo; never raises for a photo-level problem. ``size()``: the model's input
    size, asked once the bytes are in, so the fetch overlaps the model's load. ``share``: its request."""
    t0 = time.perf_counter()
    try:
        data = reader.read(source)
    except PhotoError as err:
        return LoadedPhoto(None, bare(err), (time.perf_counter() - t0) * 1000, 0.0, 0)
    except Exception as exc:  # a case nobody foresaw is still this photo's problem, not the request's
        return LoadedPhoto(None, _unexpected(source, exc, FetchFailed), (time.perf_counter() - t0) * 1000, 0.0, 0)
    t1 = time.perf_counter()
    target = size()
    t_size = time.perf_counter()  # the model's wait is the request's (model_wait), not this photo's decode
    pixels: np.ndarray | None = None
    error: PhotoError | None = None
    try:
        pixels = decoder.decode(data, target, deadline, share)
    except PhotoError as err:
        error = bare(err)
    except Exception as exc:
        error = _unexpected(source, exc, CorruptImage)
    t2 = time.perf_counter()
    photo = LoadedPhoto(pixels, error, (t1 - t0) * 1000, (t2 - t_size) * 1000, len(data))
    log.debug("photo loaded", extra=logs.fields(
        photo=source.ref, bytes=len(data), fetch_ms=round(photo.fetch_ms, 1),
        decode_ms=round(photo.decode_ms, 1), error=error.code if error else None))
    return photo
