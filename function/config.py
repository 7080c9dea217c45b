"""Settings, read once from the environment into one frozen object and passed down.

Nothing else in the package reads ``os.environ``. ``TFHUB_CACHE_DIR`` keeps its tensorflow_hub
meaning (tensorflow_hub reads it itself); it is read here too, to know whether the model is cached.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import ClassVar
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = ["Config", "ConfigError", "DEFAULT_LABELS_URL", "DEFAULT_MODEL_URL"]

DEFAULT_MODEL_URL = "https://tfhub.dev/google/aiy/vision/classifier/birds_V1/1"
DEFAULT_LABELS_URL = "https://www.gstatic.com/aihub/tfhub/labelmaps/aiy_birds_V1_labelmap.csv"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MODEL_RUNTIMES = ("auto", "litert", "tensorflow")


@dataclass(frozen=True)
class Config:
    GCS_PUBLIC: ClassVar[str] = "https://storage.googleapis.com"

    model_url: str = DEFAULT_MODEL_URL
    labels_url: str = DEFAULT_LABELS_URL
    top_k: int = 3
    max_top_k: int = 20
    log_level: str = "INFO"
    # Photo fetching
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    max_photo_bytes: int = 25 * 1024 * 1024
    max_photo_pixels: int = 64_000_000
    # Formats decoded (Pillow's names; HEIF and AVIF only where their plugin is installed)
    photo_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
    fetch_workers: int = 32  # I/O-bound threads; 32 beat 16 by ~18 % at 8 clients (docs/performance.md, sweep)
    fetch_per_request: int = 0  # photos one request may fetch at once (0: max(1, FETCH_WORKERS // THREADS))
    max_urls: int = 64
    max_request_bytes: int = 1024 * 1024  # JSON request bodies (uploads have their own limit)
    max_upload_bytes: int = 64 * 1024 * 1024  # a whole upload request (multipart or image/*)
    request_deadline_s: float = 60.0  # photos not fetched by then fail with deadline_exceeded
    photo_deadline_s: float = 30.0  # total time for one photo's fetch, retries included
    fetch_retries: int = 2  # for connection resets, 429, 502, 503, 504
    ssrf_guard: bool = True  # refuse private/loopback/link-local addresses (the CLI turns it off)
    trusted_hosts: tuple[str, ...] = ()  # names, IPs or CIDRs exempt from the guard (comma-separated)
    user_agent: str = "bird-classifier/1.0 (+https://github.com/; photo classification)"
    # Model and label map loading
    model_runtime: str = "auto"  # auto | litert | tensorflow (function/model/loader.py)
    model_cache_dir: str = ""  # converted/downloaded .tflite files; default: see default_model_cache_dir
    model_load_retry_s: float = 10.0
    tfhub_cache_dir: str | None = None  # tensorflow_hub reads it too; here only to skip a prefetch
    warmup: bool = True  # one model call after loading, before readiness (the CLI skips it)
    model_wait_s: float = 300.0  # how long a request waits for a loading model before a 503
    labels_timeout_s: float = 30.0
    # Bucket objects (docs/deploy.md, "Bucket access and notifications")
    storage_emulator_host: str | None = None  # read anonymously, as Google's clients do
    gcs_endpoint: str | None = None  # Cloud Storage somewhere else (Private Service Connect...), JSON API
    s3_endpoint: str | None = None  # e.g. http://minio.storage:9000 for MinIO notifications (path-style)
    storage_credentials: str = "auto"  # auto: ADC / the AWS chain, anonymous if none; anonymous: never look
    sns_topic_arns: frozenset[str] = frozenset()  # SNS topics whose SubscriptionConfirmation is confirmed
    fanout_url: str | None = None  # the Service's own URL: split big requests across instances
    fanout_chunk: int = 8  # the most photos per sub-request when fanning out (the last ones are smaller)
    fanout_inflight: int = 4  # sub-requests out at once per fanned-out request (about 2 per other instance)
    fanout_timeout_s: float = 120.0
    k_service: str = "bird-classifier"  # Knative sets K_SERVICE; names the source of reply events
    # Inference: TensorFlow thread pools (0 = sized to the CPU this process may use) and batching
    tf_intra_op_threads: int = 0
    tf_inter_op_threads: int = 0
    inference_workers: int = 0  # parallel model calls (0 = one per usable CPU beyond the first, at least one)
    max_batch_images: int = 2  # images per model call (TensorFlow: small calls fastest; LiteRT: 1-8 equal)
    litert_threads: int = 1  # threads of each LiteRT interpreter (XNNPACK's pool)
    batch_wait_ms: float = 0.0
    # The HTTP server (gunicorn.conf.py, function/infra/server.py) and the bounds on every request
    workers: int = 1  # gunicorn worker processes (functions-framework's WORKERS)
    threads: int = 8  # request threads per worker = containerConcurrency (docs/performance.md: 8 beat 4 and 16)
    max_query_bytes: int = 4096  # a longer query string is 414 (gunicorn refuses a request line past 8190)
    header_timeout_s: float = 10.0  # request headers not complete by then: the connection is dropped
    body_timeout_s: float = 60.0  # a request body not in by then (after its headers): 408
    # Connections per worker, idle ones included (gunicorn's worker_connections); past it, a 503 at
    # once. Far above what the queue-proxy opens; 512 sockets fit a 1024-descriptor limit with room.
    max_connections: int = 512
    google_cloud_project: str | None = None  # names the trace in log lines (logging.googleapis.com/trace)
    # Decoding costs (function/core/decoding.py; the cost model per format: function/core/costs.py).
    # Each photo is charged, from its header, what its decoder will hold; the photos being decoded at
    # once share DECODE_MEMORY_MB (one bigger than that is refused). Each is decoded in a worker
    # process limited to its charge and killed after DECODE_CPU_S of CPU (decode_too_costly).
    decode_memory_mb: int = 1000  # MB (10^6 bytes); in the pod's limit with every other bound (tests/test_knative.py)
    decode_cpu_s: float = 2.0  # a 64 Mpx progressive CMYK JPEG, the costliest legitimate photo measured: 0.9 s
    decode_workers: int = 0  # worker processes (0: one per usable CPU, plus one kept for small photos)
    decode_in_process: bool = False  # decode on the request threads: the memory budget, no CPU bound
    max_jpeg_scans: int = 256  # more is refused unread (libjpeg's own scripts write <= 10; nvImageCodec's limit)

    def __post_init__(self) -> None:
        if not self.model_cache_dir:  # a Config built in code: the temp dir, as tensorflow_hub does
            object.__setattr__(self, "model_cache_dir", os.path.join(tempfile.gettempdir(), "bird-classifier"))
        # A list given as one comma-separated string (as the environment spells it) is split here too.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, (tuple, frozenset)) and isinstance(value, str):
                object.__setattr__(self, f.name, _parse(f.name.upper(), value, f.default))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build the settings from environment variables named like the fields, upper-cased."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.name.upper()
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(name, raw.strip(), f.default)
        if "model_cache_dir" not in values:
            values["model_cache_dir"] = default_model_cache_dir(env)
        config = cls(**values)  # type: ignore[arg-type]  # each value was parsed to its field's type
        config.validate()
        return config

    def validate(self) -> None:
        positive = ["top_k", "max_top_k", "connect_timeout_s", "read_timeout_s", "max_photo_bytes",
                    "max_photo_pixels", "fetch_workers", "max_urls", "labels_timeout_s",
                    "model_wait_s", "fanout_chunk", "fanout_inflight", "fanout_timeout_s",
                    "max_request_bytes", "max_upload_bytes", "request_deadline_s", "photo_deadline_s",
                    "workers", "threads", "max_query_bytes", "header_timeout_s", "body_timeout_s",
                    "max_connections"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be positive, got {getattr(self, name)!r}")
        if self.max_connections <= self.threads:  # gunicorn keeps alive at most MAX_CONNECTIONS - THREADS
            raise ConfigError(f"MAX_CONNECTIONS ({self.max_connections}) must exceed THREADS ({self.threads})")
        if self.top_k > self.max_top_k:
            raise ConfigError(f"TOP_K ({self.top_k}) must not exceed MAX_TOP_K ({self.max_top_k})")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.litert_threads <= 0:
            raise ConfigError("LITERT_THREADS must be positive")
        non_negative = ("fetch_retries", "fetch_per_request", "model_load_retry_s", "batch_wait_ms",
                        "tf_intra_op_threads", "tf_inter_op_threads", "inference_workers")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.upper()} must not be negative")
        self._validate_decoding()
        if not self.photo_formats:
            raise ConfigError("PHOTO_FORMATS must name at least one format")
        if self.max_batch_images <= 0:
            raise ConfigError("MAX_BATCH_IMAGES must be positive")
        if self.model_runtime not in MODEL_RUNTIMES:
            raise ConfigError(f"MODEL_RUNTIME must be one of {', '.join(MODEL_RUNTIMES)}, got {self.model_runtime!r}")
        if self.storage_credentials not in ("auto", "anonymous"):
            raise ConfigError(f"STORAGE_CREDENTIALS must be auto or anonymous, got {self.storage_credentials!r}")
        for name in ("gcs_endpoint", "s3_endpoint"):
            value = getattr(self, name)
            if value and urlsplit(value).scheme not in ("http", "https"):
                raise ConfigError(f"{name.upper()} must be an http(s) URL, got {value!r}")
        bad = sorted(a for a in self.sns_topic_arns if not a.startswith("arn:aws") or a.count(":") != 5)
        if bad:
            raise ConfigError(f"SNS_TOPIC_ARNS holds {bad[0]!r}, not a topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")

    def _validate_decoding(self) -> None:
        for name in ("decode_memory_mb", "decode_cpu_s", "max_jpeg_scans"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be positive, got {getattr(self, name)!r}")
        if self.decode_workers < 0:
            raise ConfigError("DECODE_WORKERS must not be negative (0: one per usable CPU, plus one)")
        if self.decode_memory_mb < 64:
            raise ConfigError(f"DECODE_MEMORY_MB must be at least 64 (each decode is charged 16 MiB of working "
                              f"memory besides its pixels), got {self.decode_memory_mb}")

    def gcs_base_url(self) -> str:
        """Where Cloud Storage's JSON API is: ``GCS_ENDPOINT``, else Google's public endpoint."""
        return self.gcs_endpoint or self.GCS_PUBLIC

    def storage_hosts(self) -> list[str]:
        """The hosts of the configured object stores: trusted, unlike the hosts of callers' URLs."""
        hosts = []
        for endpoint in (self.storage_emulator_host, self.gcs_endpoint, self.s3_endpoint):
            if endpoint:
                host = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}").hostname
                hosts += [host] if host else []
        return hosts


