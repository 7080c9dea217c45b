"""Small statistics for small samples: median, percentiles by linear interpolation, spread."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating between the nearest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, p95, min, max and count of a sample (NaN for an empty one)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return {"n": len(vals), "median": median(vals), "p95": percentile(vals, 95),
            "min": min(vals) if vals else math.nan, "max": max(vals) if vals else math.nan}


def phase_medians(samples: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Per-key medians over dicts of timings, keys in the order they first appear."""
    by_key: dict[str, list[float]] = {}
    for sample in samples:
        for key, value in sample.items():
            if isinstance(value, (int, float)):
                by_key.setdefault(key, []).append(float(value))
    return {key: median(vals) for key, vals in by_key.items()}


def ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan
