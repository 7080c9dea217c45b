"""The model cache: ``.tflite`` files keyed by their source handle, safe across processes.

``<cache_dir>/litert/<sha256 of the handle>/model.tflite`` lies beside a ``manifest.json``
(source, sha256, size, versions, the measured TensorFlow-vs-LiteRT difference). Files are written
to a temporary name in the same directory and moved into place with ``os.replace``, the manifest
last, so a crash leaves the old entry, no entry or the new one, never half a file. A lookup hashes
the file against its manifest: a corrupt or truncated file is a miss, and is removed.

Writers hold an ``fcntl.flock`` on the entry's ``lock`` file, so one handle is downloaded or
converted once across processes. A converter also *announces* itself (``converting.json``: its
pid, the phase it is in, its own CPU time when that phase began, and the CPU seconds it expects each
phase to take, from the last conversion's figures in ``timings.json``), so a one-shot run that finds
the lock held can tell how much work is left and choose between waiting and answering another way.
The work left is counted in the converter's CPU seconds, not in wall time: a converter that runs on
idle CPU only may have been starved for a while, and its clock says nothing about its progress.

Nothing here imports TensorFlow: a process with a cached flatbuffer never loads it.
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
from typing import Any, TypeGuard

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
    """A writer holding an entry's lock, as it announced itself.

    ``expected_s``: the seconds of CPU it expects each phase to take, in order (empty when it did not
    say: a download); ``phase`` the one it is in and ``phase_cpu_s`` its CPU time when that began.
    """

    pid: int | None
    started: float  # wall clock (time.time()), as another process wrote it
    expected_s: Mapping[str, float]
    phase: str | None = None
    phase_cpu_s: float | None = None

    def remaining_s(self, cpu_now: float | None = None, now: float | None = None) -> float | None:
        """The work left, in seconds of one core: the rest of the current phase (by the converter's CPU
        time ``cpu_now``, read from /proc when not given) and the phases after it. Without phases or
        without the converter's CPU time, the expected total less the wall time since it started."""
        if not self.expected_s:
            return None
        names = list(self.expected_s)
        phase = self.phase
        if phase is not None and phase in self.expected_s and self.phase_cpu_s is not None:
            if cpu_now is None and self.pid is not None:
                cpu_now = procs.cpu_seconds(self.pid)
            if cpu_now is not None:
                used = max(0.0, cpu_now - self.phase_cpu_s)
                later = names[names.index(phase) + 1:]
                return max(0.0, self.expected_s[phase] - used) + sum(self.expected_s[n] for n in later)
        elapsed = (time.time() if now is None else now) - self.started
        return max(0.0, sum(self.expected_s.values()) - elapsed)


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ConvertedCache:
    """The entries under ``<cache_dir>/litert``; see the module's docstring."""

    def __init__(self, cache_dir: str | os.PathLike[str]):
        self.root = Path(cache_dir) / "litert"
        self.last_miss: str | None = None  # why the last lookup missed, for logs and tests

    def entry_dir(self, handle: str) -> Path:
        return self.root / handles.key(handle)

    def model_path(self, handle: str) -> Path:
        return self.entry_dir(handle) / MODEL_FILE

    def manifest(self, handle: str) -> dict[str, Any] | None:
        return _read_json(self.entry_dir(handle) / MANIFEST_FILE)

    # -- reading ------------------------------------------------------------------------------------

    def lookup(self, handle: str) -> Path | None:
        """The cached, verified file for ``handle``; None (and the entry removed if corrupt) if there is none."""
        problem = self._verify(handle)
        if problem is None:
            self.last_miss = None
            return self.model_path(handle)
        if problem == "not cached":
            self.last_miss = problem
            return None
        with self.locked(handle):  # check again under the lock: a writer may be replacing the entry
            return self.lookup_locked(handle)

    def lookup_locked(self, handle: str) -> Path | None:
        """:meth:`lookup` for a caller that holds the entry's lock (a second flock would wait on itself)."""
        problem = self._verify(handle)
        if problem not in (None, "not cached"):
            log.warning("cached model for %s is unusable (%s); removed, it will be rebuilt", handle, problem)
            self._remove(handle)
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

    def _remove(self, handle: str) -> None:
        for name in (MANIFEST_FILE, MODEL_FILE):  # the manifest first: without it the entry is a miss
            with contextlib.suppress(FileNotFoundError):
                (self.entry_dir(handle) / name).unlink()

    # -- the lock and who holds it ----------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, handle: str) -> Iterator[Path]:
        """Hold the entry's lock (blocking) for a check-and-write; yields the entry directory."""
        lock = self._open_lock(handle)
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield self.entry_dir(handle)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
            lock.close()

    def under_way(self, handle: str) -> UnderWay | None:
        """The writer holding ``handle``'s lock right now, or None when nobody does (never blocks)."""
        lock = self._open_lock(handle)
        try:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise ModelCacheError(f"cannot use the model cache {self.root}: {exc}") from exc
            else:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
                return None
        finally:
            lock.close()
        said = _read_json(self.entry_dir(handle) / ANNOUNCEMENT_FILE) or {}
        expected, started, phase_cpu = said.get("expected_s"), said.get("started"), said.get("phase_cpu_s")
        phases = {str(pair[0]): float(pair[1]) for pair in expected if isinstance(pair, list) and len(pair) == 2
                  and _seconds(pair[1])} if isinstance(expected, list) else {}
        return UnderWay(pid=said.get("pid") if isinstance(said.get("pid"), int) else None,
                        started=float(started) if _seconds(started) else time.time(), expected_s=phases,
                        phase=said.get("phase") if isinstance(said.get("phase"), str) else None,
                        phase_cpu_s=float(phase_cpu) if _seconds(phase_cpu) else None)

    def wait(self, handle: str, timeout_s: float, poll_s: float = 0.05) -> Path | None:
        """Wait until nobody holds ``handle``'s lock, then the entry the writer left; None if it failed,
        or if it still held the lock after ``timeout_s`` (``last_miss`` says which). The writer goes on
        either way: its work is for the next run."""
        lock = self._open_lock(handle)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise ModelCacheError(f"cannot use the model cache {self.root}: {exc}") from exc
                if time.monotonic() >= deadline:
                    self.last_miss = f"{STILL_WRITING} after {timeout_s:.0f} s"
                    return None
                time.sleep(poll_s)
            try:
                return self.lookup_locked(handle)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        finally:
            lock.close()

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

    def _open_lock(self, handle: str) -> Any:
        entry = self.entry_dir(handle)
        try:
            entry.mkdir(parents=True, exist_ok=True)
            return open(entry / LOCK_FILE, "a+b")  # noqa: SIM115 (the caller closes it)
        except OSError as exc:
            raise ModelCacheError(f"cannot use the model cache {self.root}: {exc}") from exc

    # -- writing (under the lock) -------------------------------------------------------------------

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
        """A fresh temporary file in the entry directory (same file system as the final name), removed
        afterwards unless stored; temporary files a crashed writer left are removed first."""
        entry = self.entry_dir(handle)
        for leftover in entry.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        fd, name = tempfile.mkstemp(prefix=".model.", suffix=".tmp", dir=entry)
        os.close(fd)
        try:
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    # -- how long things took here, for the next run's choices ------------------------------------

    def timing(self, name: str) -> float | None:
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
    """``converting.json`` of one writer: pid, start (wall clock), the phase it is in with its CPU time
    when it began, and the CPU seconds expected of each phase."""

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
    """A local path for a ``.tflite`` handle: local paths and ``file://`` as they are, http(s) downloaded once.

    The download goes into the same cache as conversions (atomic, sha256 in the manifest, one
    download across processes); ``session`` is a ``requests.Session`` (e.g. one with the SSRF
    guard), or None for a plain one.
    """
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

    getter = session or requests
    started = time.perf_counter()
    try:
        with getter.get(url, stream=True, timeout=timeout) as response:
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
