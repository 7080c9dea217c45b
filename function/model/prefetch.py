"""Start the model download before TensorFlow is imported, and hand it to tensorflow_hub.

``import tensorflow`` takes seconds and tensorflow_hub cannot download before it is done; so the
module is downloaded on its own thread meanwhile, and a resolver registered with tensorflow_hub
(made of its HTTP resolver's public parts) unpacks those bytes through its usual cache and lock.
A failed prefetch fails that load, as tensorflow_hub's own download would (no second request).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
import urllib.parse
from concurrent import futures
from typing import IO

import requests

log = logging.getLogger(__name__)


def compressed_url(handle: str) -> str:
    """The URL tensorflow_hub requests for a handle: the handle plus ``tf-hub-format=compressed``."""
    parsed = urllib.parse.urlparse(handle)
    query = [*urllib.parse.parse_qsl(parsed.query), ("tf-hub-format", "compressed")]
    return urllib.parse.urlunparse(parsed._replace(query=urllib.parse.urlencode(query)))


def cached_module_dir(handle: str, cache_dir: str | None) -> str:
    """Where tensorflow_hub caches a handle: ``<cache>/<sha1 of the handle>``."""
    root = cache_dir or os.path.join(tempfile.gettempdir(), "tfhub_modules")
    return os.path.join(root, hashlib.sha1(handle.encode("utf8")).hexdigest())


def wait_for_other_download(handle: str, cache_dir: str, downloader: int | None = None, timeout_s: float = 600.0,
                            poll_s: float = 0.05) -> None:
    """Until no other process is downloading ``handle`` into tensorflow_hub's cache ``cache_dir`` (which
    tensorflow_hub checks only every 5 s), or ``downloader`` (about to, its prefetch under way) is gone.
    A lock whose process is gone (same host), or one still held at ``timeout_s``, is tensorflow_hub's."""
    if not handle.startswith(("http://", "https://")):
        return
    module = cached_module_dir(handle, cache_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(module + ".lock", encoding="utf-8", errors="replace") as f:
                owner = f.read()
        except OSError:
            if downloader is None or not _alive(downloader) or _has_files(module):
                return  # nobody is downloading it, and nobody is about to
        else:
            host, _, rest = owner.partition(".")
            pid = rest.split(".")[0]
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                return
        time.sleep(poll_s)


def _has_files(directory: str) -> bool:
    try:
        return bool(os.listdir(directory))
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


class ModelPrefetch:
    """One module's download, under way on its own thread."""

    def __init__(self, handle: str, timeout_s: float):
        self.url = compressed_url(handle)
        self.timeout_s = timeout_s
        self._body: futures.Future[IO[bytes]] = futures.Future()
        threading.Thread(target=self._download, name="model-prefetch", daemon=True).start()

    def _download(self) -> None:
        started = time.perf_counter()
        body = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)  # noqa: SIM115 (handed over, closed by the reader)
        try:
            with requests.get(self.url, stream=True, timeout=(10, 60)) as response:
                response.raise_for_status()
                for chunk in response.iter_content(256 * 1024):
                    body.write(chunk)
                    if time.perf_counter() - started > self.timeout_s:
                        raise TimeoutError(f"model download took over {self.timeout_s:g} s")
            body.seek(0)
            self._body.set_result(body)
        except Exception as exc:  # raised to tensorflow_hub when it asks for the body
            body.close()
            self._body.set_exception(exc)

    def take(self) -> IO[bytes]:
        """The downloaded body, waiting for the download; the download's error if it failed."""
        if not futures.wait([self._body], self.timeout_s).done:
            raise TimeoutError(f"model download took over {self.timeout_s:g} s")
        return self._body.result()


class Prefetcher:
    """The downloads under way, and the tensorflow_hub resolver that reads them, registered once, on
    first use (the last registered is asked first; a URL without a download goes on to tensorflow_hub's)."""

    def __init__(self) -> None:
        self._pending: dict[str, ModelPrefetch] = {}
        self._lock = threading.Lock()
        self._installed = False

    def start(self, handle: str, cache_dir: str | None, timeout_s: float = 600.0) -> ModelPrefetch | None:
        """Begin downloading ``handle`` unless it is not HTTP(S) or already cached."""
        if not handle.startswith(("http://", "https://")) or os.path.isdir(cached_module_dir(handle, cache_dir)):
            return None
        prefetch = ModelPrefetch(handle, timeout_s)
        with self._lock:
            self._pending[prefetch.url] = prefetch
        return prefetch

    def take(self, url: str) -> ModelPrefetch | None:
        """The download under way for this exact URL (once), or None."""
        with self._lock:
            return self._pending.pop(url, None)

    def install_resolver(self) -> None:
        """Put the prefetch-aware resolver in front of tensorflow_hub's HTTP resolver (once)."""
        with self._lock:
            if self._installed:
                return
            self._installed = True
        from tensorflow_hub import compressed_module_resolver, registry, resolver

        prefetcher, own = self, compressed_module_resolver.HttpCompressedFileResolver()

        # tensorflow_hub has no type information: its classes are Any to mypy.
        class PrefetchedResolver(resolver.Resolver):  # type: ignore[misc]
            """tensorflow_hub's HTTP resolver, unpacking a prefetched body when there is one."""

            def is_supported(self, handle: str) -> bool:
                return bool(own.is_supported(handle))

            def __call__(self, handle: str) -> str:
                prefetch = prefetcher.take(compressed_url(handle))
                if prefetch is None:
                    return str(own(handle))
                cache = resolver.tfhub_cache_dir(use_temp=True)
                module_dir = resolver.create_local_module_dir(cache, os.path.basename(cached_module_dir(handle, cache)))
                return str(resolver.atomic_download(
                    handle, lambda h, tmp: resolver.DownloadManager(h).download_and_uncompress(prefetch.take(), tmp),
                    module_dir, compressed_module_resolver.LOCK_FILE_TIMEOUT_SEC))

        registry.resolver.add_implementation(PrefetchedResolver())
