"""The serving runtime: a TFLite flatbuffer run by LiteRT (``ai-edge-litert``), no TensorFlow.

An ``Interpreter`` is not safe to call from two threads at once, so each calling thread gets its own,
single-threaded (on a small CPU, parallel single-threaded calls run fastest per image). Pixels become
the input tensor by the model's :class:`~function.model.contract.Contract`; a quantized output is
dequantized, so callers get float32 probabilities. LiteRT is imported when the first model loads.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputShapeError, ModelFormatError
from ..infra.capture import Held, held_back
from . import metadata
from .contract import Contract, InputContract

_import_lock = threading.Lock()
_interpreter_class: Any = None
_first_build_done = False
# LiteRT writes this to fd 2 (not through Python) when the process builds its first interpreter.
_XNNPACK_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


@dataclass(frozen=True)
class TensorSummary:
    """What the interpreter says about one input or output tensor."""

    name: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]  # -1 marks a dimension that may change (a dynamic batch)
    dtype: str
    scale: float  # 0.0 when the tensor is not quantized
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype in ("uint8", "int8")


def _interpreter() -> tuple[Any, float]:
    """LiteRT's Interpreter class, and the ms its first import took here (0 after that)."""
    global _interpreter_class
    with _import_lock:
        if _interpreter_class is not None:
            return _interpreter_class, 0.0
        started = time.perf_counter()
        from ai_edge_litert.interpreter import Interpreter

        _interpreter_class = Interpreter
        return Interpreter, (time.perf_counter() - started) * 1000


def _summary(details: dict[str, Any]) -> TensorSummary:
    scale, zero_point = details.get("quantization", (0.0, 0))
    return TensorSummary(
        name=str(details["name"]), shape=tuple(int(d) for d in details["shape"]),
        shape_signature=tuple(int(d) for d in details.get("shape_signature", details["shape"])),
        dtype=np.dtype(details["dtype"]).name, scale=float(scale), zero_point=int(zero_point))


@contextlib.contextmanager
def _without_xnnpack_notice() -> Iterator[None]:
    """Hold back fd 2 while the process's first interpreter is built (only that one prints the notice),
    passing on all but LiteRT's INFO line: it would be the only non-JSON line in the service's log."""
    held = Held()
    try:
        with held_back((2,)) as held:
            yield
    finally:  # also when the build raises: its own lines matter then
        rest = b"".join(line for line in held.data.splitlines(keepends=True) if line.strip() != _XNNPACK_NOTICE)
        if rest:
            os.write(2, rest)


@dataclass
class _Runner:
    """One thread's interpreter and the batch size its input is currently sized for."""

    interpreter: Any
    batch: int


