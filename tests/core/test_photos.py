"""A photo end to end: its source, read and decoded without raising (function/core/photos.py)."""

from __future__ import annotations

import pytest
import requests

from function.core.decoding import Decoder
from function.core.inputs import allowed_formats
from function.core.photos import PhotoReader
from function.core.photos import load as load_photo
from function.core.sources import PhotoSource
from function.infra.fetch import HttpFetcher
from standin import photos

MAX_PIXELS = 64_000_000
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
URL = "https://photos.example.org/robin.jpg"


SIZE = 224  # the birds model's input size


@pytest.fixture
def fetcher() -> PhotoReader:
    http = HttpFetcher(requests.Session(), connect_timeout_s=2.0, read_timeout_s=7.0, max_bytes=100_000)
    return PhotoReader(http, http, 100_000)


def load(reader: PhotoReader, source: PhotoSource, max_pixels: int):
    return load_photo(reader, Decoder(max_pixels, allowed_formats(), 10**9), source, lambda: (SIZE, SIZE))


# -- photo sources --------------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["https://photos.example.org/robin.jpg", "http://127.0.0.1:8000/a.png",
                                 "HTTPS://PHOTOS.EXAMPLE.ORG/robin.jpg"])
def test_an_http_argument_is_a_url(arg):
    assert PhotoSource.from_argument(arg) == PhotoSource(arg, "url")


@pytest.mark.parametrize("arg", ["robin.jpg", "photos/robin.jpg", "/home/me/robin.jpg", "./http:robin.jpg",
                                 r"C:\photos\robin.jpg"])
def test_any_other_argument_is_a_local_path(arg):
    assert PhotoSource.from_argument(arg) == PhotoSource(arg, "path")


# -- load: fetch and decode without raising -------------------------------------------------


def test_load_gives_pixels_and_timings_for_a_good_photo(fetcher, requests_mock):
    jpeg = photos.solid(BLUE)
    requests_mock.get(URL, content=jpeg)
    loaded = load(fetcher, PhotoSource.url(URL), MAX_PIXELS)
    assert loaded.error is None
    assert loaded.pixels.shape == (SIZE, SIZE, 3)
    assert loaded.nbytes == len(jpeg)
    assert loaded.fetch_ms >= 0 and loaded.decode_ms > 0


def test_load_returns_a_fetch_error_instead_of_raising(fetcher, requests_mock):
    requests_mock.get(URL, status_code=404)
    loaded = load(fetcher, PhotoSource.url(URL), MAX_PIXELS)
    assert loaded.pixels is None
    assert loaded.error.code == "http_error"
    assert loaded.nbytes == 0


def test_load_returns_a_decode_error_instead_of_raising(fetcher):
    loaded = load(fetcher, PhotoSource.upload("page.html", b"<html></html>"), MAX_PIXELS)
    assert loaded.pixels is None
    assert loaded.error.code == "not_an_image"
    assert loaded.nbytes == 13


def test_load_returns_a_file_error_instead_of_raising(fetcher, tmp_path):
    (tmp_path / "robin.jpg").write_bytes(b"x")
    loaded = load(fetcher, PhotoSource.path(str(tmp_path / "robin.jpg" / "x")), MAX_PIXELS)
    assert loaded.error.code == "file_not_found"
