"""How much CPU this process may really use: affinity and cgroup quota, not the node's core count
(a pod limited to 2 CPUs on a 64-core node must not size its thread pools for 64)."""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    return cpus if quota is None else min(cpus, max(1, math.ceil(quota)))


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max``, else v1 ``cfs_quota_us``), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
