"""Hostile and odd inputs through the real HTTP target, each with the outcome a caller must get.

Every photo row is served by the stand-in server and sent through functions-framework's own app
between two good photos: the row's photo gets its expected result (classified as a given class,
or a given error code) and the photos around it are still classified. Whatever the row, the only
address the function ever connects to is the stand-in on 127.0.0.1.

Then the request-level table (what a malformed request gets), the model that fails to load and
comes back, and internal errors that reach the log with a stack trace but never the caller.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import functions_framework
import pytest
import urllib3

from function import app as service
from function.infra import logs
from standin import costly, hostile
from standin.hostile import fails_first, solid
from standin.server import Reply, StandInServer
from tests.support import MODEL_PATH, ROOT

WAIT = 10.0  # the longest any stand-in handler holds a connection; never reached when tests pass
# Tight limits so that the slow rows are quick: each row's worst case is a few seconds.
LIMITS = {"READ_TIMEOUT_S": "1", "CONNECT_TIMEOUT_S": "1", "PHOTO_DEADLINE_S": "3",
          "MAX_PHOTO_BYTES": "2000000", "FETCH_RETRIES": "2", "MAX_URLS": "8"}
BEFORE, AFTER = 120, 847  # the classes of the good photos around each hostile one

released = threading.Event()  # set at the end of every test: stalled handlers let go


@pytest.fixture(autouse=True)
def release_handlers():
    released.clear()
    yield
    released.set()


@pytest.fixture
def connections(monkeypatch) -> list[str]:
    """Every address the process opens a connection to (urllib3 connects through this function)."""
    seen: list[str] = []
    real = urllib3.util.connection.create_connection

    def recording(address, *args, **kwargs):
        seen.append(address[0])
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", recording)
    return seen


def make_client(env, trusted: str | None = "127.0.0.1", **extra: str):
    for name, value in {**LIMITS, **extra}.items():
        env.setenv(name, value)
    if trusted is None:
        env.delenv("TRUSTED_HOSTS", raising=False)
    else:
        env.setenv("TRUSTED_HOSTS", trusted)
    service.reset()
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    assert service.serving().wait_until_ready(120).ready
    service.serving()._labels.get(timeout=30)
    return client


# -- what the stand-in serves (standin/hostile.py builds it) -----------------------------------


def via_proxy(server: StandInServer, path: str) -> str:
    server.add(path, solid(5))  # what a proxy at the stand-in's address would hand back
    return f"http://10.0.0.1{path}"


# -- the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    serve: Callable[[StandInServer, str], str]  # (server, path) -> the URL to send
    expect: int | str  # the class it is classified as, or the error code it gets
    hits: int | None = None  # how many requests the stand-in must see at the row's path
    trusted: str | None = "127.0.0.1"  # TRUSTED_HOSTS for the row; None: unset
    env: dict[str, str] = field(default_factory=dict)
    within_s: float | None = None  # the whole request answers within this


class lazy:  # noqa: N801 - reads as a marker in the table: content built when the row runs
    def __init__(self, build: Callable[[], bytes | Reply]):
        self.build = build


def at(content: bytes | Reply | lazy | Callable, content_type: str = "image/jpeg",
       status: int = 200) -> Callable[[StandInServer, str], str]:
    """Serve ``content`` (bytes, a Reply, lazy(...) bytes, or a handler of the request) at the row's path."""

    def serve(server: StandInServer, path: str) -> str:
        body = content.build() if isinstance(content, lazy) else content
        if isinstance(body, Reply):
            return server.add(path, body.body, body.content_type, body.status, body.headers)
        return server.add(path, body, content_type, status)

    return serve


def spelled(template: str) -> Callable[[StandInServer, str], str]:
    """The stand-in's URL with the host spelled another way (``{port}`` and ``{path}`` filled in)."""

    def serve(server: StandInServer, path: str) -> str:
        server.add(path, solid(5))  # a real photo is there: only the guard stands between
        return template.format(port=server.port, path=path)

    return serve


def literal(url: str) -> Callable[[StandInServer, str], str]:
    return lambda server, path: url


