"""A thing loaded once per process, in the background: ``not_loaded -> loading -> ready``, or
``-> failed`` with the reason. Every caller waits on the same load; a failed one is retried by a later
:meth:`~LazyResource.start` once ``retry_after_s`` has passed, so one bad download neither breaks an
instance for life nor hammers the origin.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from ..errors import NotReady

T = TypeVar("T")
log = logging.getLogger(__name__)

NOT_LOADED, LOADING, READY, FAILED = "not_loaded", "loading", "ready", "failed"


class LazyResource(Generic[T]):
    """One thing loaded once, in the background: ``start()``, ``ready()``, ``get(timeout)``."""

    def __init__(self, name: str, loader: Callable[[], T], retry_after_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self._loader = loader
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.state = NOT_LOADED
        self.error: str | None = None
        self._value: T | None = None
        self._failed_at = 0.0
        self.load_seconds: float | None = None
        self.loads_started = 0

    def ready(self) -> bool:
        return self.state == READY

    def start(self) -> None:
        """Begin loading in the background unless loaded, loading, or failed too recently."""
        with self._lock:
            if self.state in (READY, LOADING):
                return
            if self.state == FAILED and self._clock() - self._failed_at < self._retry_after_s:
                return
            self.state = LOADING
            self._done.clear()
            self.loads_started += 1
        threading.Thread(target=self._load, name=f"load-{self.name}", daemon=True).start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            value = self._loader()
            with self._lock:
                self._value, self.state, self.error = value, READY, None
                self.load_seconds = time.perf_counter() - started
        except NotReady as exc:
            # What this load builds on is not there (the label map waits for the model): no back-off of
            # its own; the next start() tries again.
            with self._lock:
                self.state, self.error = NOT_LOADED, str(exc)
        except Exception as exc:  # the reason is kept and reported by readiness and requests
            log.error("%s failed to load: %s", self.name, exc, exc_info=True)
            with self._lock:
                self.state, self.error, self._failed_at = FAILED, f"{type(exc).__name__}: {exc}", self._clock()
        finally:
            self._done.set()

    def get(self, timeout: float | None = None) -> T:
        """Start loading if needed and wait for the value; raise :class:`NotReady` otherwise."""
        self.start()
        self._done.wait(timeout)
        with self._lock:
            if self.state == READY and self._value is not None:
                return self._value
            remaining = max(1.0, self._retry_after_s - (self._clock() - self._failed_at))
            raise NotReady.of(self.name, self.state, self.error, remaining)


class ResourceCache:
    """The process's loaded things, one per key: the key holds everything that changes the load, so
    two configurations that load differently get two resources (tests build several apps)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resources: dict[Hashable, LazyResource[Any]] = {}

    def get(self, key: Hashable, name: str, loader: Callable[[], T], retry_after_s: float) -> LazyResource[T]:
        with self._lock:
            return self._resources.setdefault(key, LazyResource(name, loader, retry_after_s))

    def clear(self) -> None:
        with self._lock:
            self._resources.clear()
