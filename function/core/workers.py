"""Decode worker processes (the parent's side is :mod:`.decoding`): one photo at a time, inside limits.

Pillow's C decoders cannot be interrupted, so every untrusted byte is parsed in a worker forked from
the fork server. The protocol, over one socket pair (the size is the loaded model's, per photo)::

    parent -> ("photo", allowance, cpu_s, (width, height)), then the photo's bytes
    worker -> ("error", keep, code, message, reason)     the header says no (format, size, scans)
           |  ("cost", bytes)                            it would hold more than ``allowance``:
              parent -> ("go", bytes) | ("drop",)        charged to the shared budget, or not now
    worker -> ("pixels", keep), then width x height x 3 8-bit RGB | ("error", ...)

``keep`` is False when the worker exits after this answer (out of memory, or grown by RECYCLE_BYTES).
While decoding, RLIMIT_AS bounds the worker to its charge and RLIMIT_CPU to its budget plus a second.
"""

from __future__ import annotations

import math
import os
import resource
from multiprocessing.connection import Connection

from ..errors import PhotoError
from ..infra.procs import trim_heap
from . import costs, images
from .inputs import TRIM_AFTER_BYTES, Settings, Size

HEADER_BYTES = 64 * 1024 * 1024  # address space allowed for reading a header (Pillow's ICO decodes in open())
SLACK_BYTES = 16 * 1024 * 1024  # allocator slack on top of a photo's charge
RECYCLE_BYTES = 16 * 1024 * 1024  # a worker that keeps this much more than it started with is replaced


def serve(conn: Connection, settings: Settings) -> None:
    """A worker's life: photos from ``conn`` one at a time, until the parent closes it."""
    images.limit_decoders(settings.max_pixels)
    started = _status_bytes("VmRSS")
    while True:
        try:
            _, allowance, cpu_s, size = conn.recv()
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        keep = _task(conn, data, allowance, cpu_s, settings, started, size)
        del data
        if not keep:  # the answer said so: the parent starts a fresh worker instead of this one
            conn.close()
            return


def _task(conn: Connection, data: bytes, allowance: int, cpu_s: float, settings: Settings, started: int,
          size: Size) -> bool:
    """One photo; False when the worker is to be replaced after it (the answer says so)."""
    _limit_cpu(cpu_s)
    try:
        early = costs.opening_cost(data, settings.max_pixels)
        if isinstance(early, PhotoError):
            return _send_error(conn, early, keep=True)
        if early is not None:
            allowance = _charged(conn, early, allowance)
            if not allowance:
                return True
        _limit_memory(max(0, allowance - len(data)) + SLACK_BYTES if early is not None else HEADER_BYTES)
        try:
            opened = images.prepare(data, settings.max_pixels, size, settings.formats, settings.max_scans)
        except MemoryError:
            opened = costs.too_costly("memory", "reading the image header needed more memory than it was "
                                      "allowed (64 MiB, or the charge of its canvas)")
        if isinstance(opened, PhotoError):
            return _send_error(conn, opened, keep=not _is_memory(opened))
        img, cost = opened
        with img:
            allowance = _charged(conn, cost, allowance)
            if not allowance:
                return True
            _limit_memory(max(0, allowance - len(data)) + SLACK_BYTES)
            result = images.render(img, settings.max_pixels, size)
            _limit_memory(None)
            img.close()
            if cost >= TRIM_AFTER_BYTES:
                trim_heap()
        keep = not (isinstance(result, PhotoError) and _is_memory(result)) and \
            _status_bytes("VmRSS") - len(data) - started < RECYCLE_BYTES
        if isinstance(result, PhotoError):
            return _send_error(conn, result, keep)
        conn.send(("pixels", keep))
        conn.send_bytes(result.tobytes())
        return keep
    finally:
        _limit_memory(None)
        _limit_cpu(None)


def _charged(conn: Connection, cost: int, allowance: int) -> int:
    """The bytes this decode may hold: ``allowance`` if it fits, else the parent's charge (0: not now)."""
    if cost <= allowance:
        return allowance
    conn.send(("cost", cost))
    answer = conn.recv()
    return int(answer[1]) if answer[0] == "go" else 0


def _is_memory(err: PhotoError) -> bool:
    return costs.reason_of(err) == "memory"


def _send_error(conn: Connection, err: PhotoError, keep: bool) -> bool:
    conn.send(("error", keep, err.code, err.message, costs.reason_of(err)))
    return keep


_PAGE = os.sysconf("SC_PAGE_SIZE")
_STATM_FIELDS = {"VmSize": 0, "VmRSS": 1}


def _status_bytes(field: str) -> int:
    """The worker's address space (VmSize) or resident set (VmRSS), from /proc/self/statm."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[_STATM_FIELDS[field]]) * _PAGE


def _limit_memory(extra: int | None) -> None:
    """Address space: what the worker maps now plus ``extra`` (None: unlimited again)."""
    soft = resource.RLIM_INFINITY if extra is None else _status_bytes("VmSize") + extra
    resource.setrlimit(resource.RLIMIT_AS, (soft, resource.RLIM_INFINITY))


def _limit_cpu(seconds: float | None) -> None:
    """CPU time: what the worker used plus ``seconds`` and one more, then SIGXCPU (None: unlimited)."""
    if seconds is None:
        soft = resource.RLIM_INFINITY
    else:
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(used.ru_utime + used.ru_stime + seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))
