"""The composition root: everything built from one :class:`~function.config.Config`, owned in one place.

:class:`App` is what the entry points talk to, through its verbs only; ``start()`` begins the loads,
``readiness()`` reports them, ``stop()`` shuts the pools down. :func:`this_process` gives what the
process keeps (the serving app, the loaded models and label maps), made on first use, never at import.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .config import DEFAULT_LABELS_URL, Config
from .core import outcomes, records
from .core.buckets import Notification
from .core.classifier import Classifier
from .core.decoding import Decoder
from .core.fanout import FanOut
from .core.inputs import allowed_formats
from .core.labels import LabelMap
from .core.outcomes import ObjectsOutcome
from .core.photos import PhotoReader
from .core.pool import Progress
from .core.results import Classification
from .core.sources import PhotoSource
from .errors import (
    Answer,
    FileNotFound,
    FileUnreadable,
    NotReady,
    ObjectUnavailable,
    OwnChunk,
    SenderKeysUnavailable,
    SenderUnproven,
)
from .infra import fetch, files, logs, stores
from .infra.cpu import usable_cpus
from .infra.deadlines import Deadlines
from .infra.deliveries import RecentDeliveries
from .infra.forkserver import ForkServer
from .infra.metrics import Metrics, RequestMeter
from .infra.senders import Senders
from .infra.stores import Outbox
from .model import handles, loader
from .model.batching import Batcher
from .model.lifecycle import LazyResource, ResourceCache
from .model.prefetch import Prefetcher

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    """Whether the app can classify now, and each load's state and error (``/readyz``)."""

    ready: bool
    status: dict[str, Any]


