"""The decode+inference ceiling: what the service's work costs without HTTP, downloads or queues.

    python -m bench.ceiling --tflite FILE --photos A.jpg B.jpg ... [--seconds 5] [--parallel N] [--batch 2]

In a fresh process that never imports TensorFlow: ``--parallel`` threads (default one per usable
CPU, as the function's model-call workers), each with its own single-threaded LiteRT interpreter,
each decoding the five photos over and over with the function's own decoder, as its settings say
(in its decode worker processes; ``--in-process`` for the reference on the probe's own threads)
and running them through the model in calls of ``--batch`` images (the function's
MAX_BATCH_IMAGES). Prints one JSON document: five-photo requests/s, and where a request's thread
time goes. :func:`measure` runs it from the benchmark, next to the idle service, so both see the
same machine; the throughput target compares the service's 8-client rate with the best of two
measurements, one before and one after the load levels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from harness import ROOT, procfs

if TYPE_CHECKING:
    from .context import Bench


def _cpu_s() -> float:
    """This process and its decode workers (the fork server's children)."""
    return procfs.cpu_seconds(procfs.tree(os.getpid()))


def probe(model: str, photos: list[str], seconds: float, parallel: int, batch: int,
          in_process: bool = False) -> dict[str, Any]:
    import numpy as np

    from function.config import Config
    from function.core.decoding import Decoder
    from function.core.inputs import allowed_formats
    from function.infra.cpu import usable_cpus
    from function.model.litert import LiteRTModel

    # The photos decoded as the function decodes them (config.py's settings): in its decode worker
    # processes, as the service does, unless ``in_process`` (the reference without the workers' price).
    config = Config.from_env()
    workers = 0 if in_process or config.decode_in_process else (config.decode_workers or usable_cpus() + 1)
    decoder = Decoder(config.max_photo_pixels, allowed_formats(config.photo_formats),
                      config.decode_memory_mb * 1_000_000, workers=workers, cpu_s=config.decode_cpu_s,
                      max_scans=config.max_jpeg_scans)
    lite_size = LiteRTModel(model).contract.input  # photos are decoded to the model's own size
    size = (lite_size.width, lite_size.height)
    for _ in range(2):  # the workers are started in the background: the measurement starts once they are up
        for p in photos:
            with open(p, "rb") as f:
                decoder.decode(f.read(), size)

    datas = []
    for p in photos:
        with open(p, "rb") as f:
            datas.append(f.read())
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
            pixels = np.stack([decoder.decode(d, size, share=i) for d in datas])
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
    decoder.close()
    done = sum(counts)
    return {"parallel": parallel, "batch": batch, "requests": done, "seconds": round(elapsed, 3),
            "requests_per_s": round(done / elapsed, 3), "images_per_s": round(done * len(datas) / elapsed, 2),
            "cpu_cores_busy": round(cpu / elapsed, 2),
            "decode_ms_per_request": round(sum(decode_s) / done * 1000, 1),
            "inference_ms_per_request": round(sum(infer_s) / done * 1000, 1),
            "model_load_ms": round(load_ms, 1), "tensorflow_imported": "tensorflow" in sys.modules,
            "decode_workers": workers}


def measure(b: Bench, when: str, in_process: bool = False) -> dict[str, Any]:
    """The probe in a fresh process, in the environment the service gets (the image's settings); with
    ``in_process``, the reference that decodes on its own threads (what the decode workers cost)."""
    from function.config import Config  # plain Python: the function's default call size

    env = b.service_env(b.tmp)
    batch = Config.from_env(env).max_batch_images
    cmd = [sys.executable, "-m", "bench.ceiling", "--tflite", str(b.tflite_file), "--seconds",
           str(b.settings.ceiling_seconds), "--batch", str(batch), "--photos", *map(str, b.photo_files),
           *(["--in-process"] if in_process else [])]
    with open(b.logs / "ceiling.log", "ab") as log:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=log, timeout=b.settings.process_timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"the ceiling probe failed (exit {done.returncode}); see {b.logs / 'ceiling.log'}")
    doc = json.loads(done.stdout)
    doc["when"] = when + (", decoding in-process" if in_process else "")
    b.log(f"ceiling ({when}): {doc['requests_per_s']:.2f} req/s (decode {doc['decode_ms_per_request']} ms + "
          f"inference {doc['inference_ms_per_request']} ms per request, {doc['cpu_cores_busy']} cores)")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tflite", required=True)
    parser.add_argument("--photos", nargs="+", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--parallel", type=int, default=0, help="threads (0: one per usable CPU)")
    parser.add_argument("--batch", type=int, default=2, help="images per model call")
    parser.add_argument("--in-process", action="store_true",
                        help="decode on the probe's threads, not in the function's decode workers")
    args = parser.parse_args(argv)
    json.dump(probe(args.tflite, args.photos, args.seconds, args.parallel, args.batch, args.in_process), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
