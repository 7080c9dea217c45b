"""The decoder the app uses: every photo decoded within its memory charge and its CPU budget.

A worker reads the header and says what the decode will hold (:mod:`.costs`); the photo waits for
that share of ``DECODE_MEMORY_MB``, then decodes under an address-space limit, and the deadline
thread kills the worker at ``DECODE_CPU_S`` or the request's deadline (Pillow's C decoders cannot be
interrupted). Workers are dealt to requests in turn; heavy photos never take the last free worker.
With ``workers=0`` photos decode on the caller's thread, with the same checks but no CPU bound.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptImage, DeadlineExceeded, PhotoError
from ..infra import logs
from ..infra.deadlines import Deadlines
from ..infra.forkserver import ForkServer, Worker
from . import costs
from .inputs import MAX_JPEG_SCANS, DecodeBudget, Settings, Size, bare, seconds_left, to_input

TARGET = "function.core.workers:serve"  # a worker's loop, in the processes the fork server forks

log = logging.getLogger(__name__)

HEAVY_BYTES = 64_000_000  # a decode charged this much may not take the last free worker
# Charged up front when free: a photo whose decode fits (a typical JPEG at draft scale) is decoded in
# one round trip instead of two (the worker asking for its charge, the parent answering).
ALLOWANCE_BYTES = 32_000_000
CHECK_S = 0.05  # the CPU watchdog looks again at least this often once the budget is near


class Decoder:
    """Decodes photos within the formats, pixel limit, shared memory budget and CPU budget."""

    def __init__(self, max_pixels: int, formats: tuple[str, ...], budget_bytes: int, *, workers: int = 0,
                 cpu_s: float = 2.0, max_scans: int = MAX_JPEG_SCANS, deadlines: Deadlines | None = None,
                 on_refusal: Callable[[str], None] | None = None, server: ForkServer | None = None):
        self.settings, self.cpu_s = Settings(max_pixels, formats, max_scans), cpu_s
        self.budget, self._on_refusal = DecodeBudget(budget_bytes), on_refusal
        if workers == 0:  # Pillow in this process, with its limits (workers set their own)
            from . import images

            images.limit_decoders(max_pixels)
        self._own_deadlines = deadlines is None
        self._deadlines = deadlines or Deadlines()
        self._own_server = server is None and workers > 0
        self._server = server or ForkServer()
        self._pool = _Pool(self._server, self.settings, workers) if workers > 0 else None

    def decode(self, data: bytes, size: Size, deadline: float | None = None, share: object = None) -> np.ndarray:
        """uint8 RGB [height,width,3] at ``size``; waits until ``deadline``, taking turns by ``share``."""
        try:
            if self._pool is None:
                from . import images

                s = self.settings
                return images.decode(data, s.max_pixels, size, s.formats, self.budget, deadline, s.max_scans)
            result = self._decode(data, size, deadline, share)
            if isinstance(result, PhotoError):
                raise bare(result)
            return to_input(result, size)
        except PhotoError as err:
            reason = costs.reason_of(err)
            if reason is not None and self._on_refusal is not None:
                self._on_refusal(reason)
            raise

    def close(self) -> None:
        """Stop the workers (photos still decoding get an error); the fork server stays for the process."""
        if self._pool is not None:
            self._pool.close()
        if self._own_server:
            self._server.close()
        if self._own_deadlines:
            self._deadlines.stop()

    def _decode(self, data: bytes, size: Size, deadline: float | None, share: object) -> bytes | PhotoError:
        assert self._pool is not None
        allowance, heavy, crashes = 0, False, 0
        try:
            while True:
                try:
                    worker = self._pool.acquire(share, deadline)
                except PhotoError as err:
                    return err
                if not allowance and not crashes and self.budget.try_acquire(ALLOWANCE_BYTES):
                    allowance = ALLOWANCE_BYTES  # charged only once a worker is there: waiting photos hold none
                outcome = self._run(worker, data, size, allowance, deadline)
                if isinstance(outcome, int):  # the decode needs this much: wait for it without a worker
                    if outcome > self.budget.capacity:
                        return costs.too_costly("memory", f"decoding it would hold {outcome / 1e6:.0f} MB; "
                                                f"the limit is {self.budget.capacity / 1e6:.0f} MB (DECODE_MEMORY_MB)")
                    if outcome >= HEAVY_BYTES and not heavy:
                        heavy = self._pool.take_heavy(deadline)
                        if not heavy:
                            return DeadlineExceeded("the request's deadline passed while this big photo waited "
                                                    "its turn")
                    try:
                        self.budget.acquire(outcome - allowance, deadline)
                    except PhotoError as err:
                        return err
                    allowance = outcome  # held from now on: the next try decodes at once
                    continue
                if outcome is None and crashes == 0:  # the worker was gone before it answered: once more
                    crashes += 1
                    continue
                if outcome is None:
                    return CorruptImage("the decoder process ended while decoding this image")
                return outcome
        finally:
            if allowance:
                self.budget.release(allowance)
            if heavy:
                self._pool.give_heavy()

    def _run(self, worker: Worker, data: bytes, size: Size, allowance: int,
             deadline: float | None) -> bytes | PhotoError | int | None:
        """One try: the pixels, an error, the bytes to charge first (int), or None (the worker died)."""
        assert self._pool is not None
        start = worker.cpu_seconds() or 0.0
        first = self.cpu_s if deadline is None else min(self.cpu_s, deadline - time.monotonic())
        watch = self._deadlines.arm(max(0.0, first), lambda: self._watch(worker, start, deadline))
        keep, charged = False, 0
        try:
            worker.conn.send(("photo", allowance, self.cpu_s, size))
            worker.conn.send_bytes(data)
            reply = worker.conn.recv()
            while reply[0] == "cost":  # charge the shared budget, or let the worker go and wait for it
                need = int(reply[1])
                more = self._charge(need, allowance + charged)
                if more is None:
                    worker.conn.send(("drop",))
                    keep = True
                    return need
                charged += more
                worker.conn.send(("go", need))
                reply = worker.conn.recv()
            keep = bool(reply[1])
            if reply[0] == "pixels":
                return worker.conn.recv_bytes()
            _, _, code, message, reason = reply
            return costs.too_costly(reason, message) if reason else PhotoError.from_code(code, message)
        except (EOFError, OSError):
            return self._death(worker)
        finally:
            watch.cancel()
            if charged:
                self.budget.release(charged)
            if allowance + charged >= HEAVY_BYTES > allowance:
                self._pool.give_heavy()
            self._pool.release(worker, keep)

    def _charge(self, need: int, charged: int) -> int | None:
        """Charge what ``need`` adds to ``charged`` now (with a heavy turn if needed); None: not now."""
        assert self._pool is not None
        if need > self.budget.capacity:
            return None
        was_heavy, heavy = charged >= HEAVY_BYTES, need >= HEAVY_BYTES
        if heavy and not was_heavy and not self._pool.take_heavy(time.monotonic()):
            return None
        more = max(0, need - charged)
        if self.budget.try_acquire(more):
            return more
        if heavy and not was_heavy:
            self._pool.give_heavy()
        return None

    def _watch(self, worker: Worker, start: float, deadline: float | None) -> float | None:
        """Kill the worker at the CPU budget or the request's deadline; else when to look again."""
        used = worker.cpu_seconds()
        if used is None:
            return None
        left = self.cpu_s - (used - start)
        if left <= 0.005:
            worker.kill("cpu")
            return None
        if deadline is not None:
            wall = deadline - time.monotonic()
            if wall <= 0:
                worker.kill("deadline")
                return None
            left = min(left, wall)
        return max(CHECK_S, left)

    def _death(self, worker: Worker) -> PhotoError | None:
        sig = worker.exit_signal()
        why = worker.stopped or ("cpu" if sig == signal.SIGXCPU else None)
        if why == "cpu":
            log.info("decode stopped at its CPU budget", extra=logs.fields(cpu_s=self.cpu_s))
            return costs.too_costly("cpu", f"decoding took more than {self.cpu_s:g} s of CPU (DECODE_CPU_S) "
                                    "and was stopped")
        if why == "deadline":
            return costs.too_costly("deadline", "the request's deadline passed while this photo was being "
                                    "decoded; its decode was stopped")
        log.warning("a decode worker died", extra=logs.fields(signal=sig))
        return None


