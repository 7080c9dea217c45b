"""The photo pool, shared fairly between the requests being served at once."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

Progress = Callable[[int, int], None]


def report_progress(futures: Sequence[Future[Any]], progress: Progress) -> None:
    done, lock = [0], threading.Lock()

    def one_more(_: Future[Any]) -> None:
        with lock:
            done[0] += 1
            progress(done[0], len(futures))

    for future in futures:
        future.add_done_callback(one_more)


class _Share:
    """One request's place in the :class:`FairPool`: its waiting photos and how many are running."""

    def __init__(self) -> None:
        self.pending: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self.running = 0


class FairPool:
    """The photo pool, shared fairly: each request may have ``per_request`` photos in flight, more
    while over ``reserve`` workers stay idle (so a request arriving later finds one), and a freed
    worker goes to the next request in turn. Nothing waits in the executor's FIFO queue."""

    def __init__(self, executor: Executor, workers: int, per_request: int, reserve: int = 0):
        self._executor, self._workers = executor, workers
        self.per_request, self.reserve = per_request, reserve
        self._lock = threading.Lock()
        self._ring: deque[_Share] = deque()
        self._running = 0

    def submit_all(self, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> list[Future[T]]:
        """``fn(*args)`` for each of one request's ``calls``, as that request's share of the pool."""
        share = _Share()
        return [self.submit(share, fn, *args) for args in calls]

    def submit(self, share: _Share, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            share.pending.append((future, fn, args))
            if share not in self._ring:
                self._ring.append(share)
        self._dispatch()
        return future

    def _next(self) -> tuple[_Share, Future[Any], Callable[..., Any], tuple[Any, ...]] | None:
        """The next photo to start, taking requests in turn; called with the lock held."""
        for _ in range(len(self._ring)):
            share = self._ring[0]
            self._ring.rotate(-1)
            while share.pending and (share.running < self.per_request
                                     or self._workers - self._running > self.reserve):
                future, fn, args = share.pending.popleft()
                if not share.pending:
                    self._ring.remove(share)
                if future.set_running_or_notify_cancel():  # False: cancelled at its request's deadline
                    return share, future, fn, args
        return None

    def _dispatch(self) -> None:
        with self._lock:
            while self._running < self._workers and (task := self._next()) is not None:
                share, future, fn, args = task
                self._running += 1
                share.running += 1
                try:
                    self._executor.submit(self._run, share, future, fn, args)
                except RuntimeError as exc:  # the executor is shut down (the app is stopping)
                    self._running -= 1
                    share.running -= 1
                    future.set_exception(exc)

    def _run(self, share: _Share, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # the caller sees it from future.result()
            future.set_exception(exc)
        finally:
            with self._lock:
                self._running -= 1
                share.running -= 1
            self._dispatch()
