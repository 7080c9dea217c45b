"""Generate models in the TF1 Hub format that the AIY birds classifier uses.

A TF1 Hub module is a directory with ``tfhub_module.pb`` (a ``ModuleDef`` proto: bytes ``08 03``,
format 3), a ``saved_model.pb`` whose meta graph has the empty tag set and a signature ``default``
mapping input ``images`` (float32 [N,224,224,3]) to output ``default`` ([N,965] probabilities),
with the weights frozen into the graph as constants. TF Hub serves it as a tar.gz when asked with
``?tf-hub-format=compressed``.

Two models:

* :func:`colour_model` — tiny and readable: each class ``k`` has a prototype colour and the model
  answers with a softmax over ``-sharpness * |mean_rgb - prototype_k|^2``. Tests use it to prove RGB
  order, [0,1] scaling, id -> label mapping and top-k order end to end.
* :func:`mobilenet_model` — a MobileNet V2 (random weights, 965 classes) frozen the same way, the
  size of the real one, for benchmarks.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np

NUM_CLASSES = 965
BACKGROUND_ID = 964
IMAGE_SIZE = 224
MODULE_DEF_V3 = b"\x08\x03"  # ModuleDef{format: 3}
SHARPNESS = 200.0


def prototype(class_id: int) -> tuple[float, float, float]:
    """The mean colour (RGB in [0,1]) that the colour model maps to ``class_id``.

    Classes 0..963 sit on a 10x10x10 grid: red = ones digit, green = tens, blue = hundreds, each
    step 1/9. The background class sits far outside the cube so it never wins.
    """
    if class_id == BACKGROUND_ID:
        return (5.0, 5.0, 5.0)
    return (class_id % 10 / 9, class_id // 10 % 10 / 9, class_id // 100 % 10 / 9)


def prototypes() -> np.ndarray:
    return np.array([prototype(k) for k in range(NUM_CLASSES)], dtype=np.float32)


def expected_ranking(mean_rgb: tuple[float, float, float]) -> list[int]:
    """Class ids ordered as the colour model ranks them for a photo of this mean colour."""
    d = ((prototypes() - np.asarray(mean_rgb, dtype=np.float32)) ** 2).sum(axis=1)
    return [int(i) for i in np.argsort(d, kind="stable")]


def expected_scores(mean_rgb: tuple[float, float, float]) -> np.ndarray:
    d = ((prototypes() - np.asarray(mean_rgb, dtype=np.float32)) ** 2).sum(axis=1)
    logits = -SHARPNESS * d
    e = np.exp(logits - logits.max())
    return e / e.sum()


def _save_tf1_module(build_graph, export_dir: Path) -> Path:
    """Build a graph with ``build_graph(tf) -> (images, probabilities)`` and save it as a Hub module."""
    import tensorflow as tf

    export_dir = Path(export_dir)
    graph = tf.Graph()
    with graph.as_default():
        images, probabilities = build_graph(tf)
        with tf.compat.v1.Session(graph=graph) as sess:
            signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(
                inputs={"images": images}, outputs={"default": probabilities}
            )
            builder = tf.compat.v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(
                sess, tags=[], signature_def_map={"default": signature}, strip_default_attrs=True
            )
            builder.save()
    (export_dir / "tfhub_module.pb").write_bytes(MODULE_DEF_V3)
    return export_dir


def colour_model(export_dir: Path) -> Path:
    """Write the tiny colour model (see module docstring) as a TF1 Hub module directory."""

    def build(tf):
        images = tf.compat.v1.placeholder(
            tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3], name="images"
        )
        mean = tf.reduce_mean(images, axis=[1, 2])  # [N,3]
        protos = tf.constant(prototypes())  # frozen weights [965,3]
        d = tf.reduce_sum(tf.square(mean[:, None, :] - protos[None, :, :]), axis=2)
        return images, tf.nn.softmax(-SHARPNESS * d, name="default")

    return _save_tf1_module(build, export_dir)


def mobilenet_model(export_dir: Path, seed: int = 0) -> Path:
    """Write a MobileNet V2 (random weights, 965 classes) frozen into a TF1 Hub module directory.

    Built with Keras, traced to a concrete function, its variables converted to constants, and the
    frozen GraphDef imported under the input/output names the real module uses.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    tf.keras.utils.set_random_seed(seed)
    net = tf.keras.applications.MobileNetV2(
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), weights=None, classes=NUM_CLASSES
    )
    _calibrate_batch_norm(tf, net, seed)
    fn = tf.function(lambda x: net(x * 2.0 - 1.0, training=False))
    concrete = fn.get_concrete_function(
        tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)
    )
    frozen = convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    input_name = frozen.inputs[0].name
    output_name = frozen.outputs[0].name

    def build(tf):
        images = tf.compat.v1.placeholder(
            tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3], name="images"
        )
        (out,) = tf.compat.v1.import_graph_def(
            graph_def, input_map={input_name: images}, return_elements=[output_name], name="net"
        )
        return images, tf.identity(out, name="default")

    return _save_tf1_module(build, export_dir)


