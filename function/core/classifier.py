"""The classifier: photo sources in, per-photo predictions out, every stage timed.

On a cold instance the model download/load, the label map and the photo fetches all start at once;
the request then waits for whichever is last, hands its photos to the model's call queue (small
calls, in parallel, shared with other requests) and takes the top k per photo.

Transport-free and narrow: ``classify(sources, k) -> Classification``. It is handed everything it
works with (the composition root, ``function/app.py``, builds them): the photo fetcher and pool,
the model and label map as things that load in the background, and the model's call queue. Fan-out,
request ids and answers are the callers' business.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol, TypeVar

import numpy as np

from ..config import Config
from ..errors import PhotoError
from .labels import LabelMap
from .photos import DecodeBudget, LoadedPhoto, PhotoReader, allowed_formats, limit_decoders, load
from .results import Classification, PhotoResult, Prediction
from .sources import PhotoSource

T_co = TypeVar("T_co", covariant=True)
T = TypeVar("T")

Progress = Callable[[int, int], None]


class Loadable(Protocol[T_co]):
    """Something loaded once in the background (``function.model.lifecycle.LazyResource``)."""

    @property
    def state(self) -> str: ...

    @property
    def error(self) -> str | None: ...

    @property
    def load_seconds(self) -> float | None: ...

    def start(self) -> None: ...

    def ready(self) -> bool: ...

    def get(self, timeout: float | None = None) -> T_co: ...


class Model(Protocol):
    """What the classifier needs of a loaded model: its load timings, for a cold request's answer."""

    timings_ms: dict[str, float]


class CallQueue(Protocol):
    """The model's call queue (``function.model.batching.Batcher``)."""

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, float, int]: ...


def top_k(scores: np.ndarray, k: int, labels: LabelMap) -> list[Prediction]:
    """The k best classes of one score vector, best first (ties: lower id first)."""
    k = min(k, scores.shape[0])
    idx = np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.lexsort((idx, -scores[idx]))]
    return [Prediction(int(i), labels[int(i)], float(scores[i])) for i in idx]


def _report_progress(futures: Sequence[Future[Any]], progress: Progress) -> None:
    done, lock = [0], threading.Lock()

    def one_more(_: Future[Any]) -> None:
        with lock:
            done[0] += 1
            progress(done[0], len(futures))

    for future in futures:
        future.add_done_callback(one_more)


class _Share:
    """One request's place in the :class:`FairPool`: its waiting photos and how many are running."""

    def __init__(self) -> None:
        self.pending: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self.running = 0


