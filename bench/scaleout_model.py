"""A model of one big request past this machine: N photos over K instances, warm or from zero.

    python -m bench.scaleout_model                      # figures from bench/results/latest.json
    python -m bench.scaleout_model --results other.json --svg docs/performance-scaleout.svg

The bench measures two instances on two cores (``bench/scaleout.py``); this script carries those
figures to more instances and bigger requests by simulating the fan-out's own dispatch rules
(``function/core/fanout.py``) in simulated time: lanes that pull chunks of guided sizes, a round-robin
router, the front instance refusing its own chunks, backups of the newest chunk out. Nothing here
sleeps or starts a process.

What it assumes (docs/performance.md, "Scale-out", states them with the figures):

* An instance is one core that classifies photos one after another in the order their chunk's
  photos arrived (first come, first served), ``cpu_s`` each, plus ``chunk_cpu_s`` per sub-request.
* A chunk's photos arrive together ``fetch_s`` after it starts: the stand-in's round trip and the
  biggest photo's transfer (a chunk of four or more photos of the bench's five nearly always holds one).
* A sub-request costs ``hop_s`` more than the work (proxy, HTTP and JSON both ways, waiting for a
  thread), half each way; a refused one costs ``hop_s`` and no CPU.
* From zero, every pod asked for is ready ``cold_s`` after the request (scheduling, the container's
  start, the model load: the bench's cold start plus ``schedule_s``). Knative's KPA decides how many
  pods there are from concurrency, not photos: a big request holds one slot where it landed and
  ``FANOUT_INFLIGHT`` slots elsewhere; :func:`kpa_pods` computes what the manifest's numbers make of
  that (stable window, panic window, target, ``containerConcurrency``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import ROOT

RESULTS = ROOT / "bench" / "results" / "latest.json"
SERVICE = ROOT / "knative" / "service.yaml"
LOCAL_LANES = 4  # function/core/fanout.py
REMOTE_TRIES = 3
LATE = 1.5  # a chunk out is backed up once out this many times the longest chunk classified here took
NS = (40, 400, 4000)
KS = tuple(range(1, 11))


@dataclass(frozen=True)
class Figures:
    """What the model is driven by; ``source`` says where each came from."""

    cpu_s: float = 0.023  # CPU per photo on one core (decode + inference + its share of the request)
    chunk_cpu_s: float = 0.004  # CPU per sub-request beyond its photos
    fetch_s: float = 0.215  # a chunk's photos in: 80 ms round trip + 2.16 MB at 16 MB/s
    hop_s: float = 0.006  # a sub-request's round trip beyond the work
    cold_s: float = 0.7  # the bench's cold start: spawn -> first answer, model in the image
    schedule_s: float = 1.0  # a pod scheduled and its container started (not measured here: assumed)
    chunk: int = 10  # FANOUT_CHUNK
    inflight: int = 4  # FANOUT_INFLIGHT
    source: str = "defaults"


def figures_from(results: dict[str, Any], base: Figures) -> Figures:
    """The bench's figures where the results hold them; ``base``'s otherwise."""
    used = []
    f = base
    so = results.get("scaleout")
    if so:
        alone = so["alone"]
        f = replace(f, cpu_s=alone["front_cpu_s"] / so["photos"])
        used.append(f"cpu_s from scaleout: one instance's CPU {alone['front_cpu_s']:.2f} s / {so['photos']} photos")
        two = next((r for r in so["by_k"] if r["k"] == 2), None)
        if two and two["remote_chunks"] > 0:
            extra = max(0.0, two["front_cpu_s"] + two["others_cpu_s"] - alone["front_cpu_s"])
            chunks = two["remote_chunks"] + two["local_chunks"]
            f = replace(f, chunk_cpu_s=extra / chunks, hop_s=two["transport_ms"] / 1000 / two["remote_chunks"])
            used.append(f"chunk_cpu_s: two instances' CPU beyond one's, {extra:.2f} s / {chunks:.0f} chunks; hop_s: "
                        f"the fan-out's transport {two['transport_ms']:.0f} ms / {two['remote_chunks']:.0f} chunks")
    meta = results.get("meta", {})
    net, photos = meta.get("standin"), meta.get("fixtures", {}).get("photos")
    if net and photos and net.get("bandwidth_mbps"):
        biggest = max(p["bytes"] for p in photos)
        f = replace(f, fetch_s=net["latency_ms"] / 1000 + biggest / (net["bandwidth_mbps"] * 1e6))
        used.append(f"fetch_s: {net['latency_ms']:.0f} ms + {biggest / 1e6:.2f} MB at {net['bandwidth_mbps']:.0f} MB/s")
    cold = results.get("service", {}).get("cold", {}).get("first_answer_s", {}).get("median")
    if cold:
        f = replace(f, cold_s=cold)
        used.append(f"cold_s from the service scenario's cold start, {cold:.2f} s")
    return replace(f, source="; ".join(used) or "defaults")


# -- the warm case: the dispatch rules in simulated time ------------------------------------------


@dataclass(eq=False)
class _Chunk:
    start: int
    stop: int
    tries: int = 0
    backed_up: bool = False
    sent: float = 0.0
    taken: float = 0.0  # when a local lane took it

    @property
    def n(self) -> int:
        return self.stop - self.start


def warm(n: int, k: int, f: Figures) -> float:
    """Seconds from the request reaching the front instance to its last photo's answer, with K warm
    instances behind a round-robin router (the front one of them)."""
    if n <= f.chunk or k < 1:
        return f.fetch_s + n * f.cpu_s
    lanes = f.inflight + LOCAL_LANES
    smallest = max(1, f.chunk // 2)
    done = [False] * n
    left = [n]
    cursor = [0]
    again: list[_Chunk] = []
    out: list[_Chunk] = []
    cpu_free = [0.0] * k  # when each instance's core is next free
    turn = [1]  # the client's request took the router's first turn (the front, instance 0)
    remote_on = [True]
    refused = [0]
    answered = [0]
    failed_in_a_row = [0]
    events: list[tuple[float, int, str, Any]] = []
    seq = iter(range(10**9))
    idle_local = [0]
    local_busy = [0]
    longest_local = [0.0]

    def push(t: float, kind: str, data: Any) -> None:
        heapq.heappush(events, (t, next(seq), kind, data))

    def cut() -> _Chunk | None:
        if cursor[0] >= n:
            return None
        rest = n - cursor[0]
        size = math.ceil(rest / LOCAL_LANES) if not remote_on[0] else \
            min(rest, f.chunk, max(smallest, math.ceil(rest / (2 * lanes))))
        c = _Chunk(cursor[0], cursor[0] + size)
        cursor[0] += size
        return c

    def fill(c: _Chunk) -> None:
        for i in range(c.start, c.stop):
            if not done[i]:
                done[i] = True
                left[0] -= 1

    def unanswered(c: _Chunk) -> bool:
        return not all(done[c.start:c.stop])

    def take_remote(t: float) -> None:
        if left[0] == 0 or not remote_on[0]:
            return
        c = next((x for x in again if x.tries < REMOTE_TRIES), None)
        if c is not None:
            again.remove(c)
        else:
            c = cut()
        if c is None:
            return
        c.sent = t
        out.append(c)
        where = turn[0] % k
        turn[0] += 1
        if where == 0:
            push(t + f.hop_s, "refused", c)
        else:
            push(t + f.hop_s / 2 + f.fetch_s, "ready", (where, c))

    def take_local(t: float) -> bool:
        if left[0] == 0:
            return False
        c = next((x for x in again if x.tries >= REMOTE_TRIES or not remote_on[0]), None) or cut()
        if c is None and local_busy[0] == 0:  # backups and chunks to send again: once the local share is done
            due = LATE * longest_local[0]  # a backup only of a chunk out longer than this
            waiting = [x for x in reversed(out) if not x.backed_up and unanswered(x)]
            c = again[0] if again else next((x for x in waiting if t - x.sent >= due), None)
            if c is None and waiting:
                push(min(x.sent + due for x in waiting), "wake", None)
            if c is not None and c not in again:
                c.backed_up = True
        if c is None:
            return False
        if c in again:
            again.remove(c)
        local_busy[0] += 1
        c.taken = t
        push(t + f.fetch_s, "ready", (0, c))
        return True

    for _ in range(f.inflight):
        take_remote(0.0)
    for _ in range(LOCAL_LANES):
        if not take_local(0.0):
            idle_local[0] += 1
    t = 0.0
    while left[0] > 0 and events:
        t, _, kind, data = heapq.heappop(events)
        if kind == "ready":  # a chunk's photos are in: its CPU work joins the instance's queue
            where, c = data
            start = max(t, cpu_free[where])
            cpu_free[where] = start + c.n * f.cpu_s + (f.chunk_cpu_s if where else 0.0)
            push(cpu_free[where] + (f.hop_s / 2 if where else 0.0), "remote" if where else "local", c)
        elif kind == "remote":
            if data in out:
                out.remove(data)
            answered[0] += 1
            failed_in_a_row[0] = 0
            fill(data)
            take_remote(t)
        elif kind == "refused":
            c = data
            out.remove(c)
            c.tries += 1
            refused[0] += 1
            if refused[0] >= 2 * f.inflight and answered[0] == 0:
                remote_on[0] = False
            if not c.backed_up and unanswered(c):
                again.append(c)
            take_remote(t)
        elif kind == "local":
            local_busy[0] -= 1
            longest_local[0] = max(longest_local[0], t - data.taken)
            fill(data)
            if not take_local(t):
                idle_local[0] += 1
        while idle_local[0] and take_local(t):  # a lane that found nothing looks again after each event
            idle_local[0] -= 1
    if left[0]:
        raise RuntimeError(f"the simulation ran out of events with {left[0]} of {n} photos unanswered")
    return t


# -- from zero: Knative's autoscaler --------------------------------------------------------------


@dataclass(frozen=True)
class Autoscaling:
    target: float = 6.0
    utilization: float = 1.0
    container_concurrency: int = 8
    max_scale: int = 10
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0  # of the stable window: 6 s
    panic_threshold_percentage: float = 200.0
    tick_s: float = 2.0  # the KPA decides every 2 s


def autoscaling_from(manifest: Path = SERVICE) -> Autoscaling:
    """The annotations and containerConcurrency of the Service (Knative's defaults for the rest)."""
    text = manifest.read_text()

    def value(key: str, default: float) -> float:
        m = re.search(rf"{re.escape(key)}:\s*\"?([0-9.]+)\"?", text)
        return float(m.group(1)) if m else default

    a = Autoscaling()
    return replace(a, target=value("autoscaling.knative.dev/target", a.target),
                   utilization=value("autoscaling.knative.dev/target-utilization-percentage", 100.0) / 100,
                   container_concurrency=int(value("containerConcurrency", a.container_concurrency)),
                   max_scale=int(value("autoscaling.knative.dev/max-scale", a.max_scale)))


def kpa_pods(concurrency: float, a: Autoscaling) -> int:
    """Pods the KPA wants for ``concurrency`` requests in flight held through both windows (a big
    request's slots, held for longer than the panic window): ceil(concurrency / (target x
    utilisation)), at most max-scale. Panic mode starts when the panic window's concurrency reaches
    panic-threshold x the pods' capacity, and only ever keeps the count from falling."""
    return max(1, min(a.max_scale, math.ceil(concurrency / (a.target * a.utilization))))


def from_zero(n: int, k: int, f: Figures) -> float:
    """K pods started together when the request arrives (``activation-scale: K``): every pod ready
    ``schedule_s + cold_s`` later, then the warm case."""
    return f.schedule_s + f.cold_s + warm(n, k, f)


def table(f: Figures, a: Autoscaling) -> dict[str, Any]:
    one_request = 1 + f.inflight  # the request's own slot and its sub-requests'
    rows = {str(n): {"warm_s": [round(warm(n, k, f), 3) for k in KS],
                     "from_zero_s": [round(from_zero(n, k, f), 3) for k in KS],
                     "wide_inflight_warm_s": [round(warm(n, k, replace(f, inflight=4 * (k - 1) or 1)), 3)
                                              for k in KS]} for n in NS}
    return {"figures": f.__dict__, "autoscaling": a.__dict__, "ks": list(KS), "ns": list(NS), "by_n": rows,
            "kpa_pods_for_one_big_request": kpa_pods(one_request, a), "one_big_request_concurrency": one_request}


# -- the picture -----------------------------------------------------------------------------------


def svg(t: dict[str, Any]) -> str:
    """Latency against K, one panel per N: warm (solid), from zero (dashed), warm with
    FANOUT_INFLIGHT = 4 (K - 1) (dotted). Log-free, one y scale per panel."""
    w, h, pad = 300, 220, 44
    colours = {"warm_s": "#1f77b4", "from_zero_s": "#d62728", "wide_inflight_warm_s": "#2ca02c"}
    dashes = {"warm_s": "", "from_zero_s": "6 4", "wide_inflight_warm_s": "2 3"}
    names = {"warm_s": "warm, FANOUT_INFLIGHT 4", "from_zero_s": "from zero (K pods started at once)",
             "wide_inflight_warm_s": "warm, FANOUT_INFLIGHT 4(K-1)"}
    ks = t["ks"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * w + 20}" height="{h + 70}" '
             'font-family="sans-serif" font-size="11">', '<rect width="100%" height="100%" fill="white"/>']
    for p, n in enumerate(t["ns"]):
        rows = t["by_n"][str(n)]
        top = max(max(v) for v in rows.values())
        scale = _nice(top)
        x0, y0 = p * w + pad, 20
        pw, ph = w - pad - 12, h - 40

        def x(k: int, x0: float = x0, pw: float = pw) -> float:
            return x0 + (k - ks[0]) / (ks[-1] - ks[0]) * pw

        def y(v: float, y0: float = y0, ph: float = ph, scale: float = scale) -> float:
            return y0 + ph - v / scale * ph

        parts.append(f'<text x="{x0 + pw / 2}" y="14" text-anchor="middle" font-weight="bold">N = {n} photos</text>')
        parts.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        for i in range(5):
            v = scale * i / 4
            parts.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{x0 - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{_label(v)}</text>')
        for k in ks:
            parts.append(f'<text x="{x(k):.1f}" y="{y0 + ph + 14}" text-anchor="middle">{k}</text>')
        parts.append(f'<text x="{x0 + pw / 2}" y="{y0 + ph + 28}" text-anchor="middle">K instances</text>')
        for key, values in rows.items():
            pts = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in zip(ks, values, strict=True))
            dash = f' stroke-dasharray="{dashes[key]}"' if dashes[key] else ""
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colours[key]}" stroke-width="2"{dash}/>')
    parts.append(f'<text x="{pad}" y="{h + 52}">seconds from the request to its answer;</text>')
    lx = pad + 200
    for key, name in names.items():
        dash = f' stroke-dasharray="{dashes[key]}"' if dashes[key] else ""
        parts.append(f'<line x1="{lx}" x2="{lx + 24}" y1="{h + 48}" y2="{h + 48}" stroke="{colours[key]}" '
                     f'stroke-width="2"{dash}/><text x="{lx + 28}" y="{h + 52}">{name}</text>')
        lx += 40 + 6 * len(name)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _nice(v: float) -> float:
    step = 10 ** math.floor(math.log10(v))
    return next(m * step for m in (1, 2, 2.5, 5, 10) if m * step >= v)


