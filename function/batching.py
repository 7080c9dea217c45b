"""Dynamic batching: requests that arrive together share one model call.

One worker thread owns the model calls. A request puts its photo batch on the queue and waits; the
worker takes the first waiting batch, then everything else already queued (up to ``max_images``),
optionally waiting up to ``max_wait_s`` for more, and runs them as one call. With the default wait
of 0 nothing is delayed: a lone request runs at once, and requests that pile up while the model is
busy go together in the next call (the way Triton's and BentoML's dynamic batchers behave at
``max_queue_delay`` 0). One caller at a time also keeps TensorFlow's thread pool from being
oversubscribed by many concurrent calls on a small CPU share.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Job:
    batch: np.ndarray
    submitted: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None
    queue_ms: float = 0.0
    batch_images: int = 0


@dataclass
class BatchStats:
    calls: int = 0
    images: int = 0
    largest: int = 0


class Batcher:
    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_images: int = 64, max_wait_s: float = 0.0):
        self._predict = predict
        self.max_images = max_images
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self.stats = BatchStats()

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, float, int]:
        """Scores for ``batch``; also the ms it queued and the size of the call it rode in."""
        job = _Job(batch)
        self._ensure_worker()
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result, job.queue_ms, job.batch_images  # type: ignore[return-value]

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="model-batcher", daemon=True)
                self._worker.start()

    def _collect(self) -> list[_Job]:
        jobs = [self._queue.get()]
        images = len(jobs[0].batch)
        deadline = time.perf_counter() + self.max_wait_s
        while images < self.max_images:
            try:
                remaining = deadline - time.perf_counter()
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if images + len(job.batch) > self.max_images:
                self._queue.put(job)  # next call; keeps the call within max_images
                break
            jobs.append(job)
            images += len(job.batch)
        return jobs

    def _run(self) -> None:
        while True:
            jobs = self._collect()
            started = time.perf_counter()
            sizes = [len(j.batch) for j in jobs]
            try:
                scores = self._predict(np.concatenate([j.batch for j in jobs]) if len(jobs) > 1 else jobs[0].batch)
                parts = np.split(scores, np.cumsum(sizes)[:-1])
            except BaseException as exc:  # each waiting request gets the error, the worker lives on
                parts = [None] * len(jobs)
                for j in jobs:
                    j.error = exc
            self.stats.calls += 1
            self.stats.images += sum(sizes)
            self.stats.largest = max(self.stats.largest, sum(sizes))
            if len(jobs) > 1:
                log.debug("batched %d requests into one call of %d images", len(jobs), sum(sizes))
            for job, part in zip(jobs, parts, strict=True):
                job.result, job.queue_ms, job.batch_images = part, (started - job.submitted) * 1000, sum(sizes)
                job.done.set()