class LiteRTModel:
    """A loaded ``.tflite``: ``predict(pixels uint8 [N,H,W,3]) -> [N,classes]`` probabilities, at the
    model's own H and W. ``model``: a path or the bytes, kept in memory so that every thread's
    interpreter is built from them (a cached file replaced on disk does not change a running model)."""

    runtime = "litert"

    def __init__(self, model: str | os.PathLike[str] | bytes, *, source: str | None = None, threads: int = 1):
        self._interpreter_class, import_ms = _interpreter()
        self.threads = threads
        started = time.perf_counter()
        if isinstance(model, bytes | bytearray | memoryview):
            self._content = bytes(model)
            self.source = source or f"<{len(self._content)} bytes>"
        else:
            with open(model, "rb") as f:
                self._content = f.read()
            self.source = source or os.fspath(model)
        self._local = threading.local()
        runner = self._new_runner()  # validates the flatbuffer; becomes this thread's interpreter
        it = runner.interpreter
        inputs, outputs = it.get_input_details(), it.get_output_details()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelFormatError(f"{self.source} has {len(inputs)} inputs and {len(outputs)} outputs; "
                                   "expected one image batch in and one score batch out")
        self.input = _summary(inputs[0])
        self.output = _summary(outputs[0])
        self._input_index = int(inputs[0]["index"])
        self._output_index = int(outputs[0]["index"])
        if len(self.input.shape) != 4 or self.input.shape[3] != 3:
            raise ModelFormatError(f"{self.source} input {self.input.name!r} has shape {list(self.input.shape)}; "
                                   "expected [N,H,W,3]")
        if -1 in self.input.shape_signature[1:3]:  # the interpreter would report 1x1, and photos be cut to a pixel
            raise ModelFormatError(f"{self.source} input {self.input.name!r} has no image size of its own (shape "
                                   f"{list(self.input.shape_signature)}); export it with its height and width fixed")
        if len(self.output.shape) != 2:
            raise ModelFormatError(f"{self.source} output {self.output.name!r} has shape "
                                   f"{list(self.output.shape)}; expected [N,classes]")
        for tensor in (self.input, self.output):
            if tensor.quantized and tensor.scale <= 0:
                raise ModelFormatError(f"{self.source} tensor {tensor.name!r} is {tensor.dtype} without a "
                                       "quantization scale; cannot map it to and from [0,1]")
            if not tensor.quantized and tensor.dtype != "float32":
                raise ModelFormatError(f"{self.source} tensor {tensor.name!r} is {tensor.dtype}; "
                                       "expected float32, uint8 or int8")
        self.height, self.width = self.input.shape[1], self.input.shape[2]
        self.num_classes: int = self.output.shape[1]
        meta = metadata.read(self._content, self.source) or metadata.Metadata()
        labels = meta.labels()
        self.contract = Contract(
            InputContract.of(self.height, self.width, self.input.dtype, self.input.scale, self.input.zero_point,
                             meta, self.source),
            self.num_classes, labels.lines if labels else None, labels.name if labels else None, meta.score_threshold)
        self.quantized: bool = self.input.quantized or self.output.quantized
        # A model built for a fixed batch (the official lite model: [1,224,224,3]) may reshape with
        # that constant inside, so it is run one call per image rather than resized.
        self.dynamic_batch: bool = self.input.shape_signature[0] == -1
        self._local.runner = runner
        self.timings_ms: dict[str, float] = {"litert_import": import_ms,
                                             "model_load": (time.perf_counter() - started) * 1000}

    def _new_runner(self) -> _Runner:
        global _first_build_done
        try:
            with contextlib.ExitStack() as first:
                if not _first_build_done:
                    first.enter_context(_import_lock)
                    first.enter_context(_without_xnnpack_notice())
                interpreter = self._interpreter_class(model_content=self._content, num_threads=self.threads)
                interpreter.allocate_tensors()
                _first_build_done = True
        except ValueError as exc:  # LiteRT's answer to bytes that are not a usable flatbuffer
            raise ModelFormatError(f"{self.source} is not a usable TFLite model: {exc}") from exc
        return _Runner(interpreter, int(interpreter.get_input_details()[0]["shape"][0]))

    def _runner(self) -> _Runner:
        runner = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._local.runner = self._new_runner()
        return runner

    def warmup(self, images: int = 1) -> None:
        """Run ``images`` images of zeros on this thread's interpreter, paying its first call's set-up."""
        started = time.perf_counter()
        self.predict(np.zeros((images, self.height, self.width, 3), np.uint8))
        self.timings_ms["warmup"] = (time.perf_counter() - started) * 1000

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities [N, num_classes] float32 for 8-bit RGB pixels [N,H,W,3]; thread-safe."""
        return self.run(self.contract.input.prepare(batch))

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for a batch already in the input tensor's own type and normalization."""
        if pixels.ndim != 4 or pixels.shape[1:] != (self.height, self.width, 3):
            raise InputShapeError(f"expected an input batch [N,{self.height},{self.width},3]; got {list(pixels.shape)}")
        n = int(pixels.shape[0])
        if n == 0:
            return np.zeros((0, self.num_classes), np.float32)
        pixels = np.ascontiguousarray(pixels, dtype=self.input.dtype)
        runner = self._runner()
        if not self.dynamic_batch:
            step = max(runner.batch, 1)
            if n % step:  # the last call padded with blank images, their scores dropped
                pad = np.zeros((step - n % step, *pixels.shape[1:]), pixels.dtype)
                pixels = np.concatenate([pixels, pad])
            scores = [self._invoke(runner, pixels[i:i + step]) for i in range(0, len(pixels), step)]
            return np.concatenate(scores)[:n]
        # A batch is one call, resized when N changes: resizing costs next to nothing here.
        if runner.batch != n:
            runner.interpreter.resize_tensor_input(self._input_index, [n, self.height, self.width, 3], strict=True)
            runner.interpreter.allocate_tensors()
            runner.batch = n
        return self._invoke(runner, pixels)

    def _invoke(self, runner: _Runner, pixels: np.ndarray) -> np.ndarray:
        it = runner.interpreter
        it.set_tensor(self._input_index, pixels)
        it.invoke()
        raw: np.ndarray = it.get_tensor(self._output_index)
        if not self.output.quantized:
            return np.array(raw, dtype=np.float32)  # a copy: the interpreter reuses its buffer
        return (raw.astype(np.float32) - self.output.zero_point) * np.float32(self.output.scale)
