"""Other processes of ours, seen and steered through ``/proc`` and the scheduler."""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process ``pid``, all threads, from ``/proc/PID/stat`` (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICK


def run_when_idle() -> None:
    """``SCHED_IDLE`` for this thread and the threads it starts later (TensorFlow's pools among them);
    the lowest nice value where the scheduling class cannot be changed."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def lend_priority(pid: int) -> int:
    """Put every thread of ``pid`` back on the normal policy; how many were changed (0 if it is gone
    or not ours to change)."""
    changed = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if os.sched_getscheduler(int(tid)) == os.SCHED_IDLE:
                os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))
                changed += 1
    return changed


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``); nothing elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
