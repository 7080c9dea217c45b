"""The model loader: TF1 Hub modules and TF2 SavedModels, by URL, signature read not assumed."""

from __future__ import annotations

import numpy as np
import pytest

from function.errors import ModelError
from function.model.tensorflow import TensorFlowModel
from standin import hubmodel, photos


def tf2_colour_model(export_dir, input_name: str = "pixels", signature: str = "serving_default"):
    """The colour model as a TF2 SavedModel: other signature, input and output names."""
    import tensorflow as tf

    protos = tf.constant(hubmodel.prototypes())

    class Colours(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name=input_name)])
        def classify(self, images):
            mean = tf.reduce_mean(images, axis=[1, 2])
            d = tf.reduce_sum(tf.square(mean[:, None, :] - protos[None, :, :]), axis=2)
            return {"probabilities": tf.nn.softmax(-hubmodel.SHARPNESS * d)}

    module = Colours()
    tf.saved_model.save(module, str(export_dir), signatures={signature: module.classify})
    return export_dir


@pytest.fixture(scope="module")
def tf2_url(server, tmp_path_factory):
    model_dir = tf2_colour_model(tmp_path_factory.mktemp("tf2") / "colours")
    return server.add("/models/tf2-colours/1", hubmodel.tar_gz(model_dir), "application/x-tar")


def test_a_tf2_saved_model_loads_by_url_and_its_input_name_is_read(tf2_url):
    model = TensorFlowModel.load(tf2_url)
    assert (model.signature_name, model.input_name, model.output_name) == ("serving_default", "pixels",
                                                                          "probabilities")
    batch = np.zeros((2, 224, 224, 3), np.uint8)
    batch[0] = photos.class_colour(5)
    batch[1] = photos.class_colour(500)
    assert model.predict(batch).argmax(axis=1).tolist() == [5, 500]
    assert model.num_classes == hubmodel.NUM_CLASSES


def test_the_tf1_hub_module_uses_its_default_signature(config):
    model = TensorFlowModel.load(config.model_url)
    assert (model.signature_name, model.input_name, model.output_name) == ("default", "images", "default")
    assert set(model.timings_ms) == {"tf_import", "model_download", "model_load", "warmup"}


def test_a_model_without_a_usable_signature_is_refused(server, tmp_path):
    model_dir = tf2_colour_model(tmp_path / "odd", signature="something_else")
    url = server.add("/models/odd/1", hubmodel.tar_gz(model_dir), "application/x-tar")
    with pytest.raises(ModelError, match="no signature named default or serving_default"):
        TensorFlowModel.load(url)
