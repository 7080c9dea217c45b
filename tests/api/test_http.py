"""The HTTP target through functions-framework's own app, as a client sees it."""

from __future__ import annotations

import threading
import time

import functions_framework
import pytest

from function import app as service
from tests.support import MODEL_PATH, ROOT


@pytest.fixture
def client(env):
    app = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py"))
    return app.test_client()


@pytest.fixture
def warm_client(client):
    assert service.serving().wait_until_ready(120).ready
    return client


def test_post_urls_returns_results_in_request_order(warm_client, serve_photo):
    urls = [serve_photo(300), serve_photo(5), serve_photo(77)]
    r = warm_client.post("/", json={"urls": urls, "top_k": 2})
    assert r.status_code == 200
    body = r.get_json()
    assert [x["url"] for x in body["results"]] == urls
    assert [x["predictions"][0]["id"] for x in body["results"]] == [300, 5, 77]
    assert all(len(x["predictions"]) == 2 and x["error"] is None for x in body["results"])
    assert set(body["results"][0]["predictions"][0]) == {"id", "label", "score"}  # no COMMON_NAMES_URL
    assert all(x["recognised"] is True for x in body["results"])
    assert body["timings_ms"]["total"] > 0


def test_the_service_serves_on_litert_by_default_and_readyz_says_so(warm_client, serve_photo):
    r = warm_client.get("/readyz")
    assert r.status_code == 200
    model = r.get_json()["model"]
    assert {k: model[k] for k in ("state", "error", "runtime")} == {"state": "ready", "error": None,
                                                                 "runtime": "litert"}
    # The float module without metadata: [0,1] pixels at its signature's 224x224, as TF Hub documents it.
    assert model["contract"]["input"] == {"height": 224, "width": 224, "dtype": "float32", "mean": [0.0],
                                          "std": [255.0], "normalization": "[0,1] (float input, no metadata)",
                                          "raw_pixels": False}
    r = warm_client.post("/", json={"urls": [serve_photo(618)], "top_k": 1})
    assert r.get_json()["results"][0]["predictions"][0]["id"] == 618


def test_get_with_url_parameters(warm_client, serve_photo):
    r = warm_client.get("/", query_string=[("url", serve_photo(42)), ("url", serve_photo(43)), ("top_k", "1")])
    assert r.status_code == 200
    assert [x["predictions"][0]["id"] for x in r.get_json()["results"]] == [42, 43]


def test_one_url_goes_in_url_as_a_string(warm_client, serve_photo):
    r = warm_client.post("/", json={"url": serve_photo(61), "top_k": 1})
    assert r.status_code == 200 and r.get_json()["results"][0]["predictions"][0]["id"] == 61


def test_top_k_defaults_to_three(warm_client, serve_photo):
    r = warm_client.post("/", json={"urls": [serve_photo(8)]})
    assert len(r.get_json()["results"][0]["predictions"]) == 3


def test_a_failed_photo_is_an_error_beside_the_others(warm_client, server, serve_photo):
    urls = [serve_photo(11), server.url("/nope.jpg")]
    body = warm_client.post("/", json={"urls": urls}).get_json()
    assert body["results"][0]["predictions"][0]["id"] == 11
    assert body["results"][1]["predictions"] == []
    assert body["results"][1]["error"]["code"] == "http_error"
    assert "404" in body["results"][1]["error"]["message"]


