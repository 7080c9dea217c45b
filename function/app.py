"""The composition root: everything built from one :class:`~function.config.Config`, owned in one place.

:class:`App` wires the pieces (sessions, the SSRF guard, the photo fetcher and pool, the model and
label map with their lifecycle, the model's call queue, fan-out, the delivery memory) and owns
every piece of process state, with a visible lifecycle like knative/func's function instance:
``start()`` begins the loads, ``ready()`` / ``status()`` report them, ``stop()`` shuts the pools
and the call queue down.

The functions-framework targets share one :func:`serving` app per process, built on first use; it
is the package's only module-level singleton, next to :data:`RESOURCES`, the loaded model and label
maps that every app in the process shares (keyed by everything that changes a load).
"""

from __future__ import annotations

import atexit
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from .config import Config
from .core.classifier import Classifier
from .core.fanout import FanOut
from .core.labels import LabelMap
from .core.objects import RoutingFetcher
from .core.photos import PhotoFetcher
from .errors import Answer
from .infra import logs
from .infra.cpu import usable_cpus
from .infra.credentials import AwsSigner, GoogleSigner, StoreAuth
from .infra.deliveries import RecentDeliveries
from .infra.guard import AddressPolicy, guard_session
from .infra.metrics import Metrics
from .infra.sessions import new_session
from .model import loader
from .model.batching import Batcher
from .model.lifecycle import LazyResource, ResourceCache
from .model.prefetch import Prefetcher

log = logging.getLogger(__name__)

RESOURCES = ResourceCache()
_PREFETCHER = Prefetcher()


