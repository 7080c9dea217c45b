"""A request's walk through the package: which modules the request's own thread is in, in order.

``sys.setprofile`` records every call into a module of ``function/`` (or ``main.py``) and every return
to one; consecutive records of one module are one *stay*. Leaf modules (values and helpers any layer
may call: errors, configuration, results, sources, logs, the label map, the lifecycle, metrics,
deadlines) are left out: a walk is about where the request's data goes, not where it asks for a value.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import ROOT

LEAVES = ("errors.py", "config.py", "results.py", "sources.py", "logs.py", "labels.py", "lifecycle.py",
          "metrics.py", "deadlines.py")


def _module(filename: str) -> str | None:
    path = Path(filename).resolve()
    if path == ROOT / "main.py" or (ROOT / "function") in path.parents:
        return str(path.relative_to(ROOT))
    return None


@dataclass
class Walk:
    stays: list[str]

    @property
    def returns(self) -> int:
        """Stays in a module the walk had already left."""
        seen: set[str] = set()
        count = 0
        for module in self.stays:
            count += module in seen
            seen.add(module)
        return count

    def entries(self, module: str) -> int:
        return Counter(self.stays)[module]


def walk(run: Callable[[], Any]) -> tuple[Any, Walk]:
    """``run()``'s result, and the walk of the calling thread through the package while it ran."""
    seq: list[str] = []
    me = threading.get_ident()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if threading.get_ident() != me or _module(frame.f_code.co_filename) is None:
            return
        if event == "call":
            seq.append(_module(frame.f_code.co_filename) or "")
        elif event == "return":
            back = frame.f_back
            while back is not None and _module(back.f_code.co_filename) is None:
                back = back.f_back
            if back is not None:
                seq.append(_module(back.f_code.co_filename) or "")

    sys.setprofile(profile)
    try:
        result = run()
    finally:
        sys.setprofile(None)
    kept = [m for m in seq if not m.endswith(LEAVES)]
    return result, Walk([m for i, m in enumerate(kept) if i == 0 or kept[i - 1] != m])
