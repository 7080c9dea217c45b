"""The container row: ``podman run`` of the image -> its first five-photo answer.

Run as knative/service.yaml runs it (read-only root, no capabilities, no privilege escalation, an
empty world-writable cache as the emptyDir), on the host network so it reaches the stand-in; the
model is the image's own place (``/opt/bird-classifier``), with the stand-in MobileNet ``.tflite``
and label map mounted there, since an image built against a stand-in hub (``make image-test``)
carries the tiny colour model. Skipped, with the reason, when there is no engine or no image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

import requests

from harness import HOST, free_port, wait_port

from .clients import post
from .context import Bench
from .stats import phase_medians, summary

POD_LIKE = ("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")


def container(b: Bench, image: str | None, engine: str = "podman") -> dict[str, Any]:
    name = image or "bird-classifier"
    if shutil.which(engine) is None:
        return {"skipped": f"{engine} is not installed"}
    exists = subprocess.run([engine, "image", "exists", name], capture_output=True, timeout=60)
    if exists.returncode != 0:
        return {"skipped": f"no image {name!r} (make image, or --image NAME)"}
    inspect = subprocess.run([engine, "image", "inspect", name, "--format", "{{.Size}} {{.Created}}"],
                             capture_output=True, text=True, timeout=60)
    size_b, _, created = inspect.stdout.strip().partition(" ")
    carried = ["--volume", f"{b.tflite_file}:/opt/bird-classifier/model.tflite:ro",
               "--volume", f"{b.labels_file}:/opt/bird-classifier/labels.csv:ro"]
    runs = []
    for i in range(b.settings.runs):
        runs.append(_run(b, engine, name, f"bird-bench-{os.getpid()}-{i}", carried))
        r = runs[-1]
        b.log(f"container {i + 1}/{b.settings.runs}: first answer {r['first_answer_s']:.2f} s after `{engine} run`"
              + ("" if r["ok"] else f" FAILED: {r['error']}"))
    ok = [r for r in runs if r["ok"]]
    return {"image": name, "created": created, "image_mb": round(int(size_b) / 1e6) if size_b.isdigit() else None,
            "first_answer_s": summary([r["first_answer_s"] for r in ok]),
            "port_open_s": summary([r["port_open_s"] for r in ok]), "errors": len(runs) - len(ok),
            "timings_ms": phase_medians(r["timings_ms"] for r in ok), "runs": runs}


def _run(b: Bench, engine: str, image: str, cname: str, extra: list[str]) -> dict[str, Any]:
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
        wait_port(port, b.settings.ready_timeout_s)
        port_s = time.perf_counter() - started
        with requests.Session() as session:
            reply = post(session, f"http://{HOST}:{port}/", b.photo_urls, b.settings.ready_timeout_s)
        first_s = time.perf_counter() - started
        return {"run_returned_s": round(detached_s, 3), "port_open_s": round(port_s, 3),
                "first_answer_s": round(first_s, 3), "ok": reply.ok, "error": reply.error,
                "timings_ms": reply.timings_ms}
    finally:
        logs = subprocess.run([engine, "logs", cname], capture_output=True, text=True, timeout=60)
        with open(b.logs / "container.log", "a") as f:
            f.write(f"--- {cname}\n{logs.stdout}{logs.stderr}")
        subprocess.run([engine, "rm", "--force", cname], capture_output=True, timeout=60)
        shutil.rmtree(cache, ignore_errors=True)