class FairPool:
    """The photo pool, shared fairly between requests.

    Each request may always have ``per_request`` photos in flight (its share), and a worker that
    frees up goes to the next request in turn (round-robin) that has photos waiting. Past its share,
    a request may use idle workers too, but only while more than ``reserve`` stay idle: the pool is
    not left unused when a request is alone (a five-photo request fetches its five at once, the
    CLI's list runs ``workers - reserve`` at a time), and a request that arrives later always finds
    a worker. So one request with 64 stalled URLs holds at most ``workers - reserve`` workers, and
    a one-photo request arriving after it starts at once instead of waiting behind its queue
    (measured before: 50 s). Defaults: the share is FETCH_WORKERS // THREADS (each request served
    at once has its share, all together the pool) and the reserve min(THREADS - 1, FETCH_WORKERS // 4):
    a worker for each other request, but never more than a quarter of the pool. Nothing waits in
    the executor's own queue: at most ``workers`` tasks are handed to it at a time.
    """

    def __init__(self, executor: Executor, workers: int, per_request: int, reserve: int = 0):
        self._executor = executor
        self._workers = workers
        self.per_request = per_request
        self.reserve = reserve
        self._lock = threading.Lock()
        self._ring: deque[_Share] = deque()
        self._running = 0

    def share(self) -> _Share:
        return _Share()

    def submit(self, share: _Share, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            share.pending.append((future, fn, args))
            if share not in self._ring:
                self._ring.append(share)
        self._dispatch()
        return future

    def _next(self) -> tuple[_Share, Future[Any], Callable[..., Any], tuple[Any, ...]] | None:
        """The next photo to start, taking requests in turn; called with the lock held."""
        for _ in range(len(self._ring)):
            share = self._ring[0]
            self._ring.rotate(-1)
            while share.pending and (share.running < self.per_request
                                     or self._workers - self._running > self.reserve):
                future, fn, args = share.pending.popleft()
                if not share.pending:
                    self._ring.remove(share)
                if future.set_running_or_notify_cancel():  # False: cancelled at its request's deadline
                    return share, future, fn, args
        return None

    def _dispatch(self) -> None:
        with self._lock:
            while self._running < self._workers and (task := self._next()) is not None:
                share, future, fn, args = task
                self._running += 1
                share.running += 1
                try:
                    self._executor.submit(self._run, share, future, fn, args)
                except RuntimeError as exc:  # the executor is shut down (the app is stopping)
                    self._running -= 1
                    share.running -= 1
                    future.set_exception(exc)

    def _run(self, share: _Share, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # the caller sees it from future.result()
            future.set_exception(exc)
        finally:
            with self._lock:
                self._running -= 1
                share.running -= 1
            self._dispatch()


class Classifier:
    """Long-lived, shared by all threads of the process: ``start()``, ``ready()``, ``classify()``."""

    def __init__(self, config: Config, fetcher: PhotoReader, pool: Executor, model: Loadable[Model],
                 labels: Loadable[LabelMap], calls: CallQueue):
        self.config = config
        self.fetcher = fetcher
        self.model = model
        self.labels = labels
        self.calls = calls
        per_request = config.fetch_per_request or max(1, config.fetch_workers // config.threads)
        # One free worker kept for each other request that may be served at once, but never more than a
        # quarter of the pool: a lone request still gets most of it (THREADS=16 left it 1 worker).
        reserve = min(max(0, config.threads - 1), config.fetch_workers // 4)
        self._pool = FairPool(pool, config.fetch_workers, per_request, reserve=reserve)
        self.formats = allowed_formats(config.photo_formats)
        self.decoding = DecodeBudget(config.decode_budget_mpx * 1_000_000)
        limit_decoders(config.max_photo_pixels)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Begin loading the model and the label map in the background (idempotent)."""
        self.model.start()
        self.labels.start()

    def ready(self) -> bool:
        return self.model.ready() and self.labels.ready()

    def status(self) -> dict[str, Any]:
        return {name: {"state": r.state, "error": r.error}
                for name, r in (("model", self.model), ("labels", self.labels))}

    # -- work -------------------------------------------------------------------------------
    def _wait(self, future: Future[LoadedPhoto], deadline: float) -> LoadedPhoto:
        """The photo's outcome, or a deadline error when the request's time is up."""
        try:
            return future.result(timeout=max(0.0, deadline - time.perf_counter()))
        except FutureTimeout:
            future.cancel()  # not started yet: never will be; running: bounded by its own timeouts
            err = PhotoError("deadline_exceeded", f"the request's deadline of {self.config.request_deadline_s:g} s "
                             "passed before this photo was fetched and decoded", retryable=True)
            return LoadedPhoto(None, err, self.config.request_deadline_s * 1000, 0.0, 0)

    def classify(self, sources: Sequence[PhotoSource], k: int | None = None,
                 progress: Progress | None = None) -> Classification:
        """Classify every source; photo problems become per-photo errors.

        ``progress(done, total)``, if given, is called as each photo is fetched and decoded (from
        the fetching threads, one call at a time, ``done`` counting up): the CLI's progress bar.

        Raises :class:`~function.errors.NotReady` when the model or label map cannot be had: that
        is the request's problem, not one photo's.
        """
        k = k or self.config.top_k
        t0 = time.perf_counter()
        cold = not self.ready()
        self.start()
        # Each fetch runs in a copy of this thread's context, so its log records carry the request id.
        share = self._pool.share()
        # a photo waits for decoding memory no longer than its request waits for it
        decode_by = time.monotonic() + self.config.request_deadline_s
        futures = [self._pool.submit(share, contextvars.copy_context().run, load, self.fetcher, s,
                                     self.config.max_photo_pixels, self.formats, self.decoding, decode_by)
                   for s in sources]
        if progress is not None:
            _report_progress(futures, progress)
        deadline = t0 + self.config.request_deadline_s
        loaded = [self._wait(f, deadline) for f in futures]
        t_photos = time.perf_counter()
        timings: dict[str, float] = {
            "fetch": max((p.fetch_ms for p in loaded), default=0.0),
            "decode": sum(p.decode_ms for p in loaded),
            "photos": (t_photos - t0) * 1000,
        }
        results = [PhotoResult(s, error=p.error) for s, p in zip(sources, loaded, strict=True)]
        good = [(i, p.pixels) for i, p in enumerate(loaded) if p.pixels is not None]
        if good:
            model = self.model.get(timeout=self.config.model_wait_s)
            labels = self.labels.get(timeout=self.config.model_wait_s)
            t_ready = time.perf_counter()
            timings["model_wait"] = (t_ready - t_photos) * 1000
            if cold:  # this request waited for the loads: show what they cost
                timings.update(model.timings_ms)
                timings["label_map"] = (self.labels.load_seconds or 0.0) * 1000
            batch = np.stack([pixels for _, pixels in good])
            scores, queue_ms, _ = self.calls.predict(batch)
            t_inf = time.perf_counter()
            timings["queue"] = queue_ms
            timings["inference"] = (t_inf - t_ready) * 1000 - queue_ms
            for row, (i, _) in enumerate(good):
                results[i].predictions = top_k(scores[row], k, labels)
            timings["topk"] = (time.perf_counter() - t_inf) * 1000
        timings["total"] = (time.perf_counter() - t0) * 1000
        return Classification(results, timings)
