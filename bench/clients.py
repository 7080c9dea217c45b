"""The benchmark's clients: one five-photo POST, photos fetched alone, and closed-loop load levels."""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import requests

from harness import CpuMeter, FunctionProcess

from .context import PHOTOS_PER_REQUEST, Bench
from .stats import mean, median, phase_medians, summary


@dataclass
class Reply:
    latency_s: float
    ok: bool
    status: int
    timings_ms: dict[str, float]
    error: str | None = None
    started: float = 0.0  # time.perf_counter() when the request was sent


def post(session: requests.Session, url: str, urls: list[str], timeout_s: float) -> Reply:
    started = time.perf_counter()
    try:
        r = session.post(url, json={"urls": urls}, timeout=timeout_s)
        latency = time.perf_counter() - started
        doc = r.json()
    except (requests.RequestException, ValueError) as exc:
        return Reply(time.perf_counter() - started, False, 0, {}, f"{type(exc).__name__}: {exc}", started)
    bad = Counter(res["error"]["code"] for res in doc.get("results", []) if res.get("error"))
    ok = r.status_code == 200 and not bad and len(doc.get("results", [])) == len(urls)
    error = None if ok else (f"HTTP {r.status_code}: {doc.get('error')}" if r.status_code != 200
                             else "photo errors: " + ", ".join(f"{n} {code}" for code, n in sorted(bad.items())))
    return Reply(latency, ok, r.status_code, doc.get("timings_ms", {}), error, started)


def many_photos(urls: list[str], count: int) -> list[str]:
    """``count`` distinct URLs over ``urls`` (a query string per copy; the stand-in ignores it)."""
    return [f"{urls[i % len(urls)]}?copy={i}" for i in range(count)]


def runtime(server: FunctionProcess) -> str | None:
    """The runtime ``/readyz`` names (litert, tensorflow)."""
    try:
        return requests.get(server.url + "/readyz", timeout=5).json().get("model", {}).get("runtime")
    except (requests.RequestException, ValueError, AttributeError):
        return None


def fetch_alone(urls: list[str], probes: int, timeout_s: float) -> dict[str, Any]:
    """Each photo fetched on its own (a fresh connection each time, as a first fetch would be)."""
    per_photo = {}
    for url in urls:
        times = []
        for _ in range(probes):
            started = time.perf_counter()
            r = requests.get(url, timeout=timeout_s)
            r.raise_for_status()
            _ = r.content
            times.append(time.perf_counter() - started)
        per_photo[url.rsplit("/", 1)[-1]] = {"median_s": median(times), "samples_s": [round(t, 4) for t in times]}
    slowest = max(per_photo, key=lambda k: per_photo[k]["median_s"])
    return {"per_photo": per_photo, "slowest": slowest, "slowest_median_s": per_photo[slowest]["median_s"]}


def warm(b: Bench, server: FunctionProcess, requests_n: int) -> dict[str, Any]:
    """One request not counted (the first after ready), then ``requests_n`` one after another."""
    s = b.settings
    with requests.Session() as session:
        first = post(session, server.url + "/", b.photo_urls, s.request_timeout_s)
        replies = [post(session, server.url + "/", b.photo_urls, s.request_timeout_s) for _ in range(requests_n)]
    return {"latency_s": summary([r.latency_s for r in replies if r.ok]),
            "errors": sum(not r.ok for r in replies) + (not first.ok),
            "error_examples": sorted({r.error for r in [first, *replies] if r.error})[:3],
            "timings_ms": phase_medians(r.timings_ms for r in replies if r.ok),
            "samples_s": [round(r.latency_s, 4) for r in replies]}


def load_level(url: str, urls: list[str], clients: int, seconds: float, max_requests: int,
               timeout_s: float) -> tuple[list[Reply], float, float, float]:
    """``clients`` threads POST back to back until ``seconds`` pass or ``max_requests`` are sent.

    Returns the replies, the start and the end of the window (the deadline, or the last request
    sent if later) and the end of the drain (the last reply), all ``time.perf_counter()`` values.
    """
    replies: list[Reply] = []
    lock = threading.Lock()
    sent = [0]
    deadline = time.monotonic() + seconds
    last_sent = [0.0]

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                with lock:
                    if sent[0] >= max_requests:
                        break
                    sent[0] += 1
                    last_sent[0] = time.perf_counter()
                reply = post(session, url, urls, timeout_s)
                with lock:
                    replies.append(reply)

    threads = [threading.Thread(target=client, name=f"client-{i}", daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout_s + 5)
    window_end = max(started + seconds, last_sent[0])
    return replies, started, window_end, time.perf_counter()


def rate_in_window(replies: list[Reply], start: float, end: float) -> float:
    """Requests per second over [start, end], each request counted by the share of its own
    duration that falls inside the window.

    A closed loop that stops at a deadline drains: the last requests run on an emptying server,
    and counting completions over the elapsed time (drain included) understates a batching
    server's rate, while counting only completions before the deadline drops the work already
    done on requests still in flight. Spreading each request's one unit over its lifetime does
    neither, and uses every sample.
    """
    if end <= start:
        return math.nan
    units = 0.0
    for r in replies:
        r_end = r.started + r.latency_s
        overlap = min(r_end, end) - max(r.started, start)
        if overlap > 0 and r.latency_s > 0:
            units += overlap / r.latency_s
    return units / (end - start)


def level(b: Bench, server: FunctionProcess, clients: int, seconds: float) -> dict[str, Any]:
    """One load level against ``server``: req/s in the window, latencies, errors, and the cores the
    function, the stand-in, the clients and everyone else kept busy meanwhile."""
    s = b.settings
    def serving() -> list[int]:  # the arbiter and the worker serving requests, not the decode workers
        decode = set(server.decode_pids())
        return [p for p in server.pids() if p not in decode]

    meter = CpuMeter({"serving": serving, "decode": server.decode_pids, "standin": [b.net.pid],
                      "bench": [os.getpid()]}).start()
    replies, t0, t_window, t_done = load_level(server.url + "/", b.photo_urls, clients, seconds,
                                               s.level_max_requests, s.request_timeout_s)
    cpu = meter.stop()
    cpu["function_cores"] = round(cpu["serving_cores"] + cpu["decode_cores"], 2)
    ok = [r for r in replies if r.ok]
    rps = rate_in_window(ok, t0, t_window)
    elapsed = t_done - t0
    return {
        "clients": clients, "requests": len(replies), "ok": len(ok), "errors": len(replies) - len(ok),
        "error_examples": sorted({r.error for r in replies if r.error})[:3],
        "window_s": round(t_window - t0, 3), "elapsed_s": round(elapsed, 3),
        "requests_per_s": rps, "images_per_s": rps * PHOTOS_PER_REQUEST,
        "littles_law_requests_per_s": clients / mean([r.latency_s for r in ok]) if ok else math.nan,
        "latency_s": summary([r.latency_s for r in ok]),
        "timings_ms": phase_medians(r.timings_ms for r in ok),
        "cpu": cpu, "load_avg_1m": round(os.getloadavg()[0], 2),
        # Work per core the function actually got: comparable with the ceiling's even when other
        # processes take part of the machine (a view, not a target).
        "images_per_function_core_s": (len(ok) * PHOTOS_PER_REQUEST / elapsed / cpu["function_cores"]
                                       if elapsed and cpu["function_cores"] else math.nan),
    }
