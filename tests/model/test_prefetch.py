"""The model download starts before TensorFlow is imported and tensorflow_hub reads it."""

from __future__ import annotations

import os

import pytest
import requests
from tensorflow_hub import compressed_module_resolver

from function.model.prefetch import Prefetcher, cached_module_dir, compressed_url
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
