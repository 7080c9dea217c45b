"""A model's contract, read from the model: input size, normalization, labels and threshold.

Generated colour models differ from the birds model one way each (another size, a float model whose
metadata says mean = std = 127.5, int8, no metadata, 2101 classes); the real lite model's metadata
is read as its publisher wrote it.
"""

from __future__ import annotations

import numpy as np
import pytest

from function.errors import InputShapeError, ModelFormatError
from function.model import metadata
from function.model.contract import RAW_PIXELS, UNIT_RANGE
from function.model.litert import LiteRTModel
from standin import litemodels, photos
from tests.support import LITE_MODEL, needs_lite_model

CLASSES = [0, 9, 42, 99, 123, 500, 555, 777, 900, 963]


def colours(class_ids: list[int], size: int = 224) -> np.ndarray:
    """Photos of the class colours as the decoder gives them: 8-bit RGB at the model's size."""
    return np.stack([np.broadcast_to(np.asarray(photos.class_colour(k), np.uint8), (size, size, 3))
                     for k in class_ids])


def top1(model: LiteRTModel, class_ids: list[int]) -> list[int]:
    return [int(model.predict(colours([k], model.height)).argmax()) for k in class_ids]


@pytest.fixture(scope="module")
def float_127(tmp_path_factory) -> bytes:
    """Float, 192x192, trained for [-1, 1] input; its metadata says mean = std = 127.5."""
    plain = litemodels.colour_tflite(size=192, unit_input=(-1.0, 1.0))
    return litemodels.with_metadata(plain, mean=[127.5], std=[127.5], threshold=0.5, label_files=[
        ("ids.txt", None, [f"/m/{k:05d}" for k in range(965)]),
        ("names-fr.txt", "fr", [f"oiseau {k}" for k in range(965)]),
        ("names-en.txt", "en", [f"bird {k}" for k in range(965)])])


@pytest.fixture(scope="module")
def int8_model() -> bytes:
    return litemodels.colour_tflite(quantized="int8")


@pytest.fixture(scope="module")
def plain_float() -> bytes:
    return litemodels.colour_tflite()


@pytest.fixture(scope="module")
def plain_uint8() -> bytes:
    return litemodels.colour_tflite(quantized="uint8")


# -- the real lite model ----------------------------------------------------------------------------


@needs_lite_model
def test_the_lite_models_metadata_is_read_as_published():
    meta = metadata.read(LITE_MODEL.read_bytes())
    assert meta is not None
    assert (meta.color_space, meta.mean, meta.std) == ("rgb", (127.5,), (127.5,))
    assert meta.score_threshold == pytest.approx(0.2)
    assert [(f.name, f.locale, len(f.lines)) for f in meta.label_files] == [
        ("probability-labels.txt", None, 965), ("probability-labels-en.txt", "en", 965)]
    english = meta.labels()
    assert english is not None and english.name == "probability-labels-en.txt"
    assert english.lines[0] == "Haemorhous cassinii" and english.lines[964] == "None"


@needs_lite_model
def test_the_lite_model_takes_raw_pixels_as_its_metadata_and_quantization_say():
    # mean = std = 127.5 then scale 1/128, zero point 128: within one step of the pixel itself.
    model = LiteRTModel(LITE_MODEL)
    spec = model.contract.input
    assert (spec.height, spec.width, spec.dtype, spec.normalization) == (224, 224, "uint8", "metadata")
    pixels = np.resize(np.arange(256, dtype=np.uint8), (1, 224, 224, 3))  # every 8-bit value
    exact = np.round(((pixels.astype(np.float64) - 127.5) / 127.5) * 128 + 128)
    assert np.abs(exact - pixels).max() <= 1
    assert np.array_equal(spec.prepare(pixels), pixels)
    assert model.contract.labels is not None and len(model.contract.labels) == model.num_classes == 965


# -- generated models, one difference each ----------------------------------------------------------


def test_a_float_model_without_metadata_takes_unit_range_exactly_as_before(plain_float):
    model = LiteRTModel(plain_float)
    spec = model.contract.input
    assert (spec.normalization, model.contract.labels, model.contract.score_threshold) == (UNIT_RANGE, None, None)
    pixels = colours([42, 555])
    assert np.array_equal(spec.prepare(pixels), pixels.astype(np.float32) / 255.0)  # the former to_input
    assert top1(model, CLASSES) == CLASSES