class App:
    """One configured service: the classifier and everything around it."""

    def __init__(self, config: Config, resources: ResourceCache = RESOURCES, quiet_runtime: bool = True,
                 convert_in_background: bool = False):
        self.config = config
        # The label map and fan-out target come from configuration and are trusted; photos come from
        # caller-supplied URLs, so their session goes through the SSRF guard.
        self.session = new_session(config.fetch_workers, config.user_agent)
        self.photo_session = self.session
        if config.ssrf_guard:
            policy = AddressPolicy.from_trusted(config.trusted_hosts.split(","))
            self.photo_session = guard_session(new_session(config.fetch_workers, config.user_agent), policy,
                                               config.fetch_workers)
        self.photo_session.max_redirects = 5
        photos = PhotoFetcher(self.photo_session, config.connect_timeout_s, config.read_timeout_s,
                              config.max_photo_bytes, config.fetch_retries, config.photo_deadline_s)
        # Bucket objects: URLs the service works out from configured endpoints, read signed with the
        # platform's credentials, with the photos' limits; see core/objects.py and infra/credentials.py.
        self.object_session = new_session(config.fetch_workers, config.user_agent)
        if config.ssrf_guard:
            trusted = config.trusted_hosts.split(",") + config.storage_hosts()
            self.object_session = guard_session(self.object_session, AddressPolicy.from_trusted(trusted),
                                                config.fetch_workers)
        self.object_session.max_redirects = 0  # a signed read is never sent on to another place
        anonymous = config.storage_credentials == "anonymous"
        self.object_session.auth = StoreAuth(
            None if anonymous else GoogleSigner(), None if anonymous else AwsSigner(),
            [config.gcs_endpoint or "https://storage.googleapis.com"], config.s3_endpoint,
            [config.storage_emulator_host] if config.storage_emulator_host else [])
        objects = PhotoFetcher(self.object_session, config.connect_timeout_s, config.read_timeout_s,
                               config.max_photo_bytes, config.fetch_retries, config.photo_deadline_s)
        self.fetcher = fetcher = RoutingFetcher(photos, objects)
        # Parallel single-threaded calls beat one multi-threaded call for this model on a small
        # CPU (docs/performance.md): one intra-op thread per call, one call per usable CPU.
        workers = config.inference_workers or usable_cpus()
        intra = config.tf_intra_op_threads or 1
        inter = config.tf_inter_op_threads or max(2, workers)
        spec = loader.ModelSpec(config.model_url, config.model_runtime, config.model_cache_dir, intra, inter,
                                config.warmup, config.tfhub_cache_dir, quiet_runtime, convert_in_background)
        model_session = self.session  # the model URL comes from configuration: trusted, like the label map
        self.model: LazyResource[loader.LoadedModel] = resources.get(
            ("model", spec), "model", lambda: loader.load(spec, _PREFETCHER, model_session),
            config.model_load_retry_s)
        labels_session = self.session
        self.labels: LazyResource[LabelMap] = resources.get(
            ("labels", config.labels_url, config.labels_timeout_s, config.user_agent), "label map",
            lambda: LabelMap.fetch(labels_session, config.labels_url, config.labels_timeout_s),
            config.model_load_retry_s)
        self._pool = ThreadPoolExecutor(config.fetch_workers, thread_name_prefix="photo")
        self.batcher = Batcher(self._predict, config.max_batch_images, config.batch_wait_ms / 1000, workers)
        self.classifier = Classifier(config, fetcher, self._pool, self.model, self.labels, self.batcher)
        self.fanout = (FanOut(self.session, config.fanout_url, config.fanout_chunk, config.fanout_timeout_s)
                       if config.fanout_url else None)
        # Replies to recent CloudEvent deliveries; a 5xx is forgotten, so the broker's retry does the work.
        # Bounded by entries and bytes; keys are digests of (source, id, body) (infra/deliveries.py).
        self.deliveries: RecentDeliveries[Answer] = RecentDeliveries(
            lambda reply: reply.status >= 500,
            size=lambda r: len(r.body) + sum(len(k) + len(v) for k, v in r.headers.items()))
        self.metrics = Metrics()
        self.metrics.watch(lambda: {name: s["state"] for name, s in self.status().items()},
                           lambda: self.model.load_seconds,
                           lambda: (self.batcher.stats.calls, self.batcher.stats.images, self.batcher.stats.largest))
        self._stopped = False

    @classmethod
    def from_env(cls) -> App:
        return cls(Config.from_env())

    def _predict(self, batch: Any) -> Any:
        return self.model.get().predict(batch)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Begin loading the model and the label map in the background (idempotent)."""
        self.classifier.start()

    def ready(self) -> bool:
        return self.classifier.ready()

    def status(self) -> dict[str, Any]:
        status = self.classifier.status()
        if self.model.ready():
            status["model"]["runtime"] = self.model.get().runtime
        return status

    def stop(self) -> None:
        """Shut down: photo pool and fan-out pool (running work finishes), the call queue, sessions."""
        if self._stopped:
            return
        self._stopped = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.fetcher.close()
        if self.fanout is not None:
            self.fanout.stop()
        self.batcher.stop()
        for session in {id(s): s for s in (self.session, self.photo_session, self.object_session)}.values():
            _close(session)
        log.info("stopped")


def _close(session: requests.Session) -> None:
    try:
        session.close()
    except Exception:  # closing is best effort at shutdown
        log.debug("closing a session failed", exc_info=True)


_lock = threading.Lock()
_serving: App | None = None


def serving() -> App:
    """The app the functions-framework targets share, built on first use from the environment.

    JSON-lines logging is set up first; the app's ``stop()`` runs when the process exits (gunicorn's
    worker exits after SIGTERM once the requests in flight are answered).
    """
    global _serving
    if _serving is None:
        with _lock:
            if _serving is None:
                config = Config.from_env()
                logs.setup(config.log_level, json_lines=True)
                app = App(config, quiet_runtime=config.log_level != "DEBUG")
                atexit.register(app.stop)
                _serving = app
    return _serving


def reset() -> None:
    """Stop and forget the serving app so the next call reads the environment again (tests)."""
    global _serving
    with _lock:
        app, _serving = _serving, None
    if app is not None:
        atexit.unregister(app.stop)
        app.stop()
