"""Photos sent in the request: multipart forms and ``image/*`` bodies, through functions-framework's app."""

from __future__ import annotations

import io
import json

import functions_framework
import pytest

from function import app as service
from function.config import Config, ConfigError
from standin import hubmodel, photos
from tests.support import ROOT


def png(class_id: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A photo the colour model puts in ``class_id``."""
    return photos.solid(photos.class_colour(class_id), size=size, fmt="PNG")


@pytest.fixture
def make_client(env):
    """A test client of the HTTP target, built after the given environment is set."""

    def make(**settings: str):
        for name, value in settings.items():
            env.setenv(name, value)
        service.reset()
        app = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py"))
        assert service.serving().wait_until_ready(120).ready
        return app.test_client()

    return make


@pytest.fixture
def client(make_client):
    return make_client()


def top_ids(body: dict) -> list[int | None]:
    return [r["predictions"][0]["id"] if r["predictions"] else None for r in body["results"]]


def test_multipart_files_then_urls_each_in_the_order_sent(client, serve_photo):
    urls = [serve_photo(77), serve_photo(78)]
    r = client.post("/", data={"photo": [(io.BytesIO(png(300)), "heron.png"), (io.BytesIO(png(5)), "tit.png")],
                               "urls": urls})
    assert r.status_code == 200, r.get_json()
    results = r.get_json()["results"]
    assert [x.get("file") or x.get("url") for x in results] == ["heron.png", "tit.png", *urls]
    assert top_ids(r.get_json()) == [300, 5, 77, 78]
    assert results[0]["predictions"][0]["label"] == hubmodel.species_name(300)


def test_a_file_result_carries_its_name_instead_of_a_url(client):
    r = client.post("/", data={"photo": (io.BytesIO(png(12)), "wren.png")})
    result = r.get_json()["results"][0]
    assert "url" not in result and result["file"] == "wren.png"


def test_a_file_name_with_folders_keeps_only_the_name(client):
    r = client.post("/", data={"photo": (io.BytesIO(png(12)), "garden/2024/wren.png")})
    assert r.get_json()["results"][0]["file"] == "wren.png"


def test_multipart_top_k_field(client):
    r = client.post("/", data={"photo": (io.BytesIO(png(40)), "a.png"), "top_k": "5"})
    assert len(r.get_json()["results"][0]["predictions"]) == 5


def test_urls_field_may_be_one_json_array_string(client, serve_photo):
    urls = [serve_photo(21), serve_photo(22)]
    r = client.post("/", data={"urls": json.dumps(urls)}, content_type="multipart/form-data")
    assert r.status_code == 200
    assert [x["url"] for x in r.get_json()["results"]] == urls


def test_urls_field_may_hold_several_lines(client, serve_photo):
    urls = [serve_photo(23), serve_photo(24)]
    r = client.post("/", data={"urls": "\n".join(urls) + "\n"}, content_type="multipart/form-data")
    assert [x["url"] for x in r.get_json()["results"]] == urls


def test_an_empty_file_input_is_not_a_photo(client, serve_photo):
    """A browser form whose file input is left empty sends a part with no name and no bytes."""
    url = serve_photo(25)
    r = client.post("/", data={"photo": (io.BytesIO(b""), ""), "urls": url})
    assert r.status_code == 200
    assert [x.get("url") for x in r.get_json()["results"]] == [url]


def test_an_image_body_is_one_photo_named_by_the_filename_parameter(client):
    r = client.post("/?filename=robin.png&top_k=2", data=png(654), content_type="image/png")
    assert r.status_code == 200, r.get_json()
    result = r.get_json()["results"][0]
    assert result["file"] == "robin.png" and len(result["predictions"]) == 2
    assert result["predictions"][0]["id"] == 654


def test_an_image_body_named_by_content_disposition(client):
    r = client.post("/", data=png(9), content_type="image/jpeg",
                    headers={"Content-Disposition": 'inline; filename="finch.png"'})
    assert r.get_json()["results"][0]["file"] == "finch.png"


def test_an_image_body_without_a_name_is_called_upload(client):
    r = client.post("/", data=png(9), content_type="image/png")
    assert r.get_json()["results"][0]["file"] == "upload"


def test_an_image_body_that_is_not_an_image_is_that_photos_error(client):
    r = client.post("/", data=b"hello", content_type="image/jpeg")
    assert r.status_code == 200
    assert r.get_json()["results"][0]["error"]["code"] == "not_an_image"


def test_a_photo_over_max_photo_bytes_is_its_own_error_beside_the_others(make_client):
    client = make_client(MAX_PHOTO_BYTES="20000")
    big = png(30, size=(400, 400)) + b"\0" * 20000
    r = client.post("/", data={"photo": [(io.BytesIO(big), "big.png"), (io.BytesIO(png(31)), "small.png")]})
    assert r.status_code == 200
    big_result, small_result = r.get_json()["results"]
    assert big_result["error"]["code"] == "too_large" and str(len(big)) in big_result["error"]["message"]
    assert small_result["predictions"][0]["id"] == 31


class CountingStream(io.BytesIO):
    """A request body that counts what the server read of it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.consumed = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.consumed += len(chunk)
        return chunk

    def readline(self, size: int | None = -1) -> bytes:
        chunk = super().readline(size)
        self.consumed += len(chunk)
        return chunk


def test_an_upload_over_max_upload_bytes_is_413_without_being_read(make_client):
    client = make_client(MAX_UPLOAD_BYTES="50000")
    body = CountingStream(b"\xff" * 200_000)
    r = client.post("/", input_stream=body, content_type="image/jpeg", content_length=200_000)
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "body_too_large"
    assert body.consumed == 0


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=b", "image/jpeg"])
def test_a_chunked_upload_is_cut_off_at_max_upload_bytes(make_client, content_type):
    """No Content-Length (chunked): the body is read up to the limit, then refused."""
    client = make_client(MAX_UPLOAD_BYTES="50000")
    body = CountingStream(b"--b\r\n" + b"x" * 300_000)
    r = client.post("/", input_stream=body, content_type=content_type,
                    environ_overrides={"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "body_too_large"
    assert body.consumed < 100_000


def test_a_json_body_refused_as_too_large_is_left_unread(client):
    """functions-framework reads every request body after a response, unless it is streamed."""
    body = CountingStream(b"{" + b" " * 3_000_000 + b"}")
    r = client.post("/", input_stream=body, content_type="application/json")
    assert r.status_code == 413 and body.consumed == 0


def test_a_huge_multipart_body_is_413(make_client):
    client = make_client(MAX_UPLOAD_BYTES="50000")
    r = client.post("/", data={"photo": (io.BytesIO(b"\0" * 60000), "a.png")})
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "body_too_large"


def test_too_many_photos_is_400(make_client):
    client = make_client(MAX_URLS="2")
    r = client.post("/", data={"photo": [(io.BytesIO(png(1)), "a.png"), (io.BytesIO(png(2)), "b.png")],
                               "urls": "http://a/x.jpg"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "too_many_photos"


@pytest.mark.parametrize("data, code", [
    ({}, "missing_photos"),
    ({"top_k": "3"}, "missing_photos"),
    ({"photo": "bird.jpg"}, "invalid_photo"),
    ({"image": (io.BytesIO(b"x"), "a.png")}, "unknown_field"),
    ({"urls": "http://a/x.jpg", "colour": "red"}, "unknown_field"),
    ({"urls": "[1, 2]"}, "invalid_urls"),
    ({"urls": "[not json"}, "invalid_urls"),
    ({"urls": "http://a/x.jpg", "top_k": "0"}, "invalid_top_k"),
    ({"urls": "http://a/x.jpg", "top_k": ["2", "3"]}, "invalid_top_k"),
])
def test_a_malformed_form_gets_400_saying_what_to_fix(client, data, code):
    r = client.post("/", data=data, content_type="multipart/form-data")
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["code"] == code and r.get_json()["error"]["message"]


def test_multipart_without_a_boundary_is_400(client):
    r = client.post("/", data=b"whatever", content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_multipart"


def test_a_truncated_multipart_body_is_400(client):
    body = b'--b\r\nContent-Disposition: form-data; name="urls"\r\n\r\nhttp://a/x.jpg'
    r = client.post("/", data=body, content_type="multipart/form-data; boundary=b")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_multipart"


def test_other_form_encodings_are_still_415(client):
    r = client.post("/", data="urls=x", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415 and "multipart/form-data" in r.get_json()["error"]["message"]


def test_max_upload_bytes_must_be_positive():
    with pytest.raises(ConfigError, match="MAX_UPLOAD_BYTES"):
        Config.from_env({"MAX_UPLOAD_BYTES": "0"})


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=b"])
def test_a_malformed_chunked_upload_past_the_limit_is_still_a_4xx(make_client, content_type):
    """Refused before its end, the rest of the body is not read (reading it would pass the limit)."""
    client = make_client(MAX_UPLOAD_BYTES="50000")
    body = CountingStream(b"--x\r\n" + b"x" * 300_000)
    r = client.post("/", input_stream=body, content_type=content_type,
                    environ_overrides={"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    assert r.status_code in (400, 413) and r.get_json()["error"]["code"] in ("invalid_multipart", "body_too_large")
    assert body.consumed < 100_000
