"""The classifier end to end with the generated model: what a photo's pixels become."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from function.app import App
from function.config import Config
from function.core.classifier import top_k
from function.core.labels import LabelMap
from function.core.sources import PhotoSource
from standin import hostile, hubmodel, photos
from tests.support import MODEL_PATH


@pytest.fixture(scope="module")
def classifier(config):
    c = App(config)
    c._model.get(timeout=120)
    return c


def test_a_photo_is_classified_as_the_species_of_its_colour(classifier, serve_photo):
    result = classifier.classify([PhotoSource.url(serve_photo(123))])
    (photo,) = result.results
    assert photo.error is None
    assert photo.predictions[0].id == 123
    assert photo.predictions[0].label == hubmodel.species_name(123)


def test_channels_are_fed_in_rgb_order(classifier, serve_photo):
    # Class 9 is pure red (r digit 9), class 900 pure blue: BGR order would swap them.
    result = classifier.classify([PhotoSource.url(serve_photo(9)), PhotoSource.url(serve_photo(900))])
    assert [r.predictions[0].id for r in result.results] == [9, 900]


def test_pixels_are_scaled_to_unit_range(classifier, server):
    # Mid grey (r=g=b=4/9 of 255) is class 444 only if 0..255 becomes 0..1; unscaled input
    # would land on the corner class 999 -> clipped to 963's neighbourhood.
    url = server.add("/photos/grey.png", photos.solid(photos.class_colour(444), fmt="PNG"), "image/png")
    result = classifier.classify([PhotoSource.url(url)])
    assert result.results[0].predictions[0].id == 444


def test_predictions_are_the_top_k_best_first_with_the_models_scores(classifier, server):
    rgb = (204, 148, 77)  # off the prototype grid, so the five nearest classes have distinct scores
    url = server.add("/photos/offgrid.png", photos.solid(rgb, fmt="PNG"), "image/png")
    result = classifier.classify([PhotoSource.url(url)], 5)
    preds = result.results[0].predictions
    mean = tuple(c / 255 for c in rgb)
    expected = hubmodel.expected_scores(mean)
    ranking = hubmodel.expected_ranking(mean)
    assert np.all(np.diff(expected[ranking[:6]]) < -1e-4), "test colour must give a strict ranking"
    assert [p.id for p in preds] == ranking[:5]
    assert [p.score for p in preds] == sorted((p.score for p in preds), reverse=True)
    np.testing.assert_allclose([p.score for p in preds], expected[[p.id for p in preds]], rtol=0.03)


def test_a_failed_photo_does_not_cost_the_others_their_results(classifier, server, serve_photo):
    server.add("/photos/page.jpg", "<html>not a photo</html>", "image/jpeg")
    sources = [PhotoSource.url(u) for u in (
        serve_photo(10), server.url("/photos/missing.jpg"), server.url("/photos/page.jpg"), serve_photo(20))]
    result = classifier.classify(sources)
    assert [r.error.code if r.error else None for r in result.results] == [None, "http_error", "not_an_image", None]
    assert [r.predictions[0].id for r in result.results if r.ok] == [10, 20]
    assert result.results[1].predictions == []
    assert result.failed == 2


def test_every_stage_is_timed(classifier, serve_photo):
    result = classifier.classify([PhotoSource.url(serve_photo(1))])
    assert {"fetch", "decode", "photos", "model_wait", "inference", "topk", "total"} <= set(result.timings_ms)
    assert result.timings_ms["total"] >= result.timings_ms["photos"]


def test_only_failed_photos_need_no_model(config):
    # A request whose photos all fail answers without waiting for (or needing) the model.
    c = App(Config(model_url="http://127.0.0.1:9/nowhere", labels_url=config.labels_url))
    result = c.classify([PhotoSource.url("ftp://example.org/x.jpg")])
    assert result.results[0].error.code == "invalid_url"


def test_many_threads_asking_at_once_load_the_model_once(config, server):
    path = MODEL_PATH + "-concurrent"
    server.add(path, server.routes[MODEL_PATH].body, "application/x-tar")
    c = App(Config(model_url=server.url(path), labels_url=config.labels_url))
    barrier = threading.Barrier(8)
    models = []

    def ask():
        barrier.wait()
        models.append(c._model.get(timeout=120))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(models) == 8 and all(m is models[0] for m in models)
    assert server.hits[path] == 1
    assert c._model.loads_started == 1


def test_the_model_is_cached_per_process_across_apps(config, classifier):
    assert App(config)._model is classifier._model


def test_a_configuration_that_loads_differently_gets_its_own_model(config, classifier):
    # Other thread settings or no warm-up change the load: they must not inherit the first app's model.
    assert App(replace(config, tf_inter_op_threads=7))._model is not classifier._model
    assert App(replace(config, warmup=False))._model is not classifier._model
    assert App(replace(config, top_k=5))._model is classifier._model  # not a load setting


def test_top_k_breaks_ties_by_lower_id():
    labels = LabelMap({i: f"s{i}" for i in range(5)})
    preds = top_k(np.array([0.1, 0.3, 0.3, 0.2, 0.1], np.float32), 3, labels)
    assert [p.id for p in preds] == [1, 2, 3]


def test_a_five_photo_request_fetches_all_five_at_once_when_alone(config, server):
    # Fair sharing must not slow the common case: the pool's default share (16 // 4 = 4) is below five.
    gate, arrived = threading.Barrier(5, timeout=5), []

    def together(_req):
        arrived.append(1)
        gate.wait()  # answers only once all five fetches are in flight at the same time
        from standin.server import Reply
        return Reply(photos.solid(photos.class_colour(7)), 200, "image/jpeg")

    url = server.add("/photos/together.jpg", together)
    app = App(replace(config, fetch_workers=16, fetch_per_request=0, threads=4))
    try:
        result = app.classify([PhotoSource.url(f"{url}?n={n}") for n in range(5)])
        assert [r.error for r in result.results] == [None] * 5, [r.error for r in result.results]
    finally:
        app.stop()


def test_a_request_of_stalled_urls_does_not_delay_a_one_photo_request(config, server, serve_photo):
    """Issue 12, finding 7: 64 stalled URLs in one request held every fetch worker, and a one-photo
    request queued behind them (50 s in production). Each request now has a share of the pool."""
    released = threading.Event()
    stalled = server.add("/photos/stalled.jpg", hostile.stall_after_headers(released, 10.0))
    app = App(replace(config, fetch_workers=4, photo_deadline_s=3.0, read_timeout_s=5.0, request_deadline_s=4.0))
    app._model.get(timeout=120)
    hits = server.hits["/photos/stalled.jpg"]
    slow = threading.Thread(target=app.classify,
                            args=([PhotoSource.url(f"{stalled}?n={n}") for n in range(64)],))
    slow.start()
    try:
        while server.hits["/photos/stalled.jpg"] == hits:  # the stalled request holds its workers
            time.sleep(0.01)
        started = time.monotonic()
        result = app.classify([PhotoSource.url(serve_photo(33))])
        elapsed = time.monotonic() - started
        assert result.results[0].error is None and result.results[0].predictions[0].id == 33
        assert elapsed < 1.5, f"the one-photo request waited {elapsed:.1f} s behind the stalled one"
    finally:
        released.set()
        slow.join(timeout=10)
        app.stop()


def test_a_request_alone_uses_idle_workers_but_leaves_some_for_the_other_requests(config, server):
    released = threading.Event()
    stalled = server.add("/photos/stalled-share.jpg", hostile.stall_after_headers(released, 10.0))
    # 8 workers, THREADS=4: min(THREADS - 1, a quarter of the pool) = 2 stay free for other requests.
    app = App(replace(config, fetch_workers=8, fetch_per_request=3, threads=4, photo_deadline_s=2.0,
                      request_deadline_s=1.0))
    hits = server.hits["/photos/stalled-share.jpg"]
    try:
        result = app.classify([PhotoSource.url(f"{stalled}?n={n}") for n in range(8)])
        assert server.hits["/photos/stalled-share.jpg"] - hits == 6  # six of eight started; two kept free
        assert {r.error.code for r in result.results} == {"deadline_exceeded"}
    finally:
        released.set()
        app.stop()


def test_a_photo_goes_to_the_model_while_a_slower_one_is_still_downloading(config, server, serve_photo):
    """The model's calls overlap the downloads: the slow photo is answered only once the fast one has been
    handed to the model (or after 10 s, when the test fails)."""
    handed_over = threading.Event()

    def slow(_req):
        from standin.server import Reply
        handed_over.wait(10)
        return Reply(photos.solid(photos.class_colour(44)), 200, "image/jpeg")

    slow_url = server.add("/photos/slow.jpg", slow)
    app = App(config)
    submit = app._batcher.submit

    def submit_and_tell(batch):
        handed_over.set()
        return submit(batch)

    app._batcher.submit = submit_and_tell
    try:
        result = app.classify([PhotoSource.url(slow_url), PhotoSource.url(serve_photo(11))])
        assert handed_over.is_set()
        assert [r.predictions[0].id for r in result.results] == [44, 11]
        assert result.timings_ms["total"] < 10_000, "the slow photo waited for its timeout, not for the model"
    finally:
        app.stop()


def test_a_photo_decoded_after_the_requests_deadline_is_not_handed_to_the_model(config, server, serve_photo):
    """Its decode ends only once the request has answered without it: its inference would be work
    nobody reads."""
    late_bytes = photos.solid(photos.class_colour(44))
    late_url = server.add("/photos/late.jpg", late_bytes, "image/jpeg")
    app = App(replace(config, request_deadline_s=1.0))
    app._model.get(timeout=120)
    answered, handed_over = threading.Event(), []
    decoder, submit = app._classifier.decoder, app._batcher.submit

    class SlowOnTheLatePhoto:
        def decode(self, data, *args):
            pixels = decoder.decode(data, *args)
            if data == late_bytes:
                answered.wait(10)
            return pixels

    def record(batch):
        handed_over.append(len(batch))
        return submit(batch)

    app._classifier.decoder = SlowOnTheLatePhoto()
    app._batcher.submit = record
    try:
        result = app.classify([PhotoSource.url(late_url), PhotoSource.url(serve_photo(11))])
        answered.set()
        assert result.results[0].error.code == "deadline_exceeded"
        assert result.results[1].predictions[0].id == 11
    finally:
        answered.set()
        app.stop()  # waits for the late photo's thread: its load ends before this returns
    assert handed_over == [1], "the late photo went to the model after its request had answered"


def test_a_request_that_fails_after_handing_photos_over_takes_them_back_from_the_model(config, serve_photo):
    """The label map cannot be had once both photos are with the model: the request fails with it, and
    the photos still queued for a model call never get one (one a worker already took finishes)."""
    from function.errors import NotReady

    app = App(replace(config, inference_workers=1, max_batch_images=1))
    app._model.get(timeout=120)
    app.start()
    assert app._batcher.prepared(timeout=60)
    seen, entered, release = [], threading.Event(), threading.Event()
    predict = app._batcher._predict

    def gated(batch):
        seen.append("probe" if not batch.any() else "photo")
        entered.set()
        assert release.wait(10)
        return predict(batch)

    def unavailable(timeout=None):
        raise NotReady("the label map is loading")

    handed: list = []
    submit = app._batcher.submit

    def record(batch):
        handed.append(submit(batch))
        return handed[-1]

    app._batcher._predict, app._batcher.submit = gated, record
    app._classifier.labels.get = unavailable
    try:
        with pytest.raises(NotReady):
            app.classify([PhotoSource.url(serve_photo(11)), PhotoSource.url(serve_photo(12))])
        assert len(handed) == 2
        release.set()
        probe = submit(np.zeros((1, 224, 224, 3), np.uint8))
        app._batcher.gather([probe])  # queued after both photos: a photo not passed over is called before it
    finally:
        release.set()
        del app._classifier.labels.get  # the label map is the process's, shared with other tests' apps
        app.stop()
    assert seen.count("photo") <= 1 and seen[-1] == "probe", f"photos nobody would read went to the model: {seen}"
