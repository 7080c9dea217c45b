"""The benchmark's stand-in internet: a model hub, the label-map host and five photo hosts on 127.0.0.1.

Two halves:

* **fixtures**, generated once and cached outside the repository (``~/.cache/bird-bench`` or
  ``BENCH_CACHE_DIR``): a MobileNetV2-sized TF1 Hub module (random weights, 965 classes, ~14 MB
  ``saved_model.pb``, ~12.6 MB as tar.gz), the label map CSV and five photo-like JPEGs at the sizes
  of the five default photos' originals;
* **the server**, run as its own process (``python -m bench.standin_internet serve``) so that its
  threads do not share a GIL with the benchmark's clients, with a per-request latency and a
  per-connection bandwidth. It prints one JSON line with its URLs, then serves until its standard
  input closes (the benchmark exits) or its lifetime runs out.

``python -m bench.standin_internet prepare`` builds the fixtures (TensorFlow is imported only
then) and prints the manifest; the benchmark runs it as a subprocess, so its own process never
imports TensorFlow.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Bump when a generator or a spec below changes: the cache is keyed by it.
FIXTURES_VERSION = 2
MODEL_PATH = "/google/aiy/vision/classifier/birds_V1/1"
# The same module converted to a float32 .tflite, served as a file: what the LiteRT
# service fetches by URL.
TFLITE_PATH = "/models/birds_V1_mobilenet_v2_float32.tflite"
LABELS_PATH = "/aihub/tfhub/labelmaps/aiy_birds_V1_labelmap.csv"
STATS_PATH = "/__stats"
PHOTO_MIN_BYTES, PHOTO_MAX_BYTES = 100_000, 2_500_000
MODEL_PB_RANGE = (12_000_000, 16_500_000)  # the real birds_V1 saved_model.pb is ~14 MB
MODEL_TGZ_RANGE = (11_000_000, 14_000_000)  # ... and ~12-13 MB as tar.gz


@dataclass(frozen=True)
class PhotoSpec:
    """One stand-in photo: the size of a default photo's original, and a starting JPEG quality."""

    name: str
    width: int
    height: int
    quality: int
    seed: int

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.width}x{self.height}.jpg"


# The five default photos, in the CLI's order: cormorant, crested lark, motmot, toucanet, robin.
PHOTOS = (
    PhotoSpec("cormorant", 4000, 2667, 85, 1),
    PhotoSpec("crested-lark", 1000, 667, 90, 2),
    PhotoSpec("motmot", 2400, 1600, 90, 3),
    PhotoSpec("toucanet", 1200, 1500, 90, 4),
    PhotoSpec("robin", 1600, 1067, 90, 5),
)


def cache_root(override: str | None = None) -> Path:
    base = override or os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "bird-bench"
    return Path(base).expanduser()


def fixtures_dir(root: Path) -> Path:
    return root / f"fixtures-v{FIXTURES_VERSION}"


# -- fixtures ---------------------------------------------------------------------------------
def prepare(root: Path, log=print) -> dict[str, Any]:
    """Generate whatever is missing under ``root`` and return the manifest (idempotent)."""
    from standin import hubmodel
    from standin import photos as standin_photos

    out = fixtures_dir(root)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if "tflite" not in manifest:  # fixtures made before the LiteRT runtime: add the flatbuffer only
            manifest["tflite"] = convert_tflite(out, log)
            manifest_path.write_text(json.dumps(manifest, indent=2))
        return manifest
    out.mkdir(parents=True, exist_ok=True)

    module_dir = out / "model"
    if not (module_dir / "saved_model.pb").exists():
        log("generating the MobileNetV2-sized hub module (once; ~20 s)...")
        shutil.rmtree(module_dir, ignore_errors=True)
        tmp = out / "model.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        hubmodel.mobilenet_model(tmp)
        tmp.rename(module_dir)
    tarball = hubmodel.tar_gz(module_dir)
    (out / "model.tar.gz").write_bytes(tarball)
    (out / "labels.csv").write_text(hubmodel.label_map_csv())

    photos_dir = out / "photos"
    photos_dir.mkdir(exist_ok=True)
    photo_entries = []
    for spec in PHOTOS:
        log(f"generating photo {spec.filename}...")
        data, quality = _photo_in_range(standin_photos.photo_like, spec)
        (photos_dir / spec.filename).write_bytes(data)
        photo_entries.append({"name": spec.name, "file": f"photos/{spec.filename}", "width": spec.width,
                              "height": spec.height, "quality": quality, "bytes": len(data)})

    pb_bytes = (module_dir / "saved_model.pb").stat().st_size
    manifest = {
        "version": FIXTURES_VERSION,
        "model": {"dir": "model", "tar_gz": "model.tar.gz", "saved_model_pb_bytes": pb_bytes,
                  "tar_gz_bytes": len(tarball), "sha256": hashlib.sha256(tarball).hexdigest()[:16],
                  "classes": hubmodel.NUM_CLASSES},
        "labels": {"file": "labels.csv", "bytes": (out / "labels.csv").stat().st_size},
        "photos": photo_entries,
    }
    manifest["tflite"] = convert_tflite(out, log)
    manifest["warnings"] = check(manifest)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


