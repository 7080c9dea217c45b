"""The LiteRT runtime: float and uint8 flatbuffers, any batch size, several threads, no TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from function.config import Config
from function.model import handles
from function.model.cache import fetch_tflite
from function.model.litert import InputShapeError, LiteRTModel, ModelFormatError
from standin import hubmodel, photos

ROOT = Path(__file__).resolve().parents[2]
# Where TF Hub serves the official lite model (uint8 in and out); the stand-in serves the uint8
# colour model there, with the same query.
LITE_PATH = "/google/lite-model/aiy/vision/classifier/birds_V1/3"
LITE_QUERY = "?lite-format=tflite"
CLASSES = [0, 9, 42, 99, 123, 500, 555, 777, 900, 963]


def colour_batch(class_ids: list[int]) -> np.ndarray:
    """Photos of the class colours as the service decodes them: 8-bit RGB."""
    return np.stack([np.broadcast_to(np.asarray(photos.class_colour(k), np.uint8), (224, 224, 3))
                     for k in class_ids])


@pytest.fixture(scope="module")
def float_tflite(tmp_path_factory) -> Path:
    return hubmodel.colour_tflite(tmp_path_factory.mktemp("tflite") / "colour.tflite")


@pytest.fixture(scope="module")
def uint8_tflite(tmp_path_factory) -> Path:
    return hubmodel.colour_tflite_uint8(tmp_path_factory.mktemp("tflite") / "colour-uint8.tflite")


@pytest.fixture(scope="module")
def uint8_url(server, uint8_tflite) -> str:
    server.add(LITE_PATH, uint8_tflite.read_bytes(), "application/octet-stream")
    return server.url(LITE_PATH + LITE_QUERY)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environment, cwd=ROOT, timeout=120)


def test_the_float_model_answers_the_colour_models_scores(float_tflite):
    model = LiteRTModel(float_tflite)
    scores = model.predict(colour_batch(CLASSES))
    assert scores.dtype == np.float32 and scores.shape == (len(CLASSES), hubmodel.NUM_CLASSES)
    assert scores.argmax(axis=1).tolist() == CLASSES
    assert not model.quantized and model.num_classes == hubmodel.NUM_CLASSES
    # expected_scores works from the exact mean; float32 means of 50176 pixels differ in the 4th digit
    expected = np.stack([hubmodel.expected_scores(tuple(photos.class_colour(k)[c] / 255 for c in range(3)))
                         for k in CLASSES])
    assert np.abs(scores - expected).max() < 2e-3


def test_a_uint8_tflite_served_by_url_answers_probabilities_in_0_1_with_the_right_top_class(uint8_url, tmp_path):
    assert handles.is_tflite(uint8_url)
    path = fetch_tflite(uint8_url, tmp_path / "cache")
    model = LiteRTModel(path, source=uint8_url)
    assert model.quantized
    assert (model.input.dtype, model.output.dtype) == ("uint8", "uint8")
    assert model.input.scale > 0 and model.output.scale > 0
    scores = model.predict(colour_batch(CLASSES))
    assert scores.dtype == np.float32 and scores.shape == (len(CLASSES), hubmodel.NUM_CLASSES)
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    assert scores.argmax(axis=1).tolist() == CLASSES
    assert (scores.max(axis=1) > 0.5).all()  # dequantized: real probabilities, not raw uint8 counts
    assert abs(float(scores.sum(axis=1).mean()) - 1.0) < 0.1


def test_the_uint8_model_keeps_the_top_class_for_every_class_colour(uint8_tflite):
    model = LiteRTModel(uint8_tflite)
    ids = list(range(hubmodel.BACKGROUND_ID))
    assert model.predict(colour_batch(ids)).argmax(axis=1).tolist() == ids


def test_a_fixed_batch_model_runs_any_batch_size_one_call_per_image(uint8_tflite):
    model = LiteRTModel(uint8_tflite)
    assert not model.dynamic_batch  # [1,224,224,3], like the official lite model
    one_by_one = np.concatenate([model.predict(colour_batch([k])) for k in CLASSES[:3]])
    assert np.array_equal(model.predict(colour_batch(CLASSES[:3])), one_by_one)


def test_a_dynamic_batch_model_is_resized_as_the_batch_size_changes(float_tflite):
    model = LiteRTModel(float_tflite)
    assert model.dynamic_batch
    single = {k: model.predict(colour_batch([k]))[0] for k in CLASSES[:4]}
    for ids in (CLASSES[:4], CLASSES[:2], CLASSES[1:4], CLASSES[:1]):
        scores = model.predict(colour_batch(ids))
        assert np.allclose(scores, np.stack([single[k] for k in ids]), atol=1e-6)


def test_an_empty_batch_answers_no_rows(float_tflite):
    assert LiteRTModel(float_tflite).predict(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, 965)


@pytest.mark.parametrize("shape", [(224, 224, 3), (1, 224, 224), (2, 224, 224, 4), (1, 100, 100, 3)])
def test_a_batch_of_the_wrong_shape_is_refused_naming_the_expected_shape(float_tflite, shape):
    with pytest.raises(InputShapeError, match=r"\[N,224,224,3\]") as error:
        LiteRTModel(float_tflite).predict(np.zeros(shape, np.uint8))
    assert isinstance(error.value, ValueError)


def test_bytes_that_are_not_a_tflite_model_are_refused(tmp_path):
    with pytest.raises(ModelFormatError, match="not a usable TFLite model"):
        LiteRTModel(b"not a flatbuffer" * 64)


def test_a_model_loads_from_bytes_and_records_its_timings(float_tflite):
    model = LiteRTModel(float_tflite.read_bytes())
    model.warmup()
    assert set(model.timings_ms) == {"litert_import", "model_load", "warmup"}


def test_threads_calling_at_once_each_get_their_own_interpreter_and_the_right_answers(float_tflite):
    model = LiteRTModel(float_tflite)
    errors: list[BaseException] = []
    interpreters: list[object] = []  # kept alive, so no two can share an id()
    lock = threading.Lock()
    start = threading.Barrier(4)

    def work(worker: int) -> None:
        try:
            start.wait()
            for i in range(30):
                ids = [CLASSES[(worker + i + j) % len(CLASSES)] for j in range(1 + (worker + i) % 3)]
                assert model.predict(colour_batch(ids)).argmax(axis=1).tolist() == ids
            with lock:
                interpreters.append(model._local.runner.interpreter)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({id(it) for it in interpreters}) == 4


def test_importing_the_runtime_and_serving_a_tflite_never_imports_tensorflow(float_tflite):
    result = run_python(f"""
        import sys
        import function.model.litert as litert
        model = litert.LiteRTModel({str(float_tflite)!r})
        model.warmup()
        import numpy as np
        print(int(model.predict(np.full((1, 224, 224, 3), 255, np.uint8)).argmax()))
        assert "tensorflow" not in sys.modules, "tensorflow was imported"
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(hubmodel.expected_ranking((1.0, 1.0, 1.0))[0])]
    assert result.stderr == ""  # not even LiteRT's XNNPACK notice


