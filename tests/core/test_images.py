"""Decoding: formats, errors and the decode budget (function/core/images.py)."""

from __future__ import annotations

import gc
import io
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from function.core import images
from function.core.decoding import Decoder
from function.core.inputs import DecodeBudget, allowed_formats
from function.core.photos import PhotoReader, load
from function.core.sources import PhotoSource
from function.errors import PhotoError
from function.infra.fetch import HttpFetcher
from standin import photos
from tests.support import ROOT

MAX_PIXELS = 64_000_000
SIZE = (224, 224)  # (width, height): the birds model's input size
IMAGE_SIZE = 224
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
URL = "https://photos.example.org/robin.jpg"


def decoded(data: bytes, max_pixels: int, size: tuple[int, int] = SIZE, **params) -> np.ndarray:
    """The photo decoded at a model's ``size``, as fractions of full scale (the 8-bit pixels / 255)."""
    pixels = images.decode(data, max_pixels, size, **params)
    assert pixels.dtype == np.uint8
    return pixels / 255.0


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def decode_error(data: bytes, max_pixels: int = MAX_PIXELS) -> PhotoError:
    with pytest.raises(PhotoError) as caught:
        decoded(data, max_pixels)
    return caught.value


def png_header_only(width: int, height: int) -> bytes:
    """A 1-bit grayscale PNG that declares ``width`` x ``height`` but holds only ten rows of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * ((width + 7) // 8 + 1) * 10)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def left_red_right_blue(width: int, height: int) -> Image.Image:
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = RED
    a[:, width // 2 :] = BLUE
    return Image.fromarray(a)


def mean_rgb(pixels: np.ndarray) -> tuple[float, ...]:
    return tuple(np.round(pixels.reshape(-1, 3).mean(axis=0), 2).tolist())



# -- decode: formats ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, params", [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}),
                                         ("GIF", {})])
def test_common_formats_decode_to_their_colour(fmt, params):
    pixels = decoded(encode(Image.new("RGB", (320, 240), (0, 128, 255)), fmt, **params), MAX_PIXELS)
    np.testing.assert_allclose(pixels[112, 112], (0, 128 / 255, 1.0), atol=0.02)


def test_output_is_8_bit_rgb_at_model_size_for_the_model_to_normalize():
    pixels = images.decode(photos.photo_like(640, 480), MAX_PIXELS, SIZE)
    assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert pixels.dtype == np.uint8
    assert pixels.max() > 128, "the full 8-bit range, not scaled"


def test_a_small_photo_is_scaled_up_to_model_size():
    assert decoded(photos.solid(RED, size=(16, 10), fmt="PNG"), MAX_PIXELS).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_an_animated_gif_gives_its_first_frame():
    red, blue = Image.new("RGB", (64, 64), RED), Image.new("RGB", (64, 64), BLUE)
    gif = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    assert Image.open(io.BytesIO(gif)).n_frames == 2
    assert mean_rgb(decoded(gif, MAX_PIXELS)) == (1.0, 0.0, 0.0)


def test_grayscale_becomes_three_equal_channels():
    pixels = decoded(encode(Image.new("L", (100, 80), 64), "PNG"), MAX_PIXELS)
    np.testing.assert_allclose(pixels[50, 50], (64 / 255,) * 3, atol=1e-6)


def test_a_cmyk_jpeg_is_converted_to_rgb():
    cmyk = encode(Image.new("CMYK", (400, 300), (0, 255, 255, 0)), "JPEG", quality=95)  # no cyan/yellow ink: red
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    np.testing.assert_allclose(mean_rgb(decoded(cmyk, MAX_PIXELS)), (1.0, 0.0, 0.0), atol=0.02)


def test_transparent_areas_are_composited_onto_white():
    img = Image.new("RGBA", (100, 100), (255, 0, 0, 0))  # fully transparent red
    img.paste((0, 0, 255, 255), (0, 50, 100, 100))  # opaque blue bottom half
    pixels = decoded(encode(img, "PNG"), MAX_PIXELS)
    assert mean_rgb(pixels[:100]) == (1.0, 1.0, 1.0)
    assert mean_rgb(pixels[-100:]) == (0.0, 0.0, 1.0)


def test_a_palette_gif_with_a_transparent_colour_is_composited_onto_white():
    img = Image.new("P", (50, 50), 0)
    img.putpalette([0, 0, 0, 255, 0, 0])
    pixels = decoded(encode(img, "GIF", transparency=0), MAX_PIXELS)
    assert mean_rgb(pixels) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("orientation, top, bottom", [(6, (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
                                                      (8, (0.0, 0.0, 1.0), (1.0, 0.0, 0.0))])
def test_exif_orientation_is_applied(orientation, top, bottom):
    # Stored landscape, left half red, right half blue. Orientation 6 means "turn 90 degrees clockwise
    # to view", so the left (red) edge ends on top; 8 turns counter-clockwise, putting red at the bottom.
    exif = Image.Exif()
    exif[0x0112] = orientation
    jpeg = encode(left_red_right_blue(1200, 600), "JPEG", quality=95, exif=exif.tobytes())
    pixels = decoded(jpeg, MAX_PIXELS)
    assert mean_rgb(pixels[:20]) == top
    assert mean_rgb(pixels[-20:]) == bottom


def test_without_exif_orientation_the_photo_is_not_rotated():
    pixels = decoded(encode(left_red_right_blue(1200, 600), "JPEG", quality=95), MAX_PIXELS)
    assert mean_rgb(pixels[:, :20]) == (1.0, 0.0, 0.0)
    assert mean_rgb(pixels[:, -20:]) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize("size", [(192, 192), (299, 299), (256, 160)])
def test_a_photo_is_decoded_at_the_models_own_size(size):
    width, height = size
    pixels = images.decode(photos.photo_like(640, 480), MAX_PIXELS, size)
    assert (pixels.shape, pixels.dtype) == ((height, width, 3), np.uint8)


def test_a_turned_photo_fills_a_model_size_that_is_not_square():
    # Stored landscape, left red, right blue, "turn 90 degrees clockwise to view": red ends on top, and
    # the turned photo is scaled to the model's 160 wide by 256 high, not turned after scaling to it.
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encode(left_red_right_blue(1200, 600), "JPEG", quality=95, exif=exif.tobytes())
    pixels = decoded(jpeg, MAX_PIXELS, size=(160, 256))
    assert pixels.shape == (256, 160, 3)
    assert mean_rgb(pixels[:20]) == (1.0, 0.0, 0.0)
    assert mean_rgb(pixels[-20:]) == (0.0, 0.0, 1.0)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    png = encode(Image.new("I;16", (64, 64), 32768), "PNG")
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    np.testing.assert_allclose(decoded(png, MAX_PIXELS)[32, 32], (0.5, 0.5, 0.5), atol=0.01)


# -- decode: errors -------------------------------------------------------------------------


def test_a_web_page_is_not_an_image():
    assert decode_error(b"<!doctype html><html><body>Not found</body></html>").code == "not_an_image"


def test_empty_bytes_are_not_an_image():
    assert decode_error(b"").code == "not_an_image"


def test_a_truncated_jpeg_is_corrupt():
    jpeg = photos.photo_like(400, 300)
    assert decode_error(jpeg[: len(jpeg) // 2]).code == "corrupt_image"


def test_a_jpeg_missing_only_its_last_bytes_is_corrupt():
    jpeg = photos.photo_like(400, 300)
    assert decode_error(jpeg[:-100]).code == "corrupt_image"


def test_an_image_over_the_pixel_limit_is_refused_from_its_header():
    # 30000x30000 declared, ten rows of data: decoding it would fail as corrupt (and cost 900 MB),
    # so "image_too_large", quickly, shows the size was checked before any decoding.
    png = png_header_only(30_000, 30_000)
    started = time.perf_counter()
    err = decode_error(png, max_pixels=MAX_PIXELS)
    assert time.perf_counter() - started < 0.5
    assert err.code == "image_too_large"
    assert "30000x30000" in err.message


def test_an_image_exactly_at_the_pixel_limit_is_decoded():
    png = encode(Image.new("RGB", (100, 50), GREEN), "PNG")
    assert decoded(png, max_pixels=5000).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert decode_error(png, max_pixels=4999).code == "image_too_large"


# -- decode: within budget -----------------------------------------------------------------

ALL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO", "ICNS")


def ico_holding(png: bytes) -> bytes:
    """An ICO whose one entry says 256x256 and holds ``png``, whatever size that is."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def icns_holding(png: bytes) -> bytes:
    """An ICNS whose one element is 'ic09' (512x512), holding ``png``, whatever size that is."""
    element = b"ic09" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(element)) + element


