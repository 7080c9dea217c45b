"""A ``.tflite``'s TFLite Metadata, read without TensorFlow: the input's colour space and
``NormalizationOptions``, the output's ``ScoreThresholdingOptions`` and ``TENSOR_AXIS_LABELS`` files.

The ``ModelMetadata`` flatbuffer (identifier ``M001``) is the buffer named ``TFLITE_METADATA``; label
files are in a zip appended to the model. The schema's generated code ships only in
``tflite-support``, which cannot be installed beside this TensorFlow and Python; so the tables are
read with the ``flatbuffers`` runtime LiteRT depends on, by the field numbers of
``metadata_schema.fbs`` (vtable slot ``4 + 2 * number``; a union takes two numbers, type then value).
Unknown or missing fields read as absent, as the schema's evolution rules want.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any

from ..errors import ModelFormatError

METADATA_NAME = b"TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
# metadata_schema.fbs: enum values used here.
TENSOR_AXIS_LABELS = 2  # AssociatedFileType
NORMALIZATION_OPTIONS, SCORE_THRESHOLDING_OPTIONS = 1, 3  # ProcessUnitOptions union
IMAGE_PROPERTIES = 2  # ContentProperties union
COLOR_SPACES = {0: "unknown", 1: "rgb", 2: "grayscale"}


@dataclass(frozen=True)
class LabelFile:
    """One ``TENSOR_AXIS_LABELS`` file of the output tensor: line i names class i."""

    name: str
    locale: str | None
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Metadata:
    """What a model's metadata says about its input and output; every field may be absent."""

    color_space: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    score_threshold: float | None = None
    label_files: tuple[LabelFile, ...] = ()

    def labels(self) -> LabelFile | None:
        """The label file to answer with: the English one (the Task Library's choice), else one without
        a locale (the AIY models' other file holds Knowledge Graph ids, in no language), else the first."""
        if not self.label_files:
            return None
        english = [f for f in self.label_files if (f.locale or "").lower().startswith("en")]
        plain = [f for f in self.label_files if not f.locale]
        return (english or plain or list(self.label_files))[0]


class _Table:
    """A flatbuffers table read by field number."""

    def __init__(self, table: Any):  # a flatbuffers Table
        self._t = table

    @classmethod
    def root(cls, buf: bytearray) -> _Table:
        # Imported when a model is read, not with the serving stack: LiteRT's schema reader needs it then anyway.
        import flatbuffers  # type: ignore[import-untyped]
        from flatbuffers.table import Table  # type: ignore[import-untyped]

        return cls(Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0)))

    def _new(self, pos: int) -> _Table:
        return _Table(type(self._t)(self._t.Bytes, pos))

    def _offset(self, number: int) -> int:
        return int(self._t.Offset(4 + 2 * number))

    def string(self, number: int) -> str | None:
        o = self._offset(number)
        return self._t.String(o + self._t.Pos).decode("utf-8", "replace") if o else None

    def byte(self, number: int) -> int:
        o = self._offset(number)
        return int(self._t.Get(_flags().Uint8Flags, o + self._t.Pos)) if o else 0

    def float32(self, number: int) -> float | None:
        o = self._offset(number)
        return float(self._t.Get(_flags().Float32Flags, o + self._t.Pos)) if o else None

    def table(self, number: int) -> _Table | None:
        o = self._offset(number)
        return self._new(self._t.Indirect(o + self._t.Pos)) if o else None

    def union(self, number: int) -> tuple[int, _Table | None]:
        """A union's (type, value): the type at ``number``, the value at ``number + 1``."""
        kind = self.byte(number)
        o = self._offset(number + 1)
        if not kind or not o:
            return kind, None
        value = self._new(0)
        self._t.Union(value._t, o)
        return kind, value

    def tables(self, number: int) -> list[_Table]:
        o = self._offset(number)
        if not o:
            return []
        start, n = self._t.Vector(o), self._t.VectorLen(o)
        return [self._new(self._t.Indirect(start + 4 * i)) for i in range(n)]

    def floats(self, number: int) -> tuple[float, ...] | None:
        o = self._offset(number)
        if not o:
            return None
        start, n = self._t.Vector(o), self._t.VectorLen(o)
        return tuple(float(self._t.Get(_flags().Float32Flags, start + 4 * i)) for i in range(n))


