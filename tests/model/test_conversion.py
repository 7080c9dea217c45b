"""Conversion of TF Hub modules and SavedModels to float32 .tflite: LiteRT answers as TensorFlow does.

Each model is served by the stand-in hub on 127.0.0.1 and resolved through tensorflow_hub's real
download and cache path, as the service does; the comparison is made here, independently of the
difference the converter measures for its manifest.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from function.config import Config
from function.errors import ConversionError
from function.model import convert as conv
from function.model.__main__ import main as convert_command
from function.model.cache import ConvertedCache
from function.model.litert import LiteRTModel
from standin import hubmodel, photos

MODULE_PATH = "/google/aiy/vision/classifier/birds_V1/1"  # the frozen colour model, served by tests/conftest.py
CLASSES = [0, 7, 42, 99, 123, 500, 777, 963]


def comparison_inputs() -> np.ndarray:
    """Class colours (as 8-bit photos give them) and random images, [N,224,224,3] in [0,1]."""
    colours = [np.broadcast_to(np.asarray(photos.class_colour(k), np.float32) / 255, (224, 224, 3)) for k in CLASSES]
    noise = np.random.default_rng(7).random((3, 224, 224, 3), dtype=np.float32)
    return np.concatenate([np.stack(colours), noise]).astype(np.float32)


def tensorflow_scores(handle: str, signature: str, input_name: str, output_name: str, batch: np.ndarray):
    import tensorflow as tf
    import tensorflow_hub as hub

    fn = hub.load(handle).signatures[signature]
    return fn(**{input_name: tf.constant(batch)})[output_name].numpy()


def assert_litert_matches_tensorflow(handle: str, out, signature: str, input_name: str, output_name: str):
    result = conv.convert(handle, out)
    assert (result.signature, result.input_name, result.output_name) == (signature, input_name, output_name)
    assert result.max_abs_diff <= 1e-5
    batch = comparison_inputs()
    litert = LiteRTModel(out).run(batch)  # the tensors TensorFlow takes, unnormalized
    tf_scores = tensorflow_scores(handle, signature, input_name, output_name, batch)
    assert litert.shape == tf_scores.shape == (len(batch), hubmodel.NUM_CLASSES)
    assert np.abs(litert - tf_scores).max() <= 1e-5
    assert litert[:len(CLASSES)].argmax(axis=1).tolist() == CLASSES
    return result


@pytest.fixture(scope="module")
def variables_url(server, tmp_path_factory):
    module = hubmodel.colour_model_with_variables(tmp_path_factory.mktemp("vars") / "birds")
    assert (module / "variables" / "variables.index").is_file()  # weights really are variables, not frozen
    return server.add("/models/colour-variables/1", hubmodel.tar_gz(module), "application/x-tar")


@pytest.fixture(scope="module")
def tf2_url(server, tmp_path_factory):
    model = hubmodel.tf2_colour_model(tmp_path_factory.mktemp("tf2") / "colours")
    return server.add("/models/colour-tf2/1", hubmodel.tar_gz(model), "application/x-tar")


def test_a_frozen_tf1_hub_module_converts_with_its_default_signature_and_empty_tags(server, tmp_path):
    result = assert_litert_matches_tensorflow(server.url(MODULE_PATH), tmp_path / "m.tflite",
                                              "default", "images", "default")
    assert result.tags == []
    assert os.path.isfile(os.path.join(result.resolved_path, "tfhub_module.pb"))  # resolved into the hub cache


def test_a_tf1_hub_module_with_a_variables_directory_converts(variables_url, tmp_path):
    result = assert_litert_matches_tensorflow(variables_url, tmp_path / "m.tflite", "default", "images", "default")
    assert os.path.isdir(os.path.join(result.resolved_path, "variables"))


def test_a_tf2_saved_model_converts_with_its_serving_signature(tf2_url, tmp_path):
    result = assert_litert_matches_tensorflow(tf2_url, tmp_path / "m.tflite", "serving_default", "pixels",
                                              "probabilities")
    assert result.tags == ["serve"]


def test_a_model_without_a_usable_signature_is_refused_with_the_signatures_it_has(server, tmp_path):
    model = hubmodel.tf2_colour_model(tmp_path / "odd", signature="something_else")
    url = server.add("/models/odd-signature/1", hubmodel.tar_gz(model), "application/x-tar")
    with pytest.raises(ConversionError, match="no signature named default or serving_default.*something_else"):
        conv.convert(url, tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_an_unreachable_module_fails_the_conversion_naming_the_handle(server, tmp_path):
    url = server.url("/models/not-there/1")
    with pytest.raises(ConversionError, match="not-there"):
        conv.convert(url, tmp_path / "m.tflite")


def test_the_command_converts_into_the_cache_and_prints_where_size_and_difference(server, tmp_path, capfd):
    out = tmp_path / "out" / "birds.tflite"
    assert convert_command([server.url(MODULE_PATH), "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
                           Config()) == 0
    printed = capfd.readouterr()
    assert f"model:   {out}" in printed.out
    assert f"size:    {out.stat().st_size} bytes" in printed.out
    assert "max |TensorFlow - LiteRT|" in printed.out
    assert printed.err == ""  # TensorFlow's and the converter's logs are held back
    cached = ConvertedCache(tmp_path / "cache").lookup(server.url(MODULE_PATH))
    assert cached is not None and cached.read_bytes() == out.read_bytes()
