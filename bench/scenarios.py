"""The scenarios of issue 3. Each takes the :class:`Bench` context and returns a JSON-able dict.

1. ``cold_cli``   fresh processes, empty hub caches: the CLI, the naive original and the floor
2. ``warm``       functions-framework, model loaded: five-photo POSTs one after another
3. ``throughput`` 1/4/8/16 concurrent clients, next to the inference-only ceiling
4. ``breakdown``  the function's own ``timings_ms``, phase by phase
5. ``fanout``     40 photos over 1/2/3 instances behind a round-robin proxy (when supported)

Wall times of fresh processes are measured from outside (``subprocess``), latencies from the
client; nothing here changes the function's configuration beyond pointing it at the stand-in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .services import ROOT, CpuMeter, FunctionServer, RoundRobinProxy, machine_busy_seconds
from .standin_internet import StandInInternet
from .stats import mean, median, phase_medians, summary

PHOTOS_PER_REQUEST = 5


@dataclass
class Settings:
    runs: int = 3  # cold CLI / naive / floor rounds
    warm_requests: int = 20
    fetch_probes: int = 5  # fetches of each photo alone
    clients: tuple[int, ...] = (1, 4, 8, 16)
    level_seconds: float = 12.0
    level_max_requests: int = 500
    ceiling_seconds: float = 5.0
    ceiling_batches: tuple[int, ...] = (5, 40)
    fanout: str = "auto"  # auto | on | off
    fanout_instances: tuple[int, ...] = (1, 2, 3)
    fanout_requests: int = 3
    fanout_photos: int = 40
    fanout_chunk: int = 8
    process_timeout_s: float = 300.0
    ready_timeout_s: float = 240.0
    request_timeout_s: float = 120.0
    sweep_seconds: float = 6.0  # issue 10's sweep: seconds per load level
    sweep_rounds: int = 2  # issue 10's sweep: passes over the settings (the second in reverse order)


@dataclass
class Bench:
    settings: Settings
    net: StandInInternet
    manifest: dict[str, Any]
    logs: Path
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    @property
    def model_dir(self) -> str:
        return str(Path(self.manifest["root"]) / self.manifest["model"]["dir"])

    @property
    def photo_urls(self) -> list[str]:
        return self.net.photo_urls

    def fresh_hub_cache(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="tfhub-", dir=self.tmp))


def base_env(net: StandInInternet) -> dict[str, str]:
    """The environment of every process the benchmark starts: the caller's, pointed at the stand-in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TFHUB_CACHE_DIR", "FANOUT_URL", "FANOUT_CHUNK")}
    env.update({"MODEL_URL": net.model_url, "LABELS_URL": net.labels_url, "TF_CPP_MIN_LOG_LEVEL": "3"})
    # The photo hosts are on loopback, which the service's address guard refuses unless trusted
    # (the CLI turns the guard off itself). The stand-in is the only loopback host trusted.
    trusted = [h for h in env.get("TRUSTED_HOSTS", "").split(",") if h.strip()]
    env["TRUSTED_HOSTS"] = ",".join([*trusted, "127.0.0.1"])
    return env


# -- 1. cold CLI ----------------------------------------------------------------------------
@dataclass
class Timed:
    wall_s: float
    returncode: int
    stdout: str
    model_downloads: int
    cpu_s: float  # the process's own CPU time (user + system, its children included)
    machine_cores: float  # cores the whole machine kept busy meanwhile (ours and everyone else's)