def test_a_float_model_whose_metadata_says_127_5_gets_minus_one_to_one(float_127):
    model = LiteRTModel(float_127)
    spec = model.contract.input
    assert (spec.height, spec.width, spec.mean, spec.std) == (192, 192, (127.5,), (127.5,))
    black_and_white = np.zeros((2, 192, 192, 3), np.uint8)
    black_and_white[1] = 255
    prepared = spec.prepare(black_and_white)
    assert prepared.dtype == np.float32 and prepared.min() == -1.0 and prepared.max() == 1.0
    assert top1(model, CLASSES) == CLASSES  # fed [0,1], every colour would land in the cube's upper half


def test_the_english_label_file_is_chosen_among_several(float_127):
    contract = LiteRTModel(float_127).contract
    assert (contract.labels_file, contract.labels[7]) == ("names-en.txt", "bird 7")
    assert contract.score_threshold == pytest.approx(0.5)


def test_a_model_at_another_size_refuses_pixels_at_224(float_127):
    with pytest.raises(InputShapeError, match=r"192x192"):
        LiteRTModel(float_127).predict(colours([5]))


def test_an_int8_model_without_metadata_takes_raw_pixels_shifted_by_128(int8_model):
    model = LiteRTModel(int8_model)
    spec = model.contract.input
    assert (spec.dtype, spec.normalization) == ("int8", RAW_PIXELS)
    pixels = np.zeros((1, 224, 224, 3), np.uint8)
    pixels[0, 0, 0] = (0, 128, 255)
    assert spec.prepare(pixels)[0, 0, 0].tolist() == [-128, 0, 127]
    assert top1(model, CLASSES) == CLASSES


def test_a_uint8_model_without_metadata_takes_raw_pixels(plain_uint8):
    model = LiteRTModel(plain_uint8)
    pixels = colours([42])
    assert model.contract.input.normalization == RAW_PIXELS
    assert np.array_equal(model.contract.input.prepare(pixels), pixels)
    assert top1(model, CLASSES) == CLASSES


def test_a_uint8_model_whose_metadata_is_not_the_identity_is_normalized_and_quantized(plain_uint8):
    # Metadata that contradicts the tensor's quantization (mean 0, std 1: pixels as they are, in a
    # tensor whose steps are 1/255) is applied as written: (p - 0) / 1 quantized is clipped at 255.
    model = LiteRTModel(litemodels.with_metadata(plain_uint8, mean=[0.0], std=[1.0]))
    spec = model.contract.input
    assert spec.normalization == "metadata" and spec.raw_offset is None
    pixels = np.zeros((1, 224, 224, 3), np.uint8)
    pixels[0, 0, 0] = (0, 1, 2)
    assert spec.prepare(pixels)[0, 0, 0].tolist() == [0, 255, 255]


def test_a_model_with_2101_classes_says_so(tmp_path):
    plain = litemodels.colour_tflite(classes=2101)
    names = [f"c{k}" for k in range(2101)]
    model = LiteRTModel(litemodels.with_metadata(plain, label_files=[("labels.txt", None, names)]))
    assert model.num_classes == model.contract.classes == 2101
    assert len(model.contract.labels) == 2101
    assert top1(model, [42, 900]) == [42, 900]


def test_metadata_naming_a_label_file_the_model_lacks_is_refused(plain_float):
    with_labels = litemodels.with_metadata(plain_float, label_files=[("labels.txt", None, ["a"] * 965)])
    without_zip = with_labels[:with_labels.rindex(b"PK\x03\x04")]  # the flatbuffer, its zip cut off
    with pytest.raises(ModelFormatError, match="labels.txt"):
        LiteRTModel(without_zip)


def test_a_metadata_buffer_that_is_not_tflite_metadata_is_refused(plain_float):
    with_meta = litemodels.with_metadata(plain_float, mean=[127.5], std=[127.5])
    damaged = with_meta.replace(b"M001", b"X001", 1)  # the metadata flatbuffer's file identifier
    with pytest.raises(ModelFormatError, match="M001"):
        LiteRTModel(damaged)


def test_normalization_per_channel_is_applied_per_channel(plain_float):
    model = LiteRTModel(litemodels.with_metadata(plain_float, mean=[0.0, 0.0, 0.0], std=[255.0, 127.5, 85.0]))
    pixels = np.full((1, 224, 224, 3), 255, np.uint8)
    assert model.contract.input.prepare(pixels)[0, 0, 0].tolist() == [1.0, 2.0, 3.0]


def test_a_model_without_an_image_size_of_its_own_is_refused_at_load():
    # Its input is [-1,-1,-1,3]: the interpreter reports 1x1, which would decode every photo to one pixel.
    with pytest.raises(ModelFormatError, match="no image size of its own"):
        LiteRTModel(litemodels.colour_tflite(size=None))
