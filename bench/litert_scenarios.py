"""The scenarios of issue 10 (LiteRT serving). Each takes the :class:`~bench.scenarios.Bench` context
and returns a JSON-able dict; ``report.py`` turns them into the targets.

1. ``cli``        fresh CLI processes: the naive original, the first run with empty caches (``auto``:
                  answers on TensorFlow and converts in a detached process; and ``MODEL_RUNTIME=litert``:
                  converts inside the run), and the repeat run on a prepared model cache
2. ``services``   the function process serving the .tflite BY URL from the stand-in: spawn -> first
                  five-photo answer (cold start), RSS once ready; then warm requests, throughput at
                  1/4/8/16 clients, the decode+inference ceiling, and the same service on
                  ``MODEL_RUNTIME=tensorflow`` (cold start, RSS, 8 clients) in the same run;
                  memory under 4 concurrent requests of big photos (for knative/service.yaml)
3. ``container``  ``podman run`` of the image -> first answer (optional), and the image's size
4. ``sweep``      MAX_BATCH_IMAGES, INFERENCE_WORKERS, THREADS, WORKERS one at a time around the
                  defaults: req/s at 8 clients, p50 at 1 client

The benchmark process never imports TensorFlow; every TensorFlow figure comes from a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from . import scenarios
from .loadtest import tree
from .scenarios import PHOTOS_PER_REQUEST, Bench, load_level, many_photos, post, rate_in_window
from .service_memory import Sampler
from .services import HOST, ROOT, CpuMeter, FunctionServer, free_port, machine_busy_seconds, tail
from .stats import median, phase_medians, summary

IMAGE_ENV_NAMES = ("WORKERS", "THREADS", "MALLOC_ARENA_MAX")


def image_env() -> dict[str, str]:
    """WORKERS, THREADS and MALLOC_ARENA_MAX as the Dockerfile sets them: the services here run as the
    container does (the caller's environment still wins)."""
    text = (ROOT / "Dockerfile").read_text()
    found = {name: m.group(1) for name in IMAGE_ENV_NAMES
             if (m := re.search(rf"^\s+{name}=(\S+?)\s*\\?$", text, re.M))}
    return {**found, **{k: os.environ[k] for k in IMAGE_ENV_NAMES if os.environ.get(k)}}


# -- process trees and memory -------------------------------------------------------------------------
def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS summed over the tree (what the issue names), and PSS (shared pages once: closer to the cgroup)."""
    rss = pss = 0
    for p in tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rss += int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
            with open(f"/proc/{p}/smaps_rollup") as f:
                pss += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, AttributeError, StopIteration):
            continue
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1)}


# -- 1. CLI -------------------------------------------------------------------------------------------
def _run_cli(b: Bench, name: str, cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    before = (b.net.model_downloads(), b.net.tflite_downloads())
    with open(b.logs / f"cli-{name}.log", "ab") as log:
        cpu0, busy0 = scenarios._children_cpu_s(), machine_busy_seconds()
        started = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=log, timeout=b.settings.process_timeout_s)
        wall = time.perf_counter() - started
        cpu, busy = scenarios._children_cpu_s() - cpu0, machine_busy_seconds() - busy0
    run: dict[str, Any] = {"wall_s": round(wall, 3), "returncode": done.returncode,
                           "model_downloads": b.net.model_downloads() - before[0], "cpu_s": round(cpu, 2),
                           "other_cores": round(max(0.0, busy / wall - cpu / wall), 2),
                           "load_avg_1m": round(os.getloadavg()[0], 2), "ended": time.perf_counter()}
    kind = "cold" if name != "naive" else "naive"
    run.update(scenarios._parse_cold_output(kind, done.stdout.decode(errors="replace")))
    run["ok"] = done.returncode == 0 and run.get("photo_errors", 0) == 0
    return run


def _wait_converted(url: str, cache_dir: Path, since: float, timeout_s: float) -> float | None:
    """Seconds from ``since`` until the detached conversion's flatbuffer is in the cache (None: not in time)."""
    from function.model.convert import ConvertedCache  # numpy only; TensorFlow is imported lazily there

    cache = ConvertedCache(cache_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cache.manifest(url) is not None and cache.model_path(url).exists():
            return time.perf_counter() - since
        time.sleep(0.1)
    return None


def _detached_converters(cache_dir: Path) -> list[int]:
    """Live ``function.model.convert`` processes writing into ``cache_dir`` (the CLI's detached ones)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"function.model.convert" in cmd and str(cache_dir).encode() in cmd:
            found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        time.sleep(0.1)


def cli(b: Bench) -> dict[str, Any]:
    py = sys.executable
    urls = b.photo_urls
    cli_cmd = [py, "main.py", "--json", *urls]
    # The repeat run's cache, prepared once the documented way (make model).
    prepared = Path(tempfile.mkdtemp(prefix="prepared-", dir=b.tmp))
    b.log("CLI: preparing the model cache (python -m function.model.convert MODEL_URL --cache-dir ...)")
    started = time.perf_counter()
    with open(b.logs / "cli-prepare.log", "ab") as log:
        done = subprocess.run([py, "-m", "function.model.convert", b.net.model_url, "--cache-dir",
                               str(prepared / "models")], cwd=ROOT,
                              env={**b.env, "TFHUB_CACHE_DIR": str(prepared / "tfhub")},
                              stdout=log, stderr=subprocess.STDOUT, timeout=b.settings.process_timeout_s)
    prepare_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"python -m function.model.convert failed; see {b.logs / 'cli-prepare.log'}")
    b.log("CLI: warming the page cache (import tensorflow, tensorflow_hub, tf_keras, ai_edge_litert; not measured)")
    subprocess.run([py, "-c", "import tensorflow, tensorflow_hub, tf_keras, ai_edge_litert"], cwd=ROOT, env=b.env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=b.settings.process_timeout_s)

    kinds = ("naive", "first_auto", "first_litert", "first_tensorflow", "repeat")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for i in range(b.settings.runs):
        order = list(kinds[i % len(kinds):] + kinds[:i % len(kinds)])  # rotate: no kind always goes first
        for kind in order:
            fresh = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=b.tmp))
            env = {**b.env, "TFHUB_CACHE_DIR": str(fresh / "tfhub"), "MODEL_CACHE_DIR": str(fresh / "models")}
            cmd = cli_cmd
            if kind == "naive":
                cmd = [py, "bench/naive.py", *urls]
            elif kind == "first_litert":
                env["MODEL_RUNTIME"] = "litert"
            elif kind == "first_tensorflow":
                env["MODEL_RUNTIME"] = "tensorflow"  # today's path, no conversion at all: the reference
            elif kind == "repeat":
                env.update({"TFHUB_CACHE_DIR": str(prepared / "tfhub"), "MODEL_CACHE_DIR": str(prepared / "models")})
            run = _run_cli(b, kind, cmd, env)
            if kind == "first_auto":
                # The run answered on TensorFlow and left a detached conversion: time it, and let it
                # finish before anything else is measured (it would take a core from the next run).
                after = _wait_converted(b.net.model_url, fresh / "models", run["ended"],
                                        b.settings.process_timeout_s)
                run["flatbuffer_after_exit_s"] = None if after is None else round(after, 2)
                _wait_gone(_detached_converters(fresh / "models"), 60)
            run.pop("ended")
            runs[kind].append(run)
            shutil.rmtree(fresh, ignore_errors=True)
            extra = (f" (flatbuffer {run['flatbuffer_after_exit_s']} s after exit)"
                     if kind == "first_auto" else "")
            failed = "" if run["ok"] else f"  FAILED (exit {run['returncode']}; see {b.logs / f'cli-{kind}.log'})"
            b.log(f"CLI round {i + 1}/{b.settings.runs}: {kind:<12} {run['wall_s']:6.2f} s{extra}{failed}")
    shutil.rmtree(prepared, ignore_errors=True)
    result: dict[str, Any] = {"prepare_cache_s": round(prepare_s, 2)}
    for kind, rs in runs.items():
        result[kind] = {"wall_s": summary([r["wall_s"] for r in rs if r["ok"]]),
                        "failed_runs": sum(not r["ok"] for r in rs), "runs": rs,
                        "other_cores": summary([r["other_cores"] for r in rs])}
        if kind != "naive":
            result[kind]["timings_ms"] = phase_medians(r["timings_ms"] for r in rs if r.get("timings_ms"))
    result["first_auto"]["flatbuffer_after_exit_s"] = summary(
        [r["flatbuffer_after_exit_s"] for r in runs["first_auto"] if r.get("flatbuffer_after_exit_s") is not None])
    return result


# -- 2. services --------------------------------------------------------------------------------------
def wait_port(port: int, proc: subprocess.Popen | None, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("the process exited before it listened")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"port {port} did not accept connections in time")


def cold_start(b: Bench, server: FunctionServer) -> dict[str, Any]:
    """Start ``server``, POST the five photos the moment its port accepts (as a cold request would),
    return spawn -> port and spawn -> first answer; the RSS once that answer is back (model loaded,
    one request served)."""
    s = b.settings
    server.start()
    started = server._started
    assert server.proc is not None
    wait_port(server.port, server.proc, time.monotonic() + s.ready_timeout_s)
    port_s = time.perf_counter() - started
    session = requests.Session()
    reply = post(session, server.url + "/", b.photo_urls, s.ready_timeout_s)
    first_s = time.perf_counter() - started
    session.close()
    if not reply.ok:
        raise RuntimeError(f"the first request failed: {reply.error}\n{tail(server.log_path)}")
    server.ready_s = first_s
    time.sleep(1.0)  # let the answer's buffers go back before reading the RSS
    return {"port_open_s": round(port_s, 3), "first_answer_s": round(first_s, 3),
            "first_request_s": round(reply.latency_s, 3), "timings_ms": reply.timings_ms,
            "memory_once_ready": memory_mb(server.proc.pid)}


def readyz_runtime(server: FunctionServer) -> str | None:
    try:
        return requests.get(server.url + "/readyz", timeout=5).json().get("model", {}).get("runtime")
    except (requests.RequestException, ValueError, AttributeError):
        return None


def decode_inference_ceiling(b: Bench, seconds: float, batch: int) -> dict[str, Any]:
    root = Path(b.manifest["root"])
    cmd = [sys.executable, "-m", "bench.probes", "litert-ceiling", "--tflite", str(root / b.manifest["tflite"]["file"]),
           "--seconds", str(seconds), "--batch", str(batch), "--parallel", str(len(os.sched_getaffinity(0))),
           "--photos", *(str(root / p["file"]) for p in b.manifest["photos"])]
    with open(b.logs / "ceiling.log", "ab") as log:
        done = subprocess.run(cmd, cwd=ROOT, env=b.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=log, timeout=b.settings.process_timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"the ceiling probe failed (exit {done.returncode}); see {b.logs / 'ceiling.log'}")
    return json.loads(done.stdout)


def memory_under_load(b: Bench, server: FunctionServer, clients: int = 4, photos: int = 8,
                      rounds: int = 2) -> dict[str, Any]:
    """Peak RSS/PSS of the tree while ``clients`` clients each send ``rounds`` requests of ``photos``
    copies of the biggest photo (4000x2667): the load knative/service.yaml's memory must hold."""
    assert server.proc is not None
    biggest = max(b.manifest["photos"], key=lambda p: p["bytes"])
    url = next(u for u in b.photo_urls if u.endswith(Path(biggest["file"]).name))
    sampler = Sampler(server.proc.pid, measure=memory_mb)
    sampler.start()
    errors = [0]

    def client(c: int) -> list[float]:
        session = requests.Session()
        times = []
        for r in range(rounds):
            urls = [f"{u}&client={c}&round={r}" for u in many_photos([url], photos)]
            reply = post(session, server.url + "/", urls, b.settings.request_timeout_s)
            errors[0] += not reply.ok
            times.append(reply.latency_s)
        session.close()
        return times

    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for ts in pool.map(client, range(clients)) for t in ts]
    time.sleep(0.5)
    after = memory_mb(server.proc.pid)
    return {"clients": clients, "photos_per_request": photos, "photo": Path(biggest["file"]).name,
            "requests": len(latencies), "errors": errors[0], "latency_s": summary(latencies),
            "peak": sampler.stop(), "after": after}


def services(b: Bench, pairs_count: int = 2) -> dict[str, Any]:
    s = b.settings
    img = image_env()
    out: dict[str, Any] = {"env": img}
    models = Path(tempfile.mkdtemp(prefix="models-", dir=b.tmp))

    def lite_env(cache: Path, **extra: str) -> dict[str, str]:
        return {**b.env, **img, "MODEL_URL": b.net.tflite_url, "MODEL_CACHE_DIR": str(cache),
                "TFHUB_CACHE_DIR": str(cache), **extra}

    threads = int(img.get("THREADS", "4"))

    # Cold starts: fresh process, empty model cache, .tflite fetched by URL from the stand-in.
    colds = []
    for i in range(s.runs):
        cache = Path(tempfile.mkdtemp(prefix="lite-cold-", dir=b.tmp))
        before = b.net.tflite_downloads()
        server = FunctionServer(lite_env(cache), b.logs / "service-litert-cold.log")
        try:
            doc = cold_start(b, server)
            doc["runtime"] = readyz_runtime(server)
            doc["tflite_downloads"] = b.net.tflite_downloads() - before
        finally:
            server.stop()
        shutil.rmtree(cache, ignore_errors=True)
        colds.append(doc)
        b.log(f"services: LiteRT cold start {i + 1}/{s.runs}: port {doc['port_open_s']:.2f} s, first answer "
              f"{doc['first_answer_s']:.2f} s, RSS {doc['memory_once_ready']['rss_mb']:.0f} MB ({doc['runtime']})")
    out["litert_cold"] = {"first_answer_s": summary([c["first_answer_s"] for c in colds]),
                          "port_open_s": summary([c["port_open_s"] for c in colds]),
                          "rss_once_ready_mb": summary([c["memory_once_ready"]["rss_mb"] for c in colds]),
                          "pss_once_ready_mb": summary([c["memory_once_ready"]["pss_mb"] for c in colds]),
                          "timings_ms": phase_medians(c["timings_ms"] for c in colds), "runs": colds}

    # The same cold start with the .tflite already on local disk (as the image carries it): what is
    # left when the model download is not on the path.
    tflite_file = str(Path(b.manifest["root"]) / b.manifest["tflite"]["file"])
    local = []
    for _ in range(s.runs):
        cache = Path(tempfile.mkdtemp(prefix="lite-local-", dir=b.tmp))
        server = FunctionServer(lite_env(cache, MODEL_URL=tflite_file), b.logs / "service-litert-local.log")
        try:
            local.append(cold_start(b, server))
        finally:
            server.stop()
        shutil.rmtree(cache, ignore_errors=True)
    out["litert_cold_local"] = {"first_answer_s": summary([c["first_answer_s"] for c in local]),
                                "port_open_s": summary([c["port_open_s"] for c in local]),
                                "timings_ms": phase_medians(c["timings_ms"] for c in local), "runs": local}
    b.log(f"services: LiteRT cold start, .tflite on local disk: first answer "
          f"{out['litert_cold_local']['first_answer_s']['median']:.2f} s")

    # The LiteRT service (warm, throughput, memory) and, up at the same time, the same service on
    # MODEL_RUNTIME=tensorflow (hub module by URL, empty hub cache): their 8-client levels are run
    # alternately, LiteRT then TensorFlow, ``pairs`` times, so a burst of other people's work on
    # this shared machine hits both alike; the decode+inference ceiling before and after them.
    lite = FunctionServer(lite_env(models), b.logs / "service-litert.log")
    tfcache = Path(tempfile.mkdtemp(prefix="tf-", dir=b.tmp))
    tf_env = {**b.env, **img, "MODEL_RUNTIME": "tensorflow", "TFHUB_CACHE_DIR": str(tfcache),
              "MODEL_CACHE_DIR": str(tfcache)}
    tf = FunctionServer(tf_env, b.logs / "service-tensorflow.log")
    clients = s.clients
    try:
        doc = cold_start(b, lite)
        out["litert"] = {"start": doc, "runtime": readyz_runtime(lite)}
        b.log(f"services: LiteRT service up (first answer {doc['first_answer_s']:.2f} s); warm requests")
        out["warm"] = scenarios.warm(b, lite)
        doc = cold_start(b, tf)
        doc["runtime"] = readyz_runtime(tf)
        out["tensorflow"] = doc
        b.log(f"services: TensorFlow service first answer {doc['first_answer_s']:.2f} s, "
              f"RSS {doc['memory_once_ready']['rss_mb']:.0f} MB")
        ceilings = [decode_inference_ceiling(b, s.ceiling_seconds, 2)]
        b.log(f"services: decode+inference ceiling {ceilings[0]['requests_per_s']:.2f} req/s; LiteRT load levels")
        out["throughput"] = scenarios.throughput(b, lite)
        pairs = []
        s.clients = (8,)
        for i in range(pairs_count):
            b.log(f"services: 8 clients, pair {i + 1}/{pairs_count}: LiteRT then TensorFlow")
            pairs.append({"litert": scenarios.throughput(b, lite)["levels"][0],
                          "tensorflow": scenarios.throughput(b, tf)["levels"][0]})
        s.clients = clients
        ceilings.append(decode_inference_ceiling(b, s.ceiling_seconds, 2))
        out["pairs"] = pairs
        out["tensorflow"]["throughput"] = {"levels": [p["tensorflow"] for p in pairs]}
        out["ceilings"] = ceilings
        out["ceiling"] = max(ceilings, key=lambda c: c["requests_per_s"])  # a ceiling: the best seen
        b.log(f"services: ceilings {[c['requests_per_s'] for c in ceilings]} req/s")
        tf.stop()
        # Memory for knative/service.yaml: 4 concurrent requests (and containerConcurrency's worth,
        # THREADS, when that is more) of 8 big photos (FANOUT_CHUNK) and, the worst case without
        # fan-out, of 64.
        full = s.level_seconds >= 6
        for n in sorted({4, threads}):
            for photos in (8, 64) if full else (8,):
                b.log(f"services: memory under {n} concurrent requests of {photos} big photos")
                out[f"memory_load_{n}x{photos}"] = memory_under_load(b, lite, n, photos,
                                                                     2 if full and photos == 8 else 1)
    finally:
        s.clients = clients
        lite.stop()
        tf.stop()
        shutil.rmtree(tfcache, ignore_errors=True)
    shutil.rmtree(models, ignore_errors=True)
    return out


# -- 3. container -------------------------------------------------------------------------------------
POD_LIKE = ("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")


def container(b: Bench, image: str | None, engine: str = "podman") -> dict[str, Any]:
    """``podman run`` -> first five-photo answer, serving the same .tflite by URL as the function process."""
    name = image or "bird-classifier"
    if shutil.which(engine) is None:
        return {"skipped": f"{engine} is not installed"}
    exists = subprocess.run([engine, "image", "exists", name], capture_output=True, timeout=60)
    if exists.returncode != 0:
        return {"skipped": f"no image {name!r} (make image, or --image NAME)"}
    inspect = subprocess.run([engine, "image", "inspect", name, "--format", "{{.Size}} {{.Created}}"],
                             capture_output=True, text=True, timeout=60)
    size_b, _, created = inspect.stdout.strip().partition(" ")
    root = Path(b.manifest["root"])
    # Two ways to run it: the image as deployed, its model carried in the image (here the stand-in
    # MobileNet .tflite and label map mounted where the image keeps its own, which a local image
    # built by `make image-test` has from the tiny colour model); and the .tflite fetched by URL
    # from the stand-in, like the function process above.
    variants = {
        "carried": ["--volume", f"{root / b.manifest['tflite']['file']}:/opt/bird-classifier/model.tflite:ro",
                    "--volume", f"{root / b.manifest['labels']['file']}:/opt/bird-classifier/labels.csv:ro"],
        "by_url": ["-e", f"MODEL_URL={b.net.tflite_url}", "-e", f"LABELS_URL={b.net.labels_url}"],
    }
    doc: dict[str, Any] = {"image": name, "created": created,
                           "image_mb": round(int(size_b) / 1e6) if size_b.isdigit() else None}
    for variant, extra in variants.items():
        runs = []
        for i in range(b.settings.runs):
            runs.append(_container_run(b, engine, name, f"bird-bench-{os.getpid()}-{variant}-{i}", extra))
            b.log(f"container {variant} {i + 1}/{b.settings.runs}: first answer {runs[-1]['first_answer_s']:.2f} s "
                  f"after `{engine} run`" + ("" if runs[-1]["ok"] else f" FAILED: {runs[-1]['error']}"))
        ok = [r for r in runs if r["ok"]]
        doc[variant] = {"first_answer_s": summary([r["first_answer_s"] for r in ok]),
                        "port_open_s": summary([r["port_open_s"] for r in ok]), "errors": len(runs) - len(ok),
                        "timings_ms": phase_medians(r["timings_ms"] for r in ok), "runs": runs}
    return doc


def _container_run(b: Bench, engine: str, image: str, cname: str, extra: list[str]) -> dict[str, Any]:
    cache = tempfile.mkdtemp(prefix="container-cache-", dir=b.tmp)
    os.chmod(cache, 0o1777)  # an emptyDir
    port = free_port()
    started = time.perf_counter()
    try:
        run = subprocess.run([engine, "run", "--detach", "--name", cname, "--network", "host", *POD_LIKE,
                              "--volume", f"{cache}:/var/cache/tfhub:rw", "-e", f"PORT={port}",
                              "-e", "TRUSTED_HOSTS=127.0.0.1", *extra, image],
                             capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            return {"ok": False, "error": f"{engine} run failed: {run.stderr.strip()[-500:]}",
                    "first_answer_s": float("nan"), "timings_ms": {}}
        detached_s = time.perf_counter() - started
        wait_port(port, None, time.monotonic() + b.settings.ready_timeout_s)
        port_s = time.perf_counter() - started
        session = requests.Session()
        reply = post(session, f"http://{HOST}:{port}/", b.photo_urls, b.settings.ready_timeout_s)
        first_s = time.perf_counter() - started
        session.close()
        return {"run_returned_s": round(detached_s, 3), "port_open_s": round(port_s, 3),
                "first_answer_s": round(first_s, 3), "ok": reply.ok, "error": reply.error,
                "timings_ms": reply.timings_ms}
    finally:
        logs = subprocess.run([engine, "logs", cname], capture_output=True, text=True, timeout=60)
        with open(b.logs / "container.log", "a") as f:
            f.write(f"--- {cname}\n{logs.stdout}{logs.stderr}")
        subprocess.run([engine, "rm", "--force", cname], capture_output=True, timeout=60)
        shutil.rmtree(cache, ignore_errors=True)


# -- 4. the sweep -------------------------------------------------------------------------------------
SWEEP = (("MAX_BATCH_IMAGES", ("1", "2", "4", "8")), ("INFERENCE_WORKERS", ("1", "2", "3")),
         ("THREADS", ("4", "8", "16")), ("WORKERS", ("1", "2")),
         ("FETCH_PER_REQUEST", ("0", "5", "16")), ("FETCH_WORKERS", ("16", "32")))
SWEEP_DEFAULTS = {"MAX_BATCH_IMAGES": "2", "INFERENCE_WORKERS": "0", "THREADS": "4", "WORKERS": "1",
                  "FETCH_PER_REQUEST": "0", "FETCH_WORKERS": "16"}


def sweep(b: Bench, seconds: float, rounds: int = 1) -> dict[str, Any]:
    """One setting changed at a time from the defaults; the defaults run first and last (drift);
    ``rounds`` > 1 runs the list again in reverse order (a trend in the machine's load then hits
    every setting alike)."""
    img = image_env()
    base = {**SWEEP_DEFAULTS, "THREADS": img.get("THREADS", "4"), "WORKERS": img.get("WORKERS", "1")}
    configs: list[dict[str, str]] = [dict(base)]
    for name, values in SWEEP:
        for v in values:
            c = {**base, name: v}
            if c not in configs:
                configs.append(c)
    configs.append(dict(base))
    models = Path(tempfile.mkdtemp(prefix="sweep-", dir=b.tmp))
    rows = []
    order = [(r, i, c) for r in range(rounds) for i, c in (enumerate(configs) if r % 2 == 0
                                                           else reversed(list(enumerate(configs))))]
    for n, (rnd, i, config) in enumerate(order):
        env = {**b.env, **img, **config, "MODEL_URL": b.net.tflite_url, "MODEL_CACHE_DIR": str(models),
               "TFHUB_CACHE_DIR": str(models)}
        changed = {k: v for k, v in config.items() if base[k] != v}
        label = ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"
        server = FunctionServer(env, b.logs / "sweep.log")
        row: dict[str, Any] = {"config": config, "changed": changed, "label": label, "round": rnd, "index": i}
        try:
            server.start()
            server.wait_ready(b.settings.ready_timeout_s)
            session = requests.Session()
            for _ in range(2 * int(config["WORKERS"])):  # warm every worker (each loads its own model)
                post(session, server.url + "/", b.photo_urls, b.settings.request_timeout_s)
            session.close()
            for clients in (1, 8):
                meter = CpuMeter({"function": server.pids()}).start()
                replies, t0, t_window, _ = load_level(server.url + "/", b.photo_urls, clients, seconds, 400,
                                                      b.settings.request_timeout_s)
                cpu = meter.stop()
                ok = [r for r in replies if r.ok]
                row[f"c{clients}"] = {"requests_per_s": rate_in_window(ok, t0, t_window),
                                      "latency_s": summary([r.latency_s for r in ok]),
                                      "errors": len(replies) - len(ok), "function_cores": cpu["function_cores"],
                                      "other_cores": cpu["other_cores"],
                                      "timings_ms": phase_medians(r.timings_ms for r in ok)}
        except Exception as exc:  # one failing setting must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            server.stop()
        rows.append(row)
        if "error" in row:
            b.log(f"sweep {n + 1}/{len(order)} {label}: FAILED {row['error'][:200]}")
        else:
            b.log(f"sweep {n + 1}/{len(order)} {label}: 8 clients {row['c8']['requests_per_s']:.2f} req/s, "
                  f"1 client p50 {row['c1']['latency_s']['median'] * 1000:.0f} ms")
    shutil.rmtree(models, ignore_errors=True)
    # One line per setting: the median over rounds (the defaults' two places pooled), and every sample.
    table = []
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for label in labels:
        mine = [r for r in rows if r["label"] == label and "error" not in r]
        table.append({"label": label, "changed": next(r["changed"] for r in rows if r["label"] == label),
                      "samples": len(mine), "errors": sum(r["c8"]["errors"] + r["c1"]["errors"] for r in mine)
                      + sum("error" in r for r in rows if r["label"] == label),
                      "c8_requests_per_s": median([r["c8"]["requests_per_s"] for r in mine]),
                      "c8_requests_per_s_samples": [round(r["c8"]["requests_per_s"], 2) for r in mine],
                      "c8_p50_s": median([r["c8"]["latency_s"]["median"] for r in mine]),
                      "c1_p50_s": median([r["c1"]["latency_s"]["median"] for r in mine]),
                      "c1_p50_s_samples": [round(r["c1"]["latency_s"]["median"], 3) for r in mine],
                      "function_cores": median([r["c8"]["function_cores"] for r in mine]),
                      "other_cores": median([r["c8"]["other_cores"] for r in mine])})
    return {"seconds_per_level": seconds, "rounds": rounds, "base": base, "rows": rows, "table": table,
            "photos_per_request": PHOTOS_PER_REQUEST}