def run_fresh(b: Bench, name: str, cmd: list[str]) -> Timed:
    """One fresh process with its own empty hub cache, timed from outside."""
    cache = b.fresh_hub_cache()
    env = {**b.env, "TFHUB_CACHE_DIR": str(cache)}
    before = b.net.model_downloads()
    try:
        with open(b.logs / f"{name}.log", "ab") as log:
            cpu0, busy0 = _children_cpu_s(), machine_busy_seconds()
            started = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=log, timeout=b.settings.process_timeout_s)
            wall = time.perf_counter() - started
            cpu, busy = _children_cpu_s() - cpu0, machine_busy_seconds() - busy0
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return Timed(wall, done.returncode, done.stdout.decode(errors="replace"), b.net.model_downloads() - before,
                 cpu, busy / wall)


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cold_cli(b: Bench) -> dict[str, Any]:
    py = sys.executable
    commands = {
        "cold": [py, "main.py", "--json", *b.photo_urls],
        "naive": [py, "bench/naive.py", *b.photo_urls],
        "floor": [py, "-m", "bench.probes", "floor", "--model-dir", b.model_dir,
                  "--batch", str(PHOTOS_PER_REQUEST)],
    }
    # Not measured: read TensorFlow's files into the page cache so the first measured run is not
    # the only one paying for the disk.
    b.log("scenario 1: warming the page cache (import tensorflow, tensorflow_hub, tf_keras; not measured)")
    subprocess.run([py, "-c", "import tensorflow, tensorflow_hub, tf_keras"], cwd=ROOT, env=b.env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=b.settings.process_timeout_s)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in commands}
    for i in range(b.settings.runs):
        order = list(commands)[i % 3:] + list(commands)[:i % 3]  # rotate: no kind always goes first
        for kind in order:
            t = run_fresh(b, f"cold-{kind}", commands[kind])
            run: dict[str, Any] = {"wall_s": round(t.wall_s, 3), "returncode": t.returncode,
                                   "model_downloads": t.model_downloads, "cpu_s": round(t.cpu_s, 2),
                                   "machine_cores": round(t.machine_cores, 2),
                                   "other_cores": round(max(0.0, t.machine_cores - t.cpu_s / t.wall_s), 2),
                                   "load_avg_1m": os.getloadavg()[0]}
            run.update(_parse_cold_output(kind, t.stdout))
            run["ok"] = t.returncode == 0 and run.get("photo_errors", 0) == 0
            runs[kind].append(run)
            failed = "" if run["ok"] else f"  FAILED (exit {t.returncode}; see {b.logs / f'cold-{kind}.log'})"
            b.log(f"scenario 1 round {i + 1}/{b.settings.runs}: {kind:<5} {t.wall_s:6.2f} s{failed}")
    result: dict[str, Any] = {}
    for kind, rs in runs.items():
        result[kind] = {"wall_s": summary([r["wall_s"] for r in rs if r["ok"]]),
                        "failed_runs": sum(not r["ok"] for r in rs), "runs": rs}
    result["cold"]["timings_ms"] = phase_medians(r["timings_ms"] for r in runs["cold"] if r.get("timings_ms"))
    result["floor"]["timings_ms"] = phase_medians(r["timings_ms"] for r in runs["floor"] if r.get("timings_ms"))
    for kind in runs:
        result[kind]["other_cores"] = summary([r["other_cores"] for r in runs[kind]])
    return result


def _parse_cold_output(kind: str, stdout: str) -> dict[str, Any]:
    try:
        if kind == "cold":
            doc = json.loads(stdout)
            return {"timings_ms": doc.get("timings_ms", {}),
                    "photo_errors": sum(1 for r in doc.get("results", []) if r.get("error"))}
        if kind == "floor":
            return {"timings_ms": json.loads(stdout)["timings_ms"]}
        lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        return {"photo_errors": PHOTOS_PER_REQUEST - len(lines), "per_photo_ms": [x["ms"] for x in lines]}
    except (ValueError, KeyError, TypeError):
        return {"photo_errors": PHOTOS_PER_REQUEST, "unparsed_output": stdout[-500:]}


# -- 2. warm request --------------------------------------------------------------------------
@dataclass
class Reply:
    latency_s: float
    ok: bool
    status: int
    timings_ms: dict[str, float]
    server_timing: str | None
    error: str | None = None
    started: float = 0.0  # time.perf_counter() when the request was sent


def post(session: requests.Session, url: str, urls: list[str], timeout_s: float) -> Reply:
    started = time.perf_counter()
    try:
        r = session.post(url, json={"urls": urls}, timeout=timeout_s)
        latency = time.perf_counter() - started
        doc = r.json()
    except (requests.RequestException, ValueError) as exc:
        return Reply(time.perf_counter() - started, False, 0, {}, None, f"{type(exc).__name__}: {exc}", started)
    bad = Counter(res["error"]["code"] for res in doc.get("results", []) if res.get("error"))
    ok = r.status_code == 200 and not bad and len(doc.get("results", [])) == len(urls)
    error = None if ok else (f"HTTP {r.status_code}: {doc.get('error')}" if r.status_code != 200
                             else "photo errors: " + ", ".join(f"{n} {code}" for code, n in sorted(bad.items())))
    return Reply(latency, ok, r.status_code, doc.get("timings_ms", {}), r.headers.get("Server-Timing"), error,
                 started)


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


