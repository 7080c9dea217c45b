"""Smoke test of the container image, run by ``tests/image/smoke.sh`` (``make image-test``).

Serves the stand-in hub (the colour model as a TF Hub tar.gz), the label map and two photos on
127.0.0.1; builds the image with ``--network host`` and the build arguments ``MODEL_URL`` /
``LABELS_URL`` pointing there (the build stage converts the module to a .tflite); then runs it with
no model settings at all and checks what a Knative Service relies on:

* ``/healthz`` answers at once; ``/readyz`` turns 200 once the model is loaded (bounded wait), and
  says the runtime is LiteRT;
* ``POST /`` with two photo URLs answers their classes, in order;
* the image pins its model: nothing is fetched from the hub or the label map host at run time, and
  TensorFlow is not installed in the final image;
* nothing is logged at ERROR level (gunicorn's or the function's);
* SIGTERM (Knative's scale-down) stops it promptly with exit code 0;
* the process does not run as root, and needs nothing writable but the cache and ``/tmp``
  (the container runs read-only, as ``knative/service.yaml`` sets it).

Prints one JSON line of timings (seconds from ``run``). Not collected by pytest (needs podman).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from harness import free_port  # noqa: E402
from standin import hubmodel, photos  # noqa: E402
from standin.server import StandInServer  # noqa: E402

MODEL_PATH = "/google/aiy/vision/classifier/birds_V1/1"
LABELS_PATH = "/aihub/tfhub/labelmaps/aiy_birds_V1_labelmap.csv"
CLASSES = (300, 5)  # two photos the colour model puts in these classes
CACHE_DIR = "/var/cache/tfhub"  # TFHUB_CACHE_DIR in the Dockerfile
# Run it as knative/service.yaml does: read-only root filesystem (podman then mounts a tmpfs on
# /tmp), no capabilities, no privilege escalation; the cache is a world-writable host directory,
# which is what a Kubernetes emptyDir is.
POD_LIKE = ("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")


class SmokeFailure(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def engine_run(engine: str, *args: str, check_rc: bool = True) -> str:
    done = subprocess.run([engine, *args], capture_output=True, text=True, timeout=120)
    if check_rc and done.returncode != 0:
        raise SmokeFailure(f"{engine} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def running(engine: str, container: str) -> bool:
    return engine_run(engine, "inspect", "--format", "{{.State.Running}}", container, check_rc=False) == "true"


def poll(url: str, want: int, deadline: float, alive) -> int:
    """GET ``url`` until it answers ``want``; returns the number of other answers seen."""
    others = 0
    while True:
        try:
            if requests.get(url, timeout=5).status_code == want:
                return others
            others += 1
        except (requests.ConnectionError, requests.Timeout):
            pass
        check(alive(), f"the container exited while waiting for {url}")
        check(time.monotonic() < deadline, f"{url} did not answer {want} in time")
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description="Smoke-test the bird-classifier image.")
    ap.add_argument("--image", default=os.environ.get("IMAGE", "bird-classifier"))
    ap.add_argument("--engine", default=os.environ.get("ENGINE", "podman"))
    ap.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for /readyz")
    ap.add_argument("--build-flags", default=os.environ.get("BUILD_FLAGS", "--pull=never --network host"))
    ap.add_argument("--no-build", action="store_true", help="run an image already built against this stand-in")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tarball = hubmodel.tar_gz(hubmodel.colour_model(Path(tmp) / "birds"))
    cache = tempfile.mkdtemp(prefix="bird-classifier-cache-")
    os.chmod(cache, 0o1777)  # an emptyDir is mode 0777, owned by root
    server = StandInServer().start()
    container = f"bird-classifier-smoke-{os.getpid()}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    timings: dict[str, float] = {}
    try:
        server.add(MODEL_PATH, tarball, "application/x-tar")
        server.add(LABELS_PATH, hubmodel.label_map_csv(), "text/csv")
        urls = [server.add(f"/photos/{k}.jpg", photos.solid(photos.class_colour(k)), "image/jpeg") for k in CLASSES]
        if not args.no_build:
            t = time.monotonic()
            build = subprocess.run([args.engine, "build", *args.build_flags.split(), "-t", args.image,
                                    "--build-arg", f"MODEL_URL={server.url(MODEL_PATH)}",
                                    "--build-arg", f"LABELS_URL={server.url(LABELS_PATH)}", str(ROOT)],
                                   capture_output=True, text=True, timeout=3600)
            check(build.returncode == 0, f"the build failed:\n{(build.stdout + build.stderr)[-3000:]}")
            timings["build_s"] = time.monotonic() - t
            check(server.hits[MODEL_PATH] >= 1, "the build stage did not download the module")
        size = int(engine_run(args.engine, "image", "inspect", args.image, "--format", "{{.Size}}"))
        hits_before_run = (server.hits[MODEL_PATH], server.hits[LABELS_PATH])

        t0 = time.monotonic()
        engine_run(args.engine, "run", "--detach", "--name", container, "--network", "host", *POD_LIKE,
                   "--volume", f"{cache}:{CACHE_DIR}:rw",
                   "-e", f"PORT={port}", "-e", "LOG_LEVEL=INFO",
                   # the photos are on loopback, which the SSRF guard refuses unless trusted
                   "-e", "TRUSTED_HOSTS=127.0.0.1", args.image)
        alive = lambda: running(args.engine, container)  # noqa: E731
        deadline = t0 + args.ready_timeout

        poll(f"{base}/healthz", 200, deadline, alive)
        timings["healthz_200_s"] = time.monotonic() - t0
        not_ready = poll(f"{base}/readyz", 200, deadline, alive)
        timings["readyz_200_s"] = time.monotonic() - t0
        ready = requests.get(f"{base}/readyz", timeout=5).json()
        check(ready["model"].get("runtime") == "litert", f"not served on LiteRT: {ready}")
        check((server.hits[MODEL_PATH], server.hits[LABELS_PATH]) == hits_before_run,
              "the running image fetched the model or the label map: it should carry both")

        for attempt in ("first_post_s", "second_post_s"):
            t = time.monotonic()
            r = requests.post(base, json={"urls": urls, "top_k": 3}, timeout=60)
            timings[attempt] = time.monotonic() - t
            check(r.status_code == 200, f"POST / answered {r.status_code}: {r.text[:500]}")
            results = r.json()["results"]
            check([x["url"] for x in results] == urls, f"results out of order: {results}")
            check([x["error"] for x in results] == [None, None], f"photo errors: {results}")
            top = [x["predictions"][0]["id"] for x in results]
            check(top == list(CLASSES), f"top ids {top}, expected {list(CLASSES)}")
            check(all(len(x["predictions"]) == 3 for x in results), "top_k=3 not honoured")

        uid = engine_run(args.engine, "exec", container, "id", "-u")
        check(uid.isdigit() and uid != "0", f"the container runs as uid {uid!r}")
        no_tf = engine_run(args.engine, "exec", container, "python", "-c",
                           "import importlib.util as u; print(u.find_spec('tensorflow') is None)")
        check(no_tf == "True", "TensorFlow is installed in the serving image")
        # Every module the service imports loads from the bytecode compiled at build: a cold start
        # compiles nothing (the code layer is read-only, so nothing compiled at a start is kept).
        uncompiled = engine_run(args.engine, "exec", container, "python", "-c",
                                "import importlib.util as u, pathlib; print(' '.join(str(p) for p in "
                                "[pathlib.Path('main.py'), pathlib.Path('gunicorn.conf.py'), *pathlib.Path('function')"
                                ".rglob('*.py')] if not pathlib.Path(u.cache_from_source(str(p))).exists()))")
        check(not uncompiled, f"modules without bytecode in the image: {uncompiled}")
        done = subprocess.run([args.engine, "logs", container], capture_output=True, text=True, timeout=60)
        logs = done.stdout + done.stderr  # the function logs JSON lines to stdout, gunicorn to stderr
        errors = [line for line in logs.splitlines() if '"severity": "ERROR"' in line or "[ERROR]" in line]
        check(not errors, "errors in the container log:\n" + "\n".join(errors[:5]))
        # Knative scales down with SIGTERM: gunicorn must get it as PID 1 and exit cleanly, well
        # before the kubelet's grace period would end in a SIGKILL (exit 137).
        t = time.monotonic()
        engine_run(args.engine, "stop", "--time", "20", container)
        timings["stop_s"] = time.monotonic() - t
        exit_code = engine_run(args.engine, "inspect", "--format", "{{.State.ExitCode}}", container)
        check(exit_code == "0" and timings["stop_s"] < 15, f"SIGTERM: exit {exit_code} after {timings['stop_s']:.1f} s")
        report = {"ok": True, "image": args.image, "image_mb": round(size / 1e6), "uid": int(uid),
                  "readyz_503s_seen": not_ready, "runtime": ready["model"]["runtime"],
                  **{k: round(v, 2) for k, v in timings.items()}}
        print(json.dumps(report))
        return 0
    except SmokeFailure as failure:
        logs = engine_run(args.engine, "logs", "--tail", "40", container, check_rc=False)
        print(f"image smoke test FAILED: {failure}\n--- container log (last 40 lines) ---\n{logs}", file=sys.stderr)
        return 1
    finally:
        engine_run(args.engine, "rm", "--force", container, check_rc=False)
        server.stop()
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
