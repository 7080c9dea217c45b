"""What every scenario gets: the settings of the run, the stand-in internet, the fixtures, where
logs and scratch files go, and the environment of the processes it starts."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import FunctionProcess, image_env

from .standin_internet import StandInInternet

PHOTOS_PER_REQUEST = 5
THROUGHPUT_CLIENTS = 8  # the level the throughput target is judged on


@dataclass
class Settings:
    runs: int = 3  # CLI rounds, service cold starts, container runs
    warm_requests: int = 20
    fetch_probes: int = 5  # fetches of each photo alone
    clients: tuple[int, ...] = (1, 4, 8, 16)
    level_seconds: float = 12.0
    level_max_requests: int = 500
    ceiling_seconds: float = 5.0
    memory_load: bool = True  # big-photo requests at 4 and THREADS concurrent, 8 and 64 photos each
    compare_rounds: int = 2  # --compare: passes over the settings (the second in reverse order)
    imports_top: int = 12
    process_timeout_s: float = 300.0
    ready_timeout_s: float = 240.0
    request_timeout_s: float = 120.0


QUICK = replace(Settings(), runs=1, warm_requests=5, fetch_probes=3, clients=(1, THROUGHPUT_CLIENTS),
                level_seconds=4.0, ceiling_seconds=2.0, memory_load=False, compare_rounds=1)


def base_env(net: StandInInternet) -> dict[str, str]:
    """The environment of every process the benchmark starts: the caller's, pointed at the stand-in."""
    drop = {"TFHUB_CACHE_DIR", "MODEL_CACHE_DIR", "FANOUT_URL", "FANOUT_CHUNK", "MODEL_RUNTIME",
            "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"MODEL_URL": net.model_url, "LABELS_URL": net.labels_url, "TF_CPP_MIN_LOG_LEVEL": "3"})
    # The photo hosts are on loopback, which the service's address guard refuses unless trusted
    # (the CLI turns the guard off itself). The stand-in is the only loopback host trusted.
    trusted = [h for h in env.get("TRUSTED_HOSTS", "").split(",") if h.strip()]
    env["TRUSTED_HOSTS"] = ",".join([*trusted, "127.0.0.1"])
    return env


@dataclass
class Bench:
    settings: Settings
    net: StandInInternet
    manifest: dict[str, Any]
    logs: Path
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def fixture(self, relative: str) -> Path:
        return Path(self.manifest["root"]) / relative

    @property
    def tflite_file(self) -> Path:
        return self.fixture(self.manifest["tflite"]["file"])

    @property
    def labels_file(self) -> Path:
        return self.fixture(self.manifest["labels"]["file"])

    @property
    def photo_files(self) -> list[Path]:
        return [self.fixture(p["file"]) for p in self.manifest["photos"]]

    @property
    def photo_urls(self) -> list[str]:
        return self.net.photo_urls

    def fresh_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))

    def image_settings(self) -> dict[str, str]:
        """The image's ENV (WORKERS, THREADS, MALLOC_*), the caller's environment winning."""
        return {**image_env(), **{k: os.environ[k] for k in image_env() if os.environ.get(k)}}

    def service_env(self, cache: Path, **extra: str) -> dict[str, str]:
        """The service as the image runs it: its settings, the .tflite and the label map on local disk
        (the image carries both), an empty model cache; ``extra`` last."""
        return {**self.env, **self.image_settings(), "MODEL_URL": str(self.tflite_file),
                "LABELS_URL": str(self.labels_file), "MODEL_CACHE_DIR": str(cache), "TFHUB_CACHE_DIR": str(cache),
                **extra}

    def tensorflow_env(self, cache: Path) -> dict[str, str]:
        """The same service on ``MODEL_RUNTIME=tensorflow``: the hub module by URL (TensorFlow cannot read
        the .tflite), an empty hub cache."""
        return {**self.env, **self.image_settings(), "MODEL_RUNTIME": "tensorflow", "MODEL_CACHE_DIR": str(cache),
                "TFHUB_CACHE_DIR": str(cache)}

    def service(self, name: str, env: dict[str, str]) -> FunctionProcess:
        """Not started: the caller times the spawn."""
        return FunctionProcess(env, self.logs / f"{name}.log")