def odd_path(name: str) -> Callable[[StandInServer, str], str]:
    """A photo whose path has spaces or non-ASCII characters: sent raw, served at its quoted form."""

    def serve(server: StandInServer, path: str) -> str:
        server.add(quote(f"{path}/{name}"), solid(37))
        return server.url(f"{path}/{name}")

    return serve


def then_redirect(location: str) -> Callable[[StandInServer, str], str]:
    return at(hostile.redirect(location))


def redirect_loop(server: StandInServer, path: str) -> str:
    return server.add(path, b"", "text/plain", 302, {"Location": server.url(path)})


PHOTO_ROWS = [
    Row("truncated-jpeg", at(lazy(hostile.truncated_jpeg)), "corrupt_image"),
    Row("html-served-as-jpeg", at(hostile.HTML), "not_an_image"),
    Row("empty-body", at(b""), "empty"),
    Row("pdf-served-as-png", at(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "image/png"), "not_an_image"),
    Row("cmyk-jpeg", at(lazy(hostile.cmyk_jpeg)), hostile.CMYK_CLASS),
    Row("16-bit-png", at(lazy(hostile.png_16bit), "image/png"), hostile.PNG16_CLASS),
    Row("animated-gif", at(lazy(hostile.animated_gif), "image/gif"), hostile.GIF_CLASS),
    Row("webp", at(lazy(lambda: solid(250, "WEBP")), "image/webp"), 250),
    Row("rgba-png", at(lazy(hostile.rgba_png), "image/png"), hostile.RGBA_CLASS),
    Row("exif-rotated-jpeg", at(lazy(hostile.exif_rotated_jpeg)), hostile.EXIF_CLASS),
    Row("jpeg-served-as-octet-stream", at(lazy(lambda: solid(77)), "application/octet-stream"), 77),
    Row("png-bomb-30000x30000", at(lazy(hostile.png_bomb), "image/png"), "image_too_large", within_s=2.0),
    Row("gzip-bomb", at(lazy(hostile.gzip_bomb)), "too_large", within_s=3.0),
    # Issue 12, finding 2: formats outside PHOTO_FORMATS never reach a decoder.
    Row("ico-holding-a-6000x6000-png", at(lazy(hostile.ico_bomb), "image/x-icon"), "unsupported_format",
        within_s=2.0),
    Row("icns-saying-512x512-holding-3000x3000", at(lazy(hostile.icns_bomb), "image/icns"), "unsupported_format"),
    Row("ico-bomb-with-ico-allowed", at(lazy(hostile.ico_bomb), "image/x-icon"), "image_too_large",
        env={"PHOTO_FORMATS": "JPEG,ICO", "MAX_PHOTO_PIXELS": "4000000"}, within_s=2.0),
    Row("icns-bomb-with-icns-allowed", at(lazy(hostile.icns_bomb), "image/icns"), "image_too_large",
        env={"PHOTO_FORMATS": "JPEG,ICNS", "MAX_PHOTO_PIXELS": "4000000"}),
    # Decoding costs: bounded before they are paid (the header's charge, the scan limit) and while
    # they are paid (the CPU budget), in worker processes (tests/api/test_costly.py measures them).
    Row("jpeg-repeating-its-refinement-scans", at(lazy(lambda: costly.jpeg(7999, 7999, repeats=250, refine=True))),
        "decode_too_costly", within_s=6.0),
    Row("jpeg-with-20000-scans", at(lazy(lambda: costly.jpeg(2000, 2000, repeats=20_000))), "decode_too_costly",
        within_s=2.0),
    Row("progressive-jpeg-over-the-memory-budget", at(lazy(lambda: costly.jpeg(7999, 7999))), "decode_too_costly",
        env={"DECODE_MEMORY_MB": "300"}, within_s=2.0),
    Row("endless-body", at(hostile.endless(released, WAIT)), "too_large", within_s=3.0),
    Row("endless-chunked-body", at(hostile.endless(released, WAIT, chunked=True)), "too_large", within_s=3.0),
    Row("declared-length-over-limit", at(hostile.declares_too_much(released, WAIT)), "too_large", within_s=2.0),
    Row("headers-then-stall", at(hostile.stall_after_headers(released, WAIT)), "timeout", within_s=5.0),
    Row("trickle-one-byte-at-a-time", at(hostile.trickle(released, WAIT)), "timeout", hits=1, within_s=5.0),
    # Issue 12, finding 1: the photo's deadline holds in every phase of the fetch, not only the body.
    Row("status-line-one-byte-at-a-time", at(hostile.status_drip(released, WAIT)), "timeout", hits=1,
        within_s=4.5),
    Row("headers-one-byte-at-a-time", at(hostile.header_drip(released, WAIT)), "timeout", hits=1, within_s=4.5),
    Row("gzip-header-that-never-ends", at(hostile.endless_gzip_header(released, WAIT)), "too_large",
        within_s=3.0),
    Row("redirect-to-metadata-server", then_redirect("http://169.254.169.254/computeMetadata/v1/"),
        "blocked_address", hits=1),
    Row("redirect-to-private-network", then_redirect("http://10.0.0.1/x.jpg"), "blocked_address", hits=1),
    Row("redirect-to-metadata-as-integer", then_redirect("http://2852039166/latest/meta-data/"),
        "blocked_address", hits=1),
    Row("redirect-loop", redirect_loop, "too_many_redirects", hits=6),
    Row("404", at(b"no such photo", "text/plain", 404), "http_error", hits=1),
    Row("500-then-200-is-not-retried", at(fails_first(1, 500, then=solid(60))), "http_error", hits=1),
    Row("502-then-200-is-retried", at(fails_first(1, 502, then=solid(61))), 61, hits=2),
    Row("503-then-200-is-retried", at(fails_first(1, 503, then=solid(62))), 62, hits=2),
    Row("504-then-200-is-retried", at(fails_first(1, 504, then=solid(63))), 63, hits=2),
    Row("429-retry-after-0-then-200", at(fails_first(1, 429, solid(64), {"Retry-After": "0"})), 64, hits=2),
    Row("429-retry-after-past-the-deadline", at(fails_first(1, 429, solid(65), {"Retry-After": "3600"})),
        "http_error", hits=1, within_s=2.0),
    Row("connection-reset-then-200", at(fails_first(1, 0, then=solid(66))), 66, hits=2),
    Row("503-every-time-gives-up", at(fails_first(99, 503)), "http_error", hits=3),
    Row("space-in-path", odd_path("a robin.jpg"), 37),
    Row("unicode-in-path", odd_path("rouge-gorge été 鸟.jpg"), 37),
    Row("ftp-url", literal("ftp://127.0.0.1/robin.jpg"), "invalid_url"),
    Row("javascript-url", literal("javascript:alert(document.cookie)"), "invalid_url"),
    Row("file-url", literal("file:///etc/passwd"), "invalid_url"),
    Row("data-url", literal("data:image/png;base64,iVBORw0KGgo="), "invalid_url"),
    Row("url-without-host", literal("http:///robin.jpg"), "invalid_url"),
    Row("unbalanced-ipv6-bracket", literal("http://[::1/robin.jpg"), "invalid_url"),
    Row("host-label-too-long", literal("http://" + "a" * 300 + ".example/robin.jpg"), "fetch_failed"),
    # Every spelling of loopback, with only the *name* localhost trusted (the good photos around
    # each row come from http://localhost:PORT): the refusal comes before any connection.
    *[Row(f"loopback-as-{name}", spelled(url), "blocked_address", hits=0, trusted="localhost")
      for name, url in [("integer", "http://2130706433:{port}{path}"),
                        ("hex-short", "http://0x7f.1:{port}{path}"),
                        ("short", "http://127.1:{port}{path}"),
                        ("octal", "http://0177.0.0.1:{port}{path}"),
                        ("hex-integer", "http://0x7f000001:{port}{path}"),
                        ("dotted", "http://127.0.0.1:{port}{path}"),
                        ("ipv4-mapped-ipv6", "http://[::ffff:127.0.0.1]:{port}{path}"),
                        ("ipv6", "http://[::1]:{port}{path}"),
                        ("unspecified", "http://0.0.0.0:{port}{path}")]],
    Row("loopback-as-localhost", spelled("http://localhost:{port}{path}"), "blocked_address", hits=0, trusted=None),
    Row("loopback-with-another-host-trusted", spelled("http://127.0.0.1:{port}{path}"), "blocked_address", hits=0,
        trusted="photos.example.org,10.1.2.0/24"),
    Row("another-loopback-address", spelled("http://127.0.0.2:{port}{path}"), "blocked_address", hits=0),
    Row("link-local-as-ipv4-mapped", literal("http://[::ffff:169.254.169.254]/"), "blocked_address"),
    Row("metadata-via-nat64", literal("http://[64:ff9b::a9fe:a9fe]/"), "blocked_address"),
    Row("unique-local-ipv6", literal("http://[fd00::1]/robin.jpg"), "blocked_address"),
    Row("cgnat-address", literal("http://100.64.0.1/robin.jpg"), "blocked_address"),
    Row("multicast-address", literal("http://224.0.0.1/robin.jpg"), "blocked_address"),
    # A proxy in the environment must not become the address connected to (it would fetch anything).
    Row("http-proxy-in-environment", via_proxy, "blocked_address", hits=0,
        env={"HTTP_PROXY": "http://127.0.0.1:{port}", "http_proxy": "http://127.0.0.1:{port}",
             "NO_PROXY": "", "no_proxy": ""}),
]