def _flags() -> Any:
    from flatbuffers import number_types  # imported by root() already

    return number_types


def metadata_buffer(content: bytes) -> bytes | None:
    """The ``ModelMetadata`` flatbuffer inside a ``.tflite``, or None when the model has none."""
    from ai_edge_litert import schema_py_generated as schema  # LiteRT's own reader of schema.fbs

    model = schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() != METADATA_NAME:
            continue
        buffer = model.Buffers(entry.Buffer())
        if buffer is None:
            return None
        if buffer.Offset() > 1:  # a large model keeps its buffers after the flatbuffer
            return bytes(content[buffer.Offset():buffer.Offset() + buffer.Size()])
        return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else None
    return None


def read(content: bytes, source: str = "the model") -> Metadata | None:
    """The metadata of a ``.tflite`` (its bytes), or None when it carries none. :class:`ModelFormatError`
    when it is unreadable or names a label file the model lacks: guessed pixels or labels answer wrong."""
    try:
        raw = metadata_buffer(content)
    except Exception as exc:  # a flatbuffer LiteRT loaded but whose metadata list is damaged
        raise ModelFormatError(f"{source}: cannot read its metadata list: {exc}") from exc
    if raw is None:
        return None
    if raw[4:8] != FILE_IDENTIFIER:
        raise ModelFormatError(f"{source}: its TFLITE_METADATA buffer is not TFLite Metadata (no M001 identifier)")
    try:
        return _parse(bytearray(raw), content, source)
    except ModelFormatError:
        raise
    except Exception as exc:
        raise ModelFormatError(f"{source}: its TFLite Metadata is damaged: {exc}") from exc


def _parse(raw: bytearray, content: bytes, source: str) -> Metadata:
    subgraphs = _Table.root(raw).tables(3)  # ModelMetadata.subgraph_metadata
    if not subgraphs:
        return Metadata()
    graph = subgraphs[0]
    inputs, outputs = graph.tables(2), graph.tables(3)  # input_tensor_metadata, output_tensor_metadata
    color_space, mean, std, threshold = None, None, None, None
    if inputs:
        tensor = inputs[0]
        content_table = tensor.table(3)  # TensorMetadata.content
        if content_table is not None:
            kind, props = content_table.union(0)  # Content.content_properties
            if kind == IMAGE_PROPERTIES and props is not None:
                color_space = COLOR_SPACES.get(props.byte(0), "unknown")  # ImageProperties.color_space
        for unit in tensor.tables(4) + graph.tables(5):  # its process_units, the subgraph's input ones
            kind, options = unit.union(0)
            if kind == NORMALIZATION_OPTIONS and options is not None:
                mean, std = options.floats(0), options.floats(1)
    files: list[LabelFile] = []
    if outputs:
        tensor = outputs[0]
        for unit in tensor.tables(4) + graph.tables(6):
            kind, options = unit.union(0)
            if kind == SCORE_THRESHOLDING_OPTIONS and options is not None:
                threshold = options.float32(0)
        names = [(f.string(0), f.string(3)) for f in tensor.tables(6) if f.byte(2) == TENSOR_AXIS_LABELS]
        if names:
            files = _label_files(content, names, source)
    return Metadata(color_space=color_space, mean=mean, std=std, score_threshold=threshold, label_files=tuple(files))


def _label_files(content: bytes, names: list[tuple[str | None, str | None]], source: str) -> list[LabelFile]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile:
        raise ModelFormatError(f"{source}: its metadata names label files ({', '.join(n or '?' for n, _ in names)}) "
                               "but the model carries no associated files") from None
    files = []
    with archive:
        for name, locale in names:
            if not name:
                continue
            try:
                text = archive.read(name).decode("utf-8", errors="replace")
            except KeyError:
                raise ModelFormatError(f"{source}: its metadata names the label file {name!r}, "
                                       f"which is not among its associated files") from None
            files.append(LabelFile(name, locale or None, tuple(text.splitlines())))
    return files
