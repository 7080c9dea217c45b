"""Memory of recent deliveries: brokers deliver at least once, so a redelivered event gets the same reply."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

R = TypeVar("R")


class RecentDeliveries(Generic[R]):
    """Remembers the replies to the last ``capacity`` deliveries by (source, id).

    Brokers deliver at least once: a redelivered event gets the first delivery's reply (the same
    reply event id), and a redelivery that arrives while the first is still being classified
    waits for it instead of classifying the object twice. Only final replies are kept; a reply that
    ``retryable`` says a retry should redo (a 5xx) is forgotten so the retry does the work again.
    """

    def __init__(self, retryable: Callable[[R], bool], capacity: int = 4096):
        self._retryable = retryable
        self.capacity = capacity
        self._lock = threading.Lock()
        self._replies: OrderedDict[tuple[str, str], R | threading.Event] = OrderedDict()

    def run(self, key: tuple[str, str], work: Callable[[], R]) -> tuple[R, bool]:
        """The reply for ``key``, doing ``work`` only if no delivery of it is done or under way."""
        while True:
            with self._lock:
                entry = self._replies.get(key)
                if entry is None:
                    pending = threading.Event()
                    self._replies[key] = pending
                    while len(self._replies) > self.capacity:
                        self._replies.popitem(last=False)
                    break
                if not isinstance(entry, threading.Event):
                    self._replies.move_to_end(key)
                    return entry, True
            entry.wait(60)
        try:
            reply = work()
        except BaseException:
            with self._lock:
                self._replies.pop(key, None)
            pending.set()
            raise
        with self._lock:
            if self._retryable(reply):
                self._replies.pop(key, None)
            else:
                self._replies[key] = reply
        pending.set()
        return reply, False
