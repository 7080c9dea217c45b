"""The CLI rows: fresh ``python main.py --json PHOTOS`` processes, five photos, wall time from outside.

Each round has caches of its own (``TFHUB_CACHE_DIR``, ``MODEL_CACHE_DIR``), empty at its start, and
runs, on the default runtime (``auto``):

1. **first**: empty caches. The CLI answers on TensorFlow and leaves a detached conversion to
   ``.tflite`` behind (started at once, on idle CPU only, using the first run's module download).
2. **second**: started the moment the first exits, on the same caches, while that conversion may
   still be running: whatever it does (TensorFlow again, or LiteRT if the flatbuffer is there) it
   must not be slower than the first.
3. **repeat**: once the conversion is done (the flatbuffer in the cache, no converter left), the
   same caches again: LiteRT, and TensorFlow must never be imported.

and the naive original (``bench/naive.py``, its own empty hub cache), before the chain in even rounds
and after it in odd ones. Whether a run imported TensorFlow is read from the process itself: every
process runs under :data:`WRAPPER`, which runs the script as ``python SCRIPT`` would
(``runpy.run_path``, ``__main__``) and, at exit (``os._exit`` included), writes which heavy modules
``sys.modules`` holds.
It costs a ``runpy`` import, not ``-X importtime``'s per-import bookkeeping, so it does not tilt
the ratios.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from harness import ROOT, machine_busy_seconds

from .context import PHOTOS_PER_REQUEST, Bench
from .stats import phase_medians, ratio, summary

# The CLI ends with os._exit (no interpreter teardown, no atexit handlers), the naive script normally:
# the wrapper writes its record on either way out.
WRAPPER = """\
import atexit, json, os, runpy, sys
out = sys.argv.pop(1)
sys.argv = sys.argv[1:]
def _modules():
    with open(out, "w") as f:
        json.dump({"tensorflow": "tensorflow" in sys.modules, "tensorflow_hub": "tensorflow_hub" in sys.modules,
                   "litert": any(m.startswith("ai_edge_litert") for m in sys.modules),
                   "modules": len(sys.modules)}, f)
atexit.register(_modules)
_exit = os._exit
def _recorded_exit(code):
    _modules()
    _exit(code)
os._exit = _recorded_exit
runpy.run_path(sys.argv[0], run_name="__main__")
"""
KINDS = ("naive", "first", "second", "repeat")


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _spawn_and_wait(b: Bench, name: str, script: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``script`` under the wrapper; only what must be read at once (times, output) is read here,
    so a next run can start the moment this one exits. :func:`_finish` reads the rest."""
    marker = b.tmp / f"modules-{uuid.uuid4().hex}.json"
    cmd = [sys.executable, "-c", WRAPPER, str(marker), *script]
    with open(b.logs / f"cli-{name}.log", "ab") as log:
        cpu0, busy0 = _children_cpu_s(), machine_busy_seconds()
        spawned_wall, started = time.time(), time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=log, timeout=b.settings.process_timeout_s)
        wall = time.perf_counter() - started
        exited_wall = time.time()
        cpu, busy = _children_cpu_s() - cpu0, machine_busy_seconds() - busy0
    return {"kind": name, "wall_s": round(wall, 3), "returncode": done.returncode, "cpu_s": round(cpu, 2),
            "other_cores": round(max(0.0, busy / wall - cpu / wall), 2), "load_avg_1m": round(os.getloadavg()[0], 2),
            "spawned_wall": spawned_wall, "exited_wall": exited_wall,
            "_stdout": done.stdout.decode(errors="replace"), "_marker": marker}


def _finish(run: dict[str, Any]) -> dict[str, Any]:
    stdout, marker = run.pop("_stdout"), run.pop("_marker")
    try:
        run["modules"] = json.loads(marker.read_text())
        marker.unlink()
    except (OSError, ValueError):
        run["modules"] = None  # the process did not get to its exit handlers: nothing verified
    run["tensorflow_imported"] = None if run["modules"] is None else run["modules"]["tensorflow"]
    try:
        if run["kind"] == "naive":
            lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
            run.update(photo_errors=PHOTOS_PER_REQUEST - len(lines), per_photo_ms=[x["ms"] for x in lines])
        else:
            doc = json.loads(stdout)
            run.update(timings_ms=doc.get("timings_ms", {}),
                       photo_errors=sum(1 for r in doc.get("results", []) if r.get("error")))
    except (ValueError, KeyError, TypeError):
        run.update(photo_errors=PHOTOS_PER_REQUEST, unparsed_output=stdout[-500:])
    run["ok"] = run["returncode"] == 0 and run["photo_errors"] == 0
    return run


