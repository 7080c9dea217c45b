"""The classifier: photo sources in, per-photo predictions out, every stage timed.

On a cold instance the model, the label map and the photo fetches start at once. Transport-free:
``function/app.py`` hands it everything it works with; fan-out and answers are the callers' business.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol, TypeVar

import numpy as np

from ..config import Config
from ..errors import DeadlineExceeded
from .inputs import Size
from .labels import LabelMap
from .photos import LoadedPhoto, PhotoDecoder, PhotoReader, load
from .pool import FairPool, Progress, report_progress
from .results import Classification, PhotoResult, Prediction
from .sources import PhotoSource

T_co = TypeVar("T_co", covariant=True)


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


class InputSpec(Protocol):
    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...


class Contract(Protocol):
    """What the model declares (``function.model.contract.Contract``)."""

    @property
    def input(self) -> InputSpec: ...

    @property
    def score_threshold(self) -> float | None: ...


class Model(Protocol):
    """What the classifier needs of a loaded model: its contract and its load timings."""

    timings_ms: dict[str, float]

    @property
    def contract(self) -> Contract: ...


class CallQueue(Protocol):
    """The model's call queue (``function.model.batching.Batcher``): ``submit`` returns at once, ``gather``
    waits for the scores of what was submitted and says how long the last of it queued."""

    def submit(self, batch: np.ndarray) -> Any: ...

    def gather(self, calls: Sequence[Any]) -> tuple[np.ndarray, float]: ...

    def cancel(self, calls: Sequence[Any]) -> None: ...


Loaded = tuple[LoadedPhoto, Any]  # the photo, and its call to the model if it was decoded


def top_k(scores: np.ndarray, k: int, labels: LabelMap) -> list[Prediction]:
    """The k best classes of one score vector, best first (ties: lower id first)."""
    k = min(k, scores.shape[0])
    idx = np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.lexsort((idx, -scores[idx]))]
    return [Prediction(int(i), labels[int(i)], float(scores[i]), labels.common_name(int(i))) for i in idx]


def recognised(scores: np.ndarray, labels: LabelMap, threshold: float) -> bool:
    """Whether a bird is named: the best class is not the background and scores ``threshold``."""
    best = int(np.argmax(scores))
    return best not in labels.background and float(scores[best]) >= threshold


class Classifier:
    """Long-lived, shared by all threads of the process: ``start()``, ``ready()``, ``classify()``."""

    def __init__(self, config: Config, reader: PhotoReader, decoder: PhotoDecoder, pool: Executor,
                 model: Loadable[Model], labels: Loadable[LabelMap], calls: CallQueue):
        self.config, self.reader, self.decoder = config, reader, decoder
        self.model, self.labels, self.calls = model, labels, calls
        per_request = config.fetch_per_request or max(1, config.fetch_workers // config.threads)
        # A free worker kept for each other request served at once, but at most a quarter of the pool.
        reserve = min(max(0, config.threads - 1), config.fetch_workers // 4)
        self._pool = FairPool(pool, config.fetch_workers, per_request, reserve=reserve)

    def start(self) -> None:
        """Begin loading the model and the label map in the background (idempotent)."""
        self.model.start()
        self.labels.start()

    def ready(self) -> bool:
        return self.model.ready() and self.labels.ready()

    def status(self) -> dict[str, Any]:
        return {name: {"state": r.state, "error": r.error}
                for name, r in (("model", self.model), ("labels", self.labels))}

    def _input_size(self) -> Size:
        """The loaded model's input size (width, height), waiting for the model's load if it is under way."""
        spec = self.model.get(timeout=self.config.model_wait_s).contract.input
        return spec.width, spec.height

    def _load(self, source: PhotoSource, deadline: float, request: object) -> Loaded:
        """On a photo thread: load the photo and hand it to the model at once (its decode waited for the
        model), so the model's calls overlap the slower downloads; a photo the request stopped waiting
        for (``deadline``, monotonic) is not handed over: nobody would read its scores."""
        photo = load(self.reader, self.decoder, source, self._input_size, deadline, request)
        if photo.pixels is None:
            return photo, None
        if time.monotonic() >= deadline:
            return self._late(photo), None
        return photo, self.calls.submit(photo.pixels[np.newaxis])

    def _late(self, photo: LoadedPhoto | None = None) -> LoadedPhoto:
        """The deadline error, with the photo's own figures if it did load."""
        err = DeadlineExceeded(f"the request's deadline of {self.config.request_deadline_s:g} s "
                               "passed before this photo was fetched and decoded")
        if photo is not None:
            return LoadedPhoto(None, err, photo.fetch_ms, photo.decode_ms, photo.nbytes)
        return LoadedPhoto(None, err, self.config.request_deadline_s * 1000, 0.0, 0)

    def _wait(self, future: Future[Loaded], deadline: float) -> Loaded:
        """The photo's outcome, or a deadline error when the request's time is up (``deadline``, monotonic)."""
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()  # not started yet: never will be; running: bounded by its own timeouts
            # Handed to the model after all (it passed the check just before the deadline): nobody reads it.
            future.add_done_callback(self._cancel_unread)
            return self._late(), None

    def _cancel_unread(self, future: Future[Loaded]) -> None:
        if not future.cancelled() and future.exception() is None and (call := future.result()[1]) is not None:
            self.calls.cancel([call])

    def classify(self, sources: Sequence[PhotoSource], k: int | None = None,
                 progress: Progress | None = None) -> Classification:
        """Classify every source; photo problems become per-photo errors, a model or label map that
        cannot be had :class:`~function.errors.NotReady`. ``progress(done, total)`` is called as each
        photo is loaded (one call at a time): the CLI's progress bar."""
        k = k or self.config.top_k
        t0 = time.perf_counter()
        cold = not self.ready()
        self.start()
        deadline = time.monotonic() + self.config.request_deadline_s  # the photos' and the wait for them
        request = object()  # which request a photo belongs to, for taking turns at the decode workers
        # Each photo runs in a copy of this context, so its log records carry the request id.
        futures: list[Future[Loaded]] = self._pool.submit_all(contextvars.Context.run, [
            (contextvars.copy_context(), self._load, s, deadline, request) for s in sources])
        if progress is not None:
            report_progress(futures, progress)
        try:
            outcomes = [self._wait(f, deadline) for f in futures]
            loaded = [photo for photo, _ in outcomes]
            calls = [(i, call) for i, (_, call) in enumerate(outcomes) if call is not None]
            t_photos = time.perf_counter()
            timings: dict[str, float] = {
                "fetch": max((p.fetch_ms for p in loaded), default=0.0),
                "decode": sum(p.decode_ms for p in loaded),
                "photos": (t_photos - t0) * 1000,
            }
            results = [PhotoResult(s, error=p.error) for s, p in zip(sources, loaded, strict=True)]
            if not calls:
                timings["total"] = (time.perf_counter() - t0) * 1000
                return Classification(results, timings)
            model = self.model.get(timeout=self.config.model_wait_s)
            labels = self.labels.get(timeout=self.config.model_wait_s)
            t_ready = time.perf_counter()
            scores, queue_ms = self.calls.gather([call for _, call in calls])  # raises a failed call's error
        except BaseException:  # the request fails: the photos it handed to the model are nobody's now
            for f in futures:
                f.add_done_callback(self._cancel_unread)
            raise
        t_inf = time.perf_counter()
        timings["model_wait"] = (t_ready - t_photos) * 1000
        if cold:  # this request waited for the loads: show what they cost
            timings.update(model.timings_ms)
            timings["label_map"] = (self.labels.load_seconds or 0.0) * 1000
        timings["queue"] = queue_ms
        timings["inference"] = max(0.0, (t_inf - t_ready) * 1000 - queue_ms)
        threshold = model.contract.score_threshold
        threshold = self.config.score_threshold if threshold is None else threshold
        for row, (i, _) in enumerate(calls):
            results[i].predictions = top_k(scores[row], k, labels)
            results[i].recognised = recognised(scores[row], labels, threshold)
        timings["topk"] = (time.perf_counter() - t_inf) * 1000
        timings["total"] = (time.perf_counter() - t0) * 1000
        return Classification(results, timings)
