"""The function started every way its users start it, each a real process tree on 127.0.0.1.

The image's CMD (gunicorn with gunicorn.conf.py), the same with ``--preload`` and with two workers,
and functions-framework's own launcher for the HTTP and the CloudEvent target (what a developer runs
and what Cloud Run functions' buildpack runs). Two of these import ``main.py`` in gunicorn's arbiter
and fork the worker from it: whatever the import built that cannot cross a fork (threads, the decode
workers' fork server) would be missing in the worker, which then never turns ready. Each start path
classifies photos (the decode workers included), and a SIGTERM ends its whole process tree.

Readiness is polled, never slept for.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from harness import HOST
from standin import photos
from standin.server import Reply
from tests.api.serving import serve

ROBIN, HERON = 321, 246
STOP_S = 5.0  # an idle tree's SIGTERM-to-gone, a few seconds (measured 0.3-2.3 s); not gunicorn's 30 s grace
HTTP_STARTS = [("gunicorn", "1"), ("gunicorn", "2"), ("gunicorn-preload", "1"), ("gunicorn-preload", "2"),
               ("functions-framework", "1")]


def gone(pids: list[int], timeout_s: float) -> list[int]:
    """The pids still alive after up to ``timeout_s`` (polled; a zombie counts as gone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        alive.append(pid)
            except OSError:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        threading.Event().wait(0.05)


def classify(port: int, urls: list[str]) -> dict:
    r = requests.post(f"http://{HOST}:{port}/", json={"urls": urls, "top_k": 1}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def terminate_and_check(served, pids: list[int]) -> None:
    """SIGTERM to the server's first process, as the container runtime sends it: the tree is gone soon after."""
    assert len(pids) > 1
    os.kill(served.pid, signal.SIGTERM)
    terminated = time.monotonic()
    assert served.proc.wait(STOP_S) == 0, served.log.read_text()[-2000:]
    left = gone(pids, max(0.5, STOP_S - (time.monotonic() - terminated)))
    assert not left, f"still running {time.monotonic() - terminated:.1f} s after SIGTERM: {left}"


@pytest.mark.parametrize(("launcher", "workers"), HTTP_STARTS)
def test_each_http_start_serves_photos_and_stops_on_sigterm(server, tmp_path, launcher, workers):
    urls = [server.add(f"/starts/{launcher}-{workers}-{i}.{fmt.lower()}", photos.solid(
        photos.class_colour(class_id), fmt=fmt), f"image/{fmt.lower()}")
        for i, (class_id, fmt) in enumerate(((ROBIN, "JPEG"), (HERON, "PNG")))]
    with serve(server, tmp_path, launcher=launcher, WORKERS=workers) as served:
        # Each worker serves: with two, several requests on fresh connections reach both.
        for _ in range(4 * int(workers)):
            answer = classify(served.port, urls)
            assert [r["predictions"][0]["id"] for r in answer["results"]] == [ROBIN, HERON]
        assert served.decode_pids(), "the photos were decoded in the decode workers, started in the worker"
        pids = served.pids()
        terminate_and_check(served, pids)


def test_the_cloudevent_target_started_by_functions_frameworks_launcher_classifies_a_bucket_object(server, tmp_path):
    name = "incoming/robin.jpg"
    # The stand-in plays the storage emulator: the JSON API's media download of the object.
    server.add(f"/download/storage/v1/b/birds/o/{quote(name, safe='')}", photos.solid(photos.class_colour(ROBIN)),
               "image/jpeg")
    event = CloudEvent({"type": "google.cloud.storage.object.v1.finalized",
                        "source": "//storage.googleapis.com/projects/_/buckets/birds", "subject": f"objects/{name}"},
                       {"kind": "storage#object", "bucket": "birds", "name": name, "generation": "1",
                        "contentType": "image/jpeg", "size": "1234"})
    headers, body = to_binary(event)
    env = {"STORAGE_EMULATOR_HOST": f"{HOST}:{server.port}", "EVENT_AUTH": "none"}
    with serve(server, tmp_path, launcher="functions-framework-events", wait=False, **env) as served:
        served.wait_port(120)
        # The first event also starts the app (the model's load) in the worker: answered once it is in.
        r = requests.post(served.url, headers=headers, data=body, timeout=120)
        assert r.status_code == 200, r.text
        records = [json.loads(line) for line in served.log.read_text().splitlines() if line.startswith("{")]
        (classified,) = [rec for rec in records if rec["message"].startswith(f"classified gs://birds/{name}")]
        assert classified["predictions"][0]["id"] == ROBIN
        terminate_and_check(served, served.pids())


def test_a_request_in_flight_finishes_after_sigterm_under_functions_frameworks_launcher(server, tmp_path):
    arrived = threading.Event()

    def slow_photo(_req):
        arrived.set()
        threading.Event().wait(2.0)  # in flight when the SIGTERM comes
        return Reply(photos.solid(photos.class_colour(ROBIN)), 200, "image/jpeg")

    url = server.add("/starts/slow.jpg", slow_photo)
    answer: dict = {}
    with serve(server, tmp_path, launcher="functions-framework") as served:
        caller = threading.Thread(target=lambda: answer.update(classify(served.port, [url])))
        caller.start()
        assert arrived.wait(30)
        pids = served.pids()
        os.kill(served.pid, signal.SIGTERM)
        caller.join(30)
        assert answer["results"][0]["predictions"][0]["id"] == ROBIN
        assert not gone(pids, STOP_S), "the tree outlived its SIGTERM"


def test_the_worker_imports_without_the_cyclic_collector_and_serves_with_it(monkeypatch):
    """gunicorn.conf.py's hooks, run in the order gunicorn runs them in a worker: the collector is off
    from the fork until the app starts, then on again with the modules loaded meanwhile frozen."""
    import gc
    import runpy

    from function import app

    started = []
    monkeypatch.setattr(app, "serving", lambda: started.append(gc.isenabled()))
    conf = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py"))
    assert gc.isenabled()
    try:
        conf["post_fork"](None, None)
        assert not gc.isenabled()
        conf["post_worker_init"](None)
        assert gc.isenabled() and gc.get_freeze_count() > 0
        assert started == [True]  # the app's threads start with the collector on
    finally:
        gc.unfreeze()
        gc.enable()
