"""The label map: class id -> species name (and, optionally, its common name), checked against the model.

It must name exactly the model's classes, or the load fails: a map one row short would answer
"class 964" for the background, a longer one name a class the model never scores.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable, Sequence
from typing import Protocol

from ..errors import LabelMapError
from ..infra import logs

log = logging.getLogger(__name__)

# How label files name the class that is "no bird".
BACKGROUND_NAMES = frozenset({"background", "none", "__background__"})
# "Turdus merula (Eurasian Blackbird)": the last parenthesised group is the common name.
_COMMON = re.compile(r"^(?P<latin>.*?)\s*\((?P<common>[^()]*)\)\s*$")
# Coral's inat_bird_labels.txt writes the multiplication sign of two hybrids' names as the text "\xd7".
_ESCAPED_TIMES = "\\xd7"


class ModelLabels(Protocol):
    """What the model's contract tells the label map (``function.model.contract.Contract``)."""

    @property
    def classes(self) -> int | None: ...

    @property
    def labels(self) -> tuple[str, ...] | None: ...

    @property
    def labels_file(self) -> str | None: ...


class LabelMap:
    def __init__(self, names: dict[int, str], source: str = "the label map",
                 common_names: dict[int, str] | None = None):
        if not names:
            raise LabelMapError(f"{source} is empty")
        self._names = dict(names)
        self.source = source
        self._common = dict(common_names or {})
        self.background = frozenset(i for i, n in self._names.items() if n.strip().lower() in BACKGROUND_NAMES)

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, class_id: int) -> str:
        return self._names.get(class_id, f"class {class_id}")

    def common_name(self, class_id: int) -> str | None:
        return self._common.get(class_id)

    @property
    def has_common_names(self) -> bool:
        return bool(self._common)

    @classmethod
    def parse(cls, text: str, source: str = "the label map") -> LabelMap:
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
        return cls(names, source)

    @classmethod
    def from_lines(cls, lines: Sequence[str], source: str) -> LabelMap:
        """A label file of the TFLite Metadata kind: line i names class i."""
        return cls({i: line.strip() for i, line in enumerate(_without_trailing_blanks(lines))}, source)

    @classmethod
    def load(cls, url: str, read: Callable[[str], bytes]) -> LabelMap:
        """The label map ``read(url)`` gives (infra's ``read_document``: an http(s) URL or a local file)."""
        return cls.parse(_read(url, read, "the label map"), url)

    @classmethod
    def for_model(cls, model: ModelLabels, model_url: str, read: Callable[[str], bytes], *,
                  given: LabelMap | None, default_url: str, common_names_url: str = "") -> LabelMap:
        """``given``, else the model's own labels, else ``default_url``'s; with common names; checked."""
        if given is not None:
            labels = given
        elif model.labels is not None:
            labels = cls.from_lines(model.labels, f"{model_url}'s own labels ({model.labels_file})")
        else:
            labels = cls.load(default_url, read)
        if common_names_url:
            labels = labels.with_common_names(_read(common_names_url, read, "the common names"), common_names_url)
        labels.check(model.classes)
        return labels

    def with_common_names(self, text: str, source: str) -> LabelMap:
        """This map with the common names of a ``Latin name (Common Name)`` file, line i = class i."""
        lines = _without_trailing_blanks(text.lstrip("\ufeff").splitlines())
        if len(lines) != len(self):
            raise LabelMapError(f"the common names {source} have {len(lines)} lines but the label map "
                                f"{self.source} has {len(self)} labels: they do not name the same classes")
        common: dict[int, str] = {}
        differ: list[int] = []
        for i, line in enumerate(lines):
            match = _COMMON.match(line.replace(_ESCAPED_TIMES, "\u00d7").strip())
            if match and match.group("common").strip():
                common[i] = match.group("common").strip()
                if match.group("latin").strip().casefold() != self[i].strip().casefold():
                    differ.append(i)
        if differ:  # another order or another taxonomy's names: said, since the count alone cannot tell
            first = differ[0]
            log.warning("%d of the common names' Latin names differ from the label map's (class %d: %r there, "
                        "%r here)", len(differ), first, lines[first], self[first],
                        extra=logs.fields(common_names=source, labels=self.source, differ=len(differ)))
        return LabelMap(self._names, self.source, common)

    def check(self, classes: int | None) -> None:
        """:class:`LabelMapError` unless this map names classes 0 .. ``classes`` - 1, one each."""
        if classes is None:  # a runtime that cannot say
            return
        if len(self) != classes:
            raise LabelMapError(f"{self.source} has {len(self)} labels but the model has {classes} classes; "
                                "set LABELS_URL to the model's own label map")
        missing = sorted(set(range(classes)) - set(self._names))
        if missing:
            raise LabelMapError(f"{self.source} has {len(self)} labels for the model's {classes} classes but "
                                f"no label for class {missing[0]} (its ids must be 0 to {classes - 1})")


def _without_trailing_blanks(lines: Sequence[str]) -> list[str]:
    out = list(lines)
    while out and not out[-1].strip():
        out.pop()
    return out


def _read(url: str, read: Callable[[str], bytes], what: str) -> str:
    try:
        content = read(url)
    except Exception as exc:  # unreachable, refused, missing: the reason goes to /readyz
        raise LabelMapError(f"cannot read {what} {url}: {exc}") from None
    return content.decode("utf-8", errors="replace")
