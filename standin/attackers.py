"""Photo hosts and photos for the load test's hostile phase (``bench/attacks.py``).

Handlers for :class:`~standin.server.StandInServer` that hold a fetch in a phase a read timeout
does not see (the status line sent, then one header byte every 2 s; a request accepted and never
answered; a gzip header that never ends), and decompression bombs that are small on the wire
(an ICO holding a 30000x30000 PNG, an 8000x7999 RGBA PNG). Every handler gives up after ``max_s``,
as soon as ``stop`` is set, or when the client hangs up.

The PNGs are written directly (zlib with full flushes, one compressed block repeated) rather than
by Pillow from an image in memory: a 30000x30000 image would cost this process 3.6 GB to build.
Pillow decodes them like any other PNG (``python -m standin.attackers`` checks small ones).
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from functools import cache

from .server import Reply

# -- hosts that hold a fetch ------------------------------------------------------------------------


def _write(req, data: bytes) -> bool:
    try:
        req.wfile.write(data)
        req.wfile.flush()
        return True
    except OSError:  # the client hung up: what it should do
        return False


def header_drip(stop: threading.Event, max_s: float = 60.0, every_s: float = 2.0):
    """The status line at once, then one header byte every ``every_s`` (held a
    fetch worker for 150 s, the read timeout and the photo deadline counting only once headers end)."""

    def handler(req):
        if _write(req, b"HTTP/1.1 200 OK\r\n"):
            header = b"X-Padding: " + b"a" * 10_000
            give_up = time.monotonic() + max_s
            for i in range(len(header)):
                if stop.wait(every_s) or time.monotonic() > give_up or not _write(req, header[i:i + 1]):
                    break
        req.close_connection = True

    return handler


def never_answers(stop: threading.Event, max_s: float = 60.0):
    """Reads the request and never sends a byte."""

    def handler(req):
        stop.wait(max_s)
        req.close_connection = True

    return handler


def endless_gzip_header(stop: threading.Event, max_s: float = 60.0, max_bytes: int = 1 << 30):
    """``Content-Encoding: gzip`` and a gzip header whose file name never ends: a decoder consumes it
    all and yields nothing, so a byte cap on decoded bytes never trips (30 GB in 45 s)."""

    def handler(req):
        req.send_response(200)
        for k, v in {"Content-Type": "image/jpeg", "Content-Encoding": "gzip", "Connection": "close"}.items():
            req.send_header(k, v)
        req.end_headers()
        piece = b"a" * (64 * 1024)
        give_up = time.monotonic() + max_s
        if _write(req, b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\x03"):  # gzip, deflate, FNAME set
            for _ in range(max_bytes // len(piece)):
                if stop.is_set() or time.monotonic() > give_up or not _write(req, piece):
                    break
        req.close_connection = True

    return handler


# -- decompression bombs ----------------------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _zeros_zlib(row: int, rows: int, block_limit: int = 16 << 20) -> bytes:
    """zlib data for ``rows`` rows of ``row`` zero bytes, without ever holding them all.

    One block of rows is compressed and flushed with ``Z_FULL_FLUSH`` (which resets the compressor),
    so the next identical block compresses to identical bytes: the stream is a header, that unit
    repeated, an empty final block and the Adler-32 of n zero bytes, ``(n % 65521) << 16 | 1``."""
    per_block = max(d for d in range(1, rows + 1) if rows % d == 0 and d * row <= block_limit)
    block = bytes(row * per_block)
    c = zlib.compressobj(9)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    unit = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    total = row * rows
    adler = ((total % 65521) << 16) | 1
    return first + unit * (rows // per_block - 1) + b"\x03\x00" + struct.pack(">I", adler)


def zeros_png(width: int, height: int, colour_type: int = 2) -> bytes:
    """A complete, valid PNG of ``width`` x ``height`` zero pixels (RGB: black; RGBA: transparent)."""
    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    data = _zeros_zlib(width * channels + 1, height)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


@cache
def ico_bomb(side: int = 30_000) -> bytes:
    """An ICO whose directory says 256x256 and whose PNG is ``side`` x ``side`` RGB, every row present
    (~2.6 MB on the wire for 30000): Pillow decodes an ICO's image inside ``Image.open`` (measured without the bounds:
    9.2 s, RSS 600 MB -> 4.1 GB, before the answer ``image_too_large``)."""
    png = zeros_png(side, side, 2)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


@cache
def big_rgba_png(width: int = 8000, height: int = 7999) -> bytes:
    """An 8000x7999 RGBA PNG (63.99 Mpx, under the default 64 Mpx limit), ~250 kB on the wire
    (measured: 1.2 GB at peak each; four in one request reached 4.8 GB)."""
    return zeros_png(width, height, 6)


def bomb_reply(data: bytes, content_type: str) -> Reply:
    return Reply(data, 200, content_type)


def _selfcheck() -> None:  # python -m standin.attackers: the generated PNGs decode
    import io

    from PIL import Image

    for w, h, t in ((300, 200, 2), (123, 77, 6), (64, 64, 0)):
        png = zeros_png(w, h, t)
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            assert im.size == (w, h) and im.getextrema() is not None
    print("ico bomb", len(ico_bomb()), "bytes; rgba png", len(big_rgba_png()), "bytes")


if __name__ == "__main__":
    _selfcheck()