def test_an_ico_is_refused_as_an_unsupported_format_before_any_decoder_runs():
    ico = encode(Image.new("RGB", (64, 64), RED), "ICO")
    err = decode_error(ico)
    assert err.code == "unsupported_format"
    assert "ICO" in err.message


def test_a_web_page_is_still_not_an_image_rather_than_an_unsupported_format():
    assert decode_error(b"<!doctype html><html><body>Sorry</body></html>").code == "not_an_image"


def test_an_ico_holding_a_huge_png_is_refused_by_pillows_check_before_the_png_is_decoded():
    # 6000x6000 declared, ten rows of data: decoded, it would fail as corrupt (and cost 36 MB)
    ico = ico_holding(png_header_only(6000, 6000))
    with pytest.raises(PhotoError) as caught:
        decoded(ico, 1_000_000, formats=ALL_FORMATS)
    assert caught.value.code == "image_too_large"
    assert "1000000" in caught.value.message


def test_an_icns_whose_header_understates_its_image_is_refused():
    # The header says 512x512 (262144 px, under the limit); the PNG inside is 1500x1500.
    icns = icns_holding(encode(Image.new("RGBA", (1500, 1500), (0, 0, 255, 255)), "PNG"))
    with pytest.raises(PhotoError) as caught:
        decoded(icns, 1_000_000, formats=ALL_FORMATS)
    assert caught.value.code == "image_too_large"
    assert decode_error(icns, 1_000_000).code == "unsupported_format"