def test_without_tensorflow_a_tflite_serves_and_a_hub_module_fails_naming_the_package_and_make_model(
        float_tflite, server):
    result = run_python(f"""
        import sys
        sys.modules["tensorflow"] = None  # as if it were not installed: importing it raises ImportError
        import numpy as np
        from function.errors import TensorFlowMissing
        from function.model import convert
        from function.model.litert import LiteRTModel
        model = LiteRTModel({str(float_tflite)!r})
        print(int(model.predict(np.zeros((1, 224, 224, 3), np.uint8)).argmax()))
        try:
            convert.convert({server.url("/google/aiy/vision/classifier/birds_V1/1")!r}, "/nonexistent/m.tflite")
        except TensorFlowMissing as exc:
            print("ERROR", exc)
        else:
            print("converted?!")
    """)
    assert result.returncode == 0, result.stderr
    first, error = result.stdout.splitlines()
    assert first == "0"  # black is class 0's colour
    assert error.startswith("ERROR ")
    assert "'tensorflow'" in error and "make model" in error and "birds_V1/1" in error


@pytest.mark.parametrize(("handle", "expected"), [
    ("https://tfhub.dev/google/lite-model/aiy/vision/classifier/birds_V1/3?lite-format=tflite", True),
    ("https://example.com/models/birds.tflite", True),
    ("https://example.com/models/birds.TFLITE?x=1", True),
    ("file:///models/birds.tflite", True),
    ("/models/birds.tflite", True),
    ("models/birds.tflite", True),
    ("https://tfhub.dev/google/aiy/vision/classifier/birds_V1/1", False),
    ("https://tfhub.dev/google/aiy/vision/classifier/birds_V1/1?tf-hub-format=compressed", False),
    ("https://example.com/birds.tflite.tar.gz", False),
    ("/models/birds_saved_model", False),
    ("file:///models/birds_saved_model", False),
])
def test_tflite_handles_are_recognised(handle, expected):
    assert handles.is_tflite(handle) is expected


@pytest.mark.parametrize(("environ", "expected"), [
    ({"MODEL_CACHE_DIR": "/m", "TFHUB_CACHE_DIR": "/t", "XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/m"),
    ({"TFHUB_CACHE_DIR": "/t", "XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/t"),
    ({"MODEL_CACHE_DIR": "", "TFHUB_CACHE_DIR": "", "XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/x/bird-classifier"),
    ({"HOME": "/h"}, "/h/.cache/bird-classifier"),
])
def test_the_default_cache_directory_follows_the_environment(environ, expected):
    assert Config.from_env(environ).model_cache_dir == expected


def test_a_local_tflite_path_or_file_url_is_used_in_place(float_tflite, tmp_path):
    assert fetch_tflite(str(float_tflite), tmp_path / "cache") == float_tflite
    assert fetch_tflite(float_tflite.as_uri(), tmp_path / "cache") == float_tflite
    assert not (tmp_path / "cache").exists()
    with pytest.raises(FileNotFoundError):
        fetch_tflite(str(tmp_path / "missing.tflite"), tmp_path / "cache")
