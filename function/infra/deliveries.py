"""Memory of recent deliveries: brokers deliver at least once, so a redelivered event gets the same reply."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

R = TypeVar("R")


def delivery_key(*parts: str | bytes) -> bytes:
    """A digest of (source, id, body), each part length-prefixed. The body is part of it, so a reused
    (source, id) naming another object is classified anew; a 900 KB id costs 32 bytes, not 900 KB."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.digest()


class RecentDeliveries(Generic[R]):
    """The replies to recent deliveries by key, the oldest forgotten first past ``capacity`` entries or
    ``max_bytes`` (``size``: what a reply costs). A redelivery that arrives while the first is under way
    waits for it rather than classifying twice. A reply ``retryable`` says a retry should redo (a 5xx)
    is not kept."""

    def __init__(self, retryable: Callable[[R], bool], capacity: int = 4096, max_bytes: int = 16 * 1024 * 1024,
                 size: Callable[[R], int] = lambda _: 0):
        self._retryable = retryable
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._size = size
        self._lock = threading.Lock()
        self._replies: OrderedDict[bytes, R | threading.Event] = OrderedDict()
        self._sizes: dict[bytes, int] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._replies)

    def _forget(self, key: bytes) -> None:
        self._replies.pop(key, None)
        self.bytes -= self._sizes.pop(key, 0)

    def _trim(self) -> None:
        while self._replies and (len(self._replies) > self.capacity or self.bytes > self.max_bytes):
            self._forget(next(iter(self._replies)))

    def run(self, key: bytes, work: Callable[[], R]) -> tuple[R, bool]:
        """The reply for ``key`` and whether it was remembered; ``work`` done only if no delivery of it
        is done or under way."""
        while True:
            with self._lock:
                entry = self._replies.get(key)
                if entry is None:
                    pending = threading.Event()
                    self._replies[key] = pending
                    self._trim()
                    break
                if not isinstance(entry, threading.Event):
                    self._replies.move_to_end(key)
                    return entry, True
            entry.wait(60)
        reply: R | None = None
        try:
            reply = work()
        finally:
            with self._lock:
                if self._replies.get(key) is pending:
                    self._forget(key)
                    if reply is not None and not self._retryable(reply):
                        self._replies[key] = reply
                        self._sizes[key] = cost = len(key) + self._size(reply)
                        self.bytes += cost
                        self._trim()
            pending.set()
        return reply, False