def default_model_cache_dir(env: Mapping[str, str]) -> str:
    """``TFHUB_CACHE_DIR`` when set (one cache volume for both), else the user's cache directory."""
    if env.get("TFHUB_CACHE_DIR", "").strip():
        return env["TFHUB_CACHE_DIR"].strip()
    home = env.get("HOME", "").strip() or os.path.expanduser("~")
    base = env.get("XDG_CACHE_HOME", "").strip() or os.path.join(home, ".cache")
    return os.path.join(base, "bird-classifier")


def quiet_tensorflow(quiet: bool) -> None:
    """Set ``TF_CPP_MIN_LOG_LEVEL`` for TensorFlow's C++ logging, which reads it once, at its import.

    A value the operator set wins. This is the one place besides :meth:`Config.from_env` that
    touches the environment: TensorFlow's native code takes this setting from nowhere else.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if quiet else "0")


def _parse(name: str, raw: str, default: object) -> object:
    if isinstance(default, (tuple, frozenset)):  # a comma-separated list
        items = [item.strip() for item in raw.split(",") if item.strip()]
        if name == "PHOTO_FORMATS":
            items = [item.upper() for item in items]
        return type(default)(items)
    if name in ("LOG_LEVEL",):
        return raw.upper()
    if name == "MODEL_RUNTIME":
        return raw.lower()
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            value = float(raw)
            if not math.isfinite(value):  # nan passes every comparison; inf overflows timeouts
                raise ValueError(raw)
            return value
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    return raw
