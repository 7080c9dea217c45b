"""The label map: class id -> species name, parsed by the ``id`` column of the published CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

from ..errors import LabelMapError


class LabelMap:
    def __init__(self, names: dict[int, str]):
        if not names:
            raise LabelMapError("label map is empty")
        self._names = dict(names)

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, class_id: int) -> str:
        return self._names.get(class_id, f"class {class_id}")

    @classmethod
    def parse(cls, text: str) -> LabelMap:
        """Parse ``id,name`` rows. Row order does not matter: the AIY map lists background first."""
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
        if not reader.fieldnames or not {"id", "name"} <= {f.strip() for f in reader.fieldnames}:
            raise LabelMapError(f"label map header must have 'id' and 'name', got {reader.fieldnames}")
        names: dict[int, str] = {}
        for line, row in enumerate(reader, start=2):
            if None in row:  # more fields than the header: an unquoted comma in a name
                raise LabelMapError(f"label map line {line}: more fields than the header; quote names with commas")
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            try:
                class_id = int(row["id"])
            except ValueError:
                raise LabelMapError(f"label map line {line}: id {row['id']!r} is not an integer") from None
            if class_id in names:
                raise LabelMapError(f"label map line {line}: id {class_id} appears twice")
            names[class_id] = row["name"]
        return cls(names)

    @classmethod
    def load(cls, url: str, read: Callable[[str], bytes]) -> LabelMap:
        """The label map ``read(url)`` gives (infra's ``read_document``: an http(s) URL or a local file)."""
        try:
            content = read(url)
        except Exception as exc:  # unreachable, refused, missing: the reason goes to /readyz
            raise LabelMapError(f"cannot read the label map {url}: {exc}") from None
        return cls.parse(content.decode("utf-8", errors="replace"))
