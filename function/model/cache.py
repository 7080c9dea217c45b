"""The model cache: ``<cache_dir>/litert/<sha256 of the handle>/model.tflite`` and its ``manifest.json``.

Files are moved into place with ``os.replace``, the manifest last, so a crash never leaves half a
file; a lookup checks the file's sha256 against the manifest. An ``fcntl.flock`` on the entry's
``lock`` makes a download or conversion happen once across processes; a converter announces its
phases in ``converting.json`` so a run that finds the lock held can judge the work left, in the
converter's CPU seconds (one on idle CPU may have been starved). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeGuard

from ..errors import ModelCacheError
from ..infra import procs
from . import handles

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = "lock"
ANNOUNCEMENT_FILE = "converting.json"
TIMINGS_FILE = "timings.json"
STILL_WRITING = "still converting"  # why a wait ended without an entry, when the writer did not finish


@dataclass(frozen=True)
class UnderWay:
    """A writer holding an entry's lock, as it announced itself: ``expected_s`` the CPU seconds of each
    phase in order (empty for a download), ``phase`` the current one, begun at CPU time ``phase_cpu_s``."""

    pid: int | None
    started: float  # wall clock (time.time()), as another process wrote it
    expected_s: Mapping[str, float]
    phase: str | None = None
    phase_cpu_s: float | None = None

    def remaining_s(self, cpu_now: float | None = None, now: float | None = None) -> float | None:
        """The work left in seconds of one core, by the converter's CPU time (``cpu_now``, else read
        from /proc); without it, the expected total less the wall time since it started."""
        if not self.expected_s:
            return None
        names = list(self.expected_s)
        if self.phase in names and self.phase_cpu_s is not None:
            if cpu_now is None and self.pid is not None:
                cpu_now = procs.cpu_seconds(self.pid)
            if cpu_now is not None:
                used = max(0.0, cpu_now - self.phase_cpu_s)
                i, seconds = names.index(self.phase), list(self.expected_s.values())
                return max(0.0, seconds[i] - used) + sum(seconds[i + 1:])
        elapsed = (time.time() if now is None else now) - self.started
        return max(0.0, sum(self.expected_s.values()) - elapsed)


def file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ConvertedCache:
    """The entries under ``<cache_dir>/litert``."""

    def __init__(self, cache_dir: str | os.PathLike[str]):
        self.root = Path(cache_dir) / "litert"
        self.last_miss: str | None = None  # why the last lookup missed, for logs and tests

    def entry_dir(self, handle: str) -> Path:
        return self.root / handles.key(handle)

    def model_path(self, handle: str) -> Path:
        return self.entry_dir(handle) / MODEL_FILE

    def manifest(self, handle: str) -> dict[str, Any] | None:
        return _read_json(self.entry_dir(handle) / MANIFEST_FILE)

    def lookup(self, handle: str) -> Path | None:
        """The cached, verified file for ``handle``; None (and the entry removed if corrupt) if there is none."""
        problem = self._verify(handle)
        if problem in (None, "not cached"):
            self.last_miss = problem
            return self.model_path(handle) if problem is None else None
        with self.locked(handle):  # check again under the lock: a writer may be replacing the entry
            return self.lookup_locked(handle)

    def lookup_locked(self, handle: str) -> Path | None:
        """:meth:`lookup` for a caller that holds the entry's lock (a second flock would wait on itself)."""
        problem = self._verify(handle)
        if problem not in (None, "not cached"):
            log.warning("cached model for %s is unusable (%s); removed, it will be rebuilt", handle, problem)
            for name in (MANIFEST_FILE, MODEL_FILE):  # the manifest first: without it the entry is a miss
                with contextlib.suppress(FileNotFoundError):
                    (self.entry_dir(handle) / name).unlink()
        self.last_miss = problem
        return self.model_path(handle) if problem is None else None

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

    @contextlib.contextmanager
    def locked(self, handle: str) -> Iterator[Path]:
        """Hold the entry's lock (blocking) for a check-and-write; yields the entry directory."""
        with self._open_lock(handle) as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield self.entry_dir(handle)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def under_way(self, handle: str) -> UnderWay | None:
        """The writer holding ``handle``'s lock right now, or None when nobody does (never blocks)."""
        with self._open_lock(handle) as lock:
            if self._try_lock(lock):
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
                return None
        said = _read_json(self.entry_dir(handle) / ANNOUNCEMENT_FILE) or {}
        expected, started, phase_cpu = said.get("expected_s"), said.get("started"), said.get("phase_cpu_s")
        phases = {str(pair[0]): float(pair[1]) for pair in expected if isinstance(pair, list) and len(pair) == 2
                  and _seconds(pair[1])} if isinstance(expected, list) else {}
        return UnderWay(pid=said.get("pid") if isinstance(said.get("pid"), int) else None,
                        started=float(started) if _seconds(started) else time.time(), expected_s=phases,
                        phase=said.get("phase") if isinstance(said.get("phase"), str) else None,
                        phase_cpu_s=float(phase_cpu) if _seconds(phase_cpu) else None)

    def wait(self, handle: str, timeout_s: float, poll_s: float = 0.05) -> Path | None:
        """Wait until nobody holds ``handle``'s lock, then the entry the writer left; None if it failed
        or still held the lock after ``timeout_s`` (``last_miss`` says which; it goes on, for the next run)."""
        deadline = time.monotonic() + timeout_s
        with self._open_lock(handle) as lock:
            while not self._try_lock(lock):
                if time.monotonic() >= deadline:
                    self.last_miss = f"{STILL_WRITING} after {timeout_s:.0f} s"
                    return None
                time.sleep(poll_s)
            try:
                return self.lookup_locked(handle)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def announced(self, handle: str, expected_s: Mapping[str, float]) -> Iterator[Announcement]:
        """Say, while the lock is held, that this process converts ``handle``, and the CPU seconds each
        of its phases should take (in order); it starts in the first."""
        announcement = Announcement(self.entry_dir(handle) / ANNOUNCEMENT_FILE, expected_s)
        announcement.enter(next(iter(expected_s), None))
        try:
            yield announcement
        finally:
            with contextlib.suppress(FileNotFoundError):
                announcement.path.unlink()

    def _open_lock(self, handle: str) -> IO[bytes]:
        entry = self.entry_dir(handle)
        try:
            entry.mkdir(parents=True, exist_ok=True)
            return open(entry / LOCK_FILE, "a+b")  # noqa: SIM115 (the caller closes it)
        except OSError as exc:
            raise self._unusable(exc) from exc

    def _try_lock(self, lock: IO[bytes]) -> bool:
        """Take the lock if nobody holds it; False when somebody does."""
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise self._unusable(exc) from exc
            return False
        return True

    def _unusable(self, exc: OSError) -> ModelCacheError:
        return ModelCacheError(f"cannot use the model cache {self.root}: {exc}")

    def store(self, handle: str, model_file: str | os.PathLike[str], fields: Mapping[str, Any]) -> Path:
        """Move ``model_file`` (in the entry directory) into place and write its manifest; hold the lock."""
        entry = self.entry_dir(handle)
        with contextlib.suppress(FileNotFoundError):
            (entry / MANIFEST_FILE).unlink()  # readers see a miss until the new manifest lands
        os.replace(model_file, entry / MODEL_FILE)
        manifest = {"manifest_version": MANIFEST_VERSION, "source": handle,
                    "sha256": file_sha256(entry / MODEL_FILE), "size": (entry / MODEL_FILE).stat().st_size,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
        write_atomic(entry / MANIFEST_FILE, _json_bytes(manifest))
        return entry / MODEL_FILE

    @contextlib.contextmanager
    def temp_file(self, handle: str) -> Iterator[Path]:
        """A fresh temporary file in the entry directory (the final name's file system), removed unless
        stored; a crashed writer's leftovers are removed first."""
        entry = self.entry_dir(handle)
        for leftover in entry.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        fd, name = tempfile.mkstemp(prefix=".model.", suffix=".tmp", dir=entry)
        os.fchmod(fd, 0o644)  # as write_atomic: a cache built by one user may be served by another
        os.close(fd)
        try:
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def timing(self, name: str) -> float | None:
        """How long ``name`` took here last time, for the next run's choices."""
        value = (_read_json(self.root / TIMINGS_FILE) or {}).get(name)
        return float(value) if _seconds(value) else None

    def record_timing(self, name: str, seconds: float) -> None:
        """Keep the last ``seconds`` for ``name`` (best effort: a cache that cannot be written only forgets)."""
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True)
            timings = _read_json(self.root / TIMINGS_FILE) or {}
            timings[name] = round(seconds, 3)
            write_atomic(self.root / TIMINGS_FILE, _json_bytes(timings))


