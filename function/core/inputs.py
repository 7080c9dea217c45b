"""What the serving process knows of photos without Pillow (which only decode workers import): the
formats allowed, the memory budget every decode is charged to, and the decoded pixels as an array.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError, DeadlineExceeded, PhotoError

if TYPE_CHECKING:
    import numpy as np

Size = tuple[int, int]  # (width, height) in pixels, Pillow's order: the model's input size
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
OPTIONAL_FORMATS = frozenset({"HEIF", "AVIF"})  # allowed when their Pillow plugin is there, else skipped
MAX_JPEG_SCANS = 256  # nvImageCodec's default limit; libjpeg's own progressive scripts write 6-10 scans
TRIM_AFTER_BYTES = 32_000_000  # give freed memory back to the OS after a decode charged this much
# ``PIL.Image.OPEN`` of the pinned Pillow, written out so that checking PHOTO_FORMATS needs no Pillow;
# a test compares it with Pillow's registry.
PILLOW_FORMATS = frozenset({
    "AVIF", "BLP", "BMP", "BUFR", "CUR", "DCX", "DDS", "DIB", "EPS", "FITS", "FLI", "FTEX", "GBR", "GIF", "GRIB",
    "HDF5", "ICNS", "ICO", "IM", "IMT", "IPTC", "JPEG", "JPEG2000", "MCIDAS", "MPEG", "MSP", "PCD", "PCX", "PIXAR",
    "PNG", "PPM", "PSD", "QOI", "SGI", "SPIDER", "SUN", "TGA", "TIFF", "WEBP", "WMF", "XBM", "XPM", "XVTHUMB"})


@dataclass(frozen=True)
class Settings:
    """What every task of a decode worker shares (sent once, when it starts)."""

    max_pixels: int
    formats: tuple[str, ...]
    max_scans: int


def allowed_formats(spec: Sequence[str] = PHOTO_FORMATS) -> tuple[str, ...]:
    """The Pillow formats PHOTO_FORMATS names (:class:`ConfigError` for unknown ones): the only decoders
    that see a photo's bytes, since some formats (ICO, ICNS) decode pixels before any size check."""
    names = [n.strip().upper() for n in spec if n.strip()]
    unknown = [n for n in names if n not in PILLOW_FORMATS and n not in OPTIONAL_FORMATS]
    if unknown or not names:
        raise ConfigError(f"PHOTO_FORMATS names formats Pillow cannot open: {', '.join(unknown) or '(none)'}; "
                          f"it knows {', '.join(sorted(PILLOW_FORMATS))}")
    return tuple(n for n in names if n in PILLOW_FORMATS)


class DecodeBudget:
    """Bytes being decoded at once in this instance, each photo charged its header's estimate
    (:mod:`.costs`); a decode waits for its share until its deadline. A photo bigger than the whole
    budget is decoded alone (the decode workers refuse it instead)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._cond = threading.Condition()

    def try_acquire(self, amount: int) -> bool:
        with self._cond:
            if self.used and self.used + amount > self.capacity:
                return False
            self.used += amount
            return True

    def acquire(self, amount: int, deadline: float | None) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.try_acquire(amount), seconds_left(deadline)):
                raise DeadlineExceeded(f"the request's deadline passed while this photo "
                                       f"({amount / 1e6:.0f} MB to decode) waited for decoding memory")

    def release(self, amount: int) -> None:
        with self._cond:
            self.used -= amount
            self._cond.notify_all()


def seconds_left(deadline: float | None) -> float | None:
    """Until ``deadline`` (``time.monotonic()``), for a wait's timeout; None: no deadline."""
    return None if deadline is None else deadline - time.monotonic()


def bare(err: PhotoError) -> PhotoError:
    """The error without its traceback and context: their frames hold the image and its pixels, in a
    cycle with the error that only a full collection breaks."""
    err.__traceback__ = err.__context__ = err.__cause__ = None
    return err


def to_input(rgb: bytes, size: Size) -> np.ndarray:
    """8-bit RGB bytes of a ``size`` (width, height) image -> its pixels, uint8 [height, width, 3]."""
    import numpy as np  # here, not at the top: a decode worker never needs it

    width, height = size
    return np.frombuffer(rgb, np.uint8).reshape(height, width, 3)