def convert_tflite(out: Path, log=print) -> dict[str, Any]:
    """The hub module converted once with the function's own converter (float32, checked against
    TensorFlow's scores), written to ``model.tflite`` beside it."""
    from function.model import convert as conv

    log("converting the hub module to a float32 .tflite (once; ~10 s)...")
    target = out / "model.tflite"
    done = conv.convert(str(out / "model"), out / "model.tflite.partial")
    (out / "model.tflite.partial").rename(target)
    return {"file": "model.tflite", "bytes": target.stat().st_size, "max_abs_diff": done.max_abs_diff,
            "conversion_s": round(done.seconds, 2),
            "sha256": hashlib.sha256(target.read_bytes()).hexdigest()[:16]}


def _photo_in_range(photo_like, spec: PhotoSpec) -> tuple[bytes, int]:
    """A photo-like JPEG of the spec's size, its quality stepped until it lands in 0.1-2.5 MB."""
    quality = spec.quality
    data = b""
    for _ in range(8):  # bounded: a few quality steps are always enough
        data = photo_like(spec.width, spec.height, seed=spec.seed, quality=quality)
        if len(data) > PHOTO_MAX_BYTES and quality > 40:
            quality -= 7
        elif len(data) < PHOTO_MIN_BYTES and quality < 97:
            quality = min(97, quality + 4)
        else:
            break
    return data, quality


def check(manifest: dict[str, Any]) -> list[str]:
    """Ways the fixtures differ from what the benchmark's stand-in should be (reported, not fatal)."""
    problems = []
    m = manifest["model"]
    if not MODEL_PB_RANGE[0] <= m["saved_model_pb_bytes"] <= MODEL_PB_RANGE[1]:
        problems.append(f"saved_model.pb is {m['saved_model_pb_bytes']} bytes, not ~14 MB")
    if not MODEL_TGZ_RANGE[0] <= m["tar_gz_bytes"] <= MODEL_TGZ_RANGE[1]:
        problems.append(f"model tar.gz is {m['tar_gz_bytes']} bytes, not ~12-13 MB")
    for p in manifest["photos"]:
        if not PHOTO_MIN_BYTES <= p["bytes"] <= PHOTO_MAX_BYTES:
            problems.append(f"photo {p['file']} is {p['bytes']} bytes, outside 0.1-2.5 MB")
    return problems


# -- the server process -----------------------------------------------------------------------
def serve(root: Path, latency_s: float, bandwidth_bps: float | None, lifetime_s: float) -> int:
    """Serve the fixtures until stdin closes or ``lifetime_s`` passes; print the URLs first."""
    from standin.server import Reply, StandInServer

    out = fixtures_dir(root)
    manifest = json.loads((out / "manifest.json").read_text())
    server = StandInServer(latency_s=latency_s, bandwidth_bps=bandwidth_bps)

    def stats(_req) -> Reply:
        with server._lock:
            hits = dict(server.hits)
        return Reply(json.dumps(hits).encode(), 200, "application/json")

    with server:
        server.add(MODEL_PATH, (out / manifest["model"]["tar_gz"]).read_bytes(), "application/x-tar")
        server.add(LABELS_PATH, (out / manifest["labels"]["file"]).read_text(), "text/csv")
        tflite_url = None
        if "tflite" in manifest:
            tflite_url = server.url(TFLITE_PATH)
            server.add(TFLITE_PATH, (out / manifest["tflite"]["file"]).read_bytes(), "application/octet-stream")
        server.add(STATS_PATH, stats)
        photo_urls = []
        for p in manifest["photos"]:
            path = "/photos/" + Path(p["file"]).name
            photo_urls.append(server.add(path, (out / p["file"]).read_bytes(), "image/jpeg"))
        print(json.dumps({"base": server.url(""), "model_url": server.url(MODEL_PATH),
                          "labels_url": server.url(LABELS_PATH), "tflite_url": tflite_url,
                          "stats_url": server.url(STATS_PATH),
                          "photo_urls": photo_urls, "pid": os.getpid()}), flush=True)
        closed = threading.Event()

        def watch_stdin() -> None:
            try:
                sys.stdin.read()
            finally:
                closed.set()

        threading.Thread(target=watch_stdin, daemon=True).start()
        closed.wait(lifetime_s)
    return 0