class App:
    """One configured service: the classifier and everything around it."""

    def __init__(self, config: Config, process: Process | None = None, *, quiet_runtime: bool = True,
                 convert_in_background: bool = False):
        self.config = config
        process = process or this_process()
        self._deadlines = Deadlines()
        self._trusted = fetch.new_session(config.fetch_workers, config.user_agent)  # URLs from configuration: no guard
        self._photos = fetch.photo_fetcher(config, self._deadlines)  # callers' URLs: behind the SSRF guard
        self._reader = PhotoReader(self._photos, fetch.object_fetcher(config, self._deadlines), config.max_photo_bytes)
        self._metrics = Metrics()
        self._decoder = _decoder(config, process, self._deadlines, self._metrics)
        self._model = _model(config, process, self._trusted, quiet_runtime, convert_in_background)
        self._labels = _labels(config, process, self._trusted, self._model)
        self._pool = ThreadPoolExecutor(config.fetch_workers, thread_name_prefix="photo")
        self._batcher = Batcher(lambda batch: self._model.get().predict(batch), config.max_batch_images,
                                config.batch_wait_ms / 1000, _inference_workers(config),
                                prepare=self._warm_call_worker if config.warmup else None)
        self._classifier = Classifier(config, self._reader, self._decoder, self._pool, self._model, self._labels,
                                      self._batcher)
        self._fanout = FanOut(fetch.JsonPoster(self._trusted, config.fanout_url, config.fanout_timeout_s),
                              config.fanout_chunk, config.fanout_inflight) if config.fanout_url else None
        # Replies to recent deliveries, bounded by entries and bytes; a 5xx is forgotten, so the broker's
        # retry does the work again.
        self._deliveries: RecentDeliveries[Answer] = RecentDeliveries(
            lambda reply: reply.status >= 500,
            size=lambda r: len(r.body) + sum(len(k) + len(v) for k, v in r.headers.items()))
        self._senders = Senders(config, self._deadlines)  # who may deliver bucket events, and the keys that prove it
        self._results_session, self._outbox, self._recorder = _recorder(config)
        self._metrics.watch(lambda: {name: s["state"] for name, s in self._classifier.status().items()},
                           lambda: self._model.load_seconds,
                           lambda: (self._batcher.stats.calls, self._batcher.stats.images, self._batcher.stats.largest))
        self._stopped = False

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Begin the loads and the model-call workers in the background (idempotent)."""
        self._classifier.start()
        self._batcher.start()

    def readiness(self) -> Readiness:
        """Starts the loads; ready once both are loaded and every model-call worker has warmed up."""
        self.start()
        status = self._classifier.status()
        if self._model.ready():
            model = self._model.get()
            status["model"]["runtime"] = model.runtime
            status["model"]["contract"] = model.contract.to_dict()
        status["event_auth"] = self._senders.status()
        return Readiness(self._classifier.ready() and self._batcher.prepared(), status)

    def wait_until_ready(self, timeout_s: float) -> Readiness:
        """Start the loads and wait, up to ``timeout_s`` in all, until ready or a load has failed."""
        deadline = time.monotonic() + timeout_s
        self.start()
        with contextlib.suppress(NotReady):  # the readiness below says which load failed, and why
            self._model.get(timeout=timeout_s)
            self._labels.get(timeout=max(0.0, deadline - time.monotonic()))
            self._batcher.prepared(timeout=max(0.0, deadline - time.monotonic()))
        return self.readiness()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._reader.close()
        self._decoder.close()
        if self._fanout is not None:
            self._fanout.stop()
        if self._outbox is not None:
            self._outbox.stop()  # the writes under way finish: their deliveries are waiting for them
        self._batcher.stop()
        self._deadlines.stop()
        for session in (self._trusted, self._results_session):
            with contextlib.suppress(Exception):  # closing is best effort at shutdown
                if session is not None:
                    session.close()
        log.info("stopped")

    def _warm_call_worker(self) -> None:
        model = self._model.get(timeout=self.config.model_wait_s)
        warmup = getattr(model, "warmup", None)  # LiteRT's interpreters are per thread; TensorFlow warms at load
        if warmup is not None:
            warmup(self.config.max_batch_images)  # the size of most calls

    # -- verbs ------------------------------------------------------------------------------
    def classify(self, sources: Sequence[PhotoSource], k: int | None = None, *, progress: Progress | None = None,
                 request_id: str | None = None, fanned_out: bool = False,
                 fanout_origin: str | None = None) -> Classification:
        """Classify photos, fanned out when ``FANOUT_URL`` is set unless this is a chunk (``fanned_out``);
        :class:`~function.errors.OwnChunk` for a chunk this instance sent (``fanout_origin``)."""
        k = k or self.config.top_k
        if fanout_origin is not None and self._fanout is not None and self._fanout.sent_here(fanout_origin):
            raise OwnChunk("this instance sent this chunk and classifies its own share; send it to another instance")
        if self._fanout is not None and not fanned_out:
            result = self._fanout.classify(self._classifier.classify, sources, k, request_id)
        else:
            result = self._classifier.classify(sources, k, progress=progress)
        self._metrics.observe(result.timings_ms, [r.error.code for r in result.results if r.error])
        return result

    def classify_objects(self, notification: Notification) -> ObjectsOutcome:
        """Classify a notification's objects (never fanned out: each is read signed by this instance), and
        record each outcome before returning (:class:`~function.errors.ResultNotWritten` if a write failed)."""
        if notification.objects:
            result = self.classify([o.source(self.config) for o in notification.objects], fanned_out=True)
        else:
            result = Classification([], {})
        found = outcomes.outcomes(notification, result)
        if self._recorder is not None:
            self._recorder.record(found.outcomes)
        return found

    def write_beside_files(self, result: Classification) -> list[str]:
        """The CLI's ``--write-results``: ``<photo>.json`` beside each local photo read (classified or failed
        for good)."""
        written = []
        for r in result.results:
            unread = isinstance(r.error, (FileNotFound, FileUnreadable)) or (r.error is not None and r.error.retryable)
            if r.source.kind == "path" and not unread:
                doc = records.document(r, self.config.model_url)
                written.append(files.write_beside(r.source.ref, records.SUFFIX, records.encode(doc)))
        return written

    def deliver_once(self, key: bytes, work: Callable[[], Answer]) -> tuple[Answer, bool]:
        """``work()``'s answer, done once per key (brokers deliver at least once); True when from memory."""
        return self._deliveries.run(key, work)

    def verify_sender(self, envelope: str, headers: Mapping[str, str], signed: Mapping[str, Any] | None = None) -> str:
        """Who sent a bucket delivery (infra/senders.py), before the function's credentials are used; a
        refusal is counted by reason and raised."""
        try:
            sender = self._senders.check(envelope, headers, signed)
        except (SenderUnproven, SenderKeysUnavailable) as err:
            self._metrics.count_delivery_refusal(envelope, err.reason)
            raise
        log.debug("%s delivery from %s", envelope, sender)
        return sender

    def confirm_subscription(self, url: str) -> None:
        """Follow an SNS SubscribeURL already checked to be SNS's, through the SSRF guard like a caller's URL."""
        try:
            status = self._photos.status(url)
        except Exception as exc:  # SNS sends the confirmation again; a 503 asks for that
            raise ObjectUnavailable(f"could not reach SNS to confirm the subscription: {type(exc).__name__}") from None
        if status != 200:
            raise ObjectUnavailable(f"SNS answered HTTP {status} to the subscription confirmation")

    # -- metrics ----------------------------------------------------------------------------
    def request_meter(self, routes: Sequence[str]) -> RequestMeter:
        return RequestMeter(self._metrics, routes)

    def metrics_text(self) -> bytes:
        return self._metrics.exposition()


# -- factories: each piece from the configuration ---------------------------------------------------


def _inference_workers(config: Config) -> int:
    # Parallel single-threaded calls beat one multi-threaded call, but the decode workers and request
    # threads need a core too: one per usable CPU beyond the first (docs/performance.md).
    return config.inference_workers or max(1, usable_cpus() - 1)


