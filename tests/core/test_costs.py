"""The cost model (function/core/costs.py): what a photo's header says its decode will hold."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from function.core import costs, images
from function.errors import PhotoError
from standin import costly
from tests.support import ROOT

MAX_PIXELS = 64_000_000
FORMATS = images.allowed_formats()
MIB = 1024 * 1024


def charge(data: bytes, max_scans: int = images.MAX_JPEG_SCANS) -> int:
    opened = images.prepare(data, MAX_PIXELS, (224, 224), FORMATS, max_scans)
    assert not isinstance(opened, PhotoError), opened
    img, cost = opened
    img.close()
    return cost


@pytest.mark.parametrize("sampling, blocks", [
    ([(1, 1)] * 3, 3 * 1000 * 1000),  # 4:4:4: three full-size components
    ([(2, 2), (1, 1), (1, 1)], 1000 * 1000 + 2 * 500 * 500),  # 4:2:0
    ([(2, 1), (1, 1), (1, 1)], 1000 * 1000 + 2 * 500 * 1000),  # 4:2:2
    ([(1, 1)], 1000 * 1000),  # grayscale
    ([(1, 1)] * 4, 4 * 1000 * 1000),  # CMYK / YCCK
])
def test_a_progressive_jpeg_is_charged_its_whole_coefficient_buffer(sampling, blocks):
    layout = costs.jpeg_layout(costly.jpeg(7999, 7999, components=len(sampling), sampling=sampling), 256)
    assert isinstance(layout, costs.JpegLayout) and layout.full_buffer
    assert layout.coefficient_bytes() == blocks * 128


def test_a_progressive_jpeg_costs_its_full_size_though_decoded_at_an_eighth():
    cost = charge(costly.jpeg(7999, 7999))
    assert cost > 384_000_000  # 3 x 1000 x 1000 blocks x 128 B, not the 1 Mpx it is decoded at


@pytest.mark.parametrize("kind", ["multi-scan", "arithmetic progressive"])
def test_other_jpegs_that_buffer_the_whole_image_are_charged_for_it(kind):
    data = (costly.jpeg(7999, 7999, progressive=False, multi_scan=True) if kind == "multi-scan"
            else costly.jpeg(7999, 7999, arithmetic=True))
    assert charge(data) > 384_000_000


@pytest.mark.parametrize("arithmetic", [False, True])
def test_a_baseline_jpeg_is_charged_only_its_scaled_output(arithmetic):
    assert charge(costly.jpeg(7999, 7999, progressive=False, arithmetic=arithmetic)) < 40_000_000


def test_a_jpeg_with_more_scans_than_the_limit_is_refused_without_decoding():
    data = costly.jpeg(2000, 2000, repeats=20_000)  # 20003 scans: ~5.6 s of CPU if decoded
    started = time.process_time()
    with pytest.raises(PhotoError) as caught:
        images.decode(data, MAX_PIXELS, (224, 224))
    assert time.process_time() - started < 0.5
    assert caught.value.code == "decode_too_costly"
    assert costs.reason_of(caught.value) == "scans"
    assert "256" in caught.value.message


def test_an_animation_canvas_is_charged_not_its_first_frame():
    assert charge(costly.webp(4000, 4000, 10)) > 16_000_000 * 16
    assert charge(costly.gif(4000, 4000, 10)) > 16_000_000 * 5


def test_a_webp_canvas_is_charged_before_opening_it():
    cost = costs.opening_cost(costly.webp(4000, 3000, 10), MAX_PIXELS)
    assert isinstance(cost, int) and cost > 12_000_000 * 16
    assert costs.opening_cost(costly.png(100, 100), MAX_PIXELS) is None


# Peak VmHWM over VmRSS before, in a fresh process (VmHWM, not ru_maxrss: ru_maxrss survives exec).
PEAK = """
import sys
from function.core import images
data = open(sys.argv[1], "rb").read()
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) * 1024
img, cost = images.prepare(data, 64_000_000, (224, 224), images.allowed_formats(), 256)
img.close()
base = status("VmRSS")
images.decode(data, 64_000_000, (224, 224))
print(cost, status("VmHWM") - base + len(data))
"""


@pytest.mark.parametrize("name, build", [
    ("progressive-4:4:4", lambda: costly.jpeg(4000, 4000)),
    ("progressive-cmyk", lambda: costly.jpeg(4000, 4000, components=4)),
    ("arithmetic-progressive-4:2:0",
     lambda: costly.jpeg(4000, 4000, arithmetic=True, sampling=[(2, 2), (1, 1), (1, 1)])),
    ("multi-scan-baseline", lambda: costly.jpeg(4000, 4000, progressive=False, multi_scan=True)),
    ("rgba-png", lambda: costly.png(3000, 3000)),
    ("16-bit-grey-png", lambda: costly.png(2000, 2000, 0, 16)),
    ("palette-png", lambda: costly.png(3000, 3000, 3)),
    ("gif-canvas", lambda: costly.gif(4000, 4000, 100)),
    ("apng-canvas", lambda: costly.apng(3000, 3000, 100)),
    ("webp-canvas", lambda: costly.webp(3000, 3000, 100)),
])
def test_the_charge_covers_the_measured_peak_and_is_not_far_above_it(name, build, tmp_path):
    path = tmp_path / name
    path.write_bytes(build())
    out = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, check=True)
    charged, peak = map(int, out.stdout.split())
    assert peak <= charged, f"{name}: peak {peak / MIB:.0f} MiB over the {charged / MIB:.0f} MiB charged"
    assert charged <= 1.6 * peak + 24 * MIB, f"{name}: charged {charged / MIB:.0f} MiB for a {peak / MIB:.0f} MiB peak"
