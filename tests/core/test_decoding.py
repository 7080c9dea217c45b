"""Decoding in worker processes (function/core/decoding.py): each photo within its memory charge and
its CPU budget, stopped there, the other photos and requests unharmed."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from function.core import images
from function.core.decoding import Decoder
from function.errors import PhotoError
from harness import Sampler, status_kb, tree
from standin import costly, hostile, photos
from tests.support import ROOT

MAX_PIXELS = 64_000_000
FORMATS = images.allowed_formats()
# ~9 s of CPU (250 refinement scans of a 7999x7999 4:4:4 JPEG, 405 KB), under MAX_JPEG_SCANS
SLOW_JPEG = costly.jpeg(7999, 7999, repeats=250, refine=True)
BIG_JPEG = costly.jpeg(7999, 7999)  # progressive: 384 MB of coefficients, ~0.4 s of CPU


@pytest.fixture
def decoder():
    refusals: list[str] = []
    d = Decoder(MAX_PIXELS, FORMATS, 1_000_000_000, workers=2, cpu_s=1.0, on_refusal=refusals.append)
    d.refusals = refusals
    yield d
    d.close()


SIZE = (224, 224)  # (width, height): the birds model's input size


def later(seconds: float = 60.0) -> float:
    return time.monotonic() + seconds


def error_of(decoder: Decoder, data: bytes, deadline: float | None = None) -> PhotoError:
    with pytest.raises(PhotoError) as caught:
        decoder.decode(data, SIZE, deadline or later())
    return caught.value


def workers_of(decoder: Decoder) -> list[int]:
    pool = decoder._pool
    with pool._cond:
        return [w.pid for w in pool._idle]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("data", [photos.photo_like(640, 480), hostile.cmyk_jpeg(), hostile.png_16bit(),
                                  hostile.animated_gif(), hostile.rgba_png(), hostile.exif_rotated_jpeg(),
                                  hostile.solid(250, "WEBP"), hostile.solid(7, "BMP"), hostile.solid(8, "TIFF")],
                         ids=["jpeg", "cmyk", "png16", "gif", "rgba", "exif", "webp", "bmp", "tiff"])
def test_a_worker_decodes_every_format_as_the_caller_s_thread_does(decoder, data):
    np.testing.assert_array_equal(decoder.decode(data, SIZE, later()), images.decode(data, MAX_PIXELS, SIZE))


def test_a_worker_gives_the_same_errors(decoder):
    assert error_of(decoder, hostile.HTML).code == "not_an_image"
    assert error_of(decoder, hostile.truncated_jpeg()).code == "corrupt_image"
    assert error_of(decoder, hostile.png_bomb()).code == "image_too_large"
    assert error_of(decoder, hostile.ico_bomb()).code == "unsupported_format"


def test_a_decode_past_its_cpu_budget_is_stopped_and_its_core_freed(decoder):
    started = time.monotonic()
    err = error_of(decoder, SLOW_JPEG)
    assert err.code == "decode_too_costly"
    assert "CPU" in err.message and "DECODE_CPU_S" in err.message
    assert time.monotonic() - started < 4.0  # 1 s of CPU; far from the ~9 s the decode would take
    assert decoder.refusals == ["cpu"]


def test_the_killed_worker_is_gone_and_replaced(decoder):
    decoder.decode(photos.photo_like(64, 64), SIZE, later())
    before = set(workers_of(decoder))
    error_of(decoder, SLOW_JPEG)
    deadline = time.monotonic() + 5
    while len(workers_of(decoder)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = set(workers_of(decoder))
    assert len(after) == 2 and after != before
    assert all(alive(pid) for pid in after)
    assert not all(alive(pid) for pid in before)
    assert decoder.decode(photos.photo_like(64, 64), SIZE, later()).shape == (224, 224, 3)


def test_a_decode_still_running_at_its_request_s_deadline_is_stopped(decoder):
    slow = Decoder(MAX_PIXELS, FORMATS, 1_000_000_000, workers=1, cpu_s=30.0)
    try:
        started = time.monotonic()
        err = error_of(slow, SLOW_JPEG, deadline=started + 0.5)
        assert err.code == "decode_too_costly" and "deadline" in err.message
        assert time.monotonic() - started < 2.0
    finally:
        slow.close()


def test_a_photo_charged_more_than_the_whole_budget_is_refused_before_it_is_decoded():
    small = Decoder(MAX_PIXELS, FORMATS, 200_000_000, workers=1)
    try:
        started = time.monotonic()
        err = error_of(small, BIG_JPEG)
        assert err.code == "decode_too_costly" and "DECODE_MEMORY_MB" in err.message
        assert time.monotonic() - started < 1.0
    finally:
        small.close()


def tree_rss(pid: int) -> int:
    """VmRSS of the process and its descendants (every thread's children), bytes."""
    return sum(status_kb(p, "VmRSS") for p in tree(pid)) * 1024


def test_decodes_together_stay_within_the_shared_budget_and_each_is_decoded():
    budget = 500_000_000  # one 7999x7999 progressive JPEG (~405 MB charged) at a time
    shared = Decoder(MAX_PIXELS, FORMATS, budget, workers=3)
    try:
        shared.decode(photos.photo_like(64, 64), SIZE, later())
        pid = shared._pool.server._proc.pid
        base = tree_rss(pid)
        sampler = Sampler(lambda: {"rss": tree_rss(pid)}, period_s=0.02)
        sampler.start()
        try:
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda _: shared.decode(BIG_JPEG, SIZE, later()), range(4)))
        finally:
            grew = sampler.stop()["rss"] - base
        assert all(r.shape == (224, 224, 3) for r in results)
        assert grew <= budget, f"the workers grew by {grew / 1e6:.0f} MB"
        assert grew > 300_000_000  # the sampler did see a decode
    finally:
        shared.close()


