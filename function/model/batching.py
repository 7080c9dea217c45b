"""The model's call queue: bounded calls, several in parallel, shared by concurrent requests.

Batches are queued in pieces of at most ``max_images``; each worker takes a piece, adds those already
waiting (up to ``max_wait_s`` for more) while the call stays within ``max_images``, and runs one call.
Small calls in parallel, because on a small CPU the model runs fastest per image in calls of one or
two images on one thread each (docs/performance.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Piece:
    """Part of one request's batch; its scores come back through ``future``."""

    pixels: np.ndarray
    future: futures.Future[np.ndarray] = field(default_factory=futures.Future)
    started: float = 0.0  # when its call started
    call_size: int = 0


@dataclass
class Call:
    """A submitted batch: :meth:`result` waits for its scores."""

    pieces: list[_Piece]
    submitted: float = field(default_factory=time.perf_counter)

    def result(self) -> tuple[np.ndarray, float, int]:
        """The scores; also the ms before its first call started and the largest call it rode in."""
        futures.wait([piece.future for piece in self.pieces])
        scores = np.concatenate([piece.future.result() for piece in self.pieces])  # raises a failed call's error
        queue_ms = (min(piece.started for piece in self.pieces) - self.submitted) * 1000
        return scores, queue_ms, max(piece.call_size for piece in self.pieces)


@dataclass
class BatchStats:
    calls: int = 0
    images: int = 0
    largest: int = 0


class Batcher:
    """``prepare``, if given, runs once on each worker thread before its first call: a runtime whose
    state is per thread (LiteRT's interpreters) builds and warms it there, not in a request's call."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_images: int = 2, max_wait_s: float = 0.0,
                 workers: int = 1, prepare: Callable[[], None] | None = None):
        self._predict = predict
        self._prepare = prepare
        self.max_images = max_images
        self.max_wait_s = max_wait_s
        self.workers = workers
        self._queue: queue.Queue[_Piece | None] = queue.Queue()  # None: a worker's signal to end
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._prepared = 0
        self._all_prepared = threading.Event()
        if prepare is None:
            self._all_prepared.set()
        self._stopped = False
        self.stats = BatchStats()

    def start(self) -> None:
        """Start the workers now (each prepares itself in the background) rather than at the first call."""
        with self._lock:
            if not self._stopped:
                self._ensure_workers()

    def prepared(self, timeout: float | None = 0.0) -> bool:
        """Whether every worker has run ``prepare`` (tried it: a failure is the first call's to report),
        waiting up to ``timeout`` seconds for it (None: as long as it takes)."""
        return self._all_prepared.wait(timeout)

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the workers once the calls already queued are done; later ``submit`` calls raise."""
        with self._lock:  # a submit either queued before the workers' end signals or raises
            self._stopped = True
            threads = list(self._threads)
            for _ in threads:
                self._queue.put(None)
        deadline = time.monotonic() + timeout_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def submit(self, batch: np.ndarray) -> Call:
        """Queue ``batch`` and return at once: a request hands each photo over as soon as it is decoded, so
        the model works on the first ones while the last are still downloading."""
        step = self.max_images
        call = Call([_Piece(batch[offset:offset + step]) for offset in range(0, len(batch), step)])
        with self._lock:
            if self._stopped:
                raise RuntimeError("the model's call queue is stopped")
            self._ensure_workers()
            for piece in call.pieces:
                self._queue.put(piece)
        return call

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, float, int]:
        """``submit(batch).result()``."""
        return self.submit(batch).result()

    @staticmethod
    def cancel(calls: Sequence[Call]) -> None:
        """Calls whose scores nobody will read: their pieces not yet in a model call never go into one."""
        for call in calls:
            for piece in call.pieces:
                piece.future.cancel()

    @staticmethod
    def gather(calls: Sequence[Call]) -> tuple[np.ndarray, float]:
        """The scores of ``calls``, in order, and the ms the last one submitted waited for its model call."""
        futures.wait([piece.future for call in calls for piece in call.pieces])
        last = max(calls, key=lambda call: call.submitted)
        return np.concatenate([call.result()[0] for call in calls]), last.result()[1]

    def _ensure_workers(self) -> None:
        """Called with the lock held."""
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.workers:
            t = threading.Thread(target=self._run, name=f"model-call-{len(self._threads)}", daemon=True)
            t.start()
            self._threads.append(t)

    def _collect(self) -> list[_Piece] | None:
        first = self._queue.get()
        while first is not None and not first.future.set_running_or_notify_cancel():  # cancelled: skip
            first = self._queue.get()
        if first is None:
            return None
        pieces = [first]
        images = len(first.pixels)
        deadline = time.perf_counter() + self.max_wait_s
        while images < self.max_images:
            try:
                remaining = deadline - time.perf_counter()
                piece = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if piece is None:  # stopping: let another worker see the signal after this call
                self._queue.put(None)
                break
            if images + len(piece.pixels) > self.max_images:
                self._queue.put(piece)  # the next call takes it
                break
            if not piece.future.set_running_or_notify_cancel():
                continue
            pieces.append(piece)
            images += len(piece.pixels)
        return pieces

    def _run(self) -> None:
        if self._prepare is not None:
            try:
                self._prepare()
            except Exception as exc:  # not loaded, or failed: the calls say so, with the reason
                log.debug("a model-call worker could not prepare: %s", exc)
            with self._lock:
                self._prepared += 1
                if self._prepared >= self.workers:
                    self._all_prepared.set()
        while (pieces := self._collect()) is not None:
            started = time.perf_counter()
            images = sum(len(p.pixels) for p in pieces)
            scores, error = None, None
            try:
                batch = np.concatenate([p.pixels for p in pieces]) if len(pieces) > 1 else pieces[0].pixels
                scores = self._predict(batch)
            except BaseException as exc:  # each waiting request gets the error; the worker lives on
                error = exc
            with self._lock:
                self.stats.calls += 1
                self.stats.images += images
                self.stats.largest = max(self.stats.largest, images)
            if len(pieces) > 1:
                log.debug("one call for %d pieces, %d images", len(pieces), images)
            start = 0
            for piece in pieces:
                piece.started, piece.call_size = started, images
                if scores is None:
                    piece.future.set_exception(error)
                else:
                    piece.future.set_result(scores[start:start + len(piece.pixels)])
                start += len(piece.pixels)
