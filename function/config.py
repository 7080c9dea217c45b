"""Settings, read once from the environment into one frozen object and passed down.

Nothing else in the package reads ``os.environ`` (tensorflow_hub reads ``TFHUB_CACHE_DIR`` itself).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = ["Config", "ConfigError", "ResultsLocation", "DEFAULT_LABELS_URL", "DEFAULT_MODEL_URL"]

DEFAULT_MODEL_URL = "https://tfhub.dev/google/aiy/vision/classifier/birds_V1/1"
DEFAULT_LABELS_URL = "https://www.gstatic.com/aihub/tfhub/labelmaps/aiy_birds_V1_labelmap.csv"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MODEL_RUNTIMES = ("auto", "litert", "tensorflow")
# The proofs a bucket delivery may carry (function/infra/senders.py), and the settings each needs.
EVENT_PROOFS = {"google": ("event_audiences", "event_service_accounts"), "sns": ("sns_topic_arns",),
                "token": ("event_tokens",), "oidc": ("event_oidc_issuer", "event_oidc_audiences",
                                                     "event_oidc_subjects")}
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
# SigningCertURL of an SNS message: SNS's own regional endpoints only (the China partition too).
SNS_CERT_URL = r"https://sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?/SimpleNotificationService-[A-Za-z0-9]+\.pem"
MIN_EVENT_TOKEN_CHARS = 16
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Where the keys that prove a sender come from: fixed, so no setting can make the function trust another signer.
NOT_FROM_ENV = frozenset({"google_certs_url", "sns_cert_url"})
MAX_PREFIX_BYTES = 256  # of RESULTS_URL's prefix: with a bucket and an object name it must fit a 1024-byte key
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")  # GCS and S3 bucket names, lower case
_CE_NAME = re.compile(r"[a-z0-9]{1,20}")  # CloudEvents extension attribute names


@dataclass(frozen=True)
class ResultsLocation:
    """``RESULTS_URL`` taken apart: the store (``gs`` or ``s3``), the bucket, the prefix ("" or ending in /)."""

    scheme: str
    bucket: str
    prefix: str


@dataclass(frozen=True)
class Config:
    GCS_PUBLIC: ClassVar[str] = "https://storage.googleapis.com"

    model_url: str = DEFAULT_MODEL_URL
    # Empty: the model's own labels, else DEFAULT_LABELS_URL (a SavedModel carries none). Set, it wins.
    labels_url: str = ""
    common_names_url: str = ""  # optional: "Latin name (Common Name)" lines, line i = class i
    # The least score "recognised" when the model gives no threshold; 0: only the background is "not a bird".
    score_threshold: float = 0.0
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
    fetch_workers: int = 32  # I/O-bound threads (docs/performance.md, sweep)
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
    sns_topic_arns: frozenset[str] = frozenset()  # SNS topics whose messages are taken (signatures verified)
    # Who may deliver bucket events (README, "Who may deliver"): the proofs taken, and each proof's settings
    event_auth: tuple[str, ...] = ()  # google, sns, token, oidc; or none (a trusted route); empty: as configured
    event_tokens: tuple[str, ...] = field(default=(), repr=False)  # MinIO auth_token / webhook secrets
    event_audiences: tuple[str, ...] = ()  # Google ID tokens (Pub/Sub push, Eventarc): the accepted `aud`
    event_service_accounts: frozenset[str] = frozenset()  # ...and the senders' service account emails
    event_oidc_issuer: str | None = None  # Knative Eventing OIDC: the cluster's issuer (`iss`)
    event_oidc_audiences: tuple[str, ...] = ()  # ...the accepted `aud` (the sink's audience)
    event_oidc_subjects: frozenset[str] = frozenset()  # ...and the senders allowed (`sub`)
    event_oidc_ca_file: str | None = None  # the CA of the issuer's discovery endpoint (in-cluster: the pod's)
    event_oidc_token_file: str | None = None  # a token sent to the discovery endpoint, if it asks for one
    event_keys_timeout_s: float = 5.0  # fetching Google's certificates, an SNS certificate, the cluster's JWKS
    google_certs_url: str = GOOGLE_CERTS_URL  # not from the environment (NOT_FROM_ENV)
    sns_cert_url: str = SNS_CERT_URL  # a full-match pattern; not from the environment (NOT_FROM_ENV)
    # Results written back (function/infra/stores.py; docs/deploy.md, "Where the results go")
    results_url: str | None = None  # gs://BUCKET/PREFIX/ or s3://BUCKET/PREFIX/: one JSON document per object
    results_metadata: bool = False  # also the top label and score on the photo itself (GCS metadata, S3 tags)
    results_timeout_s: float = 10.0  # one write or event, retries included; then the delivery fails (5xx)
    results_retries: int = 2  # for connection failures, timeouts, 429 and 5xx from the store or the sink
    results_pending: int = 256  # writes and events waiting in memory; past it a delivery is answered 503
    results_workers: int = 8  # writes and events sent at once
    k_sink: str | None = None  # Knative's SinkBinding / ContainerSource: results also go there as CloudEvents
    k_ce_overrides: str | None = None  # Knative's ceOverrides (JSON): extension attributes of those events
    fanout_url: str | None = None  # the Service's own URL: split big requests across instances
    fanout_chunk: int = 10  # the most photos per sub-request when fanning out (the last ones are smaller)
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
    # Per worker, idle ones included (worker_connections); past it a 503. Fits a 1024-descriptor limit.
    max_connections: int = 512
    google_cloud_project: str | None = None  # names the trace in log lines (logging.googleapis.com/trace)
    # Decoding (function/core/decoding.py, costs.py): photos decoded at once share DECODE_MEMORY_MB, each
    # charged from its header; a worker is killed after DECODE_CPU_S of CPU (decode_too_costly).
    decode_memory_mb: int = 1000  # MB (10^6 bytes); in the pod's limit with every other bound (tests/test_knative.py)
    decode_cpu_s: float = 2.0  # above a 64 Mpx progressive CMYK JPEG's, the costliest legitimate
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
            if f.name in NOT_FROM_ENV:
                continue
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
                    "max_connections", "event_keys_timeout_s", "litert_threads", "max_batch_images",
                    "decode_memory_mb", "decode_cpu_s", "max_jpeg_scans", "results_timeout_s",
                    "results_pending", "results_workers"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be positive, got {getattr(self, name)!r}")
        non_negative = ("fetch_retries", "fetch_per_request", "model_load_retry_s", "batch_wait_ms",
                        "tf_intra_op_threads", "tf_inter_op_threads", "inference_workers", "decode_workers",
                        "results_retries")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.upper()} must not be negative")
        choices = {"log_level": LOG_LEVELS, "model_runtime": MODEL_RUNTIMES,
                   "storage_credentials": ("auto", "anonymous")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name.upper()} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.max_connections <= self.threads:  # gunicorn keeps alive at most MAX_CONNECTIONS - THREADS
            raise ConfigError(f"MAX_CONNECTIONS ({self.max_connections}) must exceed THREADS ({self.threads})")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ConfigError(f"SCORE_THRESHOLD must be in [0, 1), got {self.score_threshold!r}")
        if self.top_k > self.max_top_k:
            raise ConfigError(f"TOP_K ({self.top_k}) must not exceed MAX_TOP_K ({self.max_top_k})")
        if self.decode_memory_mb < 64:
            raise ConfigError(f"DECODE_MEMORY_MB must be at least 64 (each decode is charged 16 MiB of working "
                              f"memory besides its pixels), got {self.decode_memory_mb}")
        if not self.photo_formats:
            raise ConfigError("PHOTO_FORMATS must name at least one format")
        for name in ("gcs_endpoint", "s3_endpoint"):
            value = getattr(self, name)
            if value and urlsplit(value).scheme not in ("http", "https"):
                raise ConfigError(f"{name.upper()} must be an http(s) URL, got {value!r}")
        if self.results_metadata and not self.results_url:
            raise ConfigError("RESULTS_METADATA=true needs RESULTS_URL: the documents are the record the labels "
                              "on the photos summarise")
        self.results_location()
        sink = urlsplit(self.k_sink or "")
        if self.k_sink and (sink.scheme not in ("http", "https") or not sink.hostname):
            raise ConfigError(f"K_SINK must be an http(s) URL, got {self.k_sink!r}")
        self.ce_extensions()
        bad = sorted(a for a in self.sns_topic_arns if not a.startswith("arn:aws") or a.count(":") != 5)
        if bad:
            raise ConfigError(f"SNS_TOPIC_ARNS holds {bad[0]!r}, not a topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")
        self._validate_event_auth()

    def _validate_event_auth(self) -> None:
        listed = set(self.event_auth)
        if "none" in listed and len(listed) > 1:
            raise ConfigError("EVENT_AUTH=none declares the route trusted; it cannot be listed with proofs")
        unknown = sorted(listed - {"none", *EVENT_PROOFS})
        if unknown:
            raise ConfigError(f"EVENT_AUTH names {unknown[0]!r}; expected none or some of {', '.join(EVENT_PROOFS)}")
        for proof in listed - {"none"}:
            missing = [name.upper() for name in EVENT_PROOFS[proof] if not getattr(self, name)]
            if missing:
                raise ConfigError(f"EVENT_AUTH takes {proof} proofs, which need {' and '.join(missing)}")
        if any(len(token) < MIN_EVENT_TOKEN_CHARS for token in self.event_tokens):
            raise ConfigError(f"each EVENT_TOKENS secret must be at least {MIN_EVENT_TOKEN_CHARS} characters "
                              "(e.g. openssl rand -hex 32)")
        issuer = urlsplit(self.event_oidc_issuer or "https://")
        # Plain HTTP only on loopback, where the keys cross no network (a local issuer, the tests' stand-in).
        if issuer.scheme != "https" and not (issuer.scheme == "http" and issuer.hostname in _LOOPBACK):
            raise ConfigError(f"EVENT_OIDC_ISSUER must be an https URL, got {self.event_oidc_issuer!r}")
        if any("@" not in account for account in self.event_service_accounts):
            raise ConfigError("EVENT_SERVICE_ACCOUNTS lists service account emails "
                              "(NAME@PROJECT.iam.gserviceaccount.com)")

    def event_proofs(self) -> tuple[str, ...]:
        """The proofs a delivery may carry: those ``EVENT_AUTH`` lists, else every one whose settings are
        given; none at all refuses every delivery. ``("none",)``: the route is declared trusted."""
        if self.event_auth:
            return tuple(sorted(set(self.event_auth)))
        return tuple(p for p, names in EVENT_PROOFS.items() if all(getattr(self, n) for n in names))

    def results_location(self) -> ResultsLocation | None:
        """Where results go (``RESULTS_URL``), checked; None when they are not written."""
        if not self.results_url:
            return None
        parts = urlsplit(self.results_url)
        prefix = parts.path.lstrip("/")
        if parts.scheme not in ("gs", "s3") or not _BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc \
                or parts.query or parts.fragment:
            raise ConfigError(f"RESULTS_URL must be gs://BUCKET/PREFIX/ or s3://BUCKET/PREFIX/, got "
                              f"{self.results_url!r}")
        if prefix and not prefix.endswith("/"):
            prefix += "/"  # a folder: <prefix><bucket>/<object>.json, never <prefix><bucket> run together
        if any(s in (".", "..") or not s for s in prefix.split("/")[:-1]) or len(prefix.encode()) > MAX_PREFIX_BYTES:
            raise ConfigError(f"RESULTS_URL's prefix {prefix!r} has an empty, '.' or '..' segment, or is over "
                              f"{MAX_PREFIX_BYTES} bytes")
        return ResultsLocation(parts.scheme, parts.netloc, prefix)

    def ce_extensions(self) -> dict[str, str]:
        """``K_CE_OVERRIDES``' extension attributes (``{"extensions": {"name": "value"}}``), checked."""
        if not self.k_ce_overrides:
            return {}
        try:
            doc = json.loads(self.k_ce_overrides)
        except ValueError:
            raise ConfigError("K_CE_OVERRIDES must be JSON: {\"extensions\": {\"name\": \"value\"}}") from None
        extensions = doc.get("extensions") if isinstance(doc, dict) else None
        if not isinstance(extensions, dict) or not all(
                isinstance(k, str) and _CE_NAME.fullmatch(k) and isinstance(v, str) for k, v in extensions.items()):
            raise ConfigError("K_CE_OVERRIDES must hold {\"extensions\": {NAME: VALUE}} with names of lower-case "
                              "letters and digits and string values")
        return dict(extensions)

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
    """Set ``TF_CPP_MIN_LOG_LEVEL`` (read once, at TensorFlow's import) unless the operator set it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if quiet else "0")


_FOLDED = {"PHOTO_FORMATS": str.upper, "LOG_LEVEL": str.upper, "EVENT_AUTH": str.lower, "MODEL_RUNTIME": str.lower}


def _parse(name: str, raw: str, default: object) -> object:
    raw = _FOLDED.get(name, str)(raw)
    if isinstance(default, (tuple, frozenset)):  # a comma-separated list
        return type(default)(item.strip() for item in raw.split(",") if item.strip())
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
