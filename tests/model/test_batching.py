"""Dynamic batching: requests that wait together share a model call; nothing waits for nothing."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from function.infra.cpu import usable_cpus
from function.model.batching import Batcher


def rows(*values: float) -> np.ndarray:
    return np.array(values, np.float32)[:, None]


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


class GatedModel:
    """Doubles its input; the first call blocks until released, so others pile up behind it."""

    def __init__(self):
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        self.entered.set()
        self.release.wait(10)
        return batch * 2


def test_a_lone_request_runs_at_once_and_gets_its_own_scores():
    batcher = Batcher(lambda b: b * 2, max_images=8)
    scores, queue_ms, size = batcher.predict(rows(1, 2, 3))
    assert scores.ravel().tolist() == [2, 4, 6] and size == 3


def test_requests_that_queue_while_the_model_is_busy_share_the_next_call():
    model = GatedModel()
    batcher = Batcher(model, max_images=64)
    results: dict[int, np.ndarray] = {}

    def ask(i: int) -> None:
        results[i] = batcher.predict(rows(i, i + 0.5))[0]

    first = threading.Thread(target=ask, args=(0,))
    first.start()
    assert model.entered.wait(10)
    others = [threading.Thread(target=ask, args=(i,)) for i in (10, 20, 30)]
    for t in others:
        t.start()
    wait_until(lambda: batcher._queue.qsize() == 3)  # all three are waiting behind the busy call
    model.release.set()
    for t in [first, *others]:
        t.join(10)
    assert model.calls == [2, 6]
    for i in (0, 10, 20, 30):
        assert results[i].ravel().tolist() == [2 * i, 2 * i + 1]


def test_a_call_never_exceeds_max_images():
    model = GatedModel()
    batcher = Batcher(model, max_images=4)
    threads = [threading.Thread(target=batcher.predict, args=(rows(1, 2),)) for _ in range(4)]
    threads[0].start()
    assert model.entered.wait(10)
    for t in threads[1:]:
        t.start()
    wait_until(lambda: batcher._queue.qsize() == 3)
    model.release.set()
    for t in threads:
        t.join(10)
    assert model.calls == [2, 4, 2]


def test_a_failing_call_fails_its_requests_and_the_batcher_lives_on():
    fail = {"now": True}

    def model(batch):
        if fail["now"]:
            raise RuntimeError("boom")
        return batch

    batcher = Batcher(model)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.predict(rows(1))
    fail["now"] = False
    assert batcher.predict(rows(5))[0].ravel().tolist() == [5]


@pytest.mark.parametrize("cpu_max, expected", [("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)])
def test_usable_cpus_follow_the_cgroup_quota(tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (min(expected, affinity) if expected else affinity)


def test_usable_cpus_read_cgroup_v1(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert usable_cpus(tmp_path) == 1


def test_one_request_larger_than_max_images_runs_as_several_calls_in_order():
    calls = []

    def model(batch):
        calls.append(len(batch))
        return batch * 10

    scores, _, _ = Batcher(model, max_images=4).predict(rows(*range(10)))
    assert calls == [4, 4, 2]
    assert scores.ravel().tolist() == [10 * i for i in range(10)]


def test_a_lone_request_is_spread_over_the_workers_and_reassembled_in_order():
    inside, both_in = [], threading.Event()
    lock = threading.Lock()

    def model(batch):
        with lock:
            inside.append(len(batch))
            if len(inside) == 2:
                both_in.set()
        assert both_in.wait(10), "the second worker never ran in parallel"
        return batch + 100

    scores, _, largest = Batcher(model, max_images=2, workers=2).predict(rows(*range(4)))
    assert scores.ravel().tolist() == [100, 101, 102, 103]
    assert sorted(inside) == [2, 2] and largest == 2


def test_each_worker_prepares_itself_once_on_its_own_thread_before_its_first_call():
    prepared_on: list[str] = []
    gate = threading.Event()
    called_on: list[str] = []

    def prepare() -> None:
        gate.wait(10)
        prepared_on.append(threading.current_thread().name)

    def model(batch: np.ndarray) -> np.ndarray:
        called_on.append(threading.current_thread().name)
        return batch * 2

    batcher = Batcher(model, max_images=1, workers=2, prepare=prepare)
    try:
        batcher.start()
        assert not batcher.prepared()  # still preparing: not ready to be called warm
        gate.set()
        assert batcher.prepared(timeout=10)
        assert sorted(prepared_on) == ["model-call-0", "model-call-1"]
        scores, _, _ = batcher.predict(rows(1, 2, 3))
        assert scores[:, 0].tolist() == [2, 4, 6]
        assert set(called_on) <= set(prepared_on) and len(prepared_on) == 2  # never prepared again
    finally:
        batcher.stop()


def test_a_worker_whose_preparation_fails_still_serves_and_counts_as_prepared():
    def prepare() -> None:
        raise RuntimeError("the model is not loaded")

    batcher = Batcher(lambda batch: batch + 1, workers=1, prepare=prepare)
    try:
        batcher.start()
        assert batcher.prepared(timeout=10)
        assert batcher.predict(rows(1))[0][:, 0].tolist() == [2]
    finally:
        batcher.stop()


def test_without_a_preparation_the_queue_is_prepared_from_the_start():
    batcher = Batcher(lambda batch: batch, workers=2)
    assert batcher.prepared()
    batcher.stop()


def test_submit_returns_at_once_and_gather_gives_the_scores_in_the_order_submitted():
    model = GatedModel()
    batcher = Batcher(model, max_images=1, workers=2)
    try:
        calls = [batcher.submit(rows(v)) for v in (1, 2, 3)]  # the first call blocks: submit must not
        wait_until(model.entered.is_set)
        assert not any(piece.future.done() for call in calls for piece in call.pieces)
        model.release.set()
        scores, queue_ms = batcher.gather(calls)
        assert scores.ravel().tolist() == [2, 4, 6] and queue_ms >= 0
    finally:
        model.release.set()
        batcher.stop()


def test_a_cancelled_call_never_reaches_the_model():
    seen: list[list[float]] = []
    entered, release = threading.Event(), threading.Event()

    def model(batch):
        seen.append(batch.ravel().tolist())
        entered.set()
        assert release.wait(10)
        return batch * 2

    batcher = Batcher(model, max_images=1)
    try:
        first = batcher.submit(rows(1))
        assert entered.wait(10)
        unread = batcher.submit(rows(2))  # queued behind the first call
        batcher.cancel([unread])
        release.set()
        probe = batcher.submit(rows(3))  # queued after the cancelled one: its answer means it was passed over
        scores, _ = batcher.gather([first, probe])
    finally:
        release.set()
        batcher.stop()
    assert scores.ravel().tolist() == [2, 6]
    assert seen == [[1], [3]]


def test_a_call_submitted_after_stop_raises_and_queues_nothing():
    batcher = Batcher(lambda batch: batch, max_images=1)
    batcher.start()
    batcher.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit(rows(1))