def good_url(server: StandInServer, class_id: int, trusted: str | None) -> str | None:
    url = server.add(f"/good/{class_id}.jpg", solid(class_id), "image/jpeg")
    if trusted == "localhost":
        return url.replace("127.0.0.1", "localhost")
    return url if trusted == "127.0.0.1" else None


@pytest.mark.parametrize("row", PHOTO_ROWS, ids=[r.id for r in PHOTO_ROWS])
def test_a_hostile_photo_gets_its_outcome_and_costs_the_others_nothing(row, server, env, connections):
    client = make_client(env, row.trusted, **{k: v.format(port=server.port) for k, v in row.env.items()})
    path = f"/hostile/{row.id}"
    url = row.serve(server, path)
    hits_before = server.hits[path]
    goods = [good_url(server, c, row.trusted) for c in (BEFORE, AFTER)]
    urls = [u for u in (goods[0], url, goods[1]) if u is not None]
    connections.clear()

    started = time.monotonic()
    r = client.post("/", json={"urls": urls, "top_k": 1})
    elapsed = time.monotonic() - started

    assert r.status_code == 200, r.get_data(as_text=True)
    assert "Traceback" not in r.get_data(as_text=True)
    results = r.get_json()["results"]
    assert [x["url"] for x in results] == urls
    mine = results[urls.index(url)]
    if isinstance(row.expect, int):
        assert mine["error"] is None, mine
        assert mine["predictions"][0]["id"] == row.expect
    else:
        assert mine["predictions"] == []
        assert mine["error"]["code"] == row.expect, mine["error"]
        assert mine["error"]["message"]
    others = [x for x in results if x is not mine]
    assert [x["predictions"][0]["id"] for x in others] == [c for c, g in zip((BEFORE, AFTER), goods, strict=True) if g]
    if row.hits is not None:
        assert server.hits[path] - hits_before == row.hits
    if row.within_s is not None:
        assert elapsed < row.within_s
    assert set(connections) <= {"127.0.0.1"}, f"connected to {sorted(set(connections))}"


