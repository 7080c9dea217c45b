"""Measure the memory of the HTTP service as a container would run it, to size the Knative limits.

Starts ``functions-framework --target classify_http`` (WORKERS=1, THREADS as in the Dockerfile)
against the stand-in hub serving a MobileNet V2 of the real model's size (``--model mobilenet``,
the default) or the tiny colour model, waits for ``/readyz``, then keeps ``THREADS`` clients busy
with multi-photo requests of photo-like JPEGs and samples the process tree's memory all along.

Reported per phase (started, ready, under load, peak): RSS summed over the gunicorn arbiter and
its worker, and PSS (shared pages counted once, which is closer to what the cgroup charges).
The environment is the image's (WORKERS=1, MALLOC_ARENA_MAX=2); the calling environment's
settings pass through, e.g. ``MAX_BATCH_IMAGES=16 .venv/bin/python bench/service_memory.py``.

    .venv/bin/python bench/service_memory.py [--model mobilenet|colour] [--threads 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from standin import hubmodel, photos  # noqa: E402
from standin.server import StandInServer  # noqa: E402

MODEL_PATH = "/models/birds/1"
LABELS_PATH = "/labels.csv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc (no psutil needed)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return pids


def memory_mb(pid: int) -> dict[str, float]:
    rss = pss = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    key, value = line.split(":", 1)
                    if key == "Rss":
                        rss += int(value.split()[0])
                    elif key == "Pss":
                        pss += int(value.split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1)}


class Sampler(threading.Thread):
    """Samples the tree's memory every ``period_s`` and keeps the peak."""

    def __init__(self, pid: int, period_s: float = 0.05, measure=None):
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.measure = measure or memory_mb  # pid -> {"rss_mb", "pss_mb"}
        self.peak = {"rss_mb": 0.0, "pss_mb": 0.0}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            m = self.measure(self.pid)
            self.peak = {k: max(self.peak[k], m[k]) for k in m}
            self._halt.wait(self.period_s)

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        return self.peak


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

        port = free_port()
        env = {"MALLOC_ARENA_MAX": "2",  # as in the Dockerfile; override from the calling environment
               **os.environ, "MODEL_URL": server.url(MODEL_PATH), "LABELS_URL": server.url(LABELS_PATH),
               "TFHUB_CACHE_DIR": str(Path(tmp) / "tfhub"), "WORKERS": "1", "THREADS": str(args.threads),
               "LOG_LEVEL": "WARNING", "TRUSTED_HOSTS": "127.0.0.1"}  # photos on loopback pass the SSRF guard
        cmd = [str(ROOT / ".venv/bin/functions-framework"), "--target", "classify_http", "--port", str(port)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        base = f"http://127.0.0.1:{port}"
        report: dict[str, object] = {"model": args.model, "threads": args.threads}
        try:
            sampler = Sampler(proc.pid)
            sampler.start()
            t_start = time.perf_counter()
            deadline = t_start + 300
            while True:
                try:
                    if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except (requests.ConnectionError, requests.Timeout):
                    pass
                if time.perf_counter() > deadline or proc.poll() is not None:
                    raise SystemExit("the service did not start")
                time.sleep(0.1)
            report["listening_s"] = round(time.perf_counter() - t_start, 2)
            report["started"] = memory_mb(proc.pid)
            slow_probes, probe_max = 0, 0.0
            while True:
                try:
                    t = time.perf_counter()
                    status = requests.get(f"{base}/readyz", timeout=5).status_code
                    probe_max = max(probe_max, time.perf_counter() - t)
                    if status == 200:
                        break
                except requests.Timeout:  # the load can starve request threads of the GIL
                    slow_probes += 1
                if time.perf_counter() > deadline or proc.poll() is not None:
                    raise SystemExit("the service did not become ready")
                time.sleep(0.2)
            report["readyz_slowest_s"] = round(probe_max, 2)
            report["readyz_timeouts_5s"] = slow_probes
            report["ready_s"] = round(time.perf_counter() - t_start, 2)
            time.sleep(1)
            report["ready"] = memory_mb(proc.pid)

            def client(c: int) -> list[float]:
                chunk = urls[c * args.photos:(c + 1) * args.photos]
                times = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    r = requests.post(base, json={"urls": chunk}, timeout=120)
                    r.raise_for_status()
                    assert all(x["error"] is None for x in r.json()["results"]), r.text
                    times.append(time.perf_counter() - t)
                return times

            with ThreadPoolExecutor(args.threads) as pool:
                latencies = sorted(t for ts in pool.map(client, range(args.threads)) for t in ts)
            report["after_load"] = memory_mb(proc.pid)
            report["peak"] = sampler.stop()
            report["requests"] = len(latencies)
            report["latency_s"] = {"p50": round(latencies[len(latencies) // 2], 3), "max": round(latencies[-1], 3)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
