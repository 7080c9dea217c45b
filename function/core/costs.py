"""What decoding a photo will hold at its peak, known from its header before any pixel is decoded.

The estimate is charged to the decode budget and is the worker's address-space limit, so one too low
fails that photo, never the process; it is an upper bound by design. The model: the photo's bytes +
decoded pixels x (the mode's bytes + the format's decoder buffers + the conversion to RGB) + a JPEG's
whole-image coefficient buffer when progressive or multi-scan + 16 MiB of libraries' working memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import DecodeTooCostly, ImageTooLarge, PhotoError

if TYPE_CHECKING:
    from PIL import Image

FIXED = 16 * 1024 * 1024  # libraries' working memory
BLOCK_BYTES = 64 * 2  # one 8x8 block of 16-bit DCT coefficients
# Pillow keeps these modes at their own width; every other mode (RGB, RGBA, LA, CMYK, I, F...) 4 bytes.
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_DECODER_BYTES = {"JPEG": 0.0, "MPO": 0.0, "PNG": 0.0, "GIF": 0.0, "BMP": 0.0, "TIFF": 4.0, "WEBP": 12.0}
_OTHER_DECODER_BYTES = 12.0

# Markers ending a JPEG's entropy-coded data: anything but stuffing (00), fill (FF), RSTn and SOI.
_NEXT_MARKER = re.compile(rb"\xff[\x01\xc0-\xcf\xd9-\xfe]")
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}


@dataclass(frozen=True)
class JpegLayout:
    """What a JPEG's markers say about its decoding: frame type, components, sampling, scans."""

    width: int
    height: int
    components: tuple[tuple[int, int], ...]  # (h, v) sampling factors per component
    progressive: bool
    first_scan_components: int

    @property
    def full_buffer(self) -> bool:
        """Whether libjpeg keeps every coefficient: progressive, or the first scan lacks a component."""
        return self.progressive or self.first_scan_components < len(self.components)

    def coefficient_bytes(self) -> int:
        """Bytes of libjpeg's whole-image coefficient buffer (blocks rounded up to sampling factors)."""
        if not self.components:
            return 0
        hmax = max(h for h, _ in self.components)
        vmax = max(v for _, v in self.components)
        total = 0
        for h, v in self.components:
            wide = -(-self.width * h // (8 * hmax))
            high = -(-self.height * v // (8 * vmax))
            total += (-(-wide // h) * h) * (-(-high // v) * v)
        return total * BLOCK_BYTES


def too_costly(reason: str, message: str) -> DecodeTooCostly:
    """``decode_too_costly`` with the ``reason`` the metrics count it by (memory, cpu, scans...)."""
    err = DecodeTooCostly(message)
    err.reason = reason  # type: ignore[attr-defined]  # read by reason_of(); PhotoError has no field for it
    return err


def reason_of(err: PhotoError) -> str | None:
    """Why a photo was refused or stopped for its cost; None for every other error."""
    if not isinstance(err, DecodeTooCostly):
        return None
    return str(getattr(err, "reason", "memory"))


def jpeg_layout(data: bytes, max_scans: int) -> JpegLayout | PhotoError:
    """Walk a JPEG's markers to its first EOI, or past ``max_scans`` scans (so the walk is bounded):
    segments skipped by their length, entropy-coded data by a regex search for the next marker."""
    n, pos = len(data), 2
    sof: tuple[int, int, int, tuple[tuple[int, int], ...]] | None = None
    scans, first_ns = 0, 0
    while pos + 4 <= n:
        if data[pos] != 0xFF:  # garbage between segments: libjpeg skips to the next marker, so do we
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
            continue
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD9:
            break
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        body = data[pos + 4 : pos + 2 + length]
        if marker in _SOF and sof is None and len(body) >= 6:
            height, width, count = (body[1] << 8) | body[2], (body[3] << 8) | body[4], body[5]
            comps = tuple(((body[7 + 3 * i] >> 4) or 1, (body[7 + 3 * i] & 15) or 1)
                          for i in range(count) if 8 + 3 * i < len(body))
            sof = (marker, width, height, comps)
        pos += 2 + max(length, 2)
        if marker == 0xDA:
            scans += 1
            if scans == 1 and body:
                first_ns = body[0]
            if scans > max_scans:
                return too_costly("scans", f"the JPEG has more than {max_scans} scans (MAX_JPEG_SCANS); "
                                  "each scan is another pass over every block of the image")
            found = _NEXT_MARKER.search(data, pos)
            pos = found.start() if found is not None else n
    if sof is None:
        return JpegLayout(0, 0, (), False, first_ns)
    marker, width, height, comps = sof
    return JpegLayout(width, height, comps, marker in _PROGRESSIVE, first_ns)


def opening_cost(data: bytes, max_pixels: int) -> int | PhotoError | None:
    """What *opening* a WebP holds (Pillow makes libwebp's two RGBA canvases in ``Image.open``); None
    for other formats, whose opening reads the header only."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind, body = data[12:16], data[20:30]
    if kind == b"VP8X":
        width, height = int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1
    elif kind == b"VP8L":
        bits = int.from_bytes(body[1:5], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif kind == b"VP8 ":
        width, height = int.from_bytes(body[6:8], "little") & 0x3FFF, int.from_bytes(body[8:10], "little") & 0x3FFF
    else:
        return None
    if width * height > max_pixels:
        return ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    per_pixel = 4 + _DECODER_BYTES["WEBP"] + 4.0  # RGB or RGBA is not known before opening: RGBA's
    return len(data) + int(width * height * per_pixel) + FIXED


def conversion_bytes(img: Image.Image) -> float:
    """Bytes per decoded pixel that converting ``img`` to scaled RGB adds (images._to_rgb's path)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return 9.0  # as 32-bit integers, its scaled copy, the 8-bit result (Pillow's point and convert)
    if mode == "PA" or (mode == "P" and "transparency" in img.info):
        return 8.0  # to RGBA, then its premultiplied copy for scaling
    if mode in ("RGBA", "LA"):
        return 4.0
    if mode in ("RGB", "L", "CMYK"):
        return 0.5  # the reduced image scaling goes through
    return 4.5  # converted to RGB at full size first


def estimate(img: Image.Image, data: bytes, layout: JpegLayout | None) -> int:
    """The bytes decoding ``img`` (opened, draft mode set) will hold at its peak; ``layout`` for JPEGs."""
    width, height = img.size  # after draft(): the scale the JPEG is decoded at
    decoder = _DECODER_BYTES.get(img.format or "", _OTHER_DECODER_BYTES)
    per_pixel = _MODE_BYTES.get(img.mode, 4) + decoder + conversion_bytes(img)
    total = len(data) + int(width * height * per_pixel) + FIXED
    if layout is not None and layout.full_buffer:
        total += layout.coefficient_bytes()
    return total
