"""TensorFlow as the model's source: a TF Hub module converted once to a float32 ``.tflite``.

``tensorflow_hub.resolve`` downloads the module through its own cache (``TFHUB_CACHE_DIR``);
``TFLiteConverter.from_saved_model`` converts the signature the TensorFlow runtime would serve,
without quantization, and the result is checked against TensorFlow on fixed inputs. TensorFlow is
imported inside :func:`convert` only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import quiet_tensorflow
from ..errors import ConversionError, ModelSourceUnavailable, TensorFlowMissing
from ..infra.capture import held_back
from . import handles
from .cache import ConvertedCache
from .litert import LiteRTModel
from .prefetch import wait_for_other_download
from .tensorflow import SIGNATURE_PREFERENCE

log = logging.getLogger(__name__)

# Largest TF-vs-LiteRT score difference accepted: float32 conversions agree far closer; a difference
# past this means the conversion changed the maths.
MAX_ABS_DIFF = 1e-4
VERIFICATION_INPUTS = ("4 uniform random images (numpy seed 0), all zeros, all ones; [6,H,W,3] in [0,1] "
                       "at the model's size")
# A conversion's phases and the CPU seconds each takes (MobileNet V2, 2 cores) until this cache has
# timed one; afterwards, the last conversion's own figures.
DEFAULT_PHASE_CPU_S = {"import": 4.0, "convert": 2.4, "verify": 1.3}


def cached(cache: ConvertedCache, handle: str, quiet: bool = True, downloader: int | None = None) -> Path:
    """The cached ``.tflite`` for a TF Hub handle, converted first (once across processes, under the
    entry's lock, announcing each phase) if needed. ``downloader``: a process downloading the module,
    whose download is used rather than a second one."""
    found = cache.lookup(handle)
    if found is not None:
        return found
    with cache.locked(handle):
        found = cache.lookup_locked(handle)  # another process may have converted it while we waited
        if found is not None:
            return found
        expected = {phase: cache.timing(f"conversion_{phase}_cpu_s") or default
                    for phase, default in DEFAULT_PHASE_CPU_S.items()}
        imports_tensorflow = "tensorflow" not in sys.modules  # else the import phase costs nothing here
        with cache.announced(handle, expected) as announcement, cache.temp_file(handle) as tmp:
            result = convert(handle, tmp, quiet=quiet, on_phase=announcement.enter, downloader=downloader)
            announcement.enter(None)
            if imports_tensorflow:
                for phase, seconds in announcement.cpu_used.items():
                    cache.record_timing(f"conversion_{phase}_cpu_s", seconds)
            cache.record_timing("conversion_s", result.seconds)
            return cache.store(handle, tmp, result.manifest_fields())


@dataclass
class Conversion:
    """What one conversion produced and measured."""

    resolved_path: str
    signature: str
    tags: list[str]
    input_name: str
    output_name: str
    max_abs_diff: float
    tensorflow_version: str
    tensorflow_hub_version: str
    litert_version: str
    seconds: float

    def manifest_fields(self) -> dict[str, Any]:
        return {"kind": "conversion", "signature": self.signature, "tags": self.tags,
                "input_name": self.input_name, "output_name": self.output_name,
                "max_abs_diff": self.max_abs_diff, "compared_on": VERIFICATION_INPUTS,
                "converter": f"tensorflow {self.tensorflow_version} TFLiteConverter.from_saved_model, float32",
                "tensorflow_version": self.tensorflow_version, "tensorflow_hub_version": self.tensorflow_hub_version,
                "litert_version": self.litert_version, "resolved_path": self.resolved_path,
                "seconds": round(self.seconds, 3)}


def _import_tensorflow(handle: str) -> tuple[Any, Any]:
    quiet_tensorflow(True)
    try:
        import tensorflow as tf
        import tensorflow_hub as hub
    except ImportError as exc:
        missing = exc.name or "tensorflow"
        raise TensorFlowMissing(
            f"converting the TF Hub module {handle} needs the Python package {missing!r}, which is not "
            "installed here (this environment serves .tflite models only). Convert it where TensorFlow and "
            "tensorflow_hub are installed with `make model` (python -m function.model.convert HANDLE) and "
            "point MODEL_URL at the .tflite file, or install requirements.txt.") from exc
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    return tf, hub


def _pick_signature(saved_model_dir: str, handle: str) -> tuple[str, set[str], str, str]:
    """(signature, tags of its meta graph, input name, output name) read from saved_model.pb."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    pb = os.path.join(saved_model_dir, "saved_model.pb")
    try:
        with open(pb, "rb") as f:
            proto.ParseFromString(f.read())
    except OSError as exc:
        raise ConversionError(f"{handle} is not a SavedModel or TF1 Hub module (no {pb})") from exc
    found = [(name, graph) for name in SIGNATURE_PREFERENCE for graph in proto.meta_graphs
             if name in graph.signature_def]
    if not found:
        available = sorted({name for graph in proto.meta_graphs for name in graph.signature_def})
        raise ConversionError(f"{handle} has no signature named {' or '.join(SIGNATURE_PREFERENCE)}; "
                              f"it has {available or 'none'}")
    name, meta_graph = found[0]
    sig = meta_graph.signature_def[name]
    if len(sig.inputs) != 1:
        raise ConversionError(f"signature {name!r} of {handle} takes {len(sig.inputs)} inputs "
                              f"{sorted(sig.inputs)}; expected one image batch")
    outputs = sorted(sig.outputs)
    if len(outputs) != 1:
        raise ConversionError(f"signature {name!r} of {handle} has {len(outputs)} outputs {outputs}; "
                              "expected one score batch")
    return name, set(meta_graph.meta_info_def.tags), next(iter(sig.inputs)), outputs[0]


def convert(handle: str, out_path: str | os.PathLike[str], quiet: bool = True,
            on_phase: Callable[[str], None] | None = None, downloader: int | None = None) -> Conversion:
    """Convert the TF Hub module or SavedModel at ``handle`` to a float32 ``.tflite`` at ``out_path``,
    failing when LiteRT's scores differ from TensorFlow's by over ``MAX_ABS_DIFF``. With ``quiet``,
    TensorFlow's output is held back (quoted in the error); ``on_phase`` hears each phase begin."""
    phase = on_phase or (lambda name: None)
    started = time.perf_counter()
    if handles.is_tflite(handle):
        raise ConversionError(f"{handle} is already a .tflite file; use fetch_tflite")
    held = None
    try:
        with held_back((1, 2) if quiet else ()) as held:
            phase("import")
            tf, hub = _import_tensorflow(handle)
            from tensorflow_hub import resolver as hub_resolver

            phase("convert")
            try:
                wait_for_other_download(handle, hub_resolver.tfhub_cache_dir(use_temp=True), downloader)
                resolved = hub.resolve(handle)
            except Exception as exc:
                raise ModelSourceUnavailable(f"cannot download {handle}: {type(exc).__name__}: {exc}") from exc
            signature, tags, input_name, output_name = _pick_signature(resolved, handle)
            converter = tf.lite.TFLiteConverter.from_saved_model(resolved, signature_keys=[signature], tags=tags)
            flatbuffer = converter.convert()
            phase("verify")
            reference = hub.load(resolved, tags=tags).signatures[signature]
            shape = reference.structured_input_signature[1][input_name].shape
            if shape.rank != 4 or shape[1] is None or shape[2] is None:
                raise ConversionError(f"{handle}: signature {signature!r} input {input_name!r} has shape {shape}; "
                                      "expected [N,H,W,3] with its image size")
            size = (int(shape[1]), int(shape[2]), 3)  # VERIFICATION_INPUTS
            inputs = np.concatenate([np.random.default_rng(0).random((4, *size), dtype=np.float32),
                                     np.zeros((1, *size), np.float32), np.ones((1, *size), np.float32)])
            expected = reference(**{input_name: tf.constant(inputs)})[output_name].numpy()
    except ConversionError as exc:
        exc.output = held.tail() if held else ""
        raise
    except Exception as exc:
        error = ConversionError(f"converting {handle} failed: {type(exc).__name__}: {exc}")
        error.output = held.tail() if held else ""
        raise error from exc
    import ai_edge_litert

    try:
        model = LiteRTModel(flatbuffer, source=f"conversion of {handle}")
        actual = model.run(inputs)  # the tensors as TensorFlow took them: the conversion's maths, compared
    except ValueError as exc:
        raise ConversionError(f"the conversion of {handle} does not run on LiteRT: {exc}") from exc
    if actual.shape != expected.shape:
        raise ConversionError(f"the conversion of {handle} answers shape {actual.shape}; TensorFlow {expected.shape}")
    max_abs_diff = float(abs(actual.astype("float64") - expected.astype("float64")).max())
    if not max_abs_diff <= MAX_ABS_DIFF:
        raise ConversionError(f"the conversion of {handle} differs from TensorFlow by up to {max_abs_diff:.3g} "
                              f"(limit {MAX_ABS_DIFF:g})")
    Path(out_path).write_bytes(flatbuffer)
    return Conversion(
        resolved_path=str(resolved), signature=signature, tags=sorted(tags), input_name=input_name,
        output_name=output_name, max_abs_diff=max_abs_diff, tensorflow_version=tf.__version__,
        tensorflow_hub_version=getattr(hub, "__version__", "?"),
        litert_version=getattr(ai_edge_litert, "__version__", "?"), seconds=time.perf_counter() - started)
