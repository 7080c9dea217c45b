"""One thread that runs each armed deadline's action when its time comes: the process's one timer.

A blocking wait (a ``recv`` on a slow host's socket, a decode in a worker process) cannot be bounded
by a per-call timeout alone: a host sending a byte every 2 s never trips a 10 s read timeout. So the
wait arms a deadline whose action ends it from outside (shuts the socket down, kills the worker).
The thread starts on first use (also after a fork). An action runs on that thread, so it must be
quick; it may return seconds after which to run it again (a socket not there yet), or None.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Action = Callable[[], float | None]


@dataclass(slots=True, eq=False)
class Deadline:
    """One armed deadline: :meth:`cancel` it when the guarded wait is over; ``fired`` says whether it ran."""

    due: float
    action: Action
    cancelled: bool = False
    fired: bool = False

    def cancel(self) -> None:
        self.cancelled = True  # left in the heap; dropped when its time comes (no O(n) removal)


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def arm(self, seconds: float, action: Action) -> Deadline:
        """Run ``action`` in ``seconds`` unless the returned deadline is cancelled first."""
        deadline = Deadline(time.monotonic() + seconds, action)
        with self._cond:
            self._push(deadline)
            if not self._stopped and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
        return deadline

    def shut_on(self, sock: socket.socket, seconds: float) -> Deadline:
        """Shut ``sock``'s read side in ``seconds``: a thread blocked in ``recv`` on it wakes with EOF."""
        return self.arm(seconds, lambda: shut(sock, socket.SHUT_RD))

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _push(self, deadline: Deadline) -> None:
        heapq.heappush(self._heap, (deadline.due, next(self._seq), deadline))
        self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                        continue
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopped:
                    return
                _, _, due = heapq.heappop(self._heap)
            due.fired = True
            try:
                again = due.action()
            except Exception:  # an action is a few lines; a bug in one must not stop every other deadline
                log.exception("a deadline's action failed")
                again = None
            if again is not None and not due.cancelled:
                with self._cond:
                    due.due = time.monotonic() + again
                    self._push(due)


def shut(sock: socket.socket | None, how: int = socket.SHUT_RDWR) -> None:
    """``shutdown`` on the plain socket, also for TLS ones: ``SSLSocket.shutdown`` would drop the SSL
    object under a reading thread; the plain one wakes it with EOF."""
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed or never connected: nothing left to wake
        socket.socket.shutdown(sock, how)
