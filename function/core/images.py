"""Decoding: a photo's bytes into the model's input. Errors are returned from the frames that hold the
image and raised only once they are gone, so a traceback cannot keep the pixels alive.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from ..errors import CorruptImage, ImageTooLarge, NotAnImage, PhotoError, UnsupportedFormat
from ..infra.procs import trim_heap
from . import costs
from .inputs import MAX_JPEG_SCANS, TRIM_AFTER_BYTES, DecodeBudget, Size, allowed_formats, bare, to_input

if TYPE_CHECKING:
    import numpy as np

# Orientation tag -> the transpose that shows the photo upright (ImageOps.exif_transpose's table).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}  # 5 to 8: quarter turns


def limit_decoders(max_pixels: int) -> None:
    """Pillow's own pixel check set to our limit, and its warning made an error: Pillow also checks
    images inside containers (an ICO's PNG), which our header check cannot see. Process-wide, so set
    when the app is built (and checked on each decode), never at import."""
    if max_pixels != Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    if not any(f[0] == "error" and f[2] is Image.DecompressionBombWarning for f in warnings.filters):
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def decode(data: bytes, max_pixels: int, size: Size, formats: tuple[str, ...] | None = None,
           budget: DecodeBudget | None = None, deadline: float | None = None,
           max_scans: int = MAX_JPEG_SCANS) -> np.ndarray:
    """Bytes of an allowed format (sniffed, never trusted) -> uint8 [height,width,3] RGB at ``size``, upright,
    on the caller's thread: nothing bounds its CPU time, unlike :class:`~.decoding.Decoder`'s workers."""
    limit_decoders(max_pixels)
    allowed = formats if formats is not None else allowed_formats()
    result = _decode(data, max_pixels, size, allowed, budget, deadline, max_scans)
    if isinstance(result, PhotoError):  # raised here, with the image and its frames already gone
        raise bare(result)
    return to_input(result.tobytes(), size)


def _decode(data: bytes, max_pixels: int, size: Size, allowed: tuple[str, ...], budget: DecodeBudget | None,
            deadline: float | None, max_scans: int) -> Image.Image | PhotoError:
    opened = prepare(data, max_pixels, size, allowed, max_scans)
    if isinstance(opened, PhotoError):
        return opened
    img, cost = opened
    with img:
        if budget is not None:
            try:
                budget.acquire(cost, deadline)
            except PhotoError as err:
                return err
        try:
            return render(img, max_pixels, size)
        finally:
            if budget is not None:
                budget.release(cost)
            if cost >= TRIM_AFTER_BYTES:
                img.close()
                trim_heap()


def prepare(data: bytes, max_pixels: int, size: Size, allowed: tuple[str, ...],
            max_scans: int) -> tuple[Image.Image, int] | PhotoError:
    """The photo opened from its header, checked, and what decoding it will cost; the caller closes it."""
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
    width, height = img.size
    layout: costs.JpegLayout | PhotoError | None = None
    if width * height > max_pixels:
        layout = _too_large((width, height), max_pixels)
    elif img.format in ("JPEG", "MPO"):
        layout = costs.jpeg_layout(data, max_scans)
    if not isinstance(layout, PhotoError):
        try:
            img.draft("RGB", size)  # JPEG: decode at 1/2, 1/4 or 1/8 scale; a no-op for others
        except Exception as exc:
            layout = CorruptImage(f"cannot decode the image: {exc}")
    if isinstance(layout, PhotoError):
        img.close()
        return layout
    return img, costs.estimate(img, data, layout)


def render(img: Image.Image, max_pixels: int, size: Size) -> Image.Image | PhotoError:
    """The opened photo decoded to ``size`` 8-bit RGB, upright (transparency on white); or its error."""
    try:
        return _pixels(img, max_pixels, size)
    except PhotoError as err:
        return err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _too_large(None, max_pixels, str(exc))
    except MemoryError:
        return costs.too_costly("memory", "the decoder needed more memory than this photo was charged "
                                "(its header's estimate); the photo is refused")
    except Exception as exc:  # truncated or corrupt data, unsupported mode...
        return CorruptImage(f"cannot decode the image: {exc}")


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
    """Width and height from the header, read by the plugin class without Pillow's pixel check."""
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


def _pixels(img: Image.Image, max_pixels: int, size: Size) -> Image.Image:
    orientation = img.getexif().get(0x0112)
    img.load()
    width, height = img.size
    if width * height > max_pixels:  # an ICNS decodes a bigger image than its header declares
        raise ImageTooLarge(f"image decoded to {width}x{height} = {width * height} pixels; "
                         f"the limit is {max_pixels}")
    turn = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    # Turned after scaling, to the turned size for a quarter turn (a model's input need not be square).
    small = _to_rgb(img, (size[1], size[0]) if turn is not None and orientation in (5, 6, 7, 8) else size)
    if turn is not None:
        small = small.transpose(turn)
    return small


def _to_rgb(img: Image.Image, size: Size) -> Image.Image:
    """``size`` RGB, scaled down first: converting or compositing at full size costs more memory."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float grayscale: scaled to the type's range, not clipped at 255. In Pillow, not numpy:
        # a decode worker never loads numpy (its RSS, and OpenBLAS under RLIMIT_AS).
        if img.mode.startswith("I;16"):
            img, top = img.convert("I"), 65535.0
        else:
            top = 65535.0 if float(img.getextrema()[1]) > 255 else 255.0  # type: ignore[arg-type]  # one band: (lo, hi)
        img = img.point(lambda v: v * (255.0 / top)).convert("L")
    if img.mode in ("PA",) or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    elif img.mode not in ("RGB", "RGBA", "LA", "L", "CMYK"):
        img = img.convert("RGB")
    if img.size != size:  # RGBA and LA are resized premultiplied: no colour bleeds from clear pixels
        img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB")