def _converters(cache_dir: Path) -> list[int]:
    """Live ``python -m function.model`` processes writing into ``cache_dir`` (the CLI's detached ones)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"function.model" in cmd and str(cache_dir).encode() in cmd:
            found.append(int(entry.name))
    return found


def _wait_converted(b: Bench, cache_dir: Path) -> float | None:
    """Poll until no detached converter is left; returns the stored manifest's mtime (wall clock), or
    None when no flatbuffer came (the conversion failed, or did not end in time)."""
    from function.model.cache import MANIFEST_FILE, ConvertedCache  # no TensorFlow

    cache = ConvertedCache(cache_dir)
    url = b.net.model_url
    deadline = time.monotonic() + b.settings.process_timeout_s
    while time.monotonic() < deadline:
        stored = cache.manifest(url) is not None and cache.model_path(url).exists()
        running = _converters(cache_dir)  # every CLI started its converter before it exited
        if not running:
            return (cache.entry_dir(url) / MANIFEST_FILE).stat().st_mtime if stored else None
        time.sleep(0.1)
    return None


def _round(b: Bench, i: int) -> dict[str, Any]:
    urls = b.photo_urls
    cli = ["main.py", "--json", *urls]
    fresh = b.fresh_dir(f"cli-{i}-")
    env = {**b.env, "TFHUB_CACHE_DIR": str(fresh / "tfhub"), "MODEL_CACHE_DIR": str(fresh / "models")}
    naive_env = {**b.env, "TFHUB_CACHE_DIR": str(fresh / "naive-tfhub")}
    runs: list[dict[str, Any]] = []
    if i % 2 == 0:
        runs.append(_finish(_spawn_and_wait(b, "naive", ["bench/naive.py", *urls], naive_env)))
    downloads = b.net.model_downloads()
    first = _spawn_and_wait(b, "first", cli, env)
    second = _spawn_and_wait(b, "second", cli, env)  # at once: nothing read between the two
    converted_at = _wait_converted(b, fresh / "models")
    chain_downloads = b.net.model_downloads() - downloads
    repeat = _spawn_and_wait(b, "repeat", cli, env)
    runs += [_finish(first), _finish(second), _finish(repeat)]
    if i % 2 == 1:
        runs.append(_finish(_spawn_and_wait(b, "naive", ["bench/naive.py", *urls], naive_env)))
    shutil.rmtree(fresh, ignore_errors=True)
    by = {r["kind"]: r for r in runs}
    return {
        "round": i + 1, "runs": runs,
        "gap_first_exit_to_second_spawn_ms": round((second["spawned_wall"] - first["exited_wall"]) * 1000, 1),
        "second_vs_first": ratio(by["second"]["wall_s"], by["first"]["wall_s"]),
        "model_downloads_first_and_second": chain_downloads,
        "flatbuffer_after_first_exit_s": None if converted_at is None
        else round(converted_at - first["exited_wall"], 2),
        "conversion_done_when_second_started": None if converted_at is None
        else converted_at < second["spawned_wall"],
    }


def cli(b: Bench) -> dict[str, Any]:
    b.log("CLI: warming the page cache (import tensorflow, tensorflow_hub, tf_keras, ai_edge_litert; not measured)")
    subprocess.run([sys.executable, "-c", "import tensorflow, tensorflow_hub, tf_keras, ai_edge_litert"], cwd=ROOT,
                   env=b.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=b.settings.process_timeout_s)
    rounds = []
    for i in range(b.settings.runs):
        doc = _round(b, i)
        rounds.append(doc)
        walls = {r["kind"]: r["wall_s"] for r in doc["runs"]}
        tf = {r["kind"]: r["tensorflow_imported"] for r in doc["runs"]}
        failed = [r["kind"] for r in doc["runs"] if not r["ok"]]
        b.log(f"CLI round {i + 1}/{b.settings.runs}: naive {walls['naive']:.2f} s, first {walls['first']:.2f} s, "
              f"second {walls['second']:.2f} s (TensorFlow {tf['second']}, started "
              f"{doc['gap_first_exit_to_second_spawn_ms']:.0f} ms after the first exited; flatbuffer "
              f"{doc['flatbuffer_after_first_exit_s']} s after it), repeat {walls['repeat']:.2f} s "
              f"(TensorFlow {tf['repeat']})" + (f"; FAILED: {failed} (see {b.logs}/cli-*.log)" if failed else ""))
    out: dict[str, Any] = {"rounds": rounds}
    for kind in KINDS:
        rs = [r for d in rounds for r in d["runs"] if r["kind"] == kind]
        out[kind] = {"wall_s": summary([r["wall_s"] for r in rs if r["ok"]]),
                     "failed_runs": sum(not r["ok"] for r in rs),
                     "tensorflow_imported": [r["tensorflow_imported"] for r in rs],
                     "other_cores": summary([r["other_cores"] for r in rs])}
        if kind != "naive":
            out[kind]["timings_ms"] = phase_medians(r["timings_ms"] for r in rs if r.get("timings_ms"))
    return out