def _calibrate_batch_norm(tf, net, seed: int) -> None:
    """Set every BatchNorm's moving statistics from one random batch (a data-dependent init).

    With random weights and the BatchNorm defaults (mean 0, variance 1) every block shrinks the
    activations; after 50-odd layers they are ~1e-11, the logits are all ~0 and the softmax answers
    exactly 1/965 for every class whatever the photo. One forward pass in training mode with
    momentum 0 makes each layer see unit-variance inputs, so the frozen model's scores depend on
    the photo like a real classifier's. The graph, its size and its cost do not change.
    """
    norms = [layer for layer in net.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    batch = tf.random.stateless_uniform([8, IMAGE_SIZE, IMAGE_SIZE, 3], seed=[seed, 1]) * 2.0 - 1.0
    net(batch, training=True)


def tar_gz(module_dir: Path) -> bytes:
    """Pack a module directory the way TF Hub serves ``?tf-hub-format=compressed``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for entry in sorted(os.listdir(module_dir)):
            tar.add(os.path.join(module_dir, entry), arcname=entry)
    return buf.getvalue()


def label_map_csv(names: dict[int, str] | None = None, shuffle_seed: int | None = 1) -> str:
    """The label map in the real format: header ``id,name``, background first, then the species.

    With ``shuffle_seed`` the species rows come in a shuffled order, so a parser that relies on row
    order instead of the ``id`` column gives wrong labels.
    """
    names = names or {k: species_name(k) for k in range(BACKGROUND_ID)}
    ids = list(range(BACKGROUND_ID))
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(ids)
    rows = ["id,name", f"{BACKGROUND_ID},background"]
    rows += [f"{k},{_csv_field(names[k])}" for k in ids]
    return "\n".join(rows) + "\n"


def _csv_field(value: str) -> str:
    return f'"{value}"' if "," in value or '"' in value else value


_GENERA = ["Parus", "Turdus", "Corvus", "Larus", "Anas", "Falco", "Picus", "Sitta", "Ardea", "Emberiza"]
_EPITHETS = ["major", "merula", "corax", "argentatus", "platyrhynchos", "peregrinus", "viridis",
             "europaea", "cinerea", "citrinella"]


def species_name(class_id: int) -> str:
    """A made-up binomial name unique to ``class_id``, e.g. ``Turdus corax 7``."""
    return f"{_GENERA[class_id % 10]} {_EPITHETS[class_id // 10 % 10]} {class_id // 100}"


# -- Variants for the LiteRT runtime --------------------------------------------------
# The real birds module keeps its weights in a ``variables/`` directory, the way TF1 Hub modules
# were exported, rather than frozen into the graph; conversion must handle both. TF2 SavedModels
# and ready-made ``.tflite`` files (float32, and uint8 like the official lite model) are other
# forms MODEL_URL accepts.

# The uint8 colour model compares each channel with the prototypes only within this distance: see
# colour_tflite_uint8 for why.
UINT8_CHANNEL_CLIP = 0.5


def colour_model_with_variables(export_dir: Path) -> Path:
    """The colour model as a TF1 Hub module whose weights are variables saved by the Builder.

    The prototypes and the sharpness are ``tf.compat.v1`` reference variables (``VariableV2``, as in
    the 2018 Hub modules), restored from ``variables/`` at load time; the maths is the colour
    model's, so :func:`expected_scores` and :func:`expected_ranking` hold for it too.
    """
    import tensorflow as tf

    def build(tf):
        images = tf.compat.v1.placeholder(tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3], name="images")
        protos = tf.compat.v1.get_variable("prototypes", initializer=prototypes(), use_resource=False)
        sharpness = tf.compat.v1.get_variable("sharpness", initializer=np.float32(SHARPNESS), use_resource=False)
        mean = tf.reduce_mean(images, axis=[1, 2])
        d = tf.reduce_sum(tf.square(mean[:, None, :] - protos[None, :, :]), axis=2)
        return images, tf.nn.softmax(-sharpness * d, name="default")

    export_dir = Path(export_dir)
    graph = tf.Graph()
    with graph.as_default():
        images, probabilities = build(tf)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(
                inputs={"images": images}, outputs={"default": probabilities})
            builder = tf.compat.v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(
                sess, tags=[], signature_def_map={"default": signature}, strip_default_attrs=True)
            builder.save()
    (export_dir / "tfhub_module.pb").write_bytes(MODULE_DEF_V3)
    return export_dir


def tf2_colour_model(export_dir: Path, input_name: str = "pixels", signature: str = "serving_default",
                     output_name: str = "probabilities") -> Path:
    """The colour model as a TF2 SavedModel (``tf.saved_model.save``), other signature and names.

    The same as the helper in tests/test_model.py, here so that other tests can build it too.
    """
    import tensorflow as tf

    protos = tf.constant(prototypes())

    class Colours(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32,
                                                    name=input_name)])
        def classify(self, images):
            mean = tf.reduce_mean(images, axis=[1, 2])
            d = tf.reduce_sum(tf.square(mean[:, None, :] - protos[None, :, :]), axis=2)
            return {output_name: tf.nn.softmax(-SHARPNESS * d)}

    module = Colours()
    tf.saved_model.save(module, str(export_dir), signatures={signature: module.classify})
    return Path(export_dir)


def _colour_function(tf, clip: float | None = None, batch: int | None = None):
    """The colour model as a concrete function; ``clip`` bounds each channel's difference."""
    protos = tf.constant(prototypes())

    @tf.function(input_signature=[tf.TensorSpec([batch, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32, name="images")])
    def classify(images):
        mean = tf.reduce_mean(images, axis=[1, 2])
        diff = mean[:, None, :] - protos[None, :, :]
        if clip is not None:
            diff = tf.clip_by_value(diff, -clip, clip)
        # The sharpness applied before the sum (the same maths): with it after, the quantizer gives
        # the sum the logits' range and the sum loses its resolution.
        return tf.nn.softmax(tf.reduce_sum(diff * (diff * -SHARPNESS), axis=2))

    return classify.get_concrete_function()


def _write_flatbuffer(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def colour_tflite(path: Path) -> Path:
    """The colour model as a float32 ``.tflite`` (input [N,224,224,3] float32, output [N,965])."""
    import tensorflow as tf

    fn = _colour_function(tf)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], None)
    return _write_flatbuffer(path, converter.convert())


def colour_tflite_uint8(path: Path) -> Path:
    """The colour model fully quantized, uint8 input and uint8 output, like the official lite model.

    Post-training full-integer quantization calibrated on solid colour images. Quantized as is, the
    colour model loses its answer: every tensor gets one 8-bit range per tensor, and the range of the
    squared distance to the prototypes runs up to 75 (the background class sits at (5, 5, 5)), a
    step of ~0.3, while neighbouring classes differ by only (1/9)^2 = 0.012 — every nearby class
    ties. So this variant clips each channel's difference to +-UINT8_CHANNEL_CLIP before squaring:
    the squared distance then spans [0, 0.75] (step ~0.003, neighbours 4 steps apart), the classes
    near the photo's colour keep the colour model's order and scores, and classes further away
    (including the background) all get the same tiny score. The sharpness stays SHARPNESS, so the
    top class of a class colour scores 0.59-0.85 (0.62-0.79 in float), far above the output's 1/256 step.
    """
    import tensorflow as tf

    fn = _colour_function(tf, clip=UINT8_CHANNEL_CLIP, batch=1)  # [1,224,224,3] like the official model

    def representative():
        for k in list(range(0, BACKGROUND_ID, 37)) + [0, 9, 99, 963, 555]:
            colour = np.asarray(prototype(k), np.float32)
            yield [np.broadcast_to(colour, (1, IMAGE_SIZE, IMAGE_SIZE, 3)).copy()]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], None)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return _write_flatbuffer(path, converter.convert())


def mobilenet_tflite(path: Path, seed: int = 0) -> Path:
    """The stand-in MobileNet V2 (see :func:`mobilenet_model`) as a float32 ``.tflite`` (~14 MB), for benchmarks.

    Converted from the frozen Hub module the way the service converts one (``from_saved_model``,
    signature ``default``, empty tag set). Converting the Keras model's concrete function directly
    gave a 190 kB flatbuffer answering NaN (TF 2.21), so this goes through the module. ~5 s.
    """
    import tempfile

    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        module = mobilenet_model(Path(tmp) / "mobilenet", seed)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(module), signature_keys=["default"], tags=set())
        return _write_flatbuffer(path, converter.convert())