class _Pool:
    """The worker processes, dealt to requests in turn; replacements started in the background."""

    def __init__(self, server: ForkServer, settings: Settings, count: int):
        self.server, self.settings = server, settings
        self.heavy_max = max(1, count - 1)
        self._cond = threading.Condition()
        self._idle: list[Worker] = []
        # share -> its photos waiting for a worker, in the order requests take their turns
        self._waiting: dict[object, deque[_Slot]] = {}
        self._heavy = 0
        self._to_start = count
        self._closed = False
        threading.Thread(target=self._start_workers, name="decode-workers", daemon=True).start()

    def acquire(self, share: object, deadline: float | None) -> Worker:
        with self._cond:
            if self._idle and not self._waiting:
                return self._idle.pop()
            slot = _Slot()
            self._waiting.setdefault(share, deque()).append(slot)
            self._grant()
            self._cond.wait_for(lambda: slot.worker is not None or self._closed, seconds_left(deadline))
            if slot.worker is not None:
                return slot.worker
            queue = self._waiting[share]
            queue.remove(slot)
            if not queue:
                del self._waiting[share]
            if self._closed:
                raise CorruptImage("the decoder is shut down")
            raise DeadlineExceeded("the request's deadline passed while this photo waited for a decode worker")

    def release(self, worker: Worker, keep: bool) -> None:
        with self._cond:
            if keep and not self._closed:
                self._idle.append(worker)
                self._grant()
                return
            self._to_start += 0 if self._closed else 1
            self._cond.notify_all()
        worker.close()

    def take_heavy(self, deadline: float | None) -> bool:
        """A heavy decode's turn, waiting for one until ``deadline`` (now: not at all)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._heavy < self.heavy_max, seconds_left(deadline)):
                return False
            self._heavy += 1
            return True

    def give_heavy(self) -> None:
        with self._cond:
            self._heavy -= 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for worker in idle:
            worker.close()

    def _grant(self) -> None:
        """Idle workers to waiting photos, one request after another (called with the lock held)."""
        while self._idle and self._waiting:
            share = next(iter(self._waiting))
            queue = self._waiting.pop(share)
            queue.popleft().worker = self._idle.pop()
            if queue:
                self._waiting[share] = queue  # to the end: the next request's turn
            self._cond.notify_all()

    def _start_workers(self) -> None:
        """Starts workers while some are missing; the first start also starts the fork server."""
        while True:
            with self._cond:
                while not self._closed and self._to_start == 0:
                    self._cond.wait()
                if self._closed:
                    return
                self._to_start -= 1
            try:
                worker = Worker(self.server, TARGET, self.settings)
            except Exception:  # out of processes or memory: try again soon, the photos wait
                log.exception("could not start a decode worker")
                with self._cond:
                    self._to_start += 1
                time.sleep(1.0)
                continue
            self.release(worker, keep=True)  # closed meanwhile: it is closed


@dataclass(eq=False)
class _Slot:
    """A photo waiting for a worker: the worker, once one is dealt to it."""

    worker: Worker | None = None
