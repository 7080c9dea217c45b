"""Fetching photo bytes: URLs (limits, encodings, deadlines), local files and uploads (function/infra/fetch.py,
and the reader that picks the fetcher, function/core/photos.py)."""

from __future__ import annotations

import gzip
import io
import socket
import time

import pytest
import requests

from function.core.photos import PhotoReader
from function.core.sources import PhotoSource
from function.errors import PhotoError
from function.infra.deadlines import Deadlines
from function.infra.fetch import HttpFetcher, _Watch
from standin import photos

MAX_PIXELS = 64_000_000
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
URL = "https://photos.example.org/robin.jpg"


@pytest.fixture
def fetcher() -> PhotoReader:
    return reader(HttpFetcher(requests.Session(), connect_timeout_s=2.0, read_timeout_s=7.0, max_bytes=100_000))


def reader(http: HttpFetcher) -> PhotoReader:
    return PhotoReader(http, http, http.max_bytes)


class CountingBody(io.BytesIO):
    """A response body that remembers how many bytes were read from it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size=-1):
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk

    def read1(self, size=-1):  # what the fetcher reads with, as from a socket stream
        return self.read(size)


def fetch_error(fetcher: PhotoReader, source: PhotoSource) -> PhotoError:
    with pytest.raises(PhotoError) as caught:
        fetcher.read(source)
    return caught.value



# -- fetching URLs --------------------------------------------------------------------------


def test_a_url_answering_200_gives_its_bytes(fetcher, requests_mock):
    jpeg = photos.solid(RED)
    requests_mock.get(URL, content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert fetcher.read(PhotoSource.url(URL)) == jpeg


def test_the_connect_and_read_timeouts_are_sent_with_the_request(fetcher, requests_mock):
    requests_mock.get(URL, content=b"x")
    fetcher.read(PhotoSource.url(URL))
    assert requests_mock.last_request.timeout == (2.0, 7.0)


def test_404_is_an_http_error_not_worth_retrying(fetcher, requests_mock):
    requests_mock.get(URL, status_code=404, text="no such photo")
    err = fetch_error(fetcher, PhotoSource.url(URL))
    assert (err.code, err.retryable) == ("http_error", False)
    assert "404" in err.message


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_overload_and_gateway_errors_are_retryable(fetcher, requests_mock, status):
    requests_mock.get(URL, status_code=status)
    err = fetch_error(fetcher, PhotoSource.url(URL))
    assert (err.code, err.retryable) == ("http_error", True)


@pytest.mark.parametrize("exc", [requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout])
def test_timeouts_are_reported_as_timeout(fetcher, requests_mock, exc):
    requests_mock.get(URL, exc=exc)
    err = fetch_error(fetcher, PhotoSource.url(URL))
    assert (err.code, err.retryable) == ("timeout", True)


def test_a_host_that_stalls_in_the_middle_of_the_body_is_a_timeout(fetcher, requests_mock):
    class Stalls(io.RawIOBase):
        def __init__(self):
            self.sent = False

        def readable(self):
            return True

        def read(self, size=-1):
            if not self.sent:
                self.sent = True
                return b"\xff\xd8\xff" * 100
            raise TimeoutError("timed out")  # what the socket raises when the read timeout passes

        read1 = read  # a socket stream's read1: what one receive brings

    requests_mock.get(URL, body=Stalls())
    err = fetch_error(fetcher, PhotoSource.url(URL))
    assert (err.code, err.retryable) == ("timeout", True)


def test_a_connection_failure_is_fetch_failed(fetcher, requests_mock):
    requests_mock.get(URL, exc=requests.exceptions.ConnectionError("Connection refused"))
    err = fetch_error(fetcher, PhotoSource.url(URL))
    assert (err.code, err.retryable) == ("fetch_failed", True)
    assert "Connection refused" in err.message


def test_a_declared_length_over_the_limit_is_refused_before_reading(fetcher, requests_mock):
    body = CountingBody(b"x" * 200_000)
    requests_mock.get(URL, body=body, headers={"Content-Length": "200000"})
    assert fetch_error(fetcher, PhotoSource.url(URL)).code == "too_large"
    assert body.bytes_read == 0


def test_a_body_streaming_past_the_limit_is_refused_without_reading_it_all(fetcher, requests_mock):
    body = CountingBody(b"x" * 5_000_000)  # no Content-Length: only counting the bytes can tell
    requests_mock.get(URL, body=body)
    assert fetch_error(fetcher, PhotoSource.url(URL)).code == "too_large"
    assert body.bytes_read < 1_000_000


def test_a_body_exactly_at_the_limit_is_accepted(fetcher, requests_mock):
    requests_mock.get(URL, content=b"x" * 100_000)
    assert len(fetcher.read(PhotoSource.url(URL))) == 100_000


def test_an_empty_body_is_empty(fetcher, requests_mock):
    requests_mock.get(URL, content=b"")
    assert fetch_error(fetcher, PhotoSource.url(URL)).code == "empty"


def test_photos_are_asked_for_uncompressed_so_the_limit_counts_bytes_on_the_wire(fetcher, requests_mock):
    requests_mock.get(URL, content=b"x")
    fetcher.read(PhotoSource.url(URL))
    assert requests_mock.last_request.headers["Accept-Encoding"] == "identity"


def test_a_host_that_compresses_anyway_is_decompressed(fetcher, requests_mock):
    jpeg = photos.solid(RED)
    requests_mock.get(URL, content=gzip.compress(jpeg), headers={"Content-Encoding": "gzip"})
    assert fetcher.read(PhotoSource.url(URL)) == jpeg


def test_a_compressed_body_is_decompressed_only_up_to_the_limit(fetcher, requests_mock):
    bomb = gzip.compress(b"\0" * 50_000_000)  # 50 KB on the wire
    requests_mock.get(URL, content=bomb, headers={"Content-Encoding": "gzip"})
    started = time.perf_counter()
    assert fetch_error(fetcher, PhotoSource.url(URL)).code == "too_large"
    assert time.perf_counter() - started < 0.5


def test_an_encoding_the_service_did_not_ask_for_is_fetch_failed(fetcher, requests_mock):
    requests_mock.get(URL, content=b"\x1b\x00", headers={"Content-Encoding": "br"})
    err = fetch_error(fetcher, PhotoSource.url(URL))
    assert err.code == "fetch_failed" and "br" in err.message


@pytest.mark.parametrize("url", ["ftp://photos.example.org/robin.jpg", "file:///etc/passwd", "http:///robin.jpg",
                                 "robin.jpg"])
def test_anything_but_an_http_url_with_a_host_is_an_invalid_url(fetcher, requests_mock, url):
    assert fetch_error(fetcher, PhotoSource.url(url)).code == "invalid_url"
    assert requests_mock.call_count == 0


def test_the_deadline_wakes_a_blocked_read_at_the_deadline_even_on_a_connection_made_late():
    class Conn:
        sock = None

    deadlines = Deadlines()
    ours, theirs = socket.socketpair()
    try:
        watch = _Watch()
        deadlines.arm(0.1, watch.fire)
        conn = Conn()
        watch.attach(conn)
        time.sleep(0.2)  # the deadline passes while "connecting": no socket to shut yet
        conn.sock = ours
        started = time.monotonic()
        assert ours.recv(1) == b""  # blocks until the deadline's next look shuts the socket down
        assert time.monotonic() - started < 1.0
        assert watch.fired
    finally:
        deadlines.stop()
        ours.close()
        theirs.close()


# -- local files and uploads ----------------------------------------------------------------


def test_a_local_file_gives_its_bytes(fetcher, tmp_path):
    path = tmp_path / "robin.png"
    path.write_bytes(b"\x89PNG fake")
    assert fetcher.read(PhotoSource.path(str(path))) == b"\x89PNG fake"


def test_a_missing_file_is_file_not_found(fetcher, tmp_path):
    err = fetch_error(fetcher, PhotoSource.path(str(tmp_path / "nope.jpg")))
    assert err.code == "file_not_found"
    assert "nope.jpg" in err.message


def test_a_directory_is_not_a_photo(fetcher, tmp_path):
    err = fetch_error(fetcher, PhotoSource.path(str(tmp_path)))
    assert err.code == "file_not_found"
    assert "directory" in err.message


def test_a_directory_is_not_a_photo_even_under_a_tiny_byte_limit(tmp_path):
    tiny = reader(HttpFetcher(requests.Session(), 1.0, 1.0, max_bytes=10))
    assert fetch_error(tiny, PhotoSource.path(str(tmp_path))).code == "file_not_found"


def test_a_path_through_a_regular_file_is_file_not_found(fetcher, tmp_path):
    (tmp_path / "robin.jpg").write_bytes(b"x")
    assert fetch_error(fetcher, PhotoSource.path(str(tmp_path / "robin.jpg" / "more.jpg"))).code == "file_not_found"


def test_an_unusable_path_is_a_photo_error(fetcher):
    assert fetch_error(fetcher, PhotoSource.path("x" * 5000)).code == "file_unreadable"


def test_a_file_over_the_limit_is_too_large(fetcher, tmp_path):
    path = tmp_path / "huge.jpg"
    path.write_bytes(b"x" * 100_001)
    assert fetch_error(fetcher, PhotoSource.path(str(path))).code == "too_large"


def test_an_empty_file_is_empty(fetcher, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert fetch_error(fetcher, PhotoSource.path(str(tmp_path / "empty.jpg"))).code == "empty"


def test_uploaded_bytes_are_used_as_they_are(fetcher):
    assert fetcher.read(PhotoSource.upload("robin.jpg", b"\xff\xd8 data")) == b"\xff\xd8 data"


def test_an_upload_over_the_limit_is_too_large(fetcher):
    assert fetch_error(fetcher, PhotoSource.upload("big.jpg", b"x" * 100_001)).code == "too_large"


