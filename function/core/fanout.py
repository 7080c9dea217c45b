"""Fan-out: spread a request with many photos evenly over instances of the same Service.

A request with more than ``FANOUT_CHUNK`` photos becomes a queue of chunks that remote lanes post to
``FANOUT_URL`` (one chunk each at a time, so a fast instance is sent more) and local lanes classify
here. Chunks shrink as the queue empties (guided self-scheduling), and once it is empty and this
instance's own chunks are done, a local lane backs up the newest chunk that is late (:data:`LATE`),
the first answer for a photo kept: a slow or silent instance holds the request not much longer than
this one needs. Failed and refused chunks are sent again, then classified here.

Sub-requests carry :data:`HEADER` with this instance's id: they are never split again, and a chunk
routed back to its sender is refused (``421``); many refusals and no other answer mean it is alone.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import FanoutRefused, PhotoError
from .results import Classification, PhotoResult
from .sources import PhotoSource

log = logging.getLogger(__name__)

HEADER = "X-Bird-Fanout"

# A chunk's photos arrive together, after a round trip and the biggest one's transfer: with four
# chunks under way the front instance's CPU rarely waits for the network, even for its last chunk.
LOCAL_LANES = 4
REMOTE_TRIES = 3  # sends of one chunk before it is classified here; each failure costs a round trip
# A chunk out is backed up once it has been out this many times as long as the slowest chunk classified
# here took: an instance as fast as this one is not doubled (its answer would come first and the
# backup's CPU would only slow this instance's handling of it); a slow or silent one is.
LATE = 1.5
# How long an instance that found itself alone classifies big requests whole: finding out costs a
# round trip per refused chunk. A new instance is used by the first request after this.
ALONE_S = 10.0

# post(document, headers) -> the answer's JSON document; a PhotoError (FanoutFailed) unless 200.
Post = Callable[[Mapping[str, Any], Mapping[str, str]], Any]
Local = Callable[[Sequence[PhotoSource], int], Classification]


@dataclass(eq=False)
class _Chunk:
    """Photos ``start:stop`` of the request."""

    start: int
    stop: int
    tries: int = 0  # sends that failed or were refused
    backed_up: bool = False  # a local lane classifies it too (it was out when the queue ran dry)
    backup_failed: bool = False  # the backup raised: the chunk is the other instance's again
    sent: float = 0.0  # time.monotonic() of its latest send


class _Request:
    """One fanned-out request: the queue, the chunks out, the results so far, under ``cond``."""

    def __init__(self, n: int, chunk: int, smallest: int, lanes: int, inflight: int):
        self.n, self.chunk, self.smallest, self.lanes, self.inflight = n, chunk, smallest, lanes, inflight
        self.results: list[PhotoResult | None] = [None] * n
        self.left = n
        self.cursor = 0  # photos before it are in a chunk
        self.again: deque[_Chunk] = deque()  # chunks to send again or, past their tries, to classify here
        self.out: list[_Chunk] = []  # sent and not answered, oldest first
        self.remote_on = True
        self.alone = False  # the chunks kept coming back here and none reached another instance
        self.failed_in_a_row = 0
        self.refused = 0
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self.remote_chunks = self.local_chunks = self.backups = self.failures = 0
        self.local_busy = 0  # local lanes classifying a chunk
        self.local_chunk_s = 0.0  # the longest a chunk classified here took
        self.pooled_lanes = 0  # local lanes started on the pool's threads
        self.remote_ms = self.transport_ms = 0.0
        self.local_timings: dict[str, float] = {}
        self.started = time.perf_counter()
        self.local_end = self.remote_end = 0.0  # when the last chunk was classified here, answered there

    @property
    def finished(self) -> bool:
        return self.left == 0 or self.error is not None

    def _cut(self) -> _Chunk | None:
        if self.cursor >= self.n:
            return None
        rest = self.n - self.cursor
        if not self.remote_on:  # the lanes here are all there is: big chunks, each fetched in one go
            size = math.ceil(rest / LOCAL_LANES)
        else:  # half what is left per lane: the lanes that answer sooner take more of the rest
            size = min(rest, self.chunk, max(self.smallest, math.ceil(rest / (2 * self.lanes))))
        c = _Chunk(self.cursor, self.cursor + size)
        self.cursor += size
        return c

    def _unanswered(self, c: _Chunk) -> bool:
        return any(r is None for r in self.results[c.start:c.stop])

    def take_remote(self) -> _Chunk | None:
        """The next chunk to send, or None when there is nothing left to send."""
        with self.cond:
            if self.finished or not self.remote_on:
                return None
            c = next((x for x in self.again if x.tries < REMOTE_TRIES), None)
            if c is not None:
                self.again.remove(c)
            else:
                c = self._cut()
            if c is not None:
                c.sent = time.monotonic()
                self.out.append(c)
            return c

    def _late(self, now: float) -> tuple[_Chunk | None, float | None]:
        """The newest chunk out that is late (the least far along: its answer would come last), else how
        long until the next one is."""
        due = LATE * self.local_chunk_s
        waiting = [x for x in reversed(self.out) if not x.backed_up and self._unanswered(x)]
        late = next((x for x in waiting if now - x.sent >= due), None)
        return late, None if late or not waiting else min(x.sent + due for x in waiting) - now

    def _next_local(self, pooled: bool) -> tuple[_Chunk | None, float | None]:
        """The chunk a local lane takes now, else how long until one may be late (None: until notified)."""
        # A chunk to send again is the remote lanes' while it has tries left and they are on.
        c = next((x for x in self.again if x.tries >= REMOTE_TRIES or not self.remote_on), None)
        if c is None and (c := self._cut()) is not None:
            return c, None
        if c is None and self.local_busy == 0 and (pooled or self.pooled_lanes == 0):
            # Only once this instance's own share is done: beside it, a chunk another instance is meant
            # to take would slow this one's down.
            if not self.again:
                late, wait = self._late(time.monotonic())
                if late is not None:
                    late.backed_up = True
                    self.backups += 1
                return late, wait
            c = self.again[0]
        if c is not None:
            self.again.remove(c)
        return c, None

    def take_local(self, pooled: bool) -> _Chunk | None:
        """The next chunk to classify here, waiting while all are out and backed up; None at the end.
        The request's own thread (not ``pooled``) leaves chunks other instances hold to the pool's lanes
        when there are any: the answer would wait for its backup even once the other instance's is in."""
        with self.cond:
            while not self.finished:
                c, wait = self._next_local(pooled)
                if c is not None:
                    self.local_busy += 1
                    return c
                self.cond.wait(wait)
            return None

    def fill(self, c: _Chunk, results: Sequence[PhotoResult]) -> None:
        for i, r in enumerate(results, start=c.start):
            if self.results[i] is None:
                self.results[i] = r
                self.left -= 1
        if self.left == 0:
            self.cond.notify_all()

    def answered(self, c: _Chunk, results: Sequence[PhotoResult], round_trip_ms: float, own_ms: float) -> None:
        with self.cond:
            self.out.remove(c)
            self.failed_in_a_row = 0
            self.remote_chunks += 1
            self.remote_end = time.perf_counter() - self.started
            self.remote_ms = max(self.remote_ms, round_trip_ms)
            self.transport_ms += max(0.0, round_trip_ms - own_ms)
            self.fill(c, results)

    def failed(self, c: _Chunk, reason: str, refused: bool) -> None:
        with self.cond:
            self.out.remove(c)
            c.tries += 1
            self.failures += 1
            if refused:
                # Many refusals before any other instance answered: there is no other instance.
                self.refused += 1
                if self.refused >= 2 * self.inflight and self.remote_chunks == 0 and self.remote_on:
                    self.remote_on, self.alone = False, True
                    log.info("fan-out stopped for this request: %d chunks came back to this instance and "
                             "none reached another; the rest is classified here", self.refused)
            else:
                self.failed_in_a_row += 1
                if self.failed_in_a_row >= self.inflight and self.remote_on:
                    self.remote_on = False
                    log.warning("fan-out stopped for this request after %d failed sub-requests in a row; "
                                "the rest is classified here (last: %s)", self.failed_in_a_row, reason)
            if (not c.backed_up or c.backup_failed) and self._unanswered(c):
                self.again.append(c)
            self.cond.notify_all()

    def classified(self, c: _Chunk, result: Classification, seconds: float) -> None:
        with self.cond:
            self.local_chunk_s = max(self.local_chunk_s, seconds)
            self.local_busy -= 1
            self.cond.notify_all()
            self.local_chunks += 1
            self.local_end = time.perf_counter() - self.started
            for name, ms in result.timings_ms.items():
                if name != "total":
                    self.local_timings[name] = self.local_timings.get(name, 0.0) + ms
            self.fill(c, result.results)

    def backup_failed(self, c: _Chunk) -> bool:
        """Whether the request goes on without this backup (its chunk is still out there)."""
        with self.cond:
            self.local_busy -= 1
            c.backup_failed = True
            self.cond.notify_all()
            return c in self.out or not self._unanswered(c)

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.left == 0:
                return
            self.error = exc
            self.cond.notify_all()


