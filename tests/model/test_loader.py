"""MODEL_URL x MODEL_RUNTIME: which runtime serves, where its file comes from, and what happens on failure."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from function.app import App, Process
from function.core.sources import PhotoSource
from function.errors import ConversionError, ModelError
from function.model import convert, loader
from function.model.litert import LiteRTModel
from standin import hubmodel
from tests.support import LABELS_PATH, MODEL_PATH, ROOT

CLASSES = [3, 58, 404, 777, 963]


@pytest.fixture(scope="module")
def float_tflite(tmp_path_factory) -> Path:
    return hubmodel.colour_tflite(tmp_path_factory.mktemp("loader") / "colour.tflite")


def spec(url: str, tmp_path: Path, runtime: str = "auto") -> loader.ModelSpec:
    return loader.ModelSpec(url, runtime, str(tmp_path / "models"), warmup=True, tfhub_cache_dir=None)


def fresh_app(config, **changes) -> App:
    """An app with its own resource cache: the model is loaded for this test, not shared with others."""
    return App(replace(config, **changes), process=Process())


def scores_of(app: App, urls: list[str]) -> np.ndarray:
    result = app.classify([PhotoSource.url(u) for u in urls], 5)
    assert all(r.ok for r in result.results), [r.error for r in result.results]
    return np.array([[p.score for p in r.predictions] for r in result.results])


def test_auto_converts_a_tf_hub_module_and_serves_it_on_litert(server, tmp_path):
    model = loader.load(spec(server.url(MODEL_PATH), tmp_path))
    assert isinstance(model, LiteRTModel) and model.runtime == "litert"
    assert "conversion" in model.timings_ms
    again = loader.load(spec(server.url(MODEL_PATH), tmp_path))  # the second load finds the cached flatbuffer
    assert "cache_lookup" in again.timings_ms and "conversion" not in again.timings_ms


def test_litert_scores_match_tensorflow_end_to_end(config, serve_photo, tmp_path):
    urls = [serve_photo(k) for k in CLASSES]
    lite = fresh_app(config, model_runtime="auto", model_cache_dir=str(tmp_path / "models"))
    reference = fresh_app(config, model_runtime="tensorflow")
    try:
        assert lite._model.get(timeout=120).runtime == "litert"
        assert reference._model.get(timeout=120).runtime == "tensorflow"
        assert np.abs(scores_of(lite, urls) - scores_of(reference, urls)).max() < 1e-5
        tops = lite.classify([PhotoSource.url(u) for u in urls], 1).results
        assert [r.predictions[0].id for r in tops] == CLASSES
    finally:
        lite.stop()
        reference.stop()


def test_a_tflite_url_runs_on_litert_and_is_downloaded_once(server, float_tflite, tmp_path):
    url = server.add("/models/colour.tflite", float_tflite.read_bytes(), "application/octet-stream")
    first = loader.load(spec(url, tmp_path))
    second = loader.load(spec(url, tmp_path))
    assert first.runtime == second.runtime == "litert"
    assert server.hits["/models/colour.tflite"] == 1


def test_a_local_tflite_path_or_file_url_runs_in_place(float_tflite, tmp_path):
    for handle in (str(float_tflite), float_tflite.as_uri()):
        model = loader.load(spec(handle, tmp_path))
        assert model.predict(np.zeros((1, 224, 224, 3), np.uint8)).argmax() == 0  # black: class 0
    assert not (tmp_path / "models").exists()  # nothing copied into the cache


def test_the_tensorflow_runtime_refuses_a_tflite_saying_which_runtime_runs_it(float_tflite, tmp_path):
    with pytest.raises(ModelError, match="runs on LiteRT"):
        loader.load(spec(str(float_tflite), tmp_path, runtime="tensorflow"))


def test_a_failed_conversion_falls_back_to_tensorflow_with_one_warning_under_auto(server, tmp_path, monkeypatch,
                                                                                   caplog):
    def broken(handle, out_path, quiet=True, **_):
        raise ConversionError("the converter does not support op FancyOp")

    monkeypatch.setattr(convert, "convert", broken)
    with caplog.at_level(logging.WARNING, logger="function.model.loader"):
        model = loader.load(spec(server.url(MODEL_PATH), tmp_path))
    assert model.runtime == "tensorflow"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "FancyOp" in warnings[0].getMessage()


def test_a_failed_conversion_fails_the_load_under_litert(server, tmp_path, monkeypatch):
    def broken(handle, out_path, quiet=True, **_):
        raise ConversionError("the converter does not support op FancyOp")

    monkeypatch.setattr(convert, "convert", broken)
    with pytest.raises(ModelError, match="FancyOp"):
        loader.load(spec(server.url(MODEL_PATH), tmp_path, runtime="litert"))


def test_a_module_that_cannot_be_downloaded_fails_the_load_without_a_second_try_on_tensorflow(server, tmp_path):
    from standin.server import Reply

    server.add("/models/down/1", lambda _req: Reply(b"busy", 503, "text/plain"))
    with pytest.raises(ModelError, match="cannot download"):
        loader.load(spec(server.url("/models/down/1"), tmp_path))
    assert server.hits["/models/down/1"] == 1  # no fallback download: the back-off retries it later


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=ROOT, timeout=180)


def test_a_service_without_tensorflow_serves_a_tflite_and_reports_a_hub_module_clearly(server, float_tflite,
                                                                                        tmp_path):
    # The serving image has no TensorFlow: a .tflite serves; a TF Hub module fails the load with a message
    # that names the missing package and `make model`, shown by /readyz and the 503s.
    result = run_python(f"""
        import sys, json
        sys.modules["tensorflow"] = None
        sys.modules["tensorflow_hub"] = None
        from function.app import App
        from function.config import Config
        from function.errors import NotReady
        base = dict(labels_url={server.url(LABELS_PATH)!r}, model_cache_dir={str(tmp_path)!r})
        app = App(Config(model_url={str(float_tflite)!r}, **base))
        app._model.get(timeout=60)
        print(json.dumps(app.readiness().status["model"]))
        hub = App(Config(model_url={server.url(MODEL_PATH)!r}, **base))
        try:
            hub._model.get(timeout=60)
        except NotReady as err:
            print(json.dumps(hub.readiness().status["model"]))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    served, failed = result.stdout.splitlines()
    assert '"runtime": "litert"' in served and '"state": "ready"' in served
    assert '"state": "failed"' in failed
    assert "tensorflow" in failed and "make model" in failed