def warm(b: Bench, server: FunctionServer) -> dict[str, Any]:
    s = b.settings
    b.log(f"scenario 2: fetching each photo alone ({s.fetch_probes}x)")
    fetch = fetch_alone(b.photo_urls, s.fetch_probes, s.request_timeout_s)
    session = requests.Session()
    first = post(session, server.url + "/", b.photo_urls, s.request_timeout_s)  # not counted: first after ready
    b.log(f"scenario 2: {s.warm_requests} five-photo POSTs one after another")
    replies = [post(session, server.url + "/", b.photo_urls, s.request_timeout_s) for _ in range(s.warm_requests)]
    session.close()
    return {
        "ready_s": server.ready_s,
        "first_request_s": first.latency_s, "first_request_ok": first.ok,
        "latency_s": summary([r.latency_s for r in replies if r.ok]),
        "errors": sum(not r.ok for r in replies) + (not first.ok),
        "error_examples": sorted({r.error for r in [first, *replies] if r.error})[:3],
        "server_timing_header": replies[-1].server_timing if replies else None,
        "timings_ms": phase_medians(r.timings_ms for r in replies if r.ok),
        "samples_s": [round(r.latency_s, 4) for r in replies],
        "fetch_alone": fetch,
    }


# -- 3. throughput ----------------------------------------------------------------------------
def inference_ceiling(b: Bench) -> dict[str, Any]:
    s = b.settings
    b.log(f"scenario 3: inference-only ceiling (batches {s.ceiling_batches}, {s.ceiling_seconds:.0f} s each)")
    # Two ways to run the model alone, each in a fresh process: one caller with TensorFlow's default
    # pools on five-photo (and 40-photo) batches, and one single-threaded caller per CPU on batches
    # of two, as the function does. The ceiling is the faster of them.
    probes = [("--batches", ",".join(map(str, s.ceiling_batches)), "--parallel", "0"),
              ("--batches", "2", "--parallel", str(len(os.sched_getaffinity(0))))]
    doc: dict[str, Any] = {"batches": {}}
    for args in probes:
        cmd = [sys.executable, "-m", "bench.probes", "ceiling", "--model-dir", b.model_dir,
               "--seconds", str(s.ceiling_seconds), *args]
        with open(b.logs / "ceiling.log", "ab") as log:
            done = subprocess.run(cmd, cwd=ROOT, env=b.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=log, timeout=s.process_timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"the ceiling probe failed (exit {done.returncode}); see {b.logs / 'ceiling.log'}")
        part = json.loads(done.stdout)
        doc["batches"].update(part.pop("batches"))
        doc.setdefault("probes", []).append(part)
    doc["best"] = max(doc["batches"], key=lambda k: doc["batches"][k]["images_per_s"])
    return doc


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
        session = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= max_requests:
                    break
                sent[0] += 1
                last_sent[0] = time.perf_counter()
            reply = post(session, url, urls, timeout_s)
            with lock:
                replies.append(reply)
        session.close()

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


def throughput(b: Bench, server: FunctionServer) -> dict[str, Any]:
    s = b.settings
    levels = []
    for clients in s.clients:
        b.log(f"scenario 3: {clients} client(s) for {s.level_seconds:.0f} s")
        meter = CpuMeter({"function": server.pids(), "standin": [b.net.pid], "bench": [os.getpid()]}).start()
        replies, t0, t_window, t_done = load_level(server.url + "/", b.photo_urls, clients, s.level_seconds,
                                                   s.level_max_requests, s.request_timeout_s)
        cpu = meter.stop()
        ok = [r for r in replies if r.ok]
        rps = rate_in_window(ok, t0, t_window)
        window, elapsed = t_window - t0, t_done - t0
        levels.append({
            "clients": clients, "requests": len(replies), "ok": len(ok), "errors": len(replies) - len(ok),
            "error_examples": sorted({r.error for r in replies if r.error})[:3],
            "window_s": round(window, 3), "elapsed_s": round(elapsed, 3),
            "requests_per_s": rps, "images_per_s": rps * PHOTOS_PER_REQUEST,
            "requests_per_s_incl_drain": len(ok) / elapsed if elapsed else math.nan,
            "littles_law_requests_per_s": clients / mean([r.latency_s for r in ok]) if ok else math.nan,
            "latency_s": summary([r.latency_s for r in ok]),
            "timings_ms": phase_medians(r.timings_ms for r in ok),
            "cpu": cpu, "load_avg_1m": os.getloadavg()[0],
            # Work per core the function actually got: comparable with the ceiling's even when other
            # processes take part of the machine (a view, not the target).
            "images_per_function_core_s": (len(ok) * PHOTOS_PER_REQUEST / elapsed / cpu["function_cores"]
                                           if elapsed and cpu["function_cores"] else math.nan),
        })
    return {"levels": levels}


# -- 4. where the time goes -------------------------------------------------------------------
# The phases issue 3 asks about, and the names the function may report them under.
PHASES = (
    ("TF import", ("tf_import",)),
    ("model download", ("model_download",)),
    ("model load", ("model_load",)),
    ("warm-up", ("warmup", "warm_up")),
    ("label map", ("labels", "label_map", "labels_load")),
    ("photo fetch (slowest)", ("fetch",)),
    ("decode (sum)", ("decode",)),
    ("inference", ("inference",)),
    ("top-k", ("topk", "top_k")),
)


