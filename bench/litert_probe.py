"""LiteRT runtime figures on the stand-in models (issue 10), printed as a table; not a test.

    python -m bench.litert_probe [--repeat N] [--out results.json]

Generates the colour model and the MobileNet V2 stand-in as TF1 Hub modules, converts them with
``function.model.convert`` (recording the TF-vs-LiteRT difference), then, each in a fresh process
that never imports TensorFlow: the LiteRT import, the model load, the per-image latency of one
single-threaded interpreter for batches of 1, 2 and 4 (one resized call vs one call per image), and
the peak RSS (VmHWM) of a process that loads the MobileNet and runs it. Also the same calls on
TensorFlow (one intra-op thread) for comparison, and the cache lookup (sha256) time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
from function.model.litert import LiteRTModel
t_module = time.perf_counter()
model = LiteRTModel(sys.argv[1])
t2 = time.perf_counter()
model.warmup()
repeat = int(sys.argv[2])
rng = np.random.default_rng(0)
out = {"numpy_import_ms": (t1 - t0) * 1000, **model.timings_ms,
       "module_import_ms": (t_module - t1) * 1000, "load_total_ms": (t2 - t_module) * 1000}
for n in (1, 2, 4):
    batch = rng.random((n, 224, 224, 3), dtype=np.float32)
    model.predict(batch)
    times = []
    for _ in range(repeat):
        s = time.perf_counter(); model.predict(batch); times.append(time.perf_counter() - s)
    out[f"resized_b{n}_ms_per_image"] = sorted(times)[len(times) // 2] * 1000 / n
    times = []
    for _ in range(repeat):
        s = time.perf_counter()
        for i in range(n):
            model.predict(batch[i:i + 1])
        times.append(time.perf_counter() - s)
    out[f"per_image_b{n}_ms_per_image"] = sorted(times)[len(times) // 2] * 1000 / n
    # The call queue mixes sizes: a resize (and re-allocation) before every call.
    times = []
    for _ in range(repeat):
        model.predict(batch[:1])
        s = time.perf_counter(); model.predict(batch); times.append(time.perf_counter() - s)
    out[f"resize_each_call_b{n}_ms_per_image"] = sorted(times)[len(times) // 2] * 1000 / n
# ru_maxrss keeps the forking parent's high-water mark across exec on Linux (it read 1.7 GB here,
# the TensorFlow parent's); VmHWM belongs to this process's own address space.
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
out["vm_hwm_mb"] = int(status["VmHWM"].split()[0]) / 1024
out["vm_rss_mb"] = int(status["VmRSS"].split()[0]) / 1024
out["ru_maxrss_mb (inherited)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["tensorflow_imported"] = "tensorflow" in sys.modules
print(json.dumps(out))
"""

_TF_CHILD = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
fn = hub.load(sys.argv[1]).signatures["default"]
repeat = int(sys.argv[2])
rng = np.random.default_rng(0)
out = {}
for n in (1, 2, 4):
    batch = tf.constant(rng.random((n, 224, 224, 3), dtype=np.float32))
    fn(images=batch)
    times = []
    for _ in range(repeat):
        s = time.perf_counter(); fn(images=batch)["default"].numpy(); times.append(time.perf_counter() - s)
    out[f"tf_b{n}_ms_per_image"] = sorted(times)[len(times) // 2] * 1000 / n
print(json.dumps(out))
"""


def _run(code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_of(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], int | float) and not isinstance(runs[0][k], bool)]
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {
        k: runs[0][k] for k in runs[0] if k not in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per figure")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per model (median taken)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from function.model import convert as conv
    from standin import hubmodel

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, build in (("colour", hubmodel.colour_model), ("mobilenet", hubmodel.mobilenet_model)):
            module = build(work / name)
            flat = work / f"{name}.tflite"
            conversion = conv.convert(str(module), flat)
            cache = conv.ConvertedCache(work / "cache")
            cache.root.mkdir(parents=True, exist_ok=True)
            with cache.locked(str(module)):
                tmp_file = cache.temp_file(str(module))
                tmp_file.write_bytes(flat.read_bytes())
                cache.store(str(module), tmp_file, conversion.manifest_fields())
            started = time.perf_counter()
            assert cache.lookup(str(module)) is not None
            lookup_ms = (time.perf_counter() - started) * 1000
            runs = [_run(_CHILD, str(flat), str(args.repeat)) for _ in range(args.processes)]
            figures = _median_of(runs)
            figures |= _run(_TF_CHILD, str(module), str(args.repeat))
            figures |= {"size_bytes": conversion.size, "max_abs_diff": conversion.max_abs_diff,
                        "conversion_s": conversion.seconds, "cache_lookup_ms": lookup_ms}
            results[name] = figures
    width = max(len(k) for r in results.values() for k in r)
    print(f"{'':{width}}  " + "  ".join(f"{n:>12}" for n in results))
    for key in results["colour"]:
        cells = []
        for r in results.values():
            v = r.get(key)
            cells.append(f"{v:>12.4g}" if isinstance(v, float) else f"{v!s:>12}")
        print(f"{key:{width}}  " + "  ".join(cells))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
