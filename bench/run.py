"""``make bench``: the benchmark of issues 3 and 10 against a stand-in internet on 127.0.0.1.

    python -m bench.run                 # issue 10's scenarios, ~10 minutes; prints a table
    python -m bench.run --quick         # a short smoke run (one round, short load levels)
    python -m bench.run --only cli,services --latency-ms 20 --bandwidth-mbps 100
    python -m bench.run --only cold,warm,throughput,fanout   # issue 3's scenarios (TensorFlow era)

Builds (once, cached outside the repository) a MobileNetV2-sized hub module, its float32 .tflite
conversion, the label map and five photo-like JPEGs; serves them with a per-request latency and a
per-connection bandwidth; runs the scenarios (issue 10: ``bench/litert_scenarios.py``; issue 3:
``bench/scenarios.py``); prints the table with the targets as PASS/MISS and writes every number,
raw samples included, to ``bench/results/latest.json`` (git-ignored).

Issue 10's scenarios (the default): ``cli`` (naive original, first runs with empty caches, repeat
run), ``services`` (LiteRT cold start by URL, warm, throughput, ceiling, RSS, and the TensorFlow
runtime beside it), ``container`` (``podman run`` -> first answer; skipped with the reason when
there is no engine or image), ``sweep`` (MAX_BATCH_IMAGES, INFERENCE_WORKERS, THREADS, WORKERS).

Environment: BENCH_LATENCY_MS (80), BENCH_BANDWIDTH_MBPS (16, MB/s per connection, 0 = unlimited),
BENCH_RUNS (3), BENCH_CACHE_DIR (~/.cache/bird-bench). The function itself is configured as usual
(THREADS, WORKERS and the function's own variables pass through unchanged).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from . import litert_scenarios, report, scenarios
from .scenarios import Bench, Settings
from .services import FunctionServer
from .standin_internet import StandInInternet, cache_root, run_prepare

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"
SCENARIOS = ("cli", "services", "container", "sweep", "cold", "warm", "throughput", "fanout")
DEFAULT_SCENARIOS = ("cli", "services", "container", "sweep")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run: 1 round, short levels")
    p.add_argument("--only", default=",".join(DEFAULT_SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)} (default {','.join(DEFAULT_SCENARIOS)})")
    p.add_argument("--latency-ms", type=float, default=float(env("BENCH_LATENCY_MS", "80")))
    p.add_argument("--bandwidth-mbps", type=float, default=float(env("BENCH_BANDWIDTH_MBPS", "16")),
                   help="MB/s (10^6 bytes) per connection; 0 = unlimited")
    p.add_argument("--runs", type=int, default=None, help="cold CLI rounds (default BENCH_RUNS or 3; quick 1)")
    p.add_argument("--warm-requests", type=int, default=None)
    p.add_argument("--clients", default=None, help="comma-separated client counts (default 1,4,8,16)")
    p.add_argument("--level-seconds", type=float, default=None, help="duration of each throughput level")
    p.add_argument("--fanout", choices=["auto", "on", "off"], default="auto",
                   help="auto: run scenario 5 only if the function has fan-out; on: run it anyway")
    p.add_argument("--image", default=None,
                   help="container scenario: the image to `podman run` (default bird-classifier, if it exists)")
    p.add_argument("--engine", default=os.environ.get("ENGINE", "podman"), help="container engine")
    p.add_argument("--sweep-seconds", type=float, default=None, help="sweep: seconds per load level (default 6)")
    p.add_argument("--sweep-rounds", type=int, default=None, help="sweep: passes over the settings (default 2)")
    p.add_argument("--cache-dir", default=None, help="fixtures cache (default BENCH_CACHE_DIR or ~/.cache/bird-bench)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    args = p.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        p.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings()
    if args.quick:
        s = Settings(runs=1, warm_requests=5, fetch_probes=3, clients=(1, 8), level_seconds=4.0,
                     ceiling_seconds=2.0, ceiling_batches=(5,), fanout_requests=2)
    env_runs = os.environ.get("BENCH_RUNS")
    s.runs = args.runs or (int(env_runs) if env_runs and not args.quick else s.runs)
    s.warm_requests = args.warm_requests or s.warm_requests
    if args.clients:
        s.clients = tuple(int(c) for c in args.clients.split(","))
    s.level_seconds = args.level_seconds or s.level_seconds
    s.fanout = args.fanout
    s.sweep_seconds = args.sweep_seconds or (2.5 if args.quick else s.sweep_seconds)
    s.sweep_rounds = args.sweep_rounds or (1 if args.quick else s.sweep_rounds)
    if s.runs < 1 or s.warm_requests < 1 or not s.clients or min(s.clients) < 1:
        raise SystemExit("runs, warm requests and clients must be positive")
    return s


def machine() -> dict[str, Any]:
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    mem = next((line.split()[1] for line in (read("/proc/meminfo") or "").splitlines()
                if line.startswith("MemTotal")), "0")
    return {"cpus": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "cgroup_cpu_max": read("/sys/fs/cgroup/cpu.max"), "mem_gib": round(int(mem) / 2**20, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": _version("tensorflow"), "tensorflow_hub": _version("tensorflow-hub"),
            "functions_framework": _version("functions-framework"),
            "load_avg_start": round(os.getloadavg()[0], 2)}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _clean(value: Any) -> Any:
    """NaN/inf -> None, so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    only = set(args.only.split(","))
    started = time.perf_counter()
    root = cache_root(args.cache_dir)
    out: Path = args.out
    logs = out.parent / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=root / "tmp"))

    def log(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    log(f"fixtures in {root} (generated once)")
    manifest = run_prepare(root, logs / "prepare.log", settings.process_timeout_s * 2)
    bandwidth = args.bandwidth_mbps * 1e6 or None
    results: dict[str, Any] = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
        "standin": {"latency_ms": args.latency_ms, "bandwidth_mbps": args.bandwidth_mbps},
        "service": {"WORKERS": os.environ.get("WORKERS", "default (1)"),
                    "THREADS": os.environ.get("THREADS", f"default ({(os.cpu_count() or 1) * 4})"),
                    "issue 10 services (as the image)": litert_scenarios.image_env()},
        "settings": {k: v for k, v in vars(settings).items()}, "quick": args.quick,
        "fixtures": manifest, "command": " ".join(sys.argv)}}
    errors: dict[str, str] = {}

    def attempt(name: str, fn, *a) -> Any:
        try:
            return fn(*a)
        except Exception as exc:  # one broken scenario must not hide the others' numbers
            errors[name] = f"{type(exc).__name__}: {exc}"
            (logs / f"{name}-traceback.txt").write_text(traceback.format_exc())
            log(f"{name} failed: {errors[name]}")
            return None

    try:
        with StandInInternet(root, args.latency_ms / 1000, bandwidth, logs / "standin.log") as net:
            b = Bench(settings, net, manifest, logs, tmp)
            b.env = scenarios.base_env(net)
            if "cli" in only:
                results["cli"] = attempt("cli", litert_scenarios.cli, b)
            if "services" in only:
                results["services"] = attempt("services", litert_scenarios.services, b, 1 if args.quick else 2)
            if "container" in only:
                results["container"] = attempt("container", litert_scenarios.container, b, args.image, args.engine)
            if "sweep" in only:
                results["sweep"] = attempt("sweep", litert_scenarios.sweep, b, settings.sweep_seconds,
                                           settings.sweep_rounds)
            if "cold" in only:
                results["cold_cli"] = attempt("cold_cli", scenarios.cold_cli, b)
            if only & {"warm", "throughput"}:
                env = {**b.env, "TFHUB_CACHE_DIR": str(b.fresh_hub_cache())}
                log("starting functions-framework --target classify_http (fresh hub cache)")
                with FunctionServer(env, logs / "function.log") as server:
                    if attempt("start", server.wait_ready, settings.ready_timeout_s) is not None:
                        log(f"ready after {server.ready_s:.1f} s")
                        if "warm" in only:
                            results["warm"] = attempt("warm", scenarios.warm, b, server)
                        if "throughput" in only:
                            # The model alone in another process, next to the idle service and just
                            # before the load levels, so both see the same machine.
                            results["ceiling"] = attempt("ceiling", scenarios.inference_ceiling, b)
                            results["throughput"] = attempt("throughput", scenarios.throughput, b, server)
            if "fanout" in only:
                results["fanout"] = attempt("fanout", scenarios.fanout, b)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results = {k: v for k, v in results.items() if v is not None}
    results["breakdown"] = scenarios.breakdown(results)
    results["breakdown10"] = report.breakdown10(results)
    results["targets"] = report.targets(results)
    results["targets10"] = report.targets10(results)
    results["errors"] = errors
    results["meta"]["machine"]["load_avg_end"] = round(os.getloadavg()[0], 2)
    results["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(results), indent=2))
    print(report.render(results))
    print(f"\n{results['meta']['duration_s']:.0f} s in all; results: {out}; logs: {logs}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
