"""The model download starts before TensorFlow is imported and tensorflow_hub reads it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
import requests
from tensorflow_hub import compressed_module_resolver

from function.model.prefetch import Prefetcher, cached_module_dir, compressed_url, wait_for_other_download
from function.model.tensorflow import TensorFlowModel


@pytest.mark.parametrize("handle", [
    "https://tfhub.dev/google/aiy/vision/classifier/birds_V1/1",
    "http://127.0.0.1:8000/models/birds?version=2&x=a%20b",
])
def test_the_prefetched_url_is_the_one_tensorflow_hub_requests(handle):
    hub_resolver = compressed_module_resolver.HttpCompressedFileResolver()
    assert compressed_url(handle) == hub_resolver._append_compressed_format_query(handle)


def test_tensorflow_hub_reads_the_prefetched_body_instead_of_downloading(server, model_tarball, monkeypatch):
    url = server.add("/models/prefetched/1", model_tarball, "application/x-tar")

    def no_second_download(self, request):
        raise AssertionError(f"tensorflow_hub downloaded {request.full_url} itself")

    monkeypatch.setattr(compressed_module_resolver.HttpCompressedFileResolver, "_call_urlopen", no_second_download)
    prefetcher = Prefetcher()
    model = TensorFlowModel.load(url, prefetcher=prefetcher)
    assert model.num_classes == 965
    assert server.hits["/models/prefetched/1"] == 1
    assert prefetcher.take(compressed_url(url)) is None  # handed over, not left pending


def test_tensorflow_hub_still_has_the_parts_the_prefetch_resolver_is_made_of():
    from tensorflow_hub import registry, resolver

    parts = {resolver: ("Resolver", "tfhub_cache_dir", "create_local_module_dir", "atomic_download", "DownloadManager"),
             compressed_module_resolver: ("HttpCompressedFileResolver", "LOCK_FILE_TIMEOUT_SEC"),
             registry.resolver: ("add_implementation",)}
    missing = [name for module, names in parts.items() for name in names if not hasattr(module, name)]
    assert not missing, (f"tensorflow_hub no longer has {missing}: function/model/prefetch.py's resolver is made of "
                         "them (registered with registry.resolver, built on the resolver module's public parts)")


def test_nothing_is_prefetched_for_a_cached_model(config, hub_cache):
    TensorFlowModel.load(config.model_url)  # now in the cache
    assert os.path.isdir(cached_module_dir(config.model_url, str(hub_cache)))
    assert Prefetcher().start(config.model_url, str(hub_cache)) is None


def test_a_failed_prefetch_fails_the_load_without_asking_the_hub_twice(server, model_tarball):
    attempts = []

    def first_fails(req):
        from standin.server import Reply

        attempts.append(req.path)
        return Reply(b"busy", 503, "text/plain") if len(attempts) == 1 else Reply(model_tarball, 200)

    url = server.add("/models/flaky/1", first_fails)
    prefetcher = Prefetcher()
    with pytest.raises(requests.HTTPError, match="503"):
        TensorFlowModel.load(url, prefetcher=prefetcher)
    assert len(attempts) == 1
    # the next load (after the back-off) prefetches again
    assert TensorFlowModel.load(url, prefetcher=prefetcher).num_classes == 965
    assert len(attempts) == 2


HANDLE = "https://hub.example/google/aiy/vision/classifier/birds_V1/1"


def _lock(cache_dir, pid: int) -> str:
    lock = cached_module_dir(HANDLE, str(cache_dir)) + ".lock"
    with open(lock, "w") as f:  # tensorflow_hub's own contents: host.pid.task
        f.write(f"{socket.gethostname()}.{pid}.0123abcd")
    return lock


def test_a_download_another_live_process_holds_is_waited_for_until_its_lock_goes(tmp_path):
    lock = _lock(tmp_path, os.getpid())  # this process is alive: the lock is held
    waiter = threading.Thread(target=wait_for_other_download, args=(HANDLE, str(tmp_path)), daemon=True)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # still waiting: the lock is there
    os.unlink(lock)
    waiter.join(10)
    assert not waiter.is_alive()  # went on once the lock went, well before tensorflow_hub's 5 s look


def test_a_lock_left_by_a_process_that_is_gone_is_not_waited_for(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _lock(tmp_path, gone.pid)
    wait_for_other_download(HANDLE, str(tmp_path), timeout_s=600)  # returns: tensorflow_hub takes it from here
    wait_for_other_download("/a/local/module", str(tmp_path))  # local modules have no download lock


def test_a_module_the_starting_run_is_about_to_download_is_waited_for_until_it_is_in_the_cache(tmp_path):
    module = cached_module_dir(HANDLE, str(tmp_path))
    waiter = threading.Thread(target=wait_for_other_download, args=(HANDLE, str(tmp_path), os.getpid()),
                              daemon=True)
    waiter.start()  # no lock yet: the downloader (this live process) has not taken tensorflow_hub's lock
    waiter.join(0.3)
    assert waiter.is_alive()
    os.makedirs(module)
    open(os.path.join(module, "saved_model.pb"), "wb").close()
    waiter.join(10)
    assert not waiter.is_alive()


def test_a_downloader_that_exits_without_the_module_is_not_waited_for(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    wait_for_other_download(HANDLE, str(tmp_path), gone.pid)  # returns: this process downloads it itself