def _model(config: Config, process: Process, session: Any, quiet: bool,
           convert_in_background: bool) -> LazyResource[loader.LoadedModel]:
    workers = _inference_workers(config)
    spec = loader.ModelSpec(config.model_url, config.model_runtime, config.model_cache_dir,
                            config.tf_intra_op_threads or 1, config.tf_inter_op_threads or max(2, workers),
                            config.warmup, config.tfhub_cache_dir, quiet, convert_in_background, config.litert_threads)
    return process.resources.get(("model", spec), "model",
                                 lambda: loader.load(spec, process.prefetcher, session), config.model_load_retry_s)


def _labels(config: Config, process: Process, session: Any,
            model: LazyResource[loader.LoadedModel]) -> LazyResource[LabelMap]:
    def read(url: str) -> bytes:
        return files.read_document(session, url, config.labels_timeout_s)

    # Read while the model loads, unless the labels may be the .tflite's own (only then they wait for it).
    early = config.labels_url or ("" if handles.is_tflite(config.model_url) else DEFAULT_LABELS_URL)

    def load() -> LabelMap:
        given = LabelMap.load(early, read) if early else None
        contract = model.get(timeout=config.model_wait_s).contract
        labels = LabelMap.for_model(contract, config.model_url, read, given=given, default_url=DEFAULT_LABELS_URL,
                                    common_names_url=config.common_names_url)
        log.info("label map loaded", extra=logs.fields(labels=len(labels), source=labels.source,
                                                       common_names=labels.has_common_names,
                                                       background=sorted(labels.background)))
        return labels

    key = ("labels", config.labels_url, config.common_names_url, config.labels_timeout_s, config.user_agent, model)
    return process.resources.get(key, "label map", load, config.model_load_retry_s)


def _decoder(config: Config, process: Process, deadlines: Deadlines, metrics: Metrics) -> Decoder:
    # One per usable CPU, plus one so that a small photo finds a worker while big ones decode.
    workers = 0 if config.decode_in_process else (config.decode_workers or usable_cpus() + 1)
    return Decoder(config.max_photo_pixels, allowed_formats(config.photo_formats), config.decode_memory_mb * 1_000_000,
                   workers=workers, cpu_s=config.decode_cpu_s, max_scans=config.max_jpeg_scans, deadlines=deadlines,
                   on_refusal=metrics.count_cost_refusal, server=process.fork_server)


def _recorder(config: Config) -> tuple[Any, Outbox | None, records.Recorder | None]:
    # Writes get a session of their own: a slow results store does not hold the model's connections.
    if not config.results_url and not config.k_sink:
        return None, None, None
    session = fetch.new_session(config.results_workers, config.user_agent)
    send = stores.sender(config, session)
    outbox = Outbox(config.results_workers, config.results_pending)
    return session, outbox, records.Recorder(config, stores.stores(config, send), stores.sink(config, send), outbox)


# -- the process -------------------------------------------------------------------------------------


class Process:
    """What the process keeps across apps: loaded models and label maps, the prefetcher, the fork server."""

    def __init__(self) -> None:
        self.resources = ResourceCache()
        self.prefetcher = Prefetcher()
        self.fork_server = ForkServer()  # started by the first app's decoder, in the background
        self._lock = threading.Lock()
        self._app: App | None = None

    def serving(self) -> App:
        """The app the functions-framework targets share, built on first use from the environment."""
        if self._app is not None:  # every request asks: no lock once it is built
            return self._app
        with self._lock:
            if self._app is None:
                config = Config.from_env()
                logs.setup(config.log_level, json_lines=True)
                app = App(config, self, quiet_runtime=config.log_level != "DEBUG")
                atexit.register(app.stop)  # gunicorn's worker exits once the requests in flight are answered
                app.start()  # an instance is started for a request: its loads begin at once
                self._app = app
            return self._app

    def reset(self) -> None:
        """Stop and forget the serving app (tests); the loaded models stay."""
        with self._lock:
            app, self._app = self._app, None
        if app is not None:
            atexit.unregister(app.stop)
            app.stop()


# Made on first use, never at import: a server that imports in one process and serves from a fork
# (gunicorn --preload) must not hand its worker threads and a fork server that stayed in the parent.
_process: Process | None = None
_process_lock = threading.Lock()


def _forget_after_fork() -> None:
    global _process, _process_lock
    _process, _process_lock = None, threading.Lock()  # the parent's lock may have been held by another thread


os.register_at_fork(after_in_child=_forget_after_fork)


def this_process() -> Process:
    """This process's :class:`Process`, made on first use."""
    global _process
    if _process is not None:
        return _process
    with _process_lock:
        if _process is None:
            _process = Process()
        return _process


def configuration() -> Config:
    """The configuration from the environment, read and checked (no state is built)."""
    return Config.from_env()


def serving() -> App:
    return this_process().serving()


def request_meter(routes: Sequence[str]) -> RequestMeter:
    return serving().request_meter(routes)


def reset() -> None:
    this_process().reset()