@pytest.mark.parametrize("body, code", [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b"{}", "missing_urls"),
    (b'{"urls": []}', "missing_urls"),
    (b'{"urls": "x", "url": "y"}', "invalid_urls"),
    (b'{"urls": [1]}', "invalid_urls"),
    (b'{"urls": {"a": 1}}', "invalid_urls"),
    (b'{"urls": "https://a/x.jpg"}', "invalid_urls"),  # the contract says an array
    (b'{"url": ["https://a/x.jpg"]}', "invalid_urls"),  # and url is one string
    (b'{"urls": ["http://a/x.jpg"], "top_k": 0}', "invalid_top_k"),
    (b'{"urls": ["http://a/x.jpg"], "top_k": -1}', "invalid_top_k"),
    (b'{"urls": ["http://a/x.jpg"], "top_k": "three"}', "invalid_top_k"),
    (b'{"urls": ["http://a/x.jpg"], "top_k": true}', "invalid_top_k"),
    (b'{"urls": ["http://a/x.jpg"], "top_k": 2.5}', "invalid_top_k"),
    (b'{"urls": ["http://a/x.jpg"], "top_k": 10000}', "invalid_top_k"),
    (b'{"urls": ["http://a/x.jpg"], "topk": 3}', "unknown_field"),
])
def test_a_malformed_request_gets_400_saying_what_to_fix(client, body, code):
    r = client.post("/", data=body, content_type="application/json")
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["code"] == code and err["message"]


def test_too_many_urls_is_refused(client, env):
    r = client.post("/", json={"urls": ["http://a/x.jpg"] * (service.serving().config.max_urls + 1)})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "too_many_urls"


def test_get_without_url_asking_for_json_is_400(client):
    """A browser gets the web page instead (tests/test_page.py)."""
    r = client.get("/", headers={"Accept": "application/json"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "missing_urls"


def test_unknown_path_is_404_json(client):
    r = client.get("/nothing-here")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"


def test_wrong_method_is_405(client):
    r = client.delete("/")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"


def test_wrong_content_type_is_415(client):
    r = client.post("/", data="urls=x", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415


def test_healthz_answers_while_the_process_serves(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json()["status"] == "ok"


def test_timings_travel_in_server_timing_and_request_id(warm_client, serve_photo):
    r = warm_client.post("/", json={"urls": [serve_photo(3)]}, headers={"X-Request-Id": "abc123"})
    assert r.headers["X-Request-Id"] == "abc123"
    timing = dict(part.strip().split(";dur=") for part in r.headers["Server-Timing"].split(","))
    assert {"fetch", "decode", "inference", "total"} <= set(timing)
    assert all(float(v) >= 0 for v in timing.values())


def test_readyz_is_503_until_the_model_is_loaded_then_200(server, env, model_tarball):
    """Readiness starts the load on first call and holds traffic until the model is warm."""
    release = threading.Event()
    path = MODEL_PATH + "-slow"

    def slow_model(_req):
        release.wait(30)
        from standin.server import Reply
        return Reply(model_tarball, 200, "application/x-tar")

    env.setenv("MODEL_URL", server.add(path, slow_model))
    service.reset()
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    first = client.get("/readyz")
    assert first.status_code == 503
    assert first.get_json()["model"]["state"] == "loading"
    release.set()
    deadline = time.monotonic() + 120
    while (r := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.status_code == 200 and r.get_json()["status"] == "ready"
    assert server.hits[path] == 1


def test_a_model_that_cannot_load_gives_503_with_the_reason(server, env):
    env.setenv("MODEL_URL", server.url("/no-such-model"))
    env.setenv("MODEL_LOAD_RETRY_S", "60")
    service.reset()
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    # A request whose only photo fails needs no model: 200 with the photo's error.
    r = client.post("/", json={"urls": [server.url("/missing.png")]})
    assert r.status_code == 200 and r.get_json()["results"][0]["error"]["code"] == "http_error"
    r = client.post("/", json={"urls": [server.add("/p.png", _png(), "image/png")]})
    assert r.status_code == 503, r.get_json()
    assert r.get_json()["error"]["code"] == "model_unavailable"
    assert "404" in r.get_json()["error"]["message"]
    assert int(r.headers["Retry-After"]) >= 1
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["model"]["state"] == "failed"


def _png() -> bytes:
    from standin import photos

    return photos.solid((10, 20, 30), fmt="PNG")


def test_a_huge_body_is_413_without_being_read(client, env):
    limit = service.serving().config.max_request_bytes
    r = client.post("/", data=b"{" + b" " * limit + b"}", content_type="application/json")
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "body_too_large"
