"""The ``scaleout`` scenario: does adding instances reduce one big request's latency?

The same request (``photos`` photo-sized JPEGs from the stand-in internet, 40 by default) is sent
to K instances of the function, for each K asked (``--scaleout-k``, 1,2 by default), each started
as the image starts it and pinned to one core with ``taskset`` (instance i on core i mod the cores
there are), behind a round-robin proxy that stands in for Knative's routing (the activator, with
``containerConcurrency`` 8, takes pods in turn). ``FANOUT_URL`` points at the proxy, so every
sub-request goes through it as it would go through Knative. One instance without ``FANOUT_URL`` is
measured too: what fan-out costs where there is nobody to fan out to.

Besides the latency ratio, the busiest instance's CPU seconds per request over one instance's: the
ratio with the instances' cores to themselves, which a busy shared machine does not move much.

Per K: the median latency over ``rounds`` requests (after a warm-up that sends each instance a
request of its own, so each has been the front once), and where the time went: the proxy's own
time (its handling minus the time upstream), the fan-out's transport (the front's round trips minus
the other instance's own total: proxy, HTTP and JSON both ways, waiting for a thread), the JSON of
one chunk's answer encoded and decoded here, and each instance's CPU seconds per request (the front
instance's apart), read from /proc. The ratio of K=2 to K=1 is the figure the target judges.

The proxy, the stand-in internet and this client run unpinned on the same machine, so with two
instances on a two-core machine they take CPU from the instances; ``other_cores`` says how much else
the machine was doing (other people's work on a shared machine).
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from harness import FunctionProcess, cpu_seconds, machine_busy_seconds, tree

from .clients import many_photos, post
from .context import Bench
from .stats import median, summary

HEADER = "X-Bird-Fanout"  # function.core.fanout.HEADER; the bench talks to the function over HTTP only
FORWARDED = ("content-type", HEADER.lower(), "x-request-id")
CHUNK = 10  # FANOUT_CHUNK, as knative/service.yaml sets it


class RoundRobinProxy:
    """Forwards each POST to the next backend in turn (keep-alive per handler thread), and records,
    per request: the backend, whether it was a fan-out chunk, the status, its time upstream and its
    time in the proxy beyond that (reading the body, picking the backend, writing the answer back)."""

    def __init__(self) -> None:
        self.backends: list[str] = []
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._turn = 0
        proxy = self
        local = threading.local()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY, as Knative's activator and queue-proxy (Go) have by default: without it the
            # body written after the headers waits for the peer's delayed ACK, ~40 ms an answer.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                t0 = time.perf_counter()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy._lock:
                    i = proxy._turn % len(proxy.backends)
                    proxy._turn += 1
                session = getattr(local, "session", None)
                if session is None:
                    session = local.session = requests.Session()
                headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED}
                t1 = time.perf_counter()
                upstream = session.post(proxy.backends[i] + self.path, data=body, headers=headers, timeout=300)
                content = upstream.content
                t2 = time.perf_counter()
                # Logged before the answer goes out, so the client finds its own request in the log;
                # the time to write the answer back is added once it is written.
                entry = {"backend": i, "chunk": HEADER in self.headers, "status": upstream.status_code,
                         "upstream_ms": (t2 - t1) * 1000, "proxy_ms": (t1 - t0) * 1000,
                         "sent": t1, "answered": t2}  # perf_counter: a request's timeline
                with proxy._lock:
                    proxy.log.append(entry)
                self.send_response(upstream.status_code)
                self.send_header("Content-Type", upstream.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
                with proxy._lock:
                    entry["proxy_ms"] += (time.perf_counter() - t2) * 1000

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def since(self, start: int) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.log[start:])

    def mark(self) -> int:
        with self._lock:
            return len(self.log)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class PinnedProcess(FunctionProcess):
    """The function as the image starts it, on one core (``taskset -c core``): a one-core pod."""

    def __init__(self, core: int, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.core = core

    def command(self) -> list[str]:
        return ["taskset", "-c", str(self.core), *super().command()]


def serialisation_ms(doc: dict[str, Any], repeats: int = 50) -> float:
    """Encoding and decoding one chunk's answer, here (the instances do the same once each way)."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        json.loads(json.dumps(doc))
    return (time.perf_counter() - t0) * 1000 / repeats


