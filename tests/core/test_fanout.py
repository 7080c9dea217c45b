"""Fan-out: a big request is split over several instances behind a round-robin proxy."""

from __future__ import annotations

import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import functions_framework
import pytest
import requests
from werkzeug.serving import make_server

from function import app as service
from function.core.fanout import HEADER
from tests.support import ROOT


class RoundRobinProxy:
    """Forwards each request to the next backend; records (backend, fanout header, status) per request."""

    def __init__(self, backends: list[str]):
        self.backends = backends
        self.log: list[list] = []  # [backend, fanout header, status], in order of arrival
        self.fail_subrequests = False
        turn = itertools.cycle(range(len(backends)))
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    i = next(turn)
                    entry = [i, self.headers.get(HEADER), None]
                    proxy.log.append(entry)
                if proxy.fail_subrequests and self.headers.get(HEADER):
                    status, content = 502, b'{"error": "bad gateway"}'
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", HEADER.lower())}
                    if HEADER in headers and i != 0:
                        # The backends share one process, so one fan-out id; backends 1 and 2 stand
                        # for other processes, which would not recognise the front's id as theirs.
                        headers[HEADER] = "another-instance"
                    upstream = requests.post(proxy.backends[i] + self.path, data=body, timeout=60, headers=headers)
                    status, content = upstream.status_code, upstream.content
                entry[2] = status
                self._answer(status, content)

            def _answer(self, status, body):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def cluster(env):
    """Three instances of the function and a proxy in front; FANOUT_URL points at the proxy."""
    servers = []
    for _ in range(3):
        app = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py"))
        srv = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    proxy = RoundRobinProxy([f"http://127.0.0.1:{s.server_port}" for s in servers])
    env.setenv("FANOUT_URL", proxy.url + "/")
    env.setenv("FANOUT_CHUNK", "4")
    env.setenv("FANOUT_INFLIGHT", "4")
    service.reset()
    service.serving()._model.get(timeout=120)
    yield proxy
    proxy.httpd.shutdown()
    for s in servers:
        s.shutdown()


def test_a_big_request_is_split_over_the_instances_and_merged_in_order(cluster, serve_photo):
    ids = [101, 202, 303, 404, 505, 606, 707, 808, 909, 111]
    r = requests.post(cluster.url + "/", json={"urls": [serve_photo(i) for i in ids]}, timeout=120)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["predictions"][0]["id"] for x in results] == ids
    assert all(x["error"] is None for x in results)
    # The client's request reached instance 0 through the proxy; every later request is a chunk.
    assert cluster.log[0] == [0, None, 200]
    assert all(h is not None for _, h, _ in cluster.log[1:])


def test_a_chunk_routed_back_to_the_instance_that_sent_it_is_refused(cluster, serve_photo):
    ids = [11 * i for i in range(1, 25)]  # enough chunks for the round robin to come back to the front
    r = requests.post(cluster.url + "/", json={"urls": [serve_photo(i) for i in ids]}, timeout=120)
    assert [x["predictions"][0]["id"] for x in r.json()["results"]] == ids
    # A chunk backed up by the front may still be on its way at another instance when the request has
    # its answer: its status is known once that instance answers.
    deadline = time.monotonic() + 60
    while any(status is None for _, _, status in cluster.log) and time.monotonic() < deadline:
        time.sleep(0.01)
    chunks = cluster.log[1:]
    assert any(i == 0 for i, _, _ in chunks)  # with three backends, every third request reaches the front
    assert all(status == 421 for i, _, status in chunks if i == 0)  # the front instance's own chunks
    assert all(status == 200 for i, _, status in chunks if i != 0)


def test_results_match_the_unsplit_request(cluster, serve_photo):
    urls = [serve_photo(i) for i in (12, 34, 56, 78, 90, 21)]
    split = requests.post(cluster.url + "/", json={"urls": urls, "top_k": 3}, timeout=120).json()
    whole = requests.post(cluster.url + "/", json={"urls": urls, "top_k": 3}, headers={HEADER: "1"},
                          timeout=120).json()
    assert [x["predictions"] for x in split["results"]] == [x["predictions"] for x in whole["results"]]


def test_a_small_request_is_not_split(cluster, serve_photo):
    r = requests.post(cluster.url + "/", json={"urls": [serve_photo(1), serve_photo(2)]}, timeout=60)
    assert r.status_code == 200 and len(cluster.log) == 1


def test_a_chunk_that_fails_everywhere_is_classified_by_the_front_instance(cluster, serve_photo):
    cluster.fail_subrequests = True
    ids = [10, 20, 30, 40, 50, 60]
    r = requests.post(cluster.url + "/", json={"urls": [serve_photo(i) for i in ids]}, timeout=60)
    results = r.json()["results"]
    assert [x["predictions"][0]["id"] for x in results] == ids
    assert all(x["error"] is None for x in results)
    assert r.json()["timings_ms"]["local_chunks"] >= 1


def test_bucket_objects_are_never_split_across_instances():
    # A bucket object is read signed by the instance that got the event; another instance would get
    # it as a plain caller URL, unsigned and behind the SSRF guard.
    from function.core.fanout import FanOut
    from function.core.sources import ObjectSource, PhotoSource

    fan = FanOut(lambda doc, headers: None, chunk=2)
    try:
        assert fan.wanted([PhotoSource.url(f"https://example.org/{i}.jpg") for i in range(3)])
        assert not fan.wanted([ObjectSource(f"https://storage.googleapis.com/b/{i}.jpg") for i in range(3)])
    finally:
        fan.stop()
