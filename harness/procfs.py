"""Process trees, their memory and their CPU time, from /proc (Linux; no psutil needed).

A gunicorn service is an arbiter and its workers, so every figure here is of a *tree*: the process
and its descendants. Memory is reported three ways, because they answer different questions:
VmRSS (what ``ps`` and most limits talk about), PSS (pages shared between the arbiter and its forked
worker counted once: closer to what the cgroup charges) and VmHWM (each process's own peak RSS).
A process that is gone while it is read counts as nothing, never as an error.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (every thread's ``children`` list)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, ``pid`` first."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def status_kb(pid: int, key: str) -> int:
    """One number of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``, ``Threads``...); 0 for a gone process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except OSError:
        return 0


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS, PSS and VmHWM summed over ``pid``'s tree, in MB (MiB)."""
    pids = tree(pid)
    rss = sum(status_kb(p, "VmRSS") for p in pids)
    hwm = sum(status_kb(p, "VmHWM") for p in pids)
    pss = sum(_pss_kb(p) for p in pids)
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1), "hwm_mb": round(hwm / 1024, 1)}


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of the live processes ``pids`` (0 for a gone one)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy since boot (every process, not only ours)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


class CpuMeter:
    """Cores kept busy by named groups of processes between :meth:`start` and :meth:`stop`, and by
    everything else on the machine (``other_cores``: other people's work on a shared machine).

    A group is a list of pids or a callable returning one (a tree, re-read at each end, so workers
    that start during the measurement count from when they are seen)."""

    def __init__(self, groups: Mapping[str, Iterable[int] | Callable[[], Iterable[int]]]):
        self.groups = dict(groups)

    def _pids(self, name: str) -> list[int]:
        g = self.groups[name]
        return list(g() if callable(g) else g)

    def start(self) -> CpuMeter:
        self._t0 = time.perf_counter()
        self._m0 = machine_busy_seconds()
        self._c0 = {name: cpu_seconds(self._pids(name)) for name in self.groups}
        return self

    def stop(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._t0
        used = {name: cpu_seconds(self._pids(name)) - self._c0[name] for name in self.groups}
        machine = machine_busy_seconds() - self._m0
        cores = {f"{name}_cores": round(s / elapsed, 2) for name, s in used.items()}
        return cores | {"machine_cores": round(machine / elapsed, 2),
                        "other_cores": round(max(0.0, machine - sum(used.values())) / elapsed, 2),
                        "elapsed_s": round(elapsed, 2)}


class Sampler(threading.Thread):
    """Calls ``probe`` every ``period_s`` on its own thread; keeps every sample and the peak of each
    number. ``Sampler(lambda: memory_mb(pid))`` is a memory sampler of a tree."""

    def __init__(self, probe: Callable[[], Mapping[str, float]], period_s: float = 0.05):
        super().__init__(daemon=True)
        self.probe, self.period_s = probe, period_s
        self.samples: list[dict[str, float]] = []
        self.peak: dict[str, float] = {}
        self._halt = threading.Event()

    def _sample(self) -> None:
        sample = dict(self.probe())
        self.samples.append(sample)
        self.peak = {k: max(self.peak.get(k, v), v) for k, v in sample.items()}

    def run(self) -> None:
        while not self._halt.is_set():
            self._sample()
            self._halt.wait(self.period_s)

    def stop(self) -> dict[str, float]:
        """Stop sampling, after one last sample (so the peak is never below the end); returns the peaks."""
        self._halt.set()
        self.join(10)
        self._sample()
        return self.peak