def _one_k(b: Bench, k: int, photos: int, rounds: int, fanout: bool, cores: list[int]) -> dict[str, Any]:
    s = b.settings
    proxy = RoundRobinProxy()
    extra = {"FANOUT_URL": proxy.url + "/", "FANOUT_CHUNK": str(CHUNK)} if fanout else {}
    servers = [PinnedProcess(cores[i % len(cores)], b.service_env(b.fresh_dir(f"scaleout-{k}-{i}-"), **extra),
                             b.logs / f"scaleout-k{k}{'' if fanout else '-alone'}-{i}.log") for i in range(k)]
    proxy.backends = [srv.url for srv in servers]
    label = f"K={k}" + ("" if fanout else " without FANOUT_URL")
    try:
        for srv in servers:
            srv.start()
        for srv in servers:
            srv.wait_ready(s.ready_timeout_s)
        urls = many_photos(b.photo_urls, photos)
        samples: list[dict[str, Any]] = []
        with requests.Session() as session:
            for _ in range(2 * k):  # each instance the front at least once: models warm, connections open
                post(session, proxy.url + "/", urls, s.request_timeout_s)
            for r in range(rounds):
                mark = proxy.mark()
                trees = [tree(srv.pid) for srv in servers]
                cpu0 = [cpu_seconds(t) for t in trees]
                busy0, t0, own0 = machine_busy_seconds(), time.perf_counter(), time.process_time()
                reply = post(session, proxy.url + "/", [f"{u}&round={r}" for u in urls], s.request_timeout_s)
                elapsed = time.perf_counter() - t0
                busy, own = machine_busy_seconds() - busy0, time.process_time() - own0
                cpu = [cpu_seconds(t) - c for t, c in zip(trees, cpu0, strict=True)]
                if not reply.ok:
                    raise RuntimeError(f"{label}: the request failed: {reply.error}")
                calls = proxy.since(mark)
                front = next(c["backend"] for c in calls if not c["chunk"])
                chunks = [c for c in calls if c["chunk"]]
                samples.append({
                    "latency_s": reply.latency_s, "front": front, "cpu_s": [round(c, 3) for c in cpu],
                    "front_cpu_s": cpu[front], "others_cpu_s": sum(cpu) - cpu[front],
                    "busiest_cpu_s": max(cpu), "bench_cores": own / elapsed,  # the proxy, the stand-in, this client
                    "other_cores": max(0.0, busy - sum(cpu) - own) / elapsed,
                    "proxy_ms": sum(c["proxy_ms"] for c in calls), "sub_requests": len(chunks),
                    "refused": sum(c["status"] == 421 for c in chunks),
                    "sub_requests_to": [sum(c["backend"] == i for c in chunks if c["status"] == 200) for i in range(k)],
                    "timings_ms": reply.timings_ms})
                b.log(f"scale-out {label}: {reply.latency_s * 1000:.0f} ms, CPU s per instance {samples[-1]['cpu_s']} "
                      f"(front {front}), {len(chunks)} sub-requests ({samples[-1]['refused']} refused)")
    finally:
        for srv in servers:
            srv.stop()
        proxy.close()
    t = [x["timings_ms"] for x in samples]

    def med(key: str) -> float:
        return median([float(x.get(key, 0.0)) for x in t])

    return {"k": k, "fanout": fanout, "cores": [cores[i % len(cores)] for i in range(k)], "photos": photos,
            "latency_s": summary([x["latency_s"] for x in samples]),
            "front_cpu_s": median([x["front_cpu_s"] for x in samples]),
            "others_cpu_s": median([x["others_cpu_s"] for x in samples]),
            "busiest_cpu_s": median([x["busiest_cpu_s"] for x in samples]),
            "bench_cores": median([x["bench_cores"] for x in samples]),
            "other_cores": median([x["other_cores"] for x in samples]),
            "proxy_ms": median([x["proxy_ms"] for x in samples]),
            "sub_requests": median([x["sub_requests"] for x in samples]),
            "refused": median([x["refused"] for x in samples]),
            "transport_ms": med("fanout_transport"), "remote_chunks": med("remote_chunks"),
            "local_chunks": med("local_chunks"), "backups": med("backups"), "samples": samples}


def scaleout(b: Bench, ks: tuple[int, ...] = (1, 2), photos: int = 40) -> dict[str, Any]:
    rounds = max(3, b.settings.warm_requests // 2)
    cores = sorted(os.sched_getaffinity(0))
    out: dict[str, Any] = {"photos": photos, "chunk": CHUNK, "rounds": rounds, "cores": cores, "by_k": []}
    out["alone"] = _one_k(b, 1, photos, rounds, False, cores)
    for k in ks:
        out["by_k"].append(_one_k(b, k, photos, rounds, True, cores))
    answer = {"results": [{"url": u, "predictions": [{"id": 1, "label": "Erithacus rubecula", "score": 0.5}] * 3,
                           "error": None} for u in many_photos(b.photo_urls, CHUNK)],
              "timings_ms": {"fetch": 80.0, "decode": 9.0, "inference": 40.0, "total": 130.0}}
    out["serialisation_ms_per_chunk"] = round(serialisation_ms(answer), 3)
    by_k = {row["k"]: row for row in out["by_k"]}
    if 1 in by_k:
        one = by_k[1]["latency_s"]["median"]
        for row in out["by_k"]:
            row["vs_one"] = row["latency_s"]["median"] / one
            # The CPU on the critical path: what the ratio would be with the cores to themselves
            row["busiest_cpu_vs_one"] = row["busiest_cpu_s"] / by_k[1]["busiest_cpu_s"]
        out["alone_vs_one"] = out["alone"]["latency_s"]["median"] / one
    return out