def test_a_decode_waits_for_memory_no_longer_than_its_deadline():
    budget = DecodeBudget(10_000_000)
    budget.acquire(10_000_000, None)  # another photo is being decoded: the budget is spent
    png = encode(Image.new("RGB", (100, 100), GREEN), "PNG")
    started = time.monotonic()
    with pytest.raises(PhotoError) as caught:
        decoded(png, MAX_PIXELS, budget=budget, deadline=started + 0.2)
    assert caught.value.code == "deadline_exceeded"
    assert 0.2 <= time.monotonic() - started < 1.0
    budget.release(10_000_000)
    assert decoded(png, MAX_PIXELS, budget=budget, deadline=time.monotonic() + 0.2).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert budget.used == 0


def test_decodes_share_the_budget_and_one_bigger_than_it_runs_alone():
    budget = DecodeBudget(100)
    budget.acquire(60, None)
    waiting = threading.Thread(target=budget.acquire, args=(60, time.monotonic() + 5))
    waiting.start()
    waiting.join(0.1)
    assert waiting.is_alive() and budget.used == 60  # 60 + 60 is over 100: it waits
    budget.release(60)
    waiting.join(5)
    assert budget.used == 60
    budget.release(60)
    budget.acquire(500, time.monotonic())  # over the whole budget, but nothing else is decoding
    assert budget.used == 500


def test_a_failed_decode_keeps_no_image_alive_through_its_error():
    # A rejected photo's image was pinned by the traceback of the error kept in its result, in a
    # cycle that only a full collection frees (3.1 GB of RSS for 30 more requests).
    png = encode(Image.new("RGB", (600, 600), GREEN), "PNG")
    truncated = PhotoSource.upload("cut.png", png[: len(png) // 2])
    http = HttpFetcher(requests.Session(), 1.0, 1.0, max_bytes=10_000_000)
    reader = PhotoReader(http, http, http.max_bytes)
    gc.collect()
    gc.disable()
    try:
        before = sum(isinstance(o, Image.Image) for o in gc.get_objects())
        loaded = load(reader, Decoder(MAX_PIXELS, allowed_formats(), 10**9), truncated, lambda: SIZE)
        after = sum(isinstance(o, Image.Image) for o in gc.get_objects())
    finally:
        gc.enable()
    assert loaded.error.code == "corrupt_image"
    assert after == before
    assert loaded.error.__traceback__ is None and loaded.error.__context__ is None


# VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child of the test process would start at pytest's RSS.
DECODE_PEAK = """
import sys
from function.core.images import decode
data = open(sys.argv[1], "rb").read()
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024
base = status("VmRSS")
for _ in range(3):
    decode(data, 64_000_000, (224, 224))
print(base, status("VmHWM"), status("VmRSS"))
"""


def test_a_big_rgba_png_costs_under_ten_bytes_a_pixel_and_its_memory_goes_back(tmp_path):
    # 4000x4000 RGBA: 16 Mpx, 4 bytes a pixel decoded. Converting and compositing at full size
    # peaked at 20 bytes a pixel (320 MB); scaled down first, 8.
    path = tmp_path / "big.png"
    Image.new("RGBA", (4000, 4000), (10, 200, 30, 128)).save(path)
    out = subprocess.run([sys.executable, "-c", DECODE_PEAK, str(path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True)
    base, peak, after = map(float, out.stdout.split())
    assert peak - base < 10 * 16, f"peak {peak - base:.0f} MB over the {base:.0f} MB before"
    assert after - base < 30, f"{after - base:.0f} MB kept after three decodes"




def test_the_formats_written_out_for_the_serving_process_are_pillows_own():
    # The serving process checks PHOTO_FORMATS without importing Pillow; this keeps its table true.
    from PIL import Image

    from function.core.inputs import PILLOW_FORMATS

    Image.init()
    assert frozenset(Image.OPEN) == PILLOW_FORMATS


def test_the_serving_process_leaves_pillow_to_its_decode_workers():
    probe = """
import sys
from function.app import App
from function.config import Config
app = App(Config(model_url="/nonexistent.tflite", labels_url="/nonexistent.csv"))
print("PIL" in sys.modules)
app.stop()
"""
    import subprocess
    import sys

    from tests.support import ROOT

    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]  # Pillow lives in the decode workers
