"""Hostile and odd photos for the stand-in server: what tests/test_hostile.py and bench/loadtest.py serve.

Content builders return bytes (or a :class:`~standin.server.Reply`); handler factories return
functions of the request that write their own answer. Every handler is bounded: it gives up after
``max_s`` seconds or as soon as ``stop`` is set, so a failing test leaves no thread behind for long.

The classes noted are what the stand-in colour model answers for a correctly decoded photo.
"""

from __future__ import annotations

import gzip
import io
import struct
import threading
import time
import zlib
from collections.abc import Callable
from functools import cache
from urllib.parse import urlsplit

from PIL import Image

from . import photos
from .server import Reply

Handler = Callable[[object], Reply | None]


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def solid(class_id: int, fmt: str = "JPEG", size: tuple[int, int] = (320, 240), **params) -> bytes:
    return photos.solid(photos.class_colour(class_id), size=size, fmt=fmt, **params)


# -- odd but valid photos ---------------------------------------------------------------------

CMYK_CLASS, PNG16_CLASS, GIF_CLASS, RGBA_CLASS, EXIF_CLASS = 9, 444, 123, 575, 321


def cmyk_jpeg() -> bytes:
    """No cyan or black ink, full magenta and yellow: red, class 9."""
    return encode(Image.new("CMYK", (320, 240), (0, 255, 255, 0)), "JPEG", quality=95)


def png_16bit() -> bytes:
    """Grey at 4/9 of the 16-bit range: class 444 only if scaled to 8 bits, not clipped at 255."""
    return encode(Image.new("I;16", (64, 64), round(65535 * 4 / 9)), "PNG")


def animated_gif() -> bytes:
    """Two frames, classes 123 then 456: the first frame decides."""
    first, second = (Image.new("RGB", (64, 64), photos.class_colour(c)) for c in (GIF_CLASS, 456))
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def rgba_png() -> bytes:
    """Top half opaque (1/9, 5/9, 1/9), bottom half fully transparent *red*. Composited onto white
    the mean is (5/9, 7/9, 5/9), class 575; a decoder that ignored alpha would see red instead."""
    img = Image.new("RGBA", (300, 300), (255, 0, 0, 0))
    img.paste((round(255 / 9), round(255 * 5 / 9), round(255 / 9), 255), (0, 0, 300, 150))
    return encode(img, "PNG")


def exif_rotated_jpeg() -> bytes:
    """A landscape JPEG whose EXIF orientation says "turn 90 degrees clockwise to view"."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.new("RGB", (400, 200), photos.class_colour(EXIF_CLASS)), "JPEG", quality=95,
                  exif=exif.tobytes())


# -- broken and hostile content ---------------------------------------------------------------


def truncated_jpeg() -> bytes:
    return photos.photo_like(400, 300)[:9000]


HTML = b"<!doctype html><html><body>Sorry, that photo is gone</body></html>"


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` (900 Mpx) followed by ten rows of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width * 3 + 1) * 10)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def ico_bomb(width: int = 6000, height: int = 6000) -> bytes:
    """An ICO whose directory says 256x256 and whose PNG says ``width`` x ``height``: Pillow decodes an
    ICO's image inside ``Image.open``, before any size check of ours can run."""
    png = png_bomb(width, height)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def icns_bomb(side: int = 3000) -> bytes:
    """An ICNS whose one element says 512x512 ('ic09') and holds a ``side`` x ``side`` PNG."""
    png = encode(Image.new("RGBA", (side, side), (0, 0, 255, 255)), "PNG")
    element = b"ic09" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(element)) + element


@cache
def _gzip_bomb_body() -> bytes:
    return gzip.compress(b"\x00" * 64_000_000, 9)


def gzip_bomb() -> Reply:
    """64 MB of zeros in ~64 kB, served with ``Content-Encoding: gzip``."""
    return Reply(_gzip_bomb_body(), 200, "image/jpeg", {"Content-Encoding": "gzip"})


def redirect(location: str) -> Reply:
    return Reply(b"", 302, "text/plain", {"Location": location})


def _headers(req, headers: dict[str, str], status: int = 200) -> None:
    req.send_response(status)
    for k, v in headers.items():
        req.send_header(k, v)
    req.end_headers()
    req.wfile.flush()


def endless(stop: threading.Event, max_s: float = 10.0, chunked: bool = False) -> Handler:
    """A body that never ends (here: until ``max_s``, 256 MiB, or the client hangs up)."""

    def handler(req):
        framing = {"Transfer-Encoding": "chunked"} if chunked else {"Connection": "close"}
        _headers(req, {"Content-Type": "image/jpeg", **framing})
        data = b"\xff\xd8\xff" + b"\x00" * (64 * 1024 - 3)
        piece = b"%x\r\n%s\r\n" % (len(data), data) if chunked else data
        give_up = time.monotonic() + max_s
        for _ in range(4096):
            if stop.is_set() or time.monotonic() > give_up:
                break
            try:
                req.wfile.write(piece)
            except OSError:  # the client hung up: what it should do
                break
        req.close_connection = True

    return handler


