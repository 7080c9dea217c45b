"""TensorFlow as the model's source: a TF Hub module converted once to a float32 ``.tflite``, cached.

``tensorflow_hub.resolve`` downloads and unpacks the module through its own cache
(``TFHUB_CACHE_DIR``), as the TensorFlow runtime does. ``tf.lite.TFLiteConverter.from_saved_model``
converts the signature the TensorFlow runtime would serve (``default`` for a TF1 Hub module, whose
meta graph has the empty tag set; ``serving_default`` for a TF2 SavedModel), without quantization,
and the result is checked against TensorFlow on a few fixed inputs; the largest difference goes
into the manifest.

The cache keeps ``<cache_dir>/litert/<sha256 of the handle>/model.tflite`` beside a
``manifest.json`` (source, sha256, size, versions, the measured difference). Files are written to a
temporary name in the same directory and moved into place with ``os.replace``, the manifest last,
so a crash leaves either the old entry, no entry, or the new one, never half a file. ``lookup``
hashes the file against the manifest, so a corrupt or truncated file is a miss (and is removed).
Writers hold an ``fcntl.flock`` on the entry's ``lock`` file: a second process converting the same
handle waits and then finds the first one's result.

Only the conversion imports TensorFlow, inside its functions: ``lookup``, ``fetch_tflite`` and
``is_tflite_handle`` do not, so a serving process with a cached flatbuffer never loads it.

    python -m function.model.convert [HANDLE] [--out PATH] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import default_model_cache_dir

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

BIRDS_URL = "https://tfhub.dev/google/aiy/vision/classifier/birds_V1/1"
SIGNATURE_PREFERENCE = ("default", "serving_default")
MANIFEST_VERSION = 1
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = "lock"
IMAGE_SIZE = 224
# Largest TF-vs-LiteRT difference in the scores accepted at conversion time. Float32 conversions of
# the stand-in models agree to ~1e-7; a difference past this means the conversion changed the maths.
MAX_ABS_DIFF = 1e-4


class ConversionError(RuntimeError):
    """The handle could not be turned into a usable ``.tflite`` (the message says why).

    ``output`` holds the tail of what TensorFlow printed while it was held back, if anything.
    """

    output: str = ""


class TensorFlowMissingError(ConversionError):
    """Converting needs TensorFlow and tensorflow_hub, and this environment does not have them."""


class SourceUnavailableError(ConversionError):
    """The module could not be downloaded (or found): nothing was tried to convert, so no other
    runtime would do better; the load is retried after the back-off like any failed download."""


class CacheError(RuntimeError):
    """The cache directory cannot be used, or a download for it failed."""


def default_cache_dir(environ: Mapping[str, str]) -> str:
    """``MODEL_CACHE_DIR``, else the configuration's default (``TFHUB_CACHE_DIR``, else the user's cache)."""
    return (environ.get("MODEL_CACHE_DIR") or "").strip() or default_model_cache_dir(environ)


def is_tflite_handle(handle: str) -> bool:
    """Whether ``handle`` names a ``.tflite`` file rather than a TF Hub module or SavedModel.

    A local path or ``file://`` URL ending in ``.tflite``; an http(s) URL whose path ends in
    ``.tflite`` or whose query asks for ``lite-format=tflite`` (how TF Hub serves its lite models).
    """
    parsed = urllib.parse.urlsplit(handle)
    if parsed.scheme in ("http", "https"):
        query = urllib.parse.parse_qs(parsed.query)
        return parsed.path.lower().endswith(".tflite") or "tflite" in query.get("lite-format", [])
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path).lower().endswith(".tflite")
    return handle.lower().endswith(".tflite")


def local_path(handle: str) -> str | None:
    """The file a local path or ``file://`` URL names; None for an http(s) URL or a hub handle."""
    parsed = urllib.parse.urlsplit(handle)
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path)
    if parsed.scheme in ("http", "https"):
        return None
    return handle


def handle_key(handle: str) -> str:
    """The cache key of a handle: sha256 of its text."""
    return hashlib.sha256(handle.encode("utf8")).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- the cache --------------------------------------------------------------------------------------