def test_a_request_of_costly_photos_leaves_a_worker_to_another_request(decoder):
    small = photos.photo_like(640, 480)
    decoder.decode(small, SIZE, later())
    with ThreadPoolExecutor(6) as pool:
        costly_share = object()
        attack = [pool.submit(decoder.decode, SLOW_JPEG, SIZE, later(), costly_share) for _ in range(3)]
        time.sleep(0.3)  # the attack's photos hold the heavy turns
        started = time.monotonic()
        assert decoder.decode(small, SIZE, later(), object()).shape == (224, 224, 3)
        elapsed = time.monotonic() - started
        codes = [f.exception().code for f in attack]
    assert elapsed < 0.5, f"a small photo of another request took {elapsed:.2f} s"
    assert codes == ["decode_too_costly"] * 3


def test_requests_take_turns_for_the_workers():
    one = Decoder(MAX_PIXELS, FORMATS, 1_000_000_000, workers=1, cpu_s=0.3)
    order: list[str] = []
    try:
        one.decode(photos.photo_like(64, 64), SIZE, later())
        with ThreadPoolExecutor(8) as pool:
            first, second = object(), object()
            jobs = [pool.submit(one.decode, SLOW_JPEG, SIZE, later(), first) for _ in range(4)]
            time.sleep(0.2)
            late = pool.submit(one.decode, photos.photo_like(64, 64), SIZE, later(), second)
            late.add_done_callback(lambda _: order.append("second"))
            for j in jobs:
                j.add_done_callback(lambda _: order.append("first"))
            late.result(30)
            for j in jobs:
                j.exception(30)
    finally:
        one.close()
    assert order.index("second") <= 2, order  # served after the decode under way, not after the queue


# The address-space limit is the charge: a decode that needs more fails, and the worker survives.
LIMITED = """
from function.core import images, workers
data = open(__import__("sys").argv[1], "rb").read()
img, cost = images.prepare(data, 64_000_000, (224, 224), images.allowed_formats(), 256)
workers._limit_memory(cost // 4)
result = images.render(img, 64_000_000, (224, 224))
workers._limit_memory(None)
print(result.code, result.message.split(";")[0])
"""


def test_an_allocation_past_the_charge_fails_that_photo_as_too_costly(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(costly.png(4000, 4000))
    out = subprocess.run([sys.executable, "-c", LIMITED, str(path)], capture_output=True, text=True, cwd=ROOT,
                         timeout=60, check=True)
    assert out.stdout.startswith("decode_too_costly")


def test_the_same_worker_decodes_each_photo_at_the_size_it_is_asked_for(decoder):
    # The workers start before the model loads: the size comes with each photo, not with the worker.
    data = photos.photo_like(640, 480)
    for size in [(192, 192), (224, 224), (299, 160)]:
        pixels = decoder.decode(data, size, later())
        np.testing.assert_array_equal(pixels, images.decode(data, MAX_PIXELS, size))
        assert pixels.shape == (size[1], size[0], 3)
