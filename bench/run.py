"""``make bench``: the benchmark, against a stand-in internet on 127.0.0.1.

    python -m bench.run                          # every scenario, ~7 minutes; prints the table
    python -m bench.run --quick                  # a short smoke run (one round, short load levels)
    python -m bench.run --only cli,service --latency-ms 20 --bandwidth-mbps 100
    python -m bench.run --only compare --compare DECODE_WORKERS=0,DECODE_WORKERS=2

Builds (once, cached outside the repository) a MobileNetV2-sized hub module, its float32 .tflite
conversion, the label map and five photo-like JPEGs; serves them with a per-request latency and a
per-connection bandwidth (``bench/standin_internet.py``); runs the scenarios; prints the table with
the targets as PASS/MISS (``bench/report.py``) and writes every number, raw samples included, to
``bench/results/latest.json`` (git-ignored), the processes' logs and the phases drawn
(``phases.svg``, ``bench/picture.py``) beside it.

Scenarios (``--only``; the default is all but ``compare``, which runs when ``--compare`` is given):

* ``cli``        the naive original, the first run with empty caches, the second run started the
                 moment the first exits, the repeat once the conversion is done (``bench/cli.py``)
* ``service``    cold start with the .tflite on local disk, warm requests, 1/4/8/16 clients against
                 the decode+inference ceiling, memory once ready and under load, the TensorFlow
                 service beside it (``bench/service.py``, ``bench/ceiling.py``)
* ``container``  ``podman run`` -> first answer (skipped, with the reason, without an engine or an
                 image; ``bench/container.py``)
* ``imports``    ``python -X importtime`` of the service's start: the import chain (``bench/imports.py``)
* ``compare``    the service with each of two or more environments: warm p50, 8 clients, RSS/PSS
                 (``bench/compare.py``)
* ``scaleout``   one 40-photo request on K = 1, 2 instances (``--scaleout-k``), each pinned to a core,
                 behind a round-robin proxy: the latency ratio and the fan-out's overhead
                 (``bench/scaleout.py``)

Environment: BENCH_LATENCY_MS (80), BENCH_BANDWIDTH_MBPS (16, MB/s per connection, 0 = unlimited),
BENCH_RUNS (3), BENCH_CACHE_DIR (~/.cache/bird-bench). The function's own variables (THREADS,
WORKERS, ...) pass through and win over the image's.
"""

from __future__ import annotations

import argparse
import compileall
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import ROOT

from . import compare as compare_mod
from . import report
from .cli import cli
from .container import container
from .context import QUICK, Bench, Settings, base_env
from .imports import imports
from .picture import render as phases_svg
from .scaleout import scaleout
from .service import service
from .standin_internet import StandInInternet, cache_root, run_prepare

DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"
SCENARIOS = ("cli", "service", "container", "imports", "scaleout", "compare")
DEFAULT_SCENARIOS = ("cli", "service", "container", "imports", "scaleout")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run: 1 round, short levels")
    p.add_argument("--only", default=None,
                   help=f"comma-separated subset of {','.join(SCENARIOS)} (default {','.join(DEFAULT_SCENARIOS)}, "
                        "and compare when --compare is given)")
    p.add_argument("--compare", default=None, metavar="A=1,A=2",
                   help="the compare scenario's settings: comma-separated, variables of one joined by +")
    p.add_argument("--latency-ms", type=float, default=float(env("BENCH_LATENCY_MS", "80")))
    p.add_argument("--bandwidth-mbps", type=float, default=float(env("BENCH_BANDWIDTH_MBPS", "16")),
                   help="MB/s (10^6 bytes) per connection; 0 = unlimited")
    p.add_argument("--runs", type=int, default=None, help="CLI rounds and cold starts (default BENCH_RUNS or 3)")
    p.add_argument("--warm-requests", type=int, default=None)
    p.add_argument("--clients", default=None, help="comma-separated client counts (default 1,4,8,16)")
    p.add_argument("--level-seconds", type=float, default=None, help="duration of each load level")
    p.add_argument("--compare-rounds", type=int, default=None, help="passes over the --compare settings")
    p.add_argument("--image", default=None,
                   help="container scenario: the image to run (default bird-classifier, if it exists)")
    p.add_argument("--scaleout-k", default="1,2", metavar="1,2,4",
                   help="scaleout scenario: the instance counts, comma-separated (default 1,2)")
    p.add_argument("--scaleout-photos", type=int, default=40, help="scaleout scenario: photos in the request")
    p.add_argument("--engine", default=os.environ.get("ENGINE", "podman"), help="container engine")
    p.add_argument("--cache-dir", default=None, help="fixtures cache (default BENCH_CACHE_DIR or ~/.cache/bird-bench)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    args = p.parse_args(argv)
    if args.only is None:
        args.only = ",".join(DEFAULT_SCENARIOS + (("compare",) if args.compare else ()))
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        p.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}")
    try:
        args.scaleout_ks = tuple(int(k) for k in args.scaleout_k.split(","))
    except ValueError:
        p.error("--scaleout-k: comma-separated instance counts, such as 1,2,4")
    if min(args.scaleout_ks) < 1 or args.scaleout_photos < 1:
        p.error("--scaleout-k and --scaleout-photos must be positive")
    if "compare" in args.only.split(","):
        if not args.compare:
            p.error("the compare scenario needs --compare A=1,A=2")
        try:
            args.configs = compare_mod.parse(args.compare)
        except ValueError as exc:
            p.error(str(exc))
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    s = QUICK if args.quick else Settings()
    env_runs = os.environ.get("BENCH_RUNS")
    s = replace(s, runs=args.runs or (int(env_runs) if env_runs and not args.quick else s.runs),
                warm_requests=args.warm_requests or s.warm_requests,
                clients=tuple(int(c) for c in args.clients.split(",")) if args.clients else s.clients,
                level_seconds=args.level_seconds or s.level_seconds,
                compare_rounds=args.compare_rounds or s.compare_rounds)
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
            "tensorflow": _version("tensorflow"), "ai_edge_litert": _version("ai-edge-litert"),
            "functions_framework": _version("functions-framework"), "gunicorn": _version("gunicorn"),
            "load_avg_start": round(os.getloadavg()[0], 2)}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _clean(value: Any) -> Any:
    """NaN/inf -> None, paths -> str, so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def compile_bytecode() -> bool:
    """Compile the function's modules as the image's build does (``compileall``). The services the
    scenarios start run from this checkout, and a machine with ``PYTHONDONTWRITEBYTECODE`` set would
    otherwise have every cold start compile them from source: a cost the image does not pay."""
    ok = compileall.compile_dir(ROOT / "function", quiet=1)
    return all([ok, *(compileall.compile_file(ROOT / name, quiet=1) for name in ("main.py", "gunicorn.conf.py"))])


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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

    log(f"fixtures in {root} (generated once)")
    manifest = run_prepare(root, logs / "prepare.log", settings.process_timeout_s * 2)
    bytecode = compile_bytecode()
    bandwidth = args.bandwidth_mbps * 1e6 or None
    results: dict[str, Any] = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
        "standin": {"latency_ms": args.latency_ms, "bandwidth_mbps": args.bandwidth_mbps},
        "settings": asdict(settings), "bytecode_compiled": bytecode, "quick": args.quick, "scenarios": sorted(only),
        "fixtures": manifest, "command": " ".join(sys.argv)}}
    errors: dict[str, str] = {}

    def attempt(name: str, fn, *a) -> None:
        try:
            results[name] = fn(*a)
        except Exception as exc:  # one broken scenario must not hide the others' numbers
            errors[name] = f"{type(exc).__name__}: {exc}"
            (logs / f"{name}-traceback.txt").write_text(traceback.format_exc())
            log(f"{name} failed: {errors[name]}")

    try:
        with StandInInternet(root, args.latency_ms / 1000, bandwidth, logs / "standin.log") as net:
            b = Bench(settings, net, manifest, logs, tmp, base_env(net))
            results["meta"]["service_env"] = b.image_settings()
            if "cli" in only:
                attempt("cli", cli, b)
            if "service" in only:
                attempt("service", service, b)
            if "container" in only:
                attempt("container", container, b, args.image, args.engine)
            if "imports" in only:
                attempt("imports", imports, b)
            if "scaleout" in only:
                attempt("scaleout", scaleout, b, args.scaleout_ks, args.scaleout_photos)
            if "compare" in only:
                attempt("compare", compare_mod.compare, b, args.configs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["breakdown"] = report.breakdown(results)
    results["targets"] = report.targets(results)
    results["errors"] = errors
    results["meta"]["machine"]["load_avg_end"] = round(os.getloadavg()[0], 2)
    results["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(results), indent=2))
    picture = out.with_name("phases.svg")
    picture.write_text(phases_svg(_clean(results)))
    print(report.render(results))
    print(f"\n{results['meta']['duration_s']:.0f} s in all; results: {out}; the phases drawn: {picture}; logs: {logs}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