def _label(v: float) -> str:
    return f"{v:g}"


def lines(t: dict[str, Any]) -> Iterator[str]:
    f = t["figures"]
    yield f"figures: {f['source']}"
    yield (f"  cpu_s {f['cpu_s'] * 1000:.1f} ms/photo, chunk_cpu_s {f['chunk_cpu_s'] * 1000:.1f} ms, fetch_s "
           f"{f['fetch_s'] * 1000:.0f} ms, hop_s {f['hop_s'] * 1000:.1f} ms, cold {f['cold_s']:.2f} s + scheduling "
           f"{f['schedule_s']:.1f} s, FANOUT_CHUNK {f['chunk']}, FANOUT_INFLIGHT {f['inflight']}")
    yield "K:            " + " ".join(f"{k:>6}" for k in t["ks"])
    for n in t["ns"]:
        for key in ("warm_s", "wide_inflight_warm_s", "from_zero_s"):
            values = t["by_n"][str(n)][key]
            yield f"N={n:<5} {key[:11]:<11}" + " ".join(f"{v:6.2f}" for v in values)
    a = t["autoscaling"]
    yield (f"KPA (knative/service.yaml): target {a['target']:g} x {a['utilization']:.0%}, containerConcurrency "
           f"{a['container_concurrency']}, max-scale {a['max_scale']}: one big request holds "
           f"{t['one_big_request_concurrency']} slots -> {t['kpa_pods_for_one_big_request']} pod(s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scaleout_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS, help="a bench results JSON (default: the latest run)")
    p.add_argument("--svg", type=Path, default=None, help="write the plot here")
    p.add_argument("--json", type=Path, default=None, help="write the table here")
    args = p.parse_args(argv)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    t = table(figures_from(results, Figures()), autoscaling_from())
    print("\n".join(lines(t)))
    if args.svg:
        args.svg.write_text(svg(t))
    if args.json:
        args.json.write_text(json.dumps(t, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