def test_a_request_of_many_hostile_photos_still_classifies_the_good_ones(server, env):
    """Bombs, stalls, blocked and broken photos in one request: the good ones come back, in order."""
    client = make_client(env)
    bad = {"bomb": at(hostile.png_bomb()), "stall": at(hostile.stall_after_headers(released, WAIT)),
           "endless": at(hostile.endless(released, WAIT)),
           "metadata": then_redirect("http://169.254.169.254/"), "truncated": at(hostile.truncated_jpeg())}
    urls = [good_url(server, BEFORE, "127.0.0.1")] + [serve(server, f"/mixed/{name}") for name, serve in bad.items()]
    urls.append(server.add("/good/mixed-webp.webp", solid(AFTER, "WEBP")))
    r = client.post("/", json={"urls": urls})
    body = r.get_json()
    assert r.status_code == 200
    codes = [x["error"]["code"] if x["error"] else x["predictions"][0]["id"] for x in body["results"]]
    assert codes == [BEFORE, "image_too_large", "timeout", "too_large", "blocked_address", "corrupt_image", AFTER]


# -- request level ----------------------------------------------------------------------------

URL = "http://127.0.0.1:9/robin.jpg"
REQUEST_ROWS = [
    ("malformed-json", b'{"urls": ["http://a/x.jpg"', 400, "invalid_json"),
    ("not-utf8", b"\xff\xfe\x00{", 400, "invalid_json"),
    ("nested-100000-deep", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
    ("a-string", b'"http://a/x.jpg"', 400, "invalid_json"),
    ("null", b"null", 400, "invalid_json"),
    ("urls-a-number", b'{"urls": 5}', 400, "invalid_urls"),
    ("urls-an-object", b'{"urls": {"0": "http://a/x.jpg"}}', 400, "invalid_urls"),
    ("urls-of-nulls", b'{"urls": [null]}', 400, "invalid_urls"),
    ("urls-of-lists", b'{"urls": [["http://a/x.jpg"]]}', 400, "invalid_urls"),
    ("empty-list", b'{"urls": []}', 400, "missing_urls"),
    ("url-null", b'{"url": null}', 400, "missing_urls"),
    ("no-urls", b"{}", 400, "missing_urls"),
    ("too-many-urls", json.dumps({"urls": [URL] * 9}).encode(), 400, "too_many_urls"),
    ("unknown-field", b'{"urls": ["http://a/x.jpg"], "callback": "http://evil/"}', 400, "unknown_field"),
    *[(f"top-k-{name}", b'{"urls": ["http://a/x.jpg"], "top_k": %s}' % value, 400, "invalid_top_k")
      for name, value in [("0", b"0"), ("10000", b"10000"), ("negative", b"-1"), ("fraction", b"2.5"),
                          ("true", b"true"), ("list", b"[3]"), ("object", b'{"k": 3}'), ("nan", b"NaN"),
                          ("infinity", b"1e400"), ("word", b'"three"'), ("superscript-two", '"²"'.encode()),
                          ("double-plus", b'"++3"'), ("5000-digits", b'"' + b"9" * 5000 + b'"'),
                          ("1e300", b"1e300")]],
    ("huge-body", b'{"urls": ["' + b"x" * 1_100_000 + b'"]}', 413, "body_too_large"),
]


@pytest.mark.parametrize("body, status, code", [r[1:] for r in REQUEST_ROWS], ids=[r[0] for r in REQUEST_ROWS])
def test_a_malformed_request_gets_a_json_error_that_says_what_to_fix(server, env, body, status, code):
    client = make_client(env)
    r = client.post("/", data=body, content_type="application/json", headers={"X-Request-Id": "bad-1"})
    assert r.status_code == status
    assert r.mimetype == "application/json"
    assert r.get_json()["error"]["code"] == code
    assert r.get_json()["error"]["message"]
    assert r.headers["X-Request-Id"] == "bad-1"
    assert "Traceback" not in r.get_data(as_text=True)


def test_a_huge_body_without_a_length_is_413_after_reading_only_the_limit(server, env):
    client = make_client(env)
    limit = service.serving().config.max_request_bytes
    stream = io.BytesIO(b'{"urls": ["' + b"x" * (limit * 4) + b'"]}')
    r = client.post("/", input_stream=stream, content_type="application/json", headers={"Transfer-Encoding": "chunked"},
                    environ_overrides={"wsgi.input_terminated": True})  # as gunicorn passes a chunked body
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "body_too_large"
    assert stream.tell() <= limit + 1 + 64 * 1024


@pytest.mark.parametrize("query, code", [([("url", URL)] * 9, "too_many_urls"),
                                         ([("url", URL), ("top_k", "0")], "invalid_top_k")])
def test_a_malformed_get_is_400(server, env, query, code):
    r = make_client(env).get("/", query_string=query)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == code


# -- the model that cannot be had, then can ----------------------------------------------------


def test_a_failed_model_load_is_503_with_retry_after_then_retried_after_the_backoff(server, env, model_tarball):
    calls = []

    def hub_fails_once(_req):
        calls.append(1)
        if len(calls) == 1:
            return Reply(b"overloaded", 503, "text/plain")
        return Reply(model_tarball, 200, "application/x-tar")

    env.setenv("MODEL_URL", server.add(MODEL_PATH + "-fails-once", hub_fails_once))
    env.setenv("MODEL_LOAD_RETRY_S", "30")
    for name, value in LIMITS.items():
        env.setenv(name, value)
    service.reset()
    client = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py")).test_client()
    model = service.serving()._model
    clock = [1000.0]
    model._clock = lambda: clock[0]  # the back-off is measured on a clock the test moves
    photo = server.add("/good/model-retry.png", solid(42, "PNG"), "image/png")

    r = client.post("/", json={"urls": [photo]})
    assert r.status_code == 503
    assert r.get_json()["error"]["code"] == "model_unavailable"
    assert "503" in r.get_json()["error"]["message"]
    assert r.headers["Retry-After"] == "30"
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["model"]["state"] == "failed" and "503" in ready.get_json()["model"]["error"]

    clock[0] += 20  # inside the back-off: refused at once, the hub is not asked again
    r = client.post("/", json={"urls": [photo]})
    assert r.status_code == 503 and r.headers["Retry-After"] == "10"
    assert len(calls) == 1

    clock[0] += 10  # the back-off has passed: the next request loads the model and is answered
    r = client.post("/", json={"urls": [photo], "top_k": 1})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["results"][0]["predictions"][0]["id"] == 42
    assert len(calls) == 2
    assert client.get("/readyz").status_code == 200


# -- internal errors: JSON to the caller, the stack trace to the log ---------------------------


class Collect(logging.Handler):
    """The service's JSON log lines, as they would be written."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record):
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def log_lines():
    handler = Collect()
    logger = logging.getLogger("function")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def test_an_internal_error_is_json_without_a_trace_and_the_trace_is_logged_with_the_request_id(
        server, env, log_lines, monkeypatch):
    client = make_client(env)

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals at 0xdeadbeef")

    monkeypatch.setattr(service.serving()._classifier, "classify", broken)
    r = client.post("/", json={"urls": [server.url(f"/good/{BEFORE}.jpg")]}, headers={"X-Request-Id": "req-500"})
    text = r.get_data(as_text=True)
    assert r.status_code == 500
    assert r.get_json()["error"]["code"] == "internal"
    assert "req-500" in r.get_json()["error"]["message"]
    assert "Traceback" not in text and "secret internals" not in text
    errors = [line for line in log_lines if line["severity"] == "ERROR"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "req-500"
    assert "Traceback" in errors[0]["stack_trace"] and "secret internals" in errors[0]["stack_trace"]


def test_an_internal_error_outside_classification_is_json_too(server, env, log_lines, monkeypatch):
    client = make_client(env)
    monkeypatch.setattr(service.serving(), "readiness", lambda: 1 / 0)
    r = client.get("/readyz", headers={"X-Request-Id": "req-ready"})
    assert r.status_code == 500 and r.get_json()["error"]["code"] == "internal"
    assert "Traceback" not in r.get_data(as_text=True)
    errors = [line for line in log_lines if line["severity"] == "ERROR"]
    assert [e["request_id"] for e in errors] == ["req-ready"]
    assert "ZeroDivisionError" in errors[0]["stack_trace"]


def test_an_unforeseen_error_on_one_photo_is_that_photos_error_and_is_logged_with_the_request_id(
        server, env, log_lines, monkeypatch):
    client = make_client(env)
    decoder = service.serving()._decoder
    real = decoder.decode

    def decode_breaks_on_png(data, *args, **kwargs):
        if data.startswith(b"\x89PNG"):
            raise MemoryError("the decoder blew up")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(decoder, "decode", decode_breaks_on_png)
    urls = [server.add("/good/a.jpg", solid(BEFORE)), server.add("/good/b.png", solid(5, "PNG")),
            server.add("/good/c.jpg", solid(AFTER))]
    r = client.post("/", json={"urls": urls, "top_k": 1}, headers={"X-Request-Id": "req-photo"})
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert [x["predictions"][0]["id"] for x in (results[0], results[2])] == [BEFORE, AFTER]
    assert results[1]["error"]["code"] == "corrupt_image"
    assert "blew up" not in r.get_data(as_text=True)
    errors = [line for line in log_lines if line["severity"] == "ERROR"]
    assert len(errors) == 1 and errors[0]["request_id"] == "req-photo"
    assert "MemoryError" in errors[0]["stack_trace"]