class FanOut:
    def __init__(self, post: Post, chunk: int, inflight: int = 4, alone_s: float = ALONE_S):
        self.post, self.chunk, self.inflight, self.alone_s = post, chunk, inflight, alone_s
        self._alone_until = 0.0  # monotonic: until then, big requests are classified here whole
        # A chunk's photos are fetched together: a smaller chunk leaves its instance's CPU waiting on
        # the network longer, so chunks shrink to half of FANOUT_CHUNK at the smallest.
        self.smallest = max(1, chunk // 2)
        self.instance = secrets.token_hex(8)
        self._pool = ThreadPoolExecutor(2 * (inflight + LOCAL_LANES), thread_name_prefix="fanout")

    def wanted(self, sources: Sequence[PhotoSource]) -> bool:
        """Only caller URLs are split: another instance would get a bucket object (read signed here) as
        a plain URL, unsigned and behind the SSRF guard."""
        return len(sources) > self.chunk and all(s.kind == "url" and type(s) is PhotoSource for s in sources)

    def sent_here(self, header: str) -> bool:
        """Whether a sub-request carrying ``header`` (:data:`HEADER`'s value) was sent by this instance."""
        return header == self.instance

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def classify(self, local: Local, sources: Sequence[PhotoSource], k: int,
                 request_id: str | None = None) -> Classification:
        """``local(sources, k)`` for small requests; otherwise spread over instances, in request order."""
        if not self.wanted(sources) or time.monotonic() < self._alone_until:
            return local(sources, k)
        req = _Request(len(sources), self.chunk, self.smallest, self.inflight + LOCAL_LANES, self.inflight)
        for _ in range(self.inflight):
            self._pool.submit(self._remote_lane, req, sources, k, request_id)
        for _ in range(LOCAL_LANES - 1):
            self._pool.submit(self._local_lane, req, local, sources, k, True)
        self._local_lane(req, local, sources, k, False)  # this thread is a lane too, so the request ends
        with req.cond:                                   # even if every pool thread is held by other requests
            while not req.finished:
                req.cond.wait()
            local_timings = dict(req.local_timings)
        if req.error is not None:
            raise req.error
        if req.alone:
            self._alone_until = time.monotonic() + self.alone_s
            log.info("this instance is alone: big requests are classified here whole for %g s", self.alone_s)
        results = [r for r in req.results if r is not None]
        timings = {**{f"local_{name}": ms for name, ms in local_timings.items()},
                   "fanout": req.remote_ms, "fanout_transport": req.transport_ms,
                   "chunks": float(req.remote_chunks + req.local_chunks), "remote_chunks": float(req.remote_chunks),
                   "local_chunks": float(req.local_chunks), "backups": float(req.backups),
                   "fanout_failures": float(req.failures), "local_end": req.local_end * 1000,
                   "remote_end": req.remote_end * 1000, "total": (time.perf_counter() - req.started) * 1000}
        log.info("fanned out %d photos: %d chunks answered by other instances, %d classified here (%d backups), "
                 "%d sub-requests failed or refused", len(sources), req.remote_chunks, req.local_chunks,
                 req.backups, req.failures)
        return Classification(results, timings)

    def _local_lane(self, req: _Request, local: Local, sources: Sequence[PhotoSource], k: int, pooled: bool) -> None:
        if pooled:
            with req.cond:
                req.pooled_lanes += 1
                req.cond.notify_all()
        try:
            while (c := req.take_local(pooled)) is not None:
                t0 = time.monotonic()
                try:
                    result = local(sources[c.start:c.stop], k)
                except Exception:
                    if c.backed_up and req.backup_failed(c):  # its other instance may still answer
                        continue
                    raise
                req.classified(c, result, time.monotonic() - t0)
        except BaseException as exc:  # the model not ready, say: the request answers with it
            req.fail(exc)
            raise

    def _remote_lane(self, req: _Request, sources: Sequence[PhotoSource], k: int, request_id: str | None) -> None:
        headers = {HEADER: self.instance, **({"X-Request-Id": request_id} if request_id else {})}
        while (c := req.take_remote()) is not None:
            chunk = list(sources[c.start:c.stop])
            t0 = time.perf_counter()
            try:
                doc = self.post({"urls": [s.ref for s in chunk], "top_k": k}, headers)
                result = Classification.from_dict(chunk, doc)
            except PhotoError as err:
                req.failed(c, err.message, refused=isinstance(err, FanoutRefused))
            except Exception as exc:  # an answer that is not a result document, however it breaks the reading
                req.failed(c, f"not a result document: {exc}", refused=False)
            else:
                own = result.timings_ms.get("total", 0.0)
                req.answered(c, result.results, (time.perf_counter() - t0) * 1000, own)
