"""The composition root: one app from one Config, with a lifecycle that ends every thread it started."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading

import numpy as np
import pytest

from function.app import App
from function.core.sources import PhotoSource
from tests.support import ROOT


def _threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def test_stop_ends_the_photo_pool_and_the_call_queue(config, serve_photo):
    before = {t.ident for t in threading.enumerate()}  # other apps' threads (other tests) are not this one's
    app = App(config)
    result = app.classify([PhotoSource.url(serve_photo(12)), PhotoSource.url(serve_photo(40))], 1)
    assert [r.predictions[0].id for r in result.results] == [12, 40]
    started = {t.ident for t in _threads("photo") + _threads("model-call")} - before
    assert started, "classifying started no photo or model-call threads"
    app.stop()
    alive = {t.ident for t in _threads("photo") + _threads("model-call")} & started
    assert not alive, f"threads still running after stop(): {alive}"


def test_stop_is_idempotent_and_a_stopped_app_refuses_model_calls(config, serve_photo):
    app = App(config)
    app.stop()
    app.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        app._batcher.predict(np.zeros((1, 224, 224, 3), np.uint8))


def test_importing_the_package_has_no_side_effects():
    # Importing every module reads no files it serves, sets no library global, writes no environment
    # variable and starts no thread: all of that happens in App or where the thing is first used.
    probe = """
import os, sys, threading, importlib, pkgutil
import PIL.Image, logging
before_env, before_pixels = dict(os.environ), PIL.Image.MAX_IMAGE_PIXELS
before_threads, before_handlers = threading.active_count(), list(logging.getLogger().handlers)
import function
for m in pkgutil.walk_packages(function.__path__, "function."):
    importlib.import_module(m.name)
assert dict(os.environ) == before_env, set(os.environ.items()) ^ set(before_env.items())
assert PIL.Image.MAX_IMAGE_PIXELS == before_pixels, PIL.Image.MAX_IMAGE_PIXELS
assert threading.active_count() == before_threads, threading.enumerate()
assert logging.getLogger().handlers == before_handlers
print("clean", len(list(pkgutil.walk_packages(function.__path__, "function."))))
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("clean")


def test_once_ready_every_model_call_worker_has_its_warm_interpreter_and_a_request_builds_none(
        config, serve_photo, monkeypatch):
    from function.model.litert import LiteRTModel

    built: list[str] = []
    original = LiteRTModel._new_runner

    def counting(self):
        built.append(threading.current_thread().name)
        return original(self)

    monkeypatch.setattr(LiteRTModel, "_new_runner", counting)
    app = App(dataclasses.replace(config, inference_workers=2))
    try:
        assert app.wait_until_ready(120).ready
        assert {"model-call-0", "model-call-1"} <= set(built)  # warmed on their own threads, before any request
        before = len(built)
        result = app.classify([PhotoSource.url(serve_photo(n)) for n in (3, 4, 5)], 1)
        assert [r.predictions[0].id for r in result.results] == [3, 4, 5]
        assert len(built) == before  # the request ran on the warm interpreters
    finally:
        app.stop()