class Announcement:
    """One writer's ``converting.json``."""

    def __init__(self, path: Path, expected_s: Mapping[str, float]):
        self.path = path
        self.expected_s = dict(expected_s)
        self.started = time.time()
        self.cpu_used: dict[str, float] = {}  # each finished phase's CPU seconds
        self._phase: str | None = None
        self._phase_cpu = 0.0

    def enter(self, phase: str | None) -> None:
        """This process begins ``phase`` now (the one before it is over)."""
        cpu = procs.cpu_seconds(os.getpid()) or 0.0
        if self._phase is not None:
            self.cpu_used[self._phase] = cpu - self._phase_cpu
        self._phase, self._phase_cpu = phase, cpu
        write_atomic(self.path, _json_bytes({"pid": os.getpid(), "started": self.started, "phase": phase,
                                             "phase_cpu_s": cpu, "expected_s": list(self.expected_s.items())}))


def fetch_tflite(url: str, cache_dir: str | os.PathLike[str], session: Any | None = None,
                 timeout: float = 60.0) -> Path:
    """A local path for a ``.tflite`` handle: a local path or ``file://`` as it is, http(s) downloaded
    once into the cache (``session``: a ``requests.Session``, e.g. with the SSRF guard)."""
    path = handles.local_path(url)
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no .tflite file at {path}")
        return Path(path)
    cache = ConvertedCache(cache_dir)
    found = cache.lookup(url)
    if found is not None:
        return found
    with cache.locked(url):
        found = cache.lookup_locked(url)
        if found is not None:
            return found
        with cache.temp_file(url) as tmp:
            started = time.perf_counter()
            _download(url, tmp, session, timeout)
            return cache.store(url, tmp, {"kind": "download", "seconds": round(time.perf_counter() - started, 3)})


def _download(url: str, dest: Path, session: Any | None, timeout: float) -> None:
    import requests

    started = time.perf_counter()
    try:
        with (session or requests).get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            with open(dest, "wb") as f:
                for chunk in response.iter_content(256 * 1024):
                    f.write(chunk)
                    if time.perf_counter() - started > timeout:
                        raise ModelCacheError(f"downloading {url} took over {timeout:g} s")
                f.flush()
                os.fsync(f.fileno())
    except requests.RequestException as exc:
        raise ModelCacheError(f"cannot download the model {url}: {exc}") from exc


def write_atomic(path: Path, data: bytes) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # not mkstemp's 0600: the image's service user reads what its build's root wrote
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def _seconds(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