def stall_after_headers(stop: threading.Event, max_s: float = 10.0) -> Handler:
    """Status and headers promising 50 kB, then nothing."""

    def handler(req):
        _headers(req, {"Content-Type": "image/jpeg", "Content-Length": "50000"})
        stop.wait(max_s)
        req.close_connection = True

    return handler


def trickle(stop: threading.Event, max_s: float = 10.0, every_s: float = 0.2) -> Handler:
    """One byte every ``every_s``: each arrives well within a read timeout, the photo never does."""

    def handler(req):
        _headers(req, {"Content-Type": "image/jpeg", "Content-Length": "100000"})
        give_up = time.monotonic() + max_s
        while not stop.wait(every_s) and time.monotonic() < give_up:
            try:
                req.wfile.write(b"\xff")
                req.wfile.flush()
            except OSError:
                break
        req.close_connection = True

    return handler


def declares_too_much(stop: threading.Event, max_s: float = 10.0) -> Handler:
    """Declares 50 MB, sends three bytes, then waits: to be refused from the header alone."""

    def handler(req):
        _headers(req, {"Content-Type": "image/jpeg", "Content-Length": "50000000"})
        try:
            req.wfile.write(b"\xff\xd8\xff")
            req.wfile.flush()
        except OSError:
            pass
        stop.wait(max_s)
        req.close_connection = True

    return handler


def fails_first(times: int, status: int, then: bytes = b"", headers: dict[str, str] | None = None,
                per_query: bool = False) -> Handler:
    """Answers ``status`` to the first ``times`` requests (status 0: hangs up without a word, as a
    reset connection looks), then 200 with ``then``. With ``per_query`` each query string counts
    on its own, so that concurrent clients each see the failure first."""
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def handler(req):
        key = urlsplit(req.path).query if per_query else ""
        with lock:
            calls[key] = calls.get(key, 0) + 1
            n = calls[key]
        if n > times:
            return Reply(then, 200, "image/jpeg")
        if status == 0:
            req.close_connection = True
            return None
        return Reply(b"busy", status, "text/plain", dict(headers or {}))

    return handler


def _drip(req, data: bytes, stop: threading.Event, max_s: float, every_s: float) -> None:
    """Send ``data`` one byte every ``every_s`` until it is sent, ``stop``, ``max_s`` or a hang-up."""
    give_up = time.monotonic() + max_s
    for i in range(len(data)):
        if stop.wait(every_s) or time.monotonic() > give_up:
            break
        try:
            req.wfile.write(data[i : i + 1])
            req.wfile.flush()
        except OSError:  # the client hung up: what it should do
            break
    req.close_connection = True


def status_drip(stop: threading.Event, max_s: float = 10.0, every_s: float = 0.2) -> Handler:
    """The status line itself, one byte every ``every_s``: no read timeout ever passes."""

    def handler(req):
        _drip(req, b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 3\r\n\r\n\xff\xd8\xff",
              stop, max_s, every_s)

    return handler


def header_drip(stop: threading.Event, max_s: float = 10.0, every_s: float = 0.2) -> Handler:
    """A status line at once, then a header one byte every ``every_s`` (the read timeout and the
    photo's deadline used to start only once the headers were complete)."""

    def handler(req):
        try:
            req.wfile.write(b"HTTP/1.1 200 OK\r\n")
            req.wfile.flush()
        except OSError:
            return
        _drip(req, b"X-Padding: " + b"a" * 10_000 + b"\r\n\r\n", stop, max_s, every_s)

    return handler


def endless_gzip_header(stop: threading.Event, max_s: float = 10.0) -> Handler:
    """``Content-Encoding: gzip`` and a gzip header whose file name never ends: a decoder consumes it
    all and yields nothing, so a byte limit on decoded bytes never trips (30 GB in 45 s, measured)."""

    def handler(req):
        _headers(req, {"Content-Type": "image/jpeg", "Content-Encoding": "gzip", "Connection": "close"})
        piece = b"a" * (64 * 1024)
        give_up = time.monotonic() + max_s
        try:
            req.wfile.write(b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\x03")  # gzip, FNAME set
            for _ in range(4096):
                if stop.is_set() or time.monotonic() > give_up:
                    break
                req.wfile.write(piece)
        except OSError:  # the client hung up: what it should do
            pass
        req.close_connection = True

    return handler
