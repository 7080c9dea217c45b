"""What a loaded model needs and gives: its input (size, colour, normalization), labels and threshold.

Every runtime builds one :class:`Contract` from the model itself, and everyone upstream asks it. The
input is normalized as the TFLite Task Library does, in order of precedence:

* TFLite Metadata ``NormalizationOptions``: ``(pixel - mean) / std``, quantized with the tensor's
  scale and zero point for a quantized input. When that is within one step of the raw pixels
  everywhere (the AIY lite birds model), the raw pixels go in: rounding the identity only adds noise.
* no metadata, quantized input: raw pixels (uint8), or pixels - 128 (int8), as TF Hub's lite models.
* no metadata, float input: ``pixel / 255``, TF Hub's image module convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputShapeError, ModelFormatError
from .metadata import Metadata

FROM_METADATA = "metadata"
RAW_PIXELS = "raw pixels (quantized input, no metadata)"
UNIT_RANGE = "[0,1] (float input, no metadata)"


@dataclass(frozen=True)
class InputContract:
    """The model's image input: ``prepare(pixels uint8 [N,H,W,3]) -> its input tensor``."""

    height: int
    width: int
    dtype: str  # float32 | uint8 | int8
    scale: float = 0.0  # the tensor's quantization (0 when float)
    zero_point: int = 0
    mean: tuple[float, ...] = (0.0,)  # per channel, or one for all
    std: tuple[float, ...] = (255.0,)
    normalization: str = UNIT_RANGE  # where mean and std come from, for logs and /readyz
    raw_offset: int | None = None  # not None: pixels go in as they are, plus this (int8: -128)

    @classmethod
    def of(cls, height: int, width: int, dtype: str, scale: float, zero_point: int,
           meta: Metadata | None, source: str) -> InputContract:
        """The contract of an image input tensor, from its details and the model's metadata."""
        quantized = dtype in ("uint8", "int8")
        if meta is not None and meta.color_space == "grayscale":
            raise ModelFormatError(f"{source} takes grayscale images; only RGB models can be served")
        offset = -128 if dtype == "int8" else 0
        if meta is None or meta.mean is None or meta.std is None:
            if quantized:
                return cls(height, width, dtype, scale, zero_point, normalization=RAW_PIXELS, raw_offset=offset)
            return cls(height, width, dtype)
        mean, std = meta.mean, meta.std
        if len(mean) not in (1, 3) or len(std) not in (1, 3) or any(s == 0 for s in std):
            raise ModelFormatError(f"{source}: its NormalizationOptions (mean {list(mean)}, std {list(std)}) "
                                   "are not one value or one per RGB channel, or divide by zero")
        contract = cls(height, width, dtype, scale, zero_point, mean, std, FROM_METADATA)
        if quantized and contract._identity_within_a_step(offset):
            return cls(height, width, dtype, scale, zero_point, mean, std, FROM_METADATA, raw_offset=offset)
        return contract

    def _identity_within_a_step(self, offset: int) -> bool:
        """Whether ``(p - mean) / std`` quantized lands within one step of ``p + offset`` for every pixel."""
        for m, s in zip(np.broadcast_to(self.mean, 3), np.broadcast_to(self.std, 3), strict=True):
            a = 1.0 / (float(s) * self.scale)
            b = self.zero_point - float(m) * a - offset
            if max(abs(b), abs((a - 1.0) * 255.0 + b)) > 1.0 + 1e-6:  # linear: its extremes at 0 and 255
                return False
        return True

    def check(self, pixels: Any) -> None:
        """Raise InputShapeError unless ``pixels`` is uint8 [N,H,W,3] at this size."""
        shape = getattr(pixels, "shape", None)
        expected = f"[N,{self.height},{self.width},3]"
        if shape is None or len(shape) != 4 or shape[3] != 3:
            raise InputShapeError(f"expected 8-bit RGB pixels {expected}; got shape "
                                  f"{list(shape) if shape is not None else type(pixels).__name__}")
        if (shape[1], shape[2]) != (self.height, self.width):
            raise InputShapeError(f"expected images of {self.height}x{self.width} pixels ({expected}); "
                                  f"got shape {list(shape)}")
        if pixels.dtype != np.uint8:
            raise InputShapeError(f"expected 8-bit RGB pixels {expected} (uint8); got {pixels.dtype}")

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """8-bit RGB pixels [N,H,W,3] -> this model's input tensor (its dtype, normalized)."""
        self.check(pixels)
        if self.raw_offset is not None:
            if self.raw_offset == 0:
                return np.ascontiguousarray(pixels)
            return (pixels.astype(np.int16) + self.raw_offset).astype(self.dtype)
        x = pixels.astype(np.float32)
        if any(self.mean):
            x -= np.asarray(self.mean, np.float32)
        x /= np.asarray(self.std, np.float32)
        if self.dtype == "float32":
            return x
        info = np.iinfo(self.dtype)
        q = np.round(x / np.float32(self.scale)) + self.zero_point
        quantized: np.ndarray = np.clip(q, info.min, info.max).astype(self.dtype)
        return quantized

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, "dtype": self.dtype,
                "normalization": self.normalization, "mean": list(self.mean), "std": list(self.std),
                "raw_pixels": self.raw_offset is not None}


@dataclass(frozen=True)
class Contract:
    """A loaded model's contract: its input, its number of classes, and what its metadata adds."""

    input: InputContract
    classes: int | None
    labels: tuple[str, ...] | None = None  # the metadata's label file, line i = class i
    labels_file: str | None = None
    score_threshold: float | None = None  # the metadata's ScoreThresholdingOptions

    @classmethod
    def unit_range(cls, height: int, width: int, classes: int | None) -> Contract:
        """A float model without metadata: [0,1] pixels (TF Hub's image modules)."""
        return cls(InputContract(height, width, "float32"), classes)

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input.to_dict(), "classes": self.classes,
                "labels": self.labels_file or None, "score_threshold": self.score_threshold}
