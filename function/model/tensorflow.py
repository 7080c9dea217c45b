"""The TensorFlow runtime: a TF Hub module fetched and cached by ``tensorflow_hub``, its serving
signature run by TensorFlow. TensorFlow is imported at load only, so importing the package (and
answering liveness) does not wait for it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import numpy as np

from ..config import quiet_tensorflow
from ..errors import ModelError
from ..infra import logs
from .contract import Contract
from .prefetch import Prefetcher, wait_for_other_download

log = logging.getLogger(__name__)

# The TF1 Hub format names its signature "default"; TF2 SavedModels usually "serving_default".
SIGNATURE_PREFERENCE = ("default", "serving_default")


class TensorFlowModel:
    """``predict(pixels uint8 [N,H,W,3]) -> [N,classes]`` scores, H and W its signature's; its contract
    is [0,1] floats, TF Hub image modules' convention (a SavedModel carries no TFLite Metadata)."""

    runtime = "tensorflow"

    def __init__(self, module: Any, signature_name: str, input_name: str, output_name: str,
                 timings_ms: dict[str, float], contract: Contract):
        self.contract = contract
        self._module = module  # keeps the signature's variables and graph alive
        self._fn = module.signatures[signature_name]
        self.signature_name = signature_name
        self.input_name = input_name
        self.output_name = output_name
        self.timings_ms = timings_ms
        self.num_classes: int | None = None

    @classmethod
    def load(cls, url: str, intra_op_threads: int = 0, inter_op_threads: int = 0, warmup: bool = True,
             cache_dir: str | None = None, prefetcher: Prefetcher | None = None,
             quiet: bool = True) -> TensorFlowModel:
        """Download (or find in the cache), load, check the signature and, for a service, warm up (so the
        first request does not pay TensorFlow's first-call set-up; a one-shot CLI's batch would pay it anyway).
        ``quiet`` keeps TensorFlow's C++ start-up messages out of the log stream."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if prefetcher is not None:
            prefetcher.start(url, cache_dir)  # the download overlaps the TensorFlow import
        quiet_tensorflow(quiet)
        import tensorflow as tf
        import tensorflow_hub as hub

        if prefetcher is not None:
            prefetcher.install_resolver()
        with contextlib.suppress(RuntimeError):  # already initialised in this process (tests load several models)
            if intra_op_threads:  # 0 leaves TensorFlow's default
                tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
            if inter_op_threads:
                tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
        t1 = time.perf_counter()
        timings["tf_import"] = (t1 - t0) * 1000
        from tensorflow_hub import resolver as hub_resolver

        # Another process (a converter, a second run) may be unpacking the module into the cache.
        wait_for_other_download(url, hub_resolver.tfhub_cache_dir(cache_dir, use_temp=True))
        path = hub.resolve(url)  # download (or finish the prefetch) + unpack into the cache, or find it there
        t2 = time.perf_counter()
        timings["model_download"] = (t2 - t1) * 1000
        module = hub.load(url)  # resolves from the cache just filled
        t3 = time.perf_counter()
        timings["model_load"] = (t3 - t2) * 1000
        name = next((s for s in SIGNATURE_PREFERENCE if s in module.signatures), None)
        if name is None:
            raise ModelError(f"{url} has no signature named {' or '.join(SIGNATURE_PREFERENCE)}; "
                             f"it has {sorted(module.signatures) or 'none'}")
        fn = module.signatures[name]
        inputs = fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ModelError(
                f"signature {name!r} takes {len(inputs)} inputs {sorted(inputs)}; expected one image batch")
        input_name, spec = next(iter(inputs.items()))
        if spec.shape.rank != 4 or spec.shape[-1] != 3:
            raise ModelError(f"signature {name!r} input {input_name!r} has shape {spec.shape}; expected [N,H,W,3]")
        height, width = spec.shape[1], spec.shape[2]
        if height is None or width is None:  # a photo must be resized to something the model was trained at
            raise ModelError(f"signature {name!r} input {input_name!r} has shape {spec.shape}: it does not say "
                             "its image size")
        outputs = fn.structured_outputs
        output_name = "default" if "default" in outputs else next(iter(outputs))
        classes = outputs[output_name].shape[-1]
        model = cls(module, name, input_name, output_name, timings, Contract.unit_range(int(height), int(width),
                                                                                        classes))
        model.num_classes = classes
        if warmup:
            model.num_classes = model.predict(np.zeros((1, height, width, 3), np.uint8)).shape[1]
            timings["warmup"] = (time.perf_counter() - t3) * 1000
            model.contract = Contract.unit_range(int(height), int(width), model.num_classes)
        log.info("model loaded in %.1f s", (time.perf_counter() - t0), extra=logs.fields(
            url=url, path=path, signature=name, input=input_name, output=output_name,
            classes=model.num_classes, timings_ms={k: round(v, 1) for k, v in timings.items()}))
        return model

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Scores [N, classes] for 8-bit RGB pixels [N,H,W,3] at the signature's size."""
        import tensorflow as tf

        tensor = self.contract.input.prepare(batch)
        out = self._fn(**{self.input_name: tf.constant(tensor, dtype=tf.float32)})[self.output_name]
        return np.asarray(out.numpy())

