"""LazyResource: loaded once per process in the background, with a visible lifecycle and retries."""

from __future__ import annotations

import threading
import time

import pytest

from function.errors import NotReady
from function.model.lifecycle import LazyResource

WAIT = 10.0  # upper bound for anything that should happen at once; never reached when tests pass


class Loader:
    """A loader that counts its calls, can be held until released, and fails while told to."""

    def __init__(self, value: object = "model", hold: bool = False, failures: int = 0):
        self.value = value
        self.failures = failures
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self._lock = threading.Lock()

    def __call__(self) -> object:
        with self._lock:
            self.calls += 1
            fail = self.calls <= self.failures
        self.entered.set()
        assert self.release.wait(WAIT), "the test never released the loader"
        if fail:
            raise RuntimeError(f"download failed (attempt {self.calls})")
        return self.value


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_for(predicate, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        threading.Event().wait(0.001)


def test_a_new_resource_is_not_loaded_and_nothing_is_loaded_yet():
    loader = Loader()
    resource = LazyResource("model", loader)
    assert resource.state == "not_loaded"
    assert not resource.ready()
    assert loader.calls == 0


def test_the_state_goes_from_not_loaded_through_loading_to_ready():
    loader = Loader(hold=True)
    resource = LazyResource("model", loader)
    assert resource.state == "not_loaded"
    resource.start()
    assert loader.entered.wait(WAIT)
    assert resource.state == "loading"
    assert not resource.ready()
    loader.release.set()
    assert resource.get(timeout=WAIT) == "model"
    assert resource.state == "ready"
    assert resource.ready()
    assert resource.error is None
    assert resource.load_seconds is not None and resource.load_seconds >= 0


def test_start_returns_while_the_loader_is_still_running():
    loader = Loader(hold=True)
    resource = LazyResource("model", loader)
    resource.start()  # would not return before WAIT if it ran the loader in this thread
    assert not loader.release.is_set()
    assert loader.entered.wait(WAIT)
    assert resource.state == "loading"
    loader.release.set()
    assert resource.get(timeout=WAIT) == "model"


def test_many_threads_asking_at_once_share_one_load():
    loader = Loader(value=object(), hold=True)
    resource = LazyResource("model", loader)
    callers = 16
    barrier = threading.Barrier(callers + 1)
    values, errors = [], []

    def ask():
        barrier.wait(WAIT)
        try:
            values.append(resource.get(timeout=WAIT))
        except Exception as exc:  # reported below rather than lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(callers)]
    for t in threads:
        t.start()
    barrier.wait(WAIT)  # every caller is about to ask
    assert loader.entered.wait(WAIT)
    loader.release.set()
    for t in threads:
        t.join(WAIT)
    assert errors == []
    assert len(values) == callers and all(v is loader.value for v in values)
    assert loader.calls == 1
    assert resource.loads_started == 1


def test_start_while_loading_or_ready_does_not_load_again():
    loader = Loader(hold=True)
    resource = LazyResource("model", loader)
    resource.start()
    resource.start()
    loader.release.set()
    resource.get(timeout=WAIT)
    resource.start()
    assert resource.get(timeout=WAIT) == "model"
    assert loader.calls == 1


def test_get_raises_not_ready_while_still_loading_past_its_timeout():
    loader = Loader(hold=True)
    resource = LazyResource("model", loader)
    with pytest.raises(NotReady) as caught:
        resource.get(timeout=0.01)
    assert caught.value.state == "loading"
    assert "model is loading" in str(caught.value)
    loader.release.set()


def test_after_a_failure_get_raises_not_ready_with_the_reason():
    resource = LazyResource("label map", Loader(failures=1), retry_after_s=10.0, clock=FakeClock())
    with pytest.raises(NotReady) as caught:
        resource.get(timeout=WAIT)
    err = caught.value
    assert err.state == "failed"
    assert err.reason == "RuntimeError: download failed (attempt 1)"
    assert str(err).startswith("label map ") and str(err).endswith(err.reason)
    assert err.retry_after_s == 10.0
    assert resource.state == "failed"
    assert resource.error == err.reason


def test_a_failure_is_retried_only_after_the_retry_interval_and_then_succeeds():
    clock = FakeClock()
    loader = Loader(failures=1)
    resource = LazyResource("model", loader, retry_after_s=10.0, clock=clock)
    with pytest.raises(NotReady):
        resource.get(timeout=WAIT)

    clock.now += 9.5
    with pytest.raises(NotReady) as caught:
        resource.get(timeout=WAIT)
    assert loader.calls == 1, "retried before the interval passed"
    assert caught.value.state == "failed"
    assert caught.value.retry_after_s == 1.0  # half a second left, rounded up to one

    clock.now += 0.5
    assert resource.get(timeout=WAIT) == "model"
    assert loader.calls == 2
    assert resource.loads_started == 2
    assert resource.state == "ready"
    assert resource.error is None


def test_start_alone_retries_a_failure_once_the_interval_has_passed():
    clock = FakeClock()
    loader = Loader(failures=1)
    resource = LazyResource("model", loader, retry_after_s=5.0, clock=clock)
    resource.start()
    wait_for(lambda: resource.state == "failed")
    resource.start()
    assert resource.state == "failed" and loader.calls == 1
    clock.now += 5.0
    resource.start()
    wait_for(resource.ready)
    assert loader.calls == 2


def test_a_load_waiting_on_a_failed_dependency_is_not_failed_itself_and_follows_its_retry():
    clock = [100.0]
    attempts = []

    def base_loader():
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("hub answered 503")
        return "model"

    base = LazyResource("model", base_loader, retry_after_s=30, clock=lambda: clock[0])
    dependent = LazyResource("label map", lambda: f"labels for {base.get(timeout=5)}", retry_after_s=30,
                             clock=lambda: clock[0])
    with pytest.raises(NotReady):
        dependent.get(timeout=5)
    assert base.state == "failed" and dependent.state == "not_loaded" and "hub answered 503" in dependent.error
    clock[0] += 31  # the model's back-off is over: the label map is loaded with it, without a back-off of its own
    assert dependent.get(timeout=5) == "labels for model"
