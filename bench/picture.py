"""Where a run's time goes, as a picture: one bar per scenario, its critical path in phases (SVG).

    python -m bench.picture [bench/results/latest.json] [-o docs/performance-phases.svg]

``make bench`` writes ``bench/results/phases.svg`` beside its JSON. Each bar is the wall time of one
scenario cut along its critical path, from the function's own ``timings_ms`` (medians): the process
(interpreter start, imports, and for the CLI its exit; for the service's cold start, spawn until
the request is taken), the photos (the slowest fetch and the decodes after it), the wait for the
model (TensorFlow's import and load, or a conversion under way), the queue for a model call,
inference, and the rest (top-k, the answer). Phases that overlap (the model loading while the
photos download) are counted once, where the request waited for them. The CLI runs are drawn in
seconds, the service in milliseconds, each panel on its own scale.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from html import escape
from pathlib import Path
from typing import Any

from harness import ROOT

SEGMENTS = (  # (name in the legend, colour)
    ("process: start, imports, exit", "#9e9e9e"),
    ("photos: slowest fetch, then decode", "#4e79a7"),
    ("waiting for the model", "#f28e2b"),
    ("queue for a model call", "#edc948"),
    ("inference", "#59a14f"),
    ("the rest (top-k, answer)", "#b07aa1"),
)
PANELS = (("CLI, five photos (s)", ("CLI first", "CLI second", "CLI repeat"), 1000.0),
          ("service, five photos (ms)", ("service cold", "warm", "8 clients"), 1.0))


def phases(column: dict[str, float], before_ms: float) -> list[float]:
    """The critical path of one scenario, in ms, in the order of SEGMENTS."""
    photos = column.get("photos", 0.0)
    wait, queue, inference = column.get("model_wait", 0.0), column.get("queue", 0.0), column.get("inference", 0.0)
    rest = max(0.0, column.get("total", 0.0) - photos - wait - queue - inference)
    return [max(0.0, before_ms), photos, wait, queue, inference, rest]


def bars(results: dict[str, Any]) -> dict[str, list[float]]:
    columns = results.get("breakdown", {}).get("columns", {})
    out: dict[str, list[float]] = {}
    for name, column in columns.items():
        if name.startswith("CLI"):
            before = column.get("outside the CLI", 0.0)
        elif name == "service cold":  # spawn -> the request taken: the answer's time less its own total
            runs = results.get("service", {}).get("cold", {}).get("runs", [])
            gaps = sorted(r["first_answer_s"] * 1000 - r["timings_ms"].get("total", 0.0) for r in runs)
            before = gaps[len(gaps) // 2] if gaps else 0.0
        else:
            before = 0.0
        out[name] = phases(column, before)
    return out


def render(results: dict[str, Any]) -> str:
    data = bars(results)
    width, left, bar_h, gap, panel_gap = 900, 130, 26, 12, 46
    panels = [(title, [n for n in names if n in data], scale) for title, names, scale in PANELS]
    panels = [p for p in panels if p[1]]
    legend_rows = math.ceil(len(SEGMENTS) / 3)
    height = (40 + sum(26 + len(names) * (bar_h + gap) + panel_gap - gap for _, names, _ in panels)
              + 22 * legend_rows + 10)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(_title(results))}</text>']
    y = 40
    for title, names, scale in panels:
        longest = max(sum(data[n]) for n in names) / scale or 1.0
        unit = (width - left - 80) / longest
        parts.append(f'<text x="10" y="{y + 16}" font-weight="bold">{escape(title)}</text>')
        y += 26
        for name in names:
            x = float(left)
            parts.append(f'<text x="10" y="{y + bar_h * 0.65:.0f}">{escape(name)}</text>')
            for (label, colour), ms in zip(SEGMENTS, data[name], strict=True):
                w = ms / scale * unit
                if w <= 0:
                    continue
                parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}">'
                             f'<title>{escape(label)}: {ms:.0f} ms</title></rect>')
                if w > 34:
                    shown = f"{ms / 1000:.2f}" if scale > 1 else f"{ms:.0f}"
                    parts.append(f'<text x="{x + w / 2:.1f}" y="{y + bar_h * 0.65:.0f}" text-anchor="middle" '
                                 f'fill="white">{shown}</text>')
                x += w
            total = sum(data[name]) / scale
            label = f"{total:.2f} s" if scale > 1 else f"{total:.0f} ms"
            parts.append(f'<text x="{x + 6:.1f}" y="{y + bar_h * 0.65:.0f}">{label}</text>')
            y += bar_h + gap
        y += panel_gap - gap
    for i, (label, colour) in enumerate(SEGMENTS):
        lx, ly = 10 + (i % 3) * 290, y + (i // 3) * 22
        parts.append(f'<rect x="{lx}" y="{ly}" width="14" height="14" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 20}" y="{ly + 11}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _title(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    naive = results.get("cli", {}).get("naive", {}).get("wall_s", {}).get("median", math.nan)
    naive_text = f"; naive original {naive:.1f} s" if math.isfinite(naive) else ""
    return f"Where the time goes, make bench {meta.get('date', '')}{naive_text}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.picture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("-o", "--out", type=Path, default=None, help="default: phases.svg beside the results")
    args = parser.parse_args(argv)
    out = args.out or args.results.with_name("phases.svg")
    out.write_text(render(json.loads(args.results.read_text())))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
