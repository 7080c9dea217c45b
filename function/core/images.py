"""Decoding: a photo's bytes, in an allowed format, into the model's input.

The format is sniffed from the content (never trusted from a header) and must be one of
``PHOTO_FORMATS``; the pixel count is checked from the header before decoding, by Pillow inside
containers, and again after decoding. Every problem is a :class:`~function.errors.PhotoError`
subclass; an error is returned from the frames that hold the image and raised only once they are
gone, so its traceback cannot keep the pixels alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import threading
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import (
    ConfigError,
    CorruptImage,
    DeadlineExceeded,
    ImageTooLarge,
    NotAnImage,
    PhotoError,
    UnsupportedFormat,
)

IMAGE_SIZE = 224


PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
OPTIONAL_FORMATS = frozenset({"HEIF", "AVIF"})  # allowed when their Pillow plugin is there, else skipped
# Orientation tag -> the transpose that shows the photo upright (ImageOps.exif_transpose's table).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
TRIM_AFTER_PIXELS = 4_000_000  # give freed memory back to the OS after decoding an image this big


def allowed_formats(spec: Sequence[str] = PHOTO_FORMATS) -> tuple[str, ...]:
    """The Pillow formats PHOTO_FORMATS names; :class:`ConfigError` for unknown ones.

    Only these decoders ever see a photo's bytes. Pillow knows ~40 formats, and some decode pixels
    while opening (ICO and ICNS decode their embedded PNG inside ``Image.open``: a 2.6 MB ICO took
    9.2 s and 3.5 GB before any size check could run). JPEG includes MPO (phone cameras' JPEGs).
    """
    Image.init()
    names = [n.strip().upper() for n in spec if n.strip()]
    unknown = [n for n in names if n not in Image.OPEN and n not in OPTIONAL_FORMATS]
    if unknown or not names:
        raise ConfigError(f"PHOTO_FORMATS names formats Pillow cannot open: {', '.join(unknown) or '(none)'}; "
                          f"it knows {', '.join(sorted(Image.OPEN))}")
    return tuple(n for n in names if n in Image.OPEN)


def limit_decoders(max_pixels: int) -> None:
    """Pillow's own pixel check set to our limit, and its warning made an error.

    Pillow checks the size of every image it opens, including the ones inside containers (an ICO's
    PNG, an ICNS's 12000x12000 PNG behind a 512x512 header), which our check on the outer header
    cannot see. It raises past twice ``MAX_IMAGE_PIXELS`` and only warns past it: as an error the
    warning stops the decode too. Process-wide settings, so set when the app is built (and checked
    on each decode), never at import.
    """
    if max_pixels != Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    if not any(f[0] == "error" and f[2] is Image.DecompressionBombWarning for f in warnings.filters):
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


class DecodeBudget:
    """Megapixels being decoded at once in this instance; a decode waits for its share, until its deadline.

    A decoded image costs far more than its bytes: one 262 KB 8000x7999 RGBA PNG held 1.2 GB at its
    peak (20 B/px), four at once 4.8 GB, twice the pod's limit. The budget bounds the sum; a photo
    bigger than the whole budget (but under MAX_PHOTO_PIXELS) is decoded alone.
    """

    def __init__(self, pixels: int):
        self.capacity = pixels
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, pixels: int, deadline: float | None) -> None:
        with self._cond:
            while self.used and self.used + pixels > self.capacity:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DeadlineExceeded(f"the request's deadline passed while this photo "
                                     f"({pixels / 1e6:.0f} Mpx) waited for decoding memory")
                self._cond.wait(left)
            self.used += pixels

    def release(self, pixels: int) -> None:
        with self._cond:
            self.used -= pixels
            self._cond.notify_all()


def _trim() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``); nothing elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def bare(err: PhotoError) -> PhotoError:
    """The error without its traceback and context: their frames hold the image and its pixel buffer,
    in a cycle with the error that only a full collection breaks (3.1 GB held for 30 requests)."""
    err.__traceback__ = err.__context__ = err.__cause__ = None
    return err


def decode(data: bytes, max_pixels: int, size: int = IMAGE_SIZE, formats: tuple[str, ...] | None = None,
           budget: DecodeBudget | None = None, deadline: float | None = None) -> np.ndarray:
    """Bytes of an allowed format -> float32 [size,size,3] RGB in [0,1].

    The format is sniffed from the content, never trusted from a header, and must be one of
    ``formats`` (PHOTO_FORMATS). The pixel count is checked from the header before decoding, by
    Pillow inside containers, and again after decoding. JPEGs are decoded with DCT scaling (draft
    mode) close to the target size; other images are scaled down before any conversion, so no
    full-size copy is made. EXIF orientation is applied; transparency is composited onto white;
    16-bit grayscale is scaled, not clipped; GIF and other animations give their first frame.
    """
    limit_decoders(max_pixels)
    allowed = formats if formats is not None else allowed_formats()
    result: np.ndarray | PhotoError = _decode(data, max_pixels, size, allowed, budget, deadline)
    if isinstance(result, PhotoError):  # raised here, with the image and its frames already gone
        raise bare(result)
    return result


def _decode(data: bytes, max_pixels: int, size: int, allowed: tuple[str, ...], budget: DecodeBudget | None,
            deadline: float | None) -> np.ndarray | PhotoError:
    """The decode, returning its error rather than raising it from frames that hold the image."""
    try:
        img = Image.open(io.BytesIO(data), formats=allowed)
    except UnidentifiedImageError:
        other = _sniff(data, allowed)
        if other:
            return UnsupportedFormat(f"the image is {other}; accepted formats: {', '.join(allowed)}")
        return NotAnImage("the content is not an image in a known format")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _too_large(_declared_size(data, allowed), max_pixels, str(exc))
    except Exception as exc:
        return NotAnImage(f"cannot read the image header: {exc}")
    with img:
        width, height = img.size
        if width * height > max_pixels:
            return _too_large((width, height), max_pixels)
        try:
            img.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale; a no-op for others
        except Exception as exc:
            return CorruptImage(f"cannot decode the image: {exc}")
        need = img.size[0] * img.size[1]
        if budget is not None:
            try:
                budget.acquire(need, deadline)
            except PhotoError as err:
                return err
        try:
            return _pixels(img, max_pixels, size)
        except PhotoError as err:
            return err
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return _too_large(None, max_pixels, str(exc))
        except Exception as exc:  # truncated or corrupt data, unsupported mode...
            return CorruptImage(f"cannot decode the image: {exc}")
        finally:
            if budget is not None:
                budget.release(need)
            if need >= TRIM_AFTER_PIXELS:
                img.close()
                _trim()


def _too_large(dims: tuple[int, int] | None, max_pixels: int, pillow: str | None = None) -> PhotoError:
    if dims is not None:
        w, h = dims
        return ImageTooLarge(f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    return ImageTooLarge(f"an image in the file is over the limit of {max_pixels} pixels"
                      + (f" ({pillow.split(',')[0]})" if pillow else ""))


def _sniff(data: bytes, allowed: tuple[str, ...]) -> str | None:
    """The format of content no allowed decoder took, by the plugins' own prefix checks (nothing decoded)."""
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        if name not in allowed and accept is not None and _accepts(accept, prefix):
            return name
    return None


def _accepts(accept: Callable[[bytes], bool | str], prefix: bytes) -> bool:
    try:
        return bool(accept(prefix))
    except Exception:  # some plugins' checks fail on a prefix shorter than they expect
        return False


def _declared_size(data: bytes, allowed: tuple[str, ...]) -> tuple[int, int] | None:
    """Width and height from the header, for the message when Pillow's check refused the image.

    Opening an allowed format's plugin class reads its header only (unlike ``Image.open``, without
    the pixel check); a container would decode, but containers are not allowed by default.
    """
    prefix = data[:16]
    for name in allowed:
        factory, accept = Image.OPEN[name]
        if accept is None or _accepts(accept, prefix):
            try:
                with factory(io.BytesIO(data), "") as im:
                    return im.size
            except Exception:  # noqa: S112 - not this format, or the header is unreadable: try the next
                continue
    return None


def _pixels(img: Image.Image, max_pixels: int, size: int) -> np.ndarray:
    orientation = img.getexif().get(0x0112)
    img.load()
    width, height = img.size
    if width * height > max_pixels:  # an ICNS decodes a bigger image than its header declares
        raise ImageTooLarge(f"image decoded to {width}x{height} = {width * height} pixels; "
                         f"the limit is {max_pixels}")
    small = _to_rgb(img, size)
    turn = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    if turn is not None:  # on the small image: turning a square after scaling is turning before it
        small = small.transpose(turn)
    return np.asarray(small, dtype=np.float32) / 255.0


def _to_rgb(img: Image.Image, size: int) -> Image.Image:
    """``size`` x ``size`` RGB, scaled down first: converting or compositing at full size would add up
    to 11 bytes a pixel (measured 20 B/px at the peak for an RGBA PNG, 9 after)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float grayscale: scale to the type's range instead of clipping at 255.
        a = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode in ("PA",) or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    elif img.mode not in ("RGB", "RGBA", "LA", "L", "CMYK"):
        img = img.convert("RGB")
    if img.size != (size, size):  # RGBA and LA are resized premultiplied: no colour bleeds from clear pixels
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB")


class Decoder:
    """Decodes photos within this instance's limits: the allowed formats, the pixel limit, and the
    decoding memory shared by every photo decoded at once (:class:`DecodeBudget`)."""

    def __init__(self, max_pixels: int, formats: tuple[str, ...], budget_pixels: int):
        self.max_pixels = max_pixels
        self.formats = formats
        self.budget = DecodeBudget(budget_pixels)
        limit_decoders(max_pixels)

    def decode(self, data: bytes, deadline: float | None = None) -> np.ndarray:
        """float32 [224,224,3] in [0,1], or a :class:`PhotoError`; a photo waits for decoding memory
        no longer than ``deadline`` (``time.monotonic()``)."""
        return decode(data, self.max_pixels, formats=self.formats, budget=self.budget, deadline=deadline)

    def close(self) -> None:
        """Nothing to release: decoding runs on the caller's thread."""