class StandInInternet:
    """The parent's handle on the server process: ``with StandInInternet(...) as net: net.photo_urls``."""

    def __init__(self, root: Path, latency_s: float, bandwidth_bps: float | None, log_path: Path,
                 lifetime_s: float = 3600.0, start_timeout_s: float = 60.0):
        self.root, self.latency_s, self.bandwidth_bps = root, latency_s, bandwidth_bps
        self.log_path, self.lifetime_s, self.start_timeout_s = log_path, lifetime_s, start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> StandInInternet:
        cmd = [sys.executable, "-m", "bench.standin_internet", "serve", "--cache-dir", str(self.root),
               "--latency-ms", str(self.latency_s * 1000),
               "--bandwidth-mbps", str((self.bandwidth_bps or 0) / 1e6), "--lifetime-s", str(self.lifetime_s)]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.start_timeout_s)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError(f"the stand-in internet did not start; see {self.log_path}")
        self.info = json.loads(line)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
        self._log.close()

    def __enter__(self) -> StandInInternet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.info["pid"]

    @property
    def model_url(self) -> str:
        return self.info["model_url"]

    @property
    def tflite_url(self) -> str:
        if not self.info.get("tflite_url"):
            raise RuntimeError("the fixtures have no converted .tflite (run prepare)")
        return self.info["tflite_url"]

    @property
    def labels_url(self) -> str:
        return self.info["labels_url"]

    @property
    def photo_urls(self) -> list[str]:
        return list(self.info["photo_urls"])

    def hits(self) -> dict[str, int]:
        """Requests served so far, by path (the stats request itself included)."""
        with urllib.request.urlopen(self.info["stats_url"], timeout=10) as r:
            return json.loads(r.read())

    def model_downloads(self) -> int:
        return self.hits().get(MODEL_PATH, 0)

    def tflite_downloads(self) -> int:
        return self.hits().get(TFLITE_PATH, 0)


def run_prepare(root: Path, log_path: Path, timeout_s: float = 600.0) -> dict[str, Any]:
    """Build the fixtures in a subprocess (it imports TensorFlow; the benchmark process does not)."""
    with open(log_path, "ab") as log:
        done = subprocess.run([sys.executable, "-m", "bench.standin_internet", "prepare", "--cache-dir",
                               str(root)], cwd=ROOT, stdout=subprocess.PIPE, stderr=log, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"generating the fixtures failed (exit {done.returncode}); see {log_path}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.standin_internet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["prepare", "serve"])
    parser.add_argument("--cache-dir", default=None, help="default: BENCH_CACHE_DIR or ~/.cache/bird-bench")
    parser.add_argument("--latency-ms", type=float, default=80.0)
    parser.add_argument("--bandwidth-mbps", type=float, default=16.0, help="MB/s per connection; 0 = unlimited")
    parser.add_argument("--lifetime-s", type=float, default=3600.0)
    args = parser.parse_args(argv)
    root = cache_root(args.cache_dir)
    if args.command == "prepare":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        started = time.perf_counter()
        manifest = prepare(root, log=lambda m: print(m, file=sys.stderr, flush=True))
        print(json.dumps({**manifest, "root": str(fixtures_dir(root)),
                          "prepare_s": round(time.perf_counter() - started, 2)}))
        return 0
    return serve(root, args.latency_ms / 1000, args.bandwidth_mbps * 1e6 or None, args.lifetime_s)


if __name__ == "__main__":
    sys.exit(main())
