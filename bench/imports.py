"""The import chain of the service's cold start: ``python -X importtime`` of the service as the image
starts it (``PYTHONPROFILEIMPORTTIME=1``, which gunicorn's arbiter and its forked worker both
inherit), up to its first five-photo answer.

Reported: the import time in all, the top-level imports by cumulative time, and the heaviest chain
(from the costliest top-level import down through its costliest child, level by level). The
process is timed too, but its figures are inflated by the bookkeeping and are not the cold start's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .context import Bench
from .service import cold_start

LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S.*)$")


@dataclass
class Node:
    name: str
    self_us: int
    cumulative_us: int
    children: list[Node] = field(default_factory=list)


def parse(lines: list[str]) -> list[Node]:
    """The top-level imports, each with its children (importtime prints a module after its children)."""
    pending: dict[int, list[Node]] = {}
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        level = (len(m.group(3)) - 1) // 2
        node = Node(m.group(4).strip(), int(m.group(1)), int(m.group(2)), pending.pop(level + 1, []))
        pending.setdefault(level, []).append(node)
    # Imports running at once on several threads (a model loaded in the background) can leave a
    # child without its parent line: they count as top level.
    return [n for level in sorted(pending) for n in pending[level]]


def chain(top: list[Node], depth: int = 8) -> list[dict[str, Any]]:
    out = []
    nodes = top
    for _ in range(depth):
        if not nodes:
            break
        heaviest = max(nodes, key=lambda n: n.cumulative_us)
        out.append({"module": heaviest.name, "cumulative_ms": round(heaviest.cumulative_us / 1000, 1),
                    "self_ms": round(heaviest.self_us / 1000, 1)})
        nodes = heaviest.children
    return out


def summarise(lines: list[str], top_n: int) -> dict[str, Any]:
    top = parse(lines)
    total = sum(n.cumulative_us for n in top)
    ranked = sorted(top, key=lambda n: n.cumulative_us, reverse=True)[:top_n]
    return {"total_ms": round(total / 1000, 1), "modules": sum(1 for line in lines if LINE.match(line)),
            "top": [{"module": n.name, "cumulative_ms": round(n.cumulative_us / 1000, 1)} for n in ranked],
            "chain": chain(top)}


def imports(b: Bench) -> dict[str, Any]:
    log = b.logs / "service-importtime.log"
    log.unlink(missing_ok=True)
    server = b.service("service-importtime", b.service_env(b.fresh_dir("imports-"), PYTHONPROFILEIMPORTTIME="1"))
    try:
        start = cold_start(b, server)
    finally:
        server.stop()
    doc = summarise(Path(log).read_text(errors="replace").splitlines(), b.settings.imports_top)
    doc["first_answer_s_with_importtime"] = start["first_answer_s"]
    b.log(f"import chain: {doc['total_ms']:.0f} ms of imports in {doc['modules']} modules; heaviest: "
          + " > ".join(f"{c['module']} {c['cumulative_ms']:.0f}" for c in doc["chain"][:4]))
    return doc
