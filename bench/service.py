"""The service rows: the function started as the image starts it (``harness.FunctionProcess``:
gunicorn + gunicorn.conf.py, the Dockerfile's ENV), serving the ``.tflite`` and the label map from
local disk, as the image carries them.

1. **cold start**: ``settings.runs`` fresh processes with an empty model cache; the five-photo POST is
   sent the moment the port accepts, as a cold request would be; spawn -> its answer, the answer's
   own phases (``timings_ms``), and RSS/PSS/VmHWM of the tree once it is back (model loaded, one
   request served).
2. **warm**: one more such process, kept up: each photo fetched alone (the floor of a request),
   then five-photo POSTs one after another.
3. **throughput**: the decode+inference ceiling (``bench/ceiling.py``) next to the idle service, the
   load levels (1/4/8/16 clients), the ceiling again; the best of the two ceilings is the ceiling.
4. **memory under load** (full runs): peak RSS/PSS while 4 and THREADS clients send requests of 8 and
   64 copies of the biggest photo: what knative/service.yaml's memory must hold.
5. **TensorFlow**: the same service on ``MODEL_RUNTIME=tensorflow`` (hub module by URL), cold start
   and memory once ready, measured the same way: what the RSS target compares with.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from harness import FunctionProcess, Sampler

from . import ceiling
from .clients import fetch_alone, level, many_photos, post, runtime, warm
from .context import THROUGHPUT_CLIENTS, Bench
from .stats import phase_medians, summary

SETTLE_S = 1.0  # after the first answer, before memory is read: the answer's buffers go back


def cold_start(b: Bench, server: FunctionProcess) -> dict[str, Any]:
    """Spawn ``server``, POST the five photos the moment its port accepts; spawn -> port, spawn -> the
    first answer, that answer's phases, and the tree's memory once it is back."""
    s = b.settings
    server.start()
    port_s = server.wait_port(s.ready_timeout_s)
    with requests.Session() as session:
        reply = post(session, server.url + "/", b.photo_urls, s.ready_timeout_s)
    first_s = time.perf_counter() - server.started
    if not reply.ok:
        raise RuntimeError(f"the first request failed: {reply.error}; see {server.log}")
    server.ready_s = first_s
    time.sleep(SETTLE_S)
    return {"port_open_s": round(port_s, 3), "first_answer_s": round(first_s, 3),
            "first_request_s": round(reply.latency_s, 3), "timings_ms": reply.timings_ms,
            "memory_once_ready": server.memory_mb(), "runtime": runtime(server)}


def memory_under_load(b: Bench, server: FunctionProcess, clients: int, photos: int, rounds: int) -> dict[str, Any]:
    """Peak memory of the tree while ``clients`` clients each send ``rounds`` requests of ``photos``
    copies of the biggest photo (4000x2667)."""
    biggest = max(b.manifest["photos"], key=lambda p: p["bytes"])
    url = next(u for u in b.photo_urls if u.endswith(Path(biggest["file"]).name))
    sampler = Sampler(server.memory_mb)
    sampler.start()
    errors = [0]

    def client(c: int) -> list[float]:
        times = []
        with requests.Session() as session:
            for r in range(rounds):
                urls = [f"{u}&client={c}&round={r}" for u in many_photos([url], photos)]
                reply = post(session, server.url + "/", urls, b.settings.request_timeout_s)
                errors[0] += not reply.ok
                times.append(reply.latency_s)
        return times

    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for ts in pool.map(client, range(clients)) for t in ts]
    peak = sampler.stop()
    return {"clients": clients, "photos_per_request": photos, "photo": Path(biggest["file"]).name,
            "requests": len(latencies), "errors": errors[0], "latency_s": summary(latencies),
            "peak": peak, "after": server.memory_mb()}


def _memory_summary(colds: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: summary([c["memory_once_ready"][k] for c in colds]) for k in ("rss_mb", "pss_mb", "hwm_mb")}


def service(b: Bench) -> dict[str, Any]:
    s = b.settings
    out: dict[str, Any] = {"env": b.image_settings()}

    colds = []
    for i in range(s.runs):
        server = b.service("service-cold", b.service_env(b.fresh_dir("cold-")))
        try:
            colds.append(cold_start(b, server))
        finally:
            server.stop()
        c = colds[-1]
        b.log(f"service cold start {i + 1}/{s.runs}: port {c['port_open_s']:.2f} s, first answer "
              f"{c['first_answer_s']:.2f} s, RSS {c['memory_once_ready']['rss_mb']:.0f} MB "
              f"(PSS {c['memory_once_ready']['pss_mb']:.0f}) on {c['runtime']}")
    out["cold"] = {"first_answer_s": summary([c["first_answer_s"] for c in colds]),
                   "port_open_s": summary([c["port_open_s"] for c in colds]),
                   "memory_once_ready": _memory_summary(colds),
                   "timings_ms": phase_medians(c["timings_ms"] for c in colds), "runs": colds}

    server = b.service("service", b.service_env(b.fresh_dir("service-")))
    try:
        cold_start(b, server)
        b.log(f"service up; each photo fetched alone {s.fetch_probes}x, then {s.warm_requests} warm requests")
        out["fetch_alone"] = fetch_alone(b.photo_urls, s.fetch_probes, s.request_timeout_s)
        out["warm"] = warm(b, server, s.warm_requests)
        ceilings = [ceiling.measure(b, "before the load levels")]
        levels = []
        for clients in s.clients:
            levels.append(level(b, server, clients, s.level_seconds))
            lv = levels[-1]
            b.log(f"{clients} client(s): {lv['requests_per_s']:.2f} req/s, p50 "
                  f"{lv['latency_s']['median'] * 1000:.0f} ms, errors {lv['errors']}, "
                  f"function cores {lv['cpu']['function_cores']}")
        ceilings.append(ceiling.measure(b, "after the load levels"))
        # The reference without the decode workers' price: the same work decoded on the probe's threads.
        reference = ceiling.measure(b, "after the load levels", in_process=True)
        out["throughput"] = {"levels": levels, "ceilings": ceilings, "in_process_ceiling": reference,
                             "ceiling": max(ceilings, key=lambda c: c["requests_per_s"])}
        if s.memory_load:
            threads = int(out["env"].get("THREADS", "8"))
            for n in sorted({4, threads}):
                for photos in (8, 64):
                    b.log(f"memory under {n} concurrent requests of {photos} big photos")
                    out[f"memory_load_{n}x{photos}"] = memory_under_load(b, server, n, photos, 2 if photos == 8 else 1)
    finally:
        server.stop()

    tf = b.service("service-tensorflow", b.tensorflow_env(b.fresh_dir("tf-")))
    try:
        out["tensorflow"] = t = cold_start(b, tf)
        b.log(f"TensorFlow service: first answer {t['first_answer_s']:.2f} s, RSS "
              f"{t['memory_once_ready']['rss_mb']:.0f} MB (PSS {t['memory_once_ready']['pss_mb']:.0f}) "
              f"on {t['runtime']}")
    except RuntimeError as exc:  # the LiteRT figures above stand without it; the RSS row reads n/a
        out["tensorflow_error"] = str(exc)
        b.log(f"TensorFlow service failed: {exc}")
    finally:
        tf.stop()
    return out


def judged_level(svc: dict[str, Any]) -> dict[str, Any] | None:
    return next((lv for lv in svc.get("throughput", {}).get("levels", []) if lv["clients"] == THROUGHPUT_CLIENTS),
                None)
