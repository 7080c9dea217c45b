"""Fixtures: a generated TF1 Hub model, label map and photos, served from 127.0.0.1.

The model is the stand-in colour model (see ``standin.hubmodel``): its answer depends on the
photo's mean colour, so tests can check RGB order, [0,1] scaling, id -> label mapping and top-k
order end to end, through the real ``hub.load`` download, unpack and cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from function import app
from function.config import Config
from standin import hubmodel
from standin.server import StandInServer
from tests.support import LABELS_PATH, MODEL_PATH, photo_url


def pytest_collection_modifyitems(config, items):
    if "network" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="needs the internet; run with -m network")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("tfhub-cache")
    os.environ["TFHUB_CACHE_DIR"] = str(cache)  # tensorflow_hub reads it at each resolve
    return cache


@pytest.fixture(scope="session")
def model_tarball(tmp_path_factory) -> bytes:
    return hubmodel.tar_gz(hubmodel.colour_model(tmp_path_factory.mktemp("model") / "birds"))


@pytest.fixture(scope="session")
def server(hub_cache, model_tarball):
    """The stand-in internet: hub, label map host and photo host in one loopback server."""
    with StandInServer() as s:
        s.add(MODEL_PATH, model_tarball, "application/x-tar")
        s.add(LABELS_PATH, hubmodel.label_map_csv(), "text/csv")
        yield s


@pytest.fixture(scope="session")
def config(server, hub_cache) -> Config:
    return Config(model_url=server.url(MODEL_PATH), labels_url=server.url(LABELS_PATH), model_cache_dir=str(hub_cache),
                  read_timeout_s=3.0, connect_timeout_s=2.0, trusted_hosts="127.0.0.1")


@pytest.fixture
def env(server, monkeypatch):
    """Service environment pointing at the stand-in; the serving app is rebuilt around it."""
    monkeypatch.setenv("MODEL_URL", server.url(MODEL_PATH))
    monkeypatch.setenv("LABELS_URL", server.url(LABELS_PATH))
    monkeypatch.setenv("READ_TIMEOUT_S", "3")
    monkeypatch.setenv("TRUSTED_HOSTS", "127.0.0.1")  # the stand-in internet lives on loopback
    app.reset()
    yield monkeypatch
    app.reset()


@pytest.fixture
def serve_photo(server):
    return lambda class_id, fmt="JPEG", **params: photo_url(server, class_id, fmt, **params)
