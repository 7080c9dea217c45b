"""Photos that are cheap to send and costly to decode, written byte by byte (nothing is encoded from
pixels, so a 7999x7999 JPEG is made in milliseconds): what tests/core/test_costs.py, the hostile
table and bench/attacks.py send.

* :func:`jpeg`: a flat JPEG of any size, baseline or progressive, Huffman or arithmetic-coded, with
  1, 3 or 4 components at any sampling, an AC scan repeated ``repeats`` times (libjpeg warns of the
  bogus progression and decodes each repeat again: as refinement scans, ~37 ms of CPU each at 8k x 8k);
* :func:`gif`, :func:`apng`, :func:`webp`: animations of ``frames`` 1x1 frames on a big canvas;
* :func:`png`: a flat PNG of any size, mode and bit depth.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

# -- JPEG ---------------------------------------------------------------------------------------------

_EOB_SYMBOLS = [r << 4 for r in range(15)]  # EOBRUN categories 0..14, each a 4-bit code (0000..1110)


class _Bits:
    """Entropy-coded bits, most significant first; padded with ones and 0xFF-stuffed at the end."""

    def __init__(self) -> None:
        self.value, self.count = 0, 0
        self.out = bytearray()

    def put(self, value: int, bits: int) -> None:
        self.value = (self.value << bits) | (value & ((1 << bits) - 1))
        self.count += bits
        while self.count >= 8:
            self.count -= 8
            byte = (self.value >> self.count) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)
        self.value &= (1 << self.count) - 1

    def zeros(self, bits: int) -> None:
        """Many zero bits at once (a flat image's DC scans)."""
        fill = min(bits, (8 - self.count) % 8)
        self.put(0, fill)
        bits -= fill
        self.out += bytes(bits // 8)
        self.put(0, bits % 8)

    def done(self) -> bytes:
        if self.count:
            self.put((1 << (8 - self.count)) - 1, 8 - self.count)
        return bytes(self.out)


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def _up(a: int, b: int) -> int:
    return (a + b - 1) // b


def _blocks(width: int, height: int, sampling: list[tuple[int, int]], c: int) -> int:
    """8x8 blocks of component ``c`` (what a non-interleaved scan of it codes)."""
    hmax, vmax = max(h for h, _ in sampling), max(v for _, v in sampling)
    h, v = sampling[c]
    return _up(_up(width * h, hmax), 8) * _up(_up(height * v, vmax), 8)


def _eob_runs(bits: _Bits, blocks: int) -> None:
    """A progressive AC scan whose every block is zero: end-of-band runs of up to 32767 blocks."""
    while blocks > 0:
        run = min(blocks, 32767)
        r = run.bit_length() - 1
        bits.put(r, 4)
        bits.put(run - (1 << r), r)
        blocks -= run


def jpeg(width: int, height: int, components: int = 3, sampling: list[tuple[int, int]] | None = None,
         progressive: bool = True, repeats: int = 0, arithmetic: bool = False, multi_scan: bool = False,
         refine: bool = False) -> bytes:
    """A flat grey JPEG (every coefficient zero) of ``width`` x ``height``.

    ``sampling``: (h, v) per component (default 1x1 each: 4:4:4). Progressive: a DC scan of every
    component, one AC scan per component, then the first component's (the biggest) ``repeats`` times more.
    Sequential with ``multi_scan``: one scan per component (libjpeg then buffers the whole image's
    coefficients too). ``arithmetic``: SOF9/SOF10 with empty scans (libjpeg's arithmetic decoder
    reads zeros past the data: the same flat image, the same buffers). ``refine``: the repeats are
    refinement scans (successive approximation), in which libjpeg visits every coefficient of every
    block: ~10 times the CPU of a first scan's repeat for the same bytes.
    """
    sampling = sampling or [(1, 1)] * components
    hmax, vmax = max(h for h, _ in sampling), max(v for _, v in sampling)
    sof = (0xCA if progressive else 0xC9) if arithmetic else (0xC2 if progressive else 0xC0)
    out = bytearray(b"\xff\xd8")
    out += _segment(0xDB, b"\x00" + b"\x01" * 64)
    out += _segment(sof, struct.pack(">BHHB", 8, height, width, components)
                    + b"".join(bytes([i + 1, (h << 4) | v, 0]) for i, (h, v) in enumerate(sampling)))
    if not arithmetic:
        out += _segment(0xC4, bytes([0x00]) + bytes([1] + [0] * 15) + b"\x00")
        out += _segment(0xC4, bytes([0x10]) + bytes([0, 0, 0, 15] + [0] * 12) + bytes(_EOB_SYMBOLS))

    def scan(comps: list[int], ss: int, se: int, data: bytes, approx: int = 0) -> None:
        out.extend(_segment(0xDA, bytes([len(comps)]) + b"".join(bytes([c + 1, 0]) for c in comps)
                            + bytes([ss, se, approx])))
        out.extend(data)

    every = list(range(components))
    mcus = -(-width // (8 * hmax)) * -(-height // (8 * vmax))
    per_mcu = sum(h * v for h, v in sampling)
    if progressive:
        dc = _Bits()
        if not arithmetic:
            dc.zeros(mcus * per_mcu if components > 1 else _blocks(width, height, sampling, 0))
        scan(every, 0, 0, dc.done())
        for i, c in enumerate(every + [0] * repeats):
            ac = _Bits()
            if not arithmetic:
                _eob_runs(ac, _blocks(width, height, sampling, c))
            first = i < components
            scan([c], 1, 63, ac.done(), (0x01 if first else 0x10) if refine else 0)
    else:  # each block: DC category 0 (1 bit) and end of block (4 bits)
        groups = [[c] for c in every] if multi_scan or components == 1 else [every]
        for comps in groups:
            bits = _Bits()
            if not arithmetic:
                blocks = _blocks(width, height, sampling, comps[0]) if len(comps) == 1 else mcus * per_mcu
                bits.zeros(5 * blocks)
            scan(comps, 0, 63, bits.done())
    out += b"\xff\xd9"
    return bytes(out)


# -- PNG ----------------------------------------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def _zero_rows(width: int, height: int, row_bytes: int) -> bytes:
    packer = zlib.compressobj(9)
    row = bytes(1 + row_bytes)
    chunks = [packer.compress(row * min(1024, height - y)) for y in range(0, height, 1024)]
    return b"".join(chunks) + packer.flush()


def png(width: int, height: int, colour_type: int = 6, bit_depth: int = 8) -> bytes:
    """A PNG of zeros (black, or clear) of any size: 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA."""
    row_bytes = -(-width * _CHANNELS[colour_type] * bit_depth // 8)
    body = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))
    if colour_type == 3:
        body += _chunk(b"PLTE", b"\x00\x00\x00\xff\xff\xff")
    return b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IDAT", _zero_rows(width, height, row_bytes)) + _chunk(b"IEND", b"")


# -- animations: ``frames`` frames, the first the whole canvas, the others 1x1 ------------------------


def gif(width: int, height: int, frames: int) -> bytes:
    """An animated GIF of ``frames`` 1x1 frames on a ``width`` x ``height`` canvas."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF0, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    for i in range(frames):
        out += b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms
        out += b"\x2c" + struct.pack("<HHHHB", i % width, 0, 1, 1, 0)
        out += b"\x02\x02\x44\x01\x00"  # LZW, minimum code size 2: clear, index 0, end
    return bytes(out + b"\x3b")


def apng(width: int, height: int, frames: int) -> bytes:
    """An animated PNG: the default image (the whole grey canvas) is frame 0, then 1x1 frames."""
    def fctl(seq: int, w: int, h: int, x: int) -> bytes:
        return _chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, x, 0, 1, 100, 0, 0))

    out = bytearray(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
    out += _chunk(b"acTL", struct.pack(">II", frames, 0))
    out += fctl(0, width, height, 0) + _chunk(b"IDAT", _zero_rows(width, height, width))
    one = zlib.compress(b"\x00\x00")
    seq = 1
    for i in range(1, frames):
        out += fctl(seq, 1, 1, i % width) + _chunk(b"fdAT", struct.pack(">I", seq + 1) + one)
        seq += 2
    return bytes(out + _chunk(b"IEND", b""))


def _riff(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")


def _vp8l_pixel() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (1, 1), (0, 0, 0, 255)).save(buf, "WEBP", lossless=True)
    data = buf.getvalue()
    at = data.index(b"VP8L")
    size = struct.unpack("<I", data[at + 4 : at + 8])[0]
    return data[at : at + 8 + size + size % 2]


def webp(width: int, height: int, frames: int) -> bytes:
    """An animated WebP of ``frames`` 1x1 lossless frames on a ``width`` x ``height`` canvas."""
    pixel = _vp8l_pixel()

    def u24(v: int) -> bytes:
        return v.to_bytes(3, "little")

    body = _riff(b"VP8X", bytes([0x12, 0, 0, 0]) + u24(width - 1) + u24(height - 1))
    body += _riff(b"ANIM", b"\xff\xff\xff\xff" + b"\x00\x00")
    frame = b"".join(_riff(b"ANMF", u24((2 * i % width) // 2) + u24(0) + u24(0) + u24(0) + u24(10) + b"\x00"
                           + pixel) for i in range(min(frames, 64)))
    per = len(frame) // min(frames, 64)
    frames_body = frame * (frames // min(frames, 64)) + frame[: per * (frames % min(frames, 64))]
    return _riff(b"RIFF", b"WEBP" + body + frames_body)
