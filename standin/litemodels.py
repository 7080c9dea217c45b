"""``.tflite`` models that differ from the birds model in one way each, with or without TFLite Metadata.

The stand-in colour model (:mod:`standin.hubmodel`) built at another input size, for another input
range, quantized to int8, or with more classes; and :func:`with_metadata`, which writes TFLite
Metadata (``ModelMetadata``: image properties, normalization, score threshold, label files) into a
flatbuffer and appends the label files as a zip, as the metadata populator of ``tflite-support``
does, so the tests exercise the same layout as the real lite model's.

The metadata is written with the ``flatbuffers`` builder by the field numbers of
``metadata_schema.fbs`` (the function reads them by the same numbers); the model's own schema is
edited with LiteRT's generated object API.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .hubmodel import BACKGROUND_ID, NUM_CLASSES, SHARPNESS, UINT8_CHANNEL_CLIP, prototypes

RGB = 1
NORMALIZATION, SCORE_THRESHOLDING = 1, 3
IMAGE_PROPERTIES = 2
TENSOR_AXIS_LABELS = 2


def colour_function(tf, *, size: int | None = 224, classes: int = NUM_CLASSES,
                    unit_input: tuple[float, float] = (0.0, 1.0), clip: float | None = None, batch: int | None = None):
    """The colour model (see :mod:`standin.hubmodel`) as a concrete function at ``size`` x ``size``
    (``None``: any size, a model with no image size of its own).

    ``unit_input``: the input values that mean colour 0 and colour 1 (``(-1, 1)`` for a model whose
    metadata says mean = std = 127.5). Classes past the birds model's 965 sit far outside the colour
    cube, like the background, so they never win.
    """
    protos = np.full((classes, 3), 5.0, np.float32)
    protos[:min(classes, NUM_CLASSES)] = prototypes()[:classes]
    table = tf.constant(protos)
    low, high = unit_input

    @tf.function(input_signature=[tf.TensorSpec([batch, size, size, 3], tf.float32, name="images")])
    def classify(images):
        mean = (tf.reduce_mean(images, axis=[1, 2]) - low) / (high - low)
        diff = mean[:, None, :] - table[None, :, :]
        if clip is not None:
            diff = tf.clip_by_value(diff, -clip, clip)
        return tf.nn.softmax(tf.reduce_sum(diff * (diff * -SHARPNESS), axis=2))

    return classify.get_concrete_function()


def colour_tflite(*, size: int | None = 224, classes: int = NUM_CLASSES, unit_input: tuple[float, float] = (0.0, 1.0),
                  quantized: str | None = None) -> bytes:
    """The colour model as a ``.tflite``: float32, or fully quantized with ``quantized`` ("uint8", "int8")
    input and output (calibrated on solid class colours, one call per image like the official model)."""
    import tensorflow as tf

    clip = UINT8_CHANNEL_CLIP if quantized else None
    fn = colour_function(tf, size=size, classes=classes, unit_input=unit_input, clip=clip,
                         batch=1 if quantized else None)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], None)
    if quantized:
        low, high = unit_input

        def representative():
            for k in list(range(0, BACKGROUND_ID, 37)) + [0, 9, 99, 963, 555]:
                colour = low + (high - low) * np.asarray(prototypes()[k], np.float32)
                yield [np.broadcast_to(colour, (1, size, size, 3)).copy()]

        dtype = {"uint8": tf.uint8, "int8": tf.int8}[quantized]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
    return bytes(converter.convert())


def with_metadata(model: bytes, *, name: str = "colours", mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, threshold: float | None = None,
                  label_files: Sequence[tuple[str, str | None, Sequence[str]]] = ()) -> bytes:
    """``model`` with TFLite Metadata: RGB image input, ``mean``/``std`` normalization, a score
    threshold, and ``label_files`` as (file name, locale, lines) of the output's class axis."""
    from ai_edge_litert import schema_py_generated as schema

    meta = _metadata(name, mean, std, threshold, [(f, loc) for f, loc, _ in label_files])
    graph = schema.ModelT.InitFromPackedBuf(model, 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(meta, np.uint8)
    graph.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = b"TFLITE_METADATA"
    entry.buffer = len(graph.buffers) - 1
    graph.metadata = [*(graph.metadata or []), entry]
    import flatbuffers

    builder = flatbuffers.Builder(len(model) + len(meta) + 1024)
    builder.Finish(graph.Pack(builder), file_identifier=b"TFL3")
    out = bytes(builder.Output())
    if label_files:
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            for file_name, _, lines in label_files:
                z.writestr(file_name, "\n".join(lines) + "\n")
        out += archive.getvalue()
    return out


def _metadata(name: str, mean: Sequence[float] | None, std: Sequence[float] | None, threshold: float | None,
              files: list[tuple[str, str | None]]) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def table(fields: list[tuple[str, int, object]]) -> int:
        """A table of (kind, field number, value) with the values' offsets already built."""
        b.StartObject(max((n for _, n, _ in fields), default=-1) + 1)
        for kind, number, value in fields:
            if kind == "offset":
                b.PrependUOffsetTRelativeSlot(number, value, 0)
            elif kind == "byte":
                b.PrependUint8Slot(number, value, 0)
            elif kind == "float":
                b.PrependFloat32Slot(number, value, 0.0)
        return b.EndObject()

    def offsets(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return b.EndVector()

    def floats(values: Sequence[float]) -> int:
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependFloat32(float(v))
        return b.EndVector()

    input_units = []
    if mean is not None and std is not None:
        options = table([("offset", 0, floats(mean)), ("offset", 1, floats(std))])
        input_units.append(table([("byte", 0, NORMALIZATION), ("offset", 1, options)]))
    image = table([("byte", 0, RGB)])
    content = table([("byte", 0, IMAGE_PROPERTIES), ("offset", 1, image)])
    input_name = b.CreateString("image")
    input_fields = [("offset", 0, input_name), ("offset", 3, content)]
    if input_units:
        input_fields.append(("offset", 4, offsets(input_units)))
    input_tensor = table(input_fields)

    output_units = []
    if threshold is not None:
        options = table([("float", 0, threshold)])
        output_units.append(table([("byte", 0, SCORE_THRESHOLDING), ("offset", 1, options)]))
    associated = []
    for file_name, locale in files:
        fields = [("offset", 0, b.CreateString(file_name)), ("byte", 2, TENSOR_AXIS_LABELS)]
        if locale:
            fields.append(("offset", 3, b.CreateString(locale)))
        associated.append(table(fields))
    output_fields = [("offset", 0, b.CreateString("probability"))]
    if output_units:
        output_fields.append(("offset", 4, offsets(output_units)))
    if associated:
        output_fields.append(("offset", 6, offsets(associated)))
    output_tensor = table(output_fields)

    subgraph = table([("offset", 2, offsets([input_tensor])), ("offset", 3, offsets([output_tensor]))])
    root = table([("offset", 0, b.CreateString(name)), ("offset", 3, offsets([subgraph]))])
    b.Finish(root, file_identifier=b"M001")
    return bytes(b.Output())


def write(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
