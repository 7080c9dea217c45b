"""The classifier: photo sources in, per-photo predictions out, every stage timed.

On a cold instance the model download/load (with the TensorFlow import), the label map and the
photo fetches all start at once; the request then waits for whichever is last, hands its photos to
the model's call queue (``batching.py``: small calls, in parallel, shared with other requests) and
takes the top k per photo.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests
from requests.adapters import HTTPAdapter

from .batching import Batcher
from .config import Config
from .cpu import usable_cpus
from .fanout import FanOut
from .guard import AddressPolicy, guard_session
from .labels import LabelMap
from .model import BirdModel
from .photos import LoadedPhoto, PhotoError, PhotoFetcher, PhotoSource, load
from .resource import LazyResource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    id: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "score": round(self.score, 6)}


@dataclass
class PhotoResult:
    source: PhotoSource
    predictions: list[Prediction] = field(default_factory=list)
    error: PhotoError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        key = "url" if self.source.kind == "url" else "file"
        return {key: self.source.ref, "predictions": [p.to_dict() for p in self.predictions],
                "error": self.error.to_dict() if self.error else None}


@dataclass
class Classification:
    results: list[PhotoResult]
    timings_ms: dict[str, float]

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"results": [r.to_dict() for r in self.results],
                "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()}}


def top_k(scores: np.ndarray, k: int, labels: LabelMap) -> list[Prediction]:
    """The k best classes of one score vector, best first (ties: lower id first)."""
    k = min(k, scores.shape[0])
    idx = np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.lexsort((idx, -scores[idx]))]
    return [Prediction(int(i), labels[int(i)], float(scores[i])) for i in idx]


def new_session(pool_size: int, user_agent: str) -> requests.Session:
    """One pooled session per process: keep-alive connections to the same photo host are reused."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    return session


_shared: dict[tuple[str, str], LazyResource[Any]] = {}
_shared_lock = threading.Lock()


def shared_resource(name: str, url: str, loader: Callable[[], Any], retry_after_s: float) -> LazyResource[Any]:
    """One resource per (name, URL) per process: a container instance fetches the model once,
    however many classifiers (configurations, app objects in tests) ask for it."""
    with _shared_lock:
        key = (name, url)
        if key not in _shared:
            _shared[key] = LazyResource(name, loader, retry_after_s)
        return _shared[key]


Progress = Callable[[int, int], None]


def _report_progress(futures: Sequence[Future[Any]], progress: Progress) -> None:
    done, lock = [0], threading.Lock()

    def one_more(_: Future[Any]) -> None:
        with lock:
            done[0] += 1
            progress(done[0], len(futures))

    for future in futures:
        future.add_done_callback(one_more)


class Classifier:
    """Long-lived, shared by all threads of the process: ``start()``, ``ready()``, ``classify()``."""

    def __init__(self, config: Config, session: requests.Session | None = None):
        self.config = config
        # Photos come from caller-supplied URLs: their session goes through the SSRF guard.
        # The label map and fan-out target come from configuration and are trusted.
        self.session = session or new_session(config.fetch_workers, config.user_agent)
        self.photo_session = self.session
        if config.ssrf_guard:
            policy = AddressPolicy.from_trusted(config.trusted_hosts.split(","))
            self.photo_session = guard_session(new_session(config.fetch_workers, config.user_agent), policy,
                                               config.fetch_workers)
        self.photo_session.max_redirects = 5
        self.fetcher = PhotoFetcher(self.photo_session, config.connect_timeout_s, config.read_timeout_s,
                                    config.max_photo_bytes, config.fetch_retries, config.photo_deadline_s)
        cpus = usable_cpus()
        # Parallel single-threaded calls beat one multi-threaded call for this model on a small
        # CPU (docs/performance.md): one intra-op thread per call, one call per usable CPU.
        workers = config.inference_workers or cpus
        intra = config.tf_intra_op_threads or 1
        inter = config.tf_inter_op_threads or max(2, workers)
        self.model: LazyResource[BirdModel] = shared_resource(
            "model", config.model_url,
            lambda: BirdModel.load(config.model_url, intra, inter, config.warmup, config.tfhub_cache_dir),
            config.model_load_retry_s)
        self.labels: LazyResource[LabelMap] = shared_resource(
            "label map", config.labels_url,
            lambda: LabelMap.fetch(self.session, config.labels_url, config.labels_timeout_s),
            config.model_load_retry_s)
        self._pool = ThreadPoolExecutor(config.fetch_workers, thread_name_prefix="photo")
        self.fanout = (FanOut(self.session, config.fanout_url, config.fanout_chunk, config.fanout_timeout_s)
                       if config.fanout_url else None)
        self.batcher = Batcher(lambda batch: self.model.get().predict(batch), config.max_batch_images,
                               config.batch_wait_ms / 1000, workers)

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

    def classify(self, sources: Sequence[PhotoSource], k: int | None = None, fan_out: bool = False,
                 request_id: str | None = None, progress: Progress | None = None) -> Classification:
        """Classify every source; photo problems become per-photo errors.

        ``progress(done, total)``, if given, is called as each photo is fetched and decoded (from
        the fetching threads, one call at a time, ``done`` counting up): the CLI's progress bar.

        With ``fan_out`` and ``FANOUT_URL`` configured, a big request is split across instances.
        Raises :class:`~function.resource.NotReady` when the model or label map cannot be had:
        that is the request's problem, not one photo's.
        """
        k = k or self.config.top_k
        if fan_out and self.fanout is not None and self.fanout.wanted(sources):
            return self.fanout.run(self._classify_here, sources, k, request_id)
        return self._classify_here(sources, k, progress)

    def _classify_here(self, sources: Sequence[PhotoSource], k: int,
                       progress: Progress | None = None) -> Classification:
        t0 = time.perf_counter()
        cold = not self.ready()
        self.start()
        # Each fetch runs in a copy of this thread's context, so its log records carry the request id.
        futures = [self._pool.submit(contextvars.copy_context().run, load, self.fetcher, s,
                                     self.config.max_photo_pixels) for s in sources]
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
        good = [i for i, p in enumerate(loaded) if p.pixels is not None]
        if good:
            model = self.model.get(timeout=self.config.model_wait_s)
            labels = self.labels.get(timeout=self.config.model_wait_s)
            t_ready = time.perf_counter()
            timings["model_wait"] = (t_ready - t_photos) * 1000
            if cold:  # this request waited for the loads: show what they cost
                timings.update(model.timings_ms)
                timings["label_map"] = (self.labels.load_seconds or 0.0) * 1000
            batch = np.stack([loaded[i].pixels for i in good])
            scores, queue_ms, _ = self.batcher.predict(batch)
            t_inf = time.perf_counter()
            timings["queue"] = queue_ms
            timings["inference"] = (t_inf - t_ready) * 1000 - queue_ms
            for row, i in enumerate(good):
                results[i].predictions = top_k(scores[row], k, labels)
            timings["topk"] = (time.perf_counter() - t_inf) * 1000
        timings["total"] = (time.perf_counter() - t0) * 1000
        return Classification(results, timings)