def breakdown(results: dict[str, Any]) -> dict[str, Any]:
    """Medians of the function's own timings_ms: cold CLI, warm requests and the 8-client level."""
    columns: dict[str, dict[str, float]] = {}
    if "cold_cli" in results:
        cold = dict(results["cold_cli"]["cold"]["timings_ms"])
        outside = results["cold_cli"]["cold"]["wall_s"]["median"] * 1000
        if "wall" in cold and math.isfinite(outside):
            cold["process_outside_cli"] = outside - cold["wall"]  # interpreter start, imports, exit
        columns["cold CLI"] = cold
        columns["floor"] = results["cold_cli"]["floor"]["timings_ms"]
    if "warm" in results:
        columns["warm request"] = results["warm"]["timings_ms"]
    for level in results.get("throughput", {}).get("levels", []):
        if level["clients"] == 8:
            columns["8 clients"] = level["timings_ms"]
    keys: list[str] = []
    for col in columns.values():
        keys += [k for k in col if k not in keys]
    missing = [name for name, aliases in PHASES if not any(a in keys for a in aliases)]
    return {"columns": columns, "keys": keys, "phases": [[name, list(aliases)] for name, aliases in PHASES],
            "not_reported": missing}


# -- 5. fan-out -------------------------------------------------------------------------------
def fanout_support() -> str | None:
    """None when the function has fan-out (a ``fanout_url`` setting); otherwise why not."""
    from function.config import Config  # plain Python: no TensorFlow in the benchmark process

    names = {f.name for f in dataclasses.fields(Config)}
    if "fanout_url" not in names:
        return "function.config.Config has no fanout_url field: fan-out (FANOUT_URL/FANOUT_CHUNK) is not implemented"
    return None


def many_photos(urls: list[str], count: int) -> list[str]:
    """``count`` distinct URLs over the five photos (a query string per copy; the stand-in ignores it)."""
    return [f"{urls[i % len(urls)]}?copy={i}" for i in range(count)]


def fanout(b: Bench) -> dict[str, Any]:
    s = b.settings
    reason = fanout_support()
    if s.fanout == "off":
        return {"skipped": "turned off (--fanout off)"}
    if reason and s.fanout != "on":
        return {"skipped": reason}
    most = max(s.fanout_instances)
    servers = [FunctionServer(b.env, b.logs / f"fanout-{i}.log") for i in range(most)]
    photos = many_photos(b.photo_urls, s.fanout_photos)
    results: list[dict[str, Any]] = []
    ready: list[float] = []
    with RoundRobinProxy([servers[0].url]) as proxy:
        for server in servers:
            server.env.update({"TFHUB_CACHE_DIR": str(b.fresh_hub_cache()), "FANOUT_URL": proxy.url,
                               "FANOUT_CHUNK": str(s.fanout_chunk)})
        b.log(f"scenario 5: starting {most} instances behind a round-robin proxy")
        try:
            for server in servers:
                server.start()
            ready = [server.wait_ready(s.ready_timeout_s) for server in servers]
            for n in s.fanout_instances:
                proxy.set_backends([srv.url for srv in servers[:n]])
                session = requests.Session()
                post(session, proxy.url + "/", photos, s.request_timeout_s)  # warm-up, not counted
                before = dict(proxy.forwarded)
                b.log(f"scenario 5: {n} instance(s): {s.fanout_requests} requests of {len(photos)} photos")
                replies = [post(session, proxy.url + "/", photos, s.request_timeout_s)
                           for _ in range(s.fanout_requests)]
                session.close()
                forwarded = {k: v - before.get(k, 0) for k, v in proxy.forwarded.items() if v - before.get(k, 0)}
                results.append({"instances": n, "latency_s": summary([r.latency_s for r in replies if r.ok]),
                                "errors": sum(not r.ok for r in replies),
                                "error_examples": sorted({r.error for r in replies if r.error})[:3],
                                "proxied_requests": sum(forwarded.values()),
                                "timings_ms": phase_medians(r.timings_ms for r in replies if r.ok)})
        finally:
            for server in servers:
                server.stop()
            for server in servers:
                shutil.rmtree(server.env["TFHUB_CACHE_DIR"], ignore_errors=True)
    return {"photos": len(photos), "chunk": s.fanout_chunk, "ready_s": ready, "levels": results,
            "supported": reason is None, "note": None if reason is None else f"forced on; {reason}"}
