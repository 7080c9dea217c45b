"""Which runtime serves the model: ``MODEL_URL`` x ``MODEL_RUNTIME``.

* A ``.tflite`` runs on LiteRT (an http(s) one downloaded once into ``MODEL_CACHE_DIR``).
* A TF Hub module or SavedModel, ``auto`` or ``litert``: its cached conversion runs on LiteRT without
  importing TensorFlow; on a miss it is converted once. If that fails, ``auto`` falls back to
  TensorFlow with a WARNING; ``litert`` fails.
* ``convert_in_background`` (the CLI, ``auto``): a one-shot run would wait long for a conversion, so
  a miss answers on TensorFlow and starts a detached converter on idle CPU for the next run. A
  conversion under way is waited for (lent this run's priority) when its announced work left is
  less than a TensorFlow load.
* ``tensorflow``: the reference path, no LiteRT.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import MODEL_RUNTIMES
from ..errors import ModelError, ModelSourceUnavailable, TensorFlowMissing
from ..infra import logs, procs
from . import handles
from .cache import STILL_WRITING, ConvertedCache, fetch_tflite
from .litert import LiteRTModel
from .prefetch import Prefetcher
from .tensorflow import TensorFlowModel

log = logging.getLogger(__name__)
notice = logging.getLogger(logs.NOTICE)  # the one-shot run's choices, shown to the CLI's user

# What a TensorFlow load is expected to take before this cache has timed one (import, resolve, load).
DEFAULT_TENSORFLOW_LOAD_S = 5.0
# How long a run waits for a conversion under way: its announced work left, times this, plus this.
WAIT_SLACK, WAIT_EXTRA_S = 3.0, 10.0


LoadedModel = LiteRTModel | TensorFlowModel


@dataclass(frozen=True)
class ModelSpec:
    """Everything that changes how the model loads (the per-process cache key is built from it)."""

    url: str
    runtime: str  # auto | litert | tensorflow
    cache_dir: str
    intra_op_threads: int = 1  # TensorFlow runtime only; LiteRT interpreters are single-threaded
    inter_op_threads: int = 2
    warmup: bool = True
    tfhub_cache_dir: str | None = None
    quiet: bool = True
    convert_in_background: bool = False
    litert_threads: int = 1


def load(spec: ModelSpec, prefetcher: Prefetcher | None = None, session: Any | None = None) -> LoadedModel:
    """Load the model ``spec`` names on the runtime it asks for (see the module's docstring)."""
    if spec.runtime not in MODEL_RUNTIMES:
        raise ModelError(f"MODEL_RUNTIME must be one of {', '.join(MODEL_RUNTIMES)}, got {spec.runtime!r}")
    if handles.is_tflite(spec.url):
        if spec.runtime == "tensorflow":
            raise ModelError(f"{spec.url} is a .tflite file: it runs on LiteRT (MODEL_RUNTIME=auto or litert), "
                             "not on the TensorFlow runtime")
        return _tflite(spec, session)
    if spec.runtime == "tensorflow":
        return _tensorflow(spec, prefetcher)
    started = time.perf_counter()
    cache = ConvertedCache(spec.cache_dir)
    try:  # a cache that cannot be used is as a failed conversion
        cached = cache.lookup(spec.url)  # hashes the file: once per load
        if cached is not None or spec.runtime != "auto" or not spec.convert_in_background:
            return _converted(spec, cache, cached, started)
    except (ModelError, OSError) as exc:
        if spec.runtime == "litert" or isinstance(exc, (TensorFlowMissing, ModelSourceUnavailable)):
            raise exc if isinstance(exc, ModelError) else ModelError(str(exc)) from exc
        log.warning("serving %s on the TensorFlow runtime: the LiteRT conversion failed (%s)", spec.url, exc,
                    extra=logs.fields(url=spec.url, runtime="tensorflow", fallback_reason=str(exc)))
        return _tensorflow(spec, prefetcher)
    return _one_shot(spec, cache, prefetcher, started)


def _one_shot(spec: ModelSpec, cache: ConvertedCache, prefetcher: Prefetcher | None, started: float) -> LoadedModel:
    """A cache miss in a one-shot run: wait for a conversion under way when that is shorter, else
    answer on TensorFlow (starting the conversion for the next run when none is under way)."""
    under_way = cache.under_way(spec.url)
    tensorflow_s = cache.timing("tensorflow_load_s") or DEFAULT_TENSORFLOW_LOAD_S  # 0: not a figure
    remaining = under_way.remaining_s() if under_way else None
    if under_way is not None and remaining is not None and remaining <= tensorflow_s:
        notice.info("waiting for the LiteRT conversion started by an earlier run (pid %s, %s), ~%.0f s; loading "
                    "TensorFlow here instead would take ~%.0f s", under_way.pid, under_way.phase or "under way",
                    remaining, tensorflow_s,
                    extra=logs.fields(url=spec.url, runtime="litert", waited_for=under_way.pid,
                                      phase=under_way.phase, expected_wait_s=round(remaining, 1),
                                      tensorflow_load_s=tensorflow_s))
        if under_way.pid is not None:
            procs.lend_priority(under_way.pid)  # it is on this run's path now: no longer idle-only
        # Bounded: a converter far slower than it announced (stopped, starved, stuck) is left to finish
        # for the next run, and this run answers on TensorFlow after all.
        path = cache.wait(spec.url, timeout_s=WAIT_SLACK * remaining + WAIT_EXTRA_S)
        if path is not None:
            return _converted(spec, cache, path, started, waited=True)
        ended = "is taking longer than it said" if (cache.last_miss or "").startswith(STILL_WRITING) else \
            "ended without a flatbuffer"
        notice.info("the conversion under way %s (%s); answering on TensorFlow", ended, cache.last_miss,
                    extra=logs.fields(url=spec.url, runtime="tensorflow"))
    elif under_way is not None:
        ends = "at an unknown time" if remaining is None else f"in ~{remaining:.0f} s"
        notice.info("answering on TensorFlow (~%.0f s): the LiteRT conversion under way (pid %s) ends %s",
                    tensorflow_s, under_way.pid, ends, extra=logs.fields(url=spec.url, runtime="tensorflow"))
    else:
        _convert_detached(spec, cache)
    model = _tensorflow(spec, prefetcher)
    cache.record_timing("tensorflow_load_s", time.perf_counter() - started)
    return model


def _tflite(spec: ModelSpec, session: Any | None) -> LiteRTModel:
    started = time.perf_counter()
    try:
        path = fetch_tflite(spec.url, spec.cache_dir, session)  # a local path is used in place
        return _litert(path, spec, started, "model_download")
    except (ModelError, OSError) as exc:
        raise ModelError(f"cannot load the .tflite model {spec.url}: {exc}") from exc


def _converted(spec: ModelSpec, cache: ConvertedCache, path: Path | None, started: float,
               waited: bool = False) -> LiteRTModel:
    """The cached flatbuffer (``path``, already verified), or a conversion now, on LiteRT."""
    converted = path is None
    if path is None:
        from .convert import cached  # TensorFlow, once the conversion starts

        log.info("converting %s to a .tflite for LiteRT (once; cached in %s)", spec.url, cache.root,
                 extra=logs.fields(url=spec.url, reason=cache.last_miss))
        path = cached(cache, spec.url, quiet=spec.quiet)
    key = "conversion" if converted else "conversion_wait" if waited else "cache_lookup"
    return _litert(path, spec, started, key, converted=converted,
                   max_abs_diff_vs_tensorflow=(cache.manifest(spec.url) or {}).get("max_abs_diff"))


def _convert_detached(spec: ModelSpec, cache: ConvertedCache) -> None:
    """Start ``python -m function.model`` on idle CPU, outliving this process, logging to ``convert.log``
    in the cache (two at once are safe: the cache's lock serializes them)."""
    cache.root.mkdir(parents=True, exist_ok=True)
    log_path = cache.root / "convert.log"
    package_root = Path(__file__).resolve().parents[2]
    with open(log_path, "ab") as out:
        command = [sys.executable, "-m", "function.model", spec.url, "--cache-dir", spec.cache_dir, "--idle",
                   "--module-from", str(os.getpid())]  # this run downloads the module: one download, not two
        subprocess.Popen(command, cwd=package_root, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                         start_new_session=True)
    notice.info("answering on TensorFlow this time; converting %s for LiteRT in the background, for the next "
                "run (log: %s)", spec.url, log_path,
                extra=logs.fields(url=spec.url, runtime="tensorflow", cache=str(cache.root)))


def _litert(path: Path, spec: ModelSpec, started: float, timing: str, **fields: Any) -> LiteRTModel:
    """The flatbuffer at ``path`` on LiteRT; ``timing`` names what took the time since ``started``."""
    found = time.perf_counter()
    model = LiteRTModel(path, source=spec.url, threads=spec.litert_threads)
    if spec.warmup:
        model.warmup()
    model.timings_ms = {timing: (found - started) * 1000, **model.timings_ms}
    log.info("model loaded in %.2f s (LiteRT)", time.perf_counter() - started, extra=logs.fields(
        url=spec.url, runtime="litert", classes=model.num_classes, quantized=model.quantized,
        input=dataclasses.asdict(model.input), contract=model.contract.to_dict(),
        timings_ms={k: round(v, 1) for k, v in model.timings_ms.items()}, path=str(path), **fields))
    return model


def _tensorflow(spec: ModelSpec, prefetcher: Prefetcher | None) -> TensorFlowModel:
    return TensorFlowModel.load(spec.url, spec.intra_op_threads, spec.inter_op_threads, spec.warmup,
                                spec.tfhub_cache_dir, prefetcher, spec.quiet)