class ConvertedCache:
    """``.tflite`` files keyed by their source handle, each with a manifest, safe across processes."""

    def __init__(self, cache_dir: str | os.PathLike[str]):
        self.root = Path(cache_dir) / "litert"
        self.last_miss: str | None = None  # why the last lookup missed, for logs and tests

    def entry_dir(self, handle: str) -> Path:
        return self.root / handle_key(handle)

    def model_path(self, handle: str) -> Path:
        return self.entry_dir(handle) / MODEL_FILE

    def manifest(self, handle: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.entry_dir(handle) / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def lookup(self, handle: str) -> Path | None:
        """The cached, verified file for ``handle``; None (and the entry removed if corrupt) if there is none."""
        problem = self._verify(handle)
        if problem is None:
            self.last_miss = None
            return self.model_path(handle)
        if problem != "not cached":
            # Check again under the lock: a writer may be replacing the entry right now.
            with self.locked(handle):
                problem = self._verify(handle)
                if problem is None:
                    self.last_miss = None
                    return self.model_path(handle)
                if problem != "not cached":
                    log.warning("cached model for %s is unusable (%s); removed, it will be rebuilt", handle, problem)
                    self._remove(handle)
        self.last_miss = problem
        return None

    def _verify(self, handle: str) -> str | None:
        manifest = self.manifest(handle)
        path = self.model_path(handle)
        if manifest is None:
            return "not cached" if not path.exists() else "manifest missing or unreadable"
        if manifest.get("source") != handle:
            return f"manifest is for {manifest.get('source')!r}"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "model file missing"
        if size != manifest.get("size"):
            return f"model file is {size} bytes; the manifest says {manifest.get('size')} (truncated?)"
        if file_sha256(path) != manifest.get("sha256"):
            return "model file sha256 differs from the manifest (corrupt)"
        return None

    def _remove(self, handle: str) -> None:
        for name in (MANIFEST_FILE, MODEL_FILE):  # the manifest first: without it the entry is a miss
            with contextlib.suppress(FileNotFoundError):
                (self.entry_dir(handle) / name).unlink()

    @contextlib.contextmanager
    def locked(self, handle: str) -> Iterator[Path]:
        """Hold the entry's lock (blocking) for a check-and-write; yields the entry directory."""
        entry = self.entry_dir(handle)
        try:
            entry.mkdir(parents=True, exist_ok=True)
            lock = open(entry / LOCK_FILE, "a+b")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise CacheError(f"cannot use the model cache {self.root}: {exc}") from exc
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield entry
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
            lock.close()

    def store(self, handle: str, model_file: str | os.PathLike[str], fields: Mapping[str, Any]) -> Path:
        """Move ``model_file`` (in the entry directory) into place and write its manifest; hold the lock."""
        entry = self.entry_dir(handle)
        with contextlib.suppress(FileNotFoundError):
            (entry / MANIFEST_FILE).unlink()  # readers see a miss until the new manifest lands
        os.replace(model_file, entry / MODEL_FILE)
        manifest = {"manifest_version": MANIFEST_VERSION, "source": handle,
                    "sha256": file_sha256(entry / MODEL_FILE), "size": (entry / MODEL_FILE).stat().st_size,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
        _write_atomic(entry / MANIFEST_FILE, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        return entry / MODEL_FILE

    def temp_file(self, handle: str) -> Path:
        """A fresh temporary file in the entry directory (same file system as the final name)."""
        fd, name = tempfile.mkstemp(prefix=".model.", suffix=".tmp", dir=self.entry_dir(handle))
        os.close(fd)
        return Path(name)

    def get_or_convert(self, handle: str, quiet: bool = True) -> Path:
        """The cached ``.tflite`` for a TF Hub handle, converting it first (once across processes) if needed."""
        found = self.lookup(handle)
        if found is not None:
            return found
        with self.locked(handle):
            found = self.lookup(handle)  # another process may have converted it while we waited
            if found is not None:
                return found
            _remove_stale_temps(self.entry_dir(handle))
            tmp = self.temp_file(handle)
            try:
                result = convert(handle, tmp, quiet=quiet)
                return self.store(handle, tmp, result.manifest_fields())
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def _remove_stale_temps(entry: Path) -> None:
    """Temporary files a crashed writer left behind (called under the entry's lock)."""
    for leftover in entry.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


# -- downloads of ready-made .tflite files -----------------------------------------------------------


def fetch_tflite(url: str, cache_dir: str | os.PathLike[str], session: Any | None = None,
                 timeout: float = 60.0) -> Path:
    """A local path for a ``.tflite`` handle: local paths and ``file://`` as they are, http(s) downloaded once.

    The download goes into the same cache as conversions (atomic, sha256 in the manifest, one
    download across processes); ``session`` is a ``requests.Session`` (e.g. one with the SSRF guard),
    or None for a plain one.
    """
    path = local_path(url)
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no .tflite file at {path}")
        return Path(path)
    cache = ConvertedCache(cache_dir)
    found = cache.lookup(url)
    if found is not None:
        return found
    with cache.locked(url):
        found = cache.lookup(url)
        if found is not None:
            return found
        _remove_stale_temps(cache.entry_dir(url))
        tmp = cache.temp_file(url)
        try:
            started = time.perf_counter()
            _download(url, tmp, session, timeout)
            return cache.store(url, tmp, {"kind": "download",
                                          "seconds": round(time.perf_counter() - started, 3)})
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _download(url: str, dest: Path, session: Any | None, timeout: float) -> None:
    import requests

    getter = session or requests
    started = time.perf_counter()
    try:
        with getter.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            with open(dest, "wb") as f:
                for chunk in response.iter_content(256 * 1024):
                    f.write(chunk)
                    if time.perf_counter() - started > timeout:
                        raise CacheError(f"downloading {url} took over {timeout:g} s")
                f.flush()
                os.fsync(f.fileno())
    except requests.RequestException as exc:
        raise CacheError(f"cannot download the model {url}: {exc}") from exc


# -- conversion (imports TensorFlow) ----------------------------------------------------------------


@dataclass
class Conversion:
    """What one conversion produced and measured."""

    path: Path
    size: int
    sha256: str
    source: str
    resolved_path: str
    signature: str
    tags: list[str]
    input_name: str
    output_name: str
    max_abs_diff: float
    tensorflow_version: str
    tensorflow_hub_version: str
    litert_version: str
    seconds: float

    def manifest_fields(self) -> dict[str, Any]:
        return {"kind": "conversion", "signature": self.signature, "tags": self.tags,
                "input_name": self.input_name, "output_name": self.output_name,
                "max_abs_diff": self.max_abs_diff, "compared_on": verification_inputs_description(),
                "converter": f"tensorflow {self.tensorflow_version} TFLiteConverter.from_saved_model, float32",
                "tensorflow_version": self.tensorflow_version, "tensorflow_hub_version": self.tensorflow_hub_version,
                "litert_version": self.litert_version, "resolved_path": self.resolved_path,
                "seconds": round(self.seconds, 3)}


def verification_inputs_description() -> str:
    return "4 uniform random images (numpy seed 0), all zeros, all ones; [6,224,224,3] in [0,1]"


def verification_inputs(size: int = IMAGE_SIZE) -> np.ndarray:
    """The fixed inputs TensorFlow and LiteRT are compared on."""
    import numpy as np

    rng = np.random.default_rng(0)
    return np.concatenate([rng.random((4, size, size, 3), dtype=np.float32),
                           np.zeros((1, size, size, 3), np.float32), np.ones((1, size, size, 3), np.float32)])


@contextlib.contextmanager
def quiet_output(enabled: bool = True) -> Iterator[list[str]]:
    """Send file descriptors 1 and 2 to a temporary file (TensorFlow's C++ logs bypass Python's streams).

    Yields a list that receives the captured text's tail when the block raises, for the error
    message. While it is active, everything this process writes to fd 1 and 2 is held back.
    """
    captured: list[str] = []
    if not enabled:
        yield captured
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        except BaseException:
            sink.flush()
            sink.seek(0)
            captured.append(sink.read().decode("utf8", "replace")[-4000:])
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _import_tensorflow(handle: str) -> tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before the first import, or it is not read
    try:
        import tensorflow as tf
        import tensorflow_hub as hub
    except ImportError as exc:
        missing = exc.name or "tensorflow"
        raise TensorFlowMissingError(
            f"converting the TF Hub module {handle} needs the Python package {missing!r}, which is not "
            "installed here (this environment serves .tflite models only). Convert it where TensorFlow and "
            "tensorflow_hub are installed with `make model` (python -m function.model.convert HANDLE) and "
            "point MODEL_URL at the .tflite file, or install requirements.txt.") from exc
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    return tf, hub


def _pick_signature(saved_model_dir: str, handle: str) -> tuple[str, set[str], str, str]:
    """(signature, tags of its meta graph, input name, output name) read from saved_model.pb."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    pb = os.path.join(saved_model_dir, "saved_model.pb")
    try:
        with open(pb, "rb") as f:
            proto.ParseFromString(f.read())
    except OSError as exc:
        raise ConversionError(f"{handle} is not a SavedModel or TF1 Hub module (no {pb})") from exc
    available: list[str] = []
    for name in SIGNATURE_PREFERENCE:
        for meta_graph in proto.meta_graphs:
            available += list(meta_graph.signature_def)
            if name in meta_graph.signature_def:
                sig = meta_graph.signature_def[name]
                if len(sig.inputs) != 1:
                    raise ConversionError(f"signature {name!r} of {handle} takes {len(sig.inputs)} inputs "
                                          f"{sorted(sig.inputs)}; expected one image batch")
                outputs = sorted(sig.outputs)
                output = "default" if "default" in sig.outputs else outputs[0]
                if len(outputs) != 1:
                    raise ConversionError(f"signature {name!r} of {handle} has {len(outputs)} outputs {outputs}; "
                                          "expected one score batch")
                return name, set(meta_graph.meta_info_def.tags), next(iter(sig.inputs)), output
    raise ConversionError(f"{handle} has no signature named {' or '.join(SIGNATURE_PREFERENCE)}; "
                          f"it has {sorted(set(available)) or 'none'}")


def convert(handle: str, out_path: str | os.PathLike[str], quiet: bool = True) -> Conversion:
    """Convert the TF Hub module or SavedModel at ``handle`` to a float32 ``.tflite`` at ``out_path``.

    Downloads through ``tensorflow_hub.resolve`` (its cache, ``TFHUB_CACHE_DIR``), converts the
    serving signature, then compares TensorFlow's scores with LiteRT's on
    :func:`verification_inputs`; a difference over ``MAX_ABS_DIFF`` fails the conversion.
    With ``quiet``, TensorFlow's output is held back (and quoted in the error if it fails).
    """
    started = time.perf_counter()
    if is_tflite_handle(handle):
        raise ConversionError(f"{handle} is already a .tflite file; use fetch_tflite")
    captured: list[str] = []
    try:
        with quiet_output(quiet) as captured:
            tf, hub = _import_tensorflow(handle)
            try:
                resolved = hub.resolve(handle)
            except Exception as exc:
                raise SourceUnavailableError(f"cannot download {handle}: {type(exc).__name__}: {exc}") from exc
            signature, tags, input_name, output_name = _pick_signature(resolved, handle)
            converter = tf.lite.TFLiteConverter.from_saved_model(resolved, signature_keys=[signature], tags=tags)
            flatbuffer = converter.convert()
            reference = hub.load(resolved, tags=tags).signatures[signature]
            inputs = verification_inputs()
            expected = reference(**{input_name: tf.constant(inputs)})[output_name].numpy()
    except ConversionError as exc:
        exc.output = "".join(captured)
        raise
    except Exception as exc:
        error = ConversionError(f"converting {handle} failed: {type(exc).__name__}: {exc}")
        error.output = "".join(captured)
        raise error from exc
    from .litert import LiteRTModel

    try:
        model = LiteRTModel(flatbuffer, source=f"conversion of {handle}")
        actual = model.predict(inputs)
    except ValueError as exc:
        raise ConversionError(f"the conversion of {handle} does not run on LiteRT: {exc}") from exc
    if actual.shape != expected.shape:
        raise ConversionError(f"the conversion of {handle} answers shape {actual.shape}; TensorFlow {expected.shape}")
    max_abs_diff = float(abs(actual.astype("float64") - expected.astype("float64")).max())
    if not max_abs_diff <= MAX_ABS_DIFF:
        raise ConversionError(f"the conversion of {handle} differs from TensorFlow by up to {max_abs_diff:.3g} "
                              f"(limit {MAX_ABS_DIFF:g})")
    out = Path(out_path)
    out.write_bytes(flatbuffer)
    return Conversion(
        path=out, size=len(flatbuffer), sha256=hashlib.sha256(flatbuffer).hexdigest(), source=handle,
        resolved_path=str(resolved), signature=signature, tags=sorted(tags), input_name=input_name,
        output_name=output_name, max_abs_diff=max_abs_diff, tensorflow_version=tf.__version__,
        tensorflow_hub_version=getattr(hub, "__version__", "?"), litert_version=_litert_version(),
        seconds=time.perf_counter() - started)


def _litert_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return "?"


# -- python -m function.model.convert ---------------------------------------------------------------


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    """Until process ``pid`` is gone (True) or ``timeout_s`` passed (False); polls, as a non-child cannot wait."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, someone else's
            pass
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m function.model.convert",
        description="Convert a TF Hub module (or TF2 SavedModel) to a float32 .tflite for the LiteRT runtime.")
    parser.add_argument("handle", nargs="?", default=environ.get("MODEL_URL") or BIRDS_URL,
                        help="TF Hub handle, URL or local path (default: $MODEL_URL, else the TF Hub birds model)")
    parser.add_argument("--out", help="also copy the .tflite here (and its manifest beside it, + .json)")
    parser.add_argument("--cache-dir", default=None,
                        help="the model cache (default: $MODEL_CACHE_DIR, else $TFHUB_CACHE_DIR, else "
                             "~/.cache/bird-classifier)")
    parser.add_argument("--verbose", action="store_true", help="let TensorFlow's own output through")
    parser.add_argument("--after-pid", type=int, default=None, metavar="PID",
                        help="first wait (up to 10 min) for process PID to exit (the CLI converts for its next run)")
    parser.add_argument("--nice", type=int, default=0, metavar="N", help="lower this process's CPU priority by N")
    args = parser.parse_args(argv)
    if args.after_pid:
        wait_for_exit(args.after_pid, 600.0)
    if args.nice:
        os.nice(args.nice)
    cache = ConvertedCache(args.cache_dir or default_cache_dir(environ))
    started = time.perf_counter()
    try:
        if is_tflite_handle(args.handle):
            path = fetch_tflite(args.handle, cache.root.parent)
            manifest = cache.manifest(args.handle) or {}
        else:
            path = cache.get_or_convert(args.handle, quiet=not args.verbose)
            manifest = cache.manifest(args.handle) or {}
    except (ConversionError, CacheError, FileNotFoundError) as exc:
        output = getattr(exc, "output", "")
        if output and not isinstance(exc, TensorFlowMissingError):
            print(f"TensorFlow's output (tail):\n{output.rstrip()}", file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, out)
        if manifest:
            _write_atomic(out.with_name(out.name + ".json"), (json.dumps(manifest, indent=2) + "\n").encode())
        print(f"cached:  {path}")
        path = out
    size = path.stat().st_size
    print(f"model:   {path}")
    print(f"source:  {args.handle}")
    print(f"size:    {size} bytes ({size / 1e6:.1f} MB)")
    if "max_abs_diff" in manifest:
        print(f"max |TensorFlow - LiteRT| on {manifest.get('compared_on', 'fixed inputs')}: "
              f"{manifest['max_abs_diff']:.3g}")
    print(f"took:    {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
