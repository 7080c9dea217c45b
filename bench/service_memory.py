"""Measure the memory of the HTTP service as a container would run it, to size the Knative limits.

Starts the function as the image starts it (``harness.FunctionProcess``: gunicorn + gunicorn.conf.py,
the Dockerfile's ENV: WORKERS=1, MALLOC_ARENA_MAX=2...; THREADS from ``--threads``) against a
stand-in hub serving a MobileNet V2 of the real model's size (``--model mobilenet``, the default)
or the tiny colour model, waits for ``/readyz``, then keeps ``THREADS`` clients busy with
multi-photo requests of photo-like JPEGs and samples the process tree's memory all along.

Reported per phase (started, ready, under load, peak): RSS, PSS (shared pages counted once, closer
to what the cgroup charges) and VmHWM, summed over the gunicorn arbiter and its worker. The calling
environment's settings pass through and win, e.g.
``MAX_BATCH_IMAGES=16 .venv/bin/python bench/service_memory.py``. ``make bench`` measures the same
under load with the benchmark's fixtures (its service scenario, "memory").

    .venv/bin/python bench/service_memory.py [--model mobilenet|colour] [--threads 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import FunctionProcess, Sampler, image_env  # noqa: E402
from standin import hubmodel, photos  # noqa: E402
from standin.server import StandInServer  # noqa: E402

MODEL_PATH = "/models/birds/1"
LABELS_PATH = "/labels.csv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["mobilenet", "colour"], default="mobilenet")
    ap.add_argument("--threads", type=int, default=4, help="THREADS, and concurrent clients")
    ap.add_argument("--photos", type=int, default=8, help="photos per request")
    ap.add_argument("--rounds", type=int, default=5, help="requests per client")
    ap.add_argument("--size", default="1600x1200", help="photo size WxH")
    args = ap.parse_args()
    width, height = (int(x) for x in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp, StandInServer() as server:
        build = hubmodel.mobilenet_model if args.model == "mobilenet" else hubmodel.colour_model
        t0 = time.perf_counter()
        tarball = hubmodel.tar_gz(build(Path(tmp) / "model"))
        print(f"model: {args.model}, {len(tarball) / 1e6:.1f} MB tar.gz, built in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        server.add(MODEL_PATH, tarball, "application/x-tar")
        server.add(LABELS_PATH, hubmodel.label_map_csv(), "text/csv")
        urls = [server.add(f"/p/{i}.jpg", photos.photo_like(width, height, seed=i), "image/jpeg")
                for i in range(args.photos * args.threads)]

        env = {**image_env(), **os.environ, "THREADS": str(args.threads), "MODEL_URL": server.url(MODEL_PATH),
               "LABELS_URL": server.url(LABELS_PATH), "TFHUB_CACHE_DIR": str(Path(tmp) / "tfhub"),
               "MODEL_CACHE_DIR": str(Path(tmp) / "models"), "LOG_LEVEL": "WARNING",
               "TRUSTED_HOSTS": "127.0.0.1"}  # photos on loopback pass the SSRF guard
        service = FunctionProcess(env, Path(tmp) / "function.log")
        report: dict[str, object] = {"model": args.model, "threads": args.threads,
                                     "settings": {k: env[k] for k in image_env() if k in env}}
        try:
            service.start()
            sampler = Sampler(service.memory_mb)
            sampler.start()
            report["listening_s"] = round(service.wait_ready(300, path="/healthz"), 2)
            report["started"] = service.memory_mb()
            slow_probes, probe_max = 0, 0.0
            deadline = time.monotonic() + 300
            while True:  # /readyz timed probe by probe: the load of the model can starve its thread
                try:
                    t = time.perf_counter()
                    status = requests.get(f"{service.url}/readyz", timeout=5).status_code
                    probe_max = max(probe_max, time.perf_counter() - t)
                    if status == 200:
                        break
                except requests.Timeout:
                    slow_probes += 1
                if time.monotonic() > deadline or not service.alive():
                    raise SystemExit(f"the service did not become ready; see {service.log}")
                time.sleep(0.2)
            report["readyz_slowest_s"] = round(probe_max, 2)
            report["readyz_timeouts_5s"] = slow_probes
            report["ready_s"] = round(time.perf_counter() - service.started, 2)
            time.sleep(1)  # the load's buffers go back before memory is read
            report["ready"] = service.memory_mb()

            def client(c: int) -> list[float]:
                chunk = urls[c * args.photos:(c + 1) * args.photos]
                times = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    r = requests.post(service.url, json={"urls": chunk}, timeout=120)
                    r.raise_for_status()
                    assert all(x["error"] is None for x in r.json()["results"]), r.text
                    times.append(time.perf_counter() - t)
                return times

            with ThreadPoolExecutor(args.threads) as pool:
                latencies = sorted(t for ts in pool.map(client, range(args.threads)) for t in ts)
            report["after_load"] = service.memory_mb()
            report["peak"] = sampler.stop()
            report["requests"] = len(latencies)
            report["latency_s"] = {"p50": round(latencies[len(latencies) // 2], 3), "max": round(latencies[-1], 3)}
        finally:
            service.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
