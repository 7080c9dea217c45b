"""The model alone, in a fresh process: the cold-start floor and the inference-only ceiling.

    python -m bench.probes floor   --model-dir DIR [--batch 5]
    python -m bench.probes ceiling --model-dir DIR [--seconds 5] [--batches 5,40]

``floor`` is the least a cold CLI can do: import TensorFlow (and tensorflow_hub), ``hub.load`` an
already-unpacked module from a local directory, make the first call. The benchmark measures its
wall time from outside, like the CLI's.

``ceiling`` loads the same module, warms it up, then calls it on preprocessed batches (random
pixels in [0,1], converted with ``tf.constant`` per call as the function does) for a bounded time,
and reports images/s and, for the function's unit of work, five-photo requests/s. No I/O, no
decoding: what the function's throughput is compared with.

``litert-ceiling`` (issue 10) is the serving path's own ceiling without HTTP: ``--parallel`` threads
(default: one per usable CPU, as the function's call queue), each with its own single-threaded
LiteRT interpreter, each repeatedly decoding the five photos with the function's own decoder (JPEG
draft mode, resize to 224) and running them through the model in calls of ``--batch`` images.
Never imports TensorFlow.

Each prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

IMAGE_SIZE = 224
PHOTOS_PER_REQUEST = 5


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def floor(model_dir: str, batch: int) -> dict:
    t0 = time.perf_counter()
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub

    t1 = time.perf_counter()
    module = hub.load(model_dir)
    fn = module.signatures["default"]
    t2 = time.perf_counter()
    out = fn(images=tf.constant(np.zeros((batch, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)))["default"].numpy()
    t3 = time.perf_counter()
    return {"timings_ms": {"tf_import": (t1 - t0) * 1000, "model_load": (t2 - t1) * 1000,
                           "first_call": (t3 - t2) * 1000},
            "output_shape": list(out.shape)}


def ceiling(model_dir: str, seconds: float, batches: list[int], max_calls: int = 10_000,
            parallel: int = 0) -> dict:
    """Images/s of the model alone. ``parallel`` N > 0: N threads each making single-threaded calls
    (intra-op 1, inter-op N) — the configuration the function itself uses; 0: one caller, TF's
    default thread pools."""
    import threading

    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub

    if parallel:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, parallel))
    fn = hub.load(model_dir).signatures["default"]
    rng = np.random.default_rng(0)
    results = {}
    for batch in batches:
        pixels = rng.random((batch, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
        for _ in range(2):  # warm-up: the first calls of a new batch shape are slower
            fn(images=tf.constant(pixels))["default"].numpy()
        counts = [0] * max(1, parallel)
        started, cpu0 = time.perf_counter(), _cpu_s()

        def caller(i: int, counts: list[int], pixels: np.ndarray, started: float) -> None:
            while sum(counts) < max_calls and (counts[i] < 3 or time.perf_counter() - started < seconds):
                fn(images=tf.constant(pixels))["default"].numpy()
                counts[i] += 1

        threads = [threading.Thread(target=caller, args=(i, counts, pixels, started)) for i in range(len(counts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        calls = sum(counts)
        elapsed, cpu = time.perf_counter() - started, _cpu_s() - cpu0
        images_per_s = calls * batch / elapsed
        key = f"{batch}x{parallel}" if parallel else str(batch)
        results[key] = {"batch": batch, "parallel": parallel, "calls": calls, "seconds": round(elapsed, 3),
                               "ms_per_call": round(elapsed / calls * 1000, 2),
                               "images_per_s": round(images_per_s, 2),
                               "requests_per_s": round(images_per_s / PHOTOS_PER_REQUEST, 3),
                               "cpu_cores_busy": round(cpu / elapsed, 2),
                               "images_per_core_s": round(calls * batch / cpu, 2) if cpu else None}
    return {"batches": results, "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "cpus": len(os.sched_getaffinity(0))}


def litert_ceiling(model: str, photos: list[str], seconds: float, parallel: int, batch: int) -> dict:
    """Five-photo requests/s of decode + LiteRT inference alone (no HTTP, no downloads)."""
    import threading

    import numpy as np

    from function.core.images import decode
    from function.model.litert import LiteRTModel

    datas = [open(p, "rb").read() for p in photos]  # noqa: SIM115 - read at once
    parallel = parallel or len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    lite = LiteRTModel(model)
    lite.warmup()
    load_ms = (time.perf_counter() - t0) * 1000
    counts = [0] * parallel
    decode_s = [0.0] * parallel
    infer_s = [0.0] * parallel

    def worker(i: int, started: float) -> None:
        while counts[i] < 2 or time.perf_counter() - started < seconds:
            t = time.perf_counter()
            pixels = np.stack([decode(d, 64_000_000) for d in datas])
            t1 = time.perf_counter()
            for k in range(0, len(pixels), batch):
                lite.predict(pixels[k:k + batch])
            decode_s[i] += t1 - t
            infer_s[i] += time.perf_counter() - t1
            counts[i] += 1

    started, cpu0 = time.perf_counter(), _cpu_s()
    threads = [threading.Thread(target=worker, args=(i, started)) for i in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - started, _cpu_s() - cpu0
    requests = sum(counts)
    return {"parallel": parallel, "batch": batch, "requests": requests, "seconds": round(elapsed, 3),
            "requests_per_s": round(requests / elapsed, 3), "images_per_s": round(requests * len(datas) / elapsed, 2),
            "cpu_cores_busy": round(cpu / elapsed, 2),
            "decode_ms_per_request": round(sum(decode_s) / requests * 1000, 1),
            "inference_ms_per_request": round(sum(infer_s) / requests * 1000, 1),
            "model_load_ms": round(load_ms, 1), "tensorflow_imported": "tensorflow" in sys.modules}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=["floor", "ceiling", "litert-ceiling"])
    parser.add_argument("--model-dir", help="an unpacked TF1 Hub module directory (floor, ceiling)")
    parser.add_argument("--tflite", help="litert-ceiling: the .tflite file")
    parser.add_argument("--photos", nargs="*", default=[], help="litert-ceiling: JPEG files")
    parser.add_argument("--batch", type=int, default=PHOTOS_PER_REQUEST,
                        help="floor: the first call's batch; litert-ceiling: images per model call")
    parser.add_argument("--seconds", type=float, default=5.0, help="ceiling: time per batch size")
    parser.add_argument("--batches", default="5", help="ceiling: comma-separated batch sizes")
    parser.add_argument("--parallel", type=int, default=0,
                        help="ceiling: N concurrent single-threaded callers (0: one caller, default threads)")
    args = parser.parse_args(argv)
    if args.probe == "litert-ceiling":
        doc = litert_ceiling(args.tflite, args.photos, args.seconds, args.parallel, args.batch)
    elif args.probe == "floor":
        doc = floor(args.model_dir, args.batch)
    else:
        doc = ceiling(args.model_dir, args.seconds, [int(b) for b in args.batches.split(",")],
                      parallel=args.parallel)
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
