"""What a classification returns, and its JSON form both ways: the one definition of the document for
the HTTP API, the CLI's ``--json``, reply CloudEvents and fan-out (which reads it back).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import PhotoError
from .sources import PhotoSource


@dataclass(frozen=True)
class Prediction:
    id: int
    label: str
    score: float
    common_name: str | None = None  # with COMMON_NAMES_URL: "European Robin" beside "Erithacus rubecula"

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "label": self.label, "score": round(self.score, 6)}
        if self.common_name is not None:
            doc["common_name"] = self.common_name
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Prediction:
        common = doc.get("common_name")
        return cls(int(doc["id"]), str(doc["label"]), float(doc["score"]), None if common is None else str(common))


@dataclass
class PhotoResult:
    source: PhotoSource
    predictions: list[Prediction] = field(default_factory=list)
    error: PhotoError | None = None
    # False: the best class is the background or under the threshold, no bird named; None: not classified.
    recognised: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        key = "url" if self.source.kind == "url" else "file"
        return {key: self.source.ref, "predictions": [p.to_dict() for p in self.predictions],
                "recognised": self.recognised, "error": self.error.to_dict() if self.error else None}

    @classmethod
    def from_dict(cls, source: PhotoSource, doc: Mapping[str, Any]) -> PhotoResult:
        """A result document (one item of ``results``) for ``source``; KeyError/TypeError/ValueError if malformed."""
        err = doc.get("error")
        recognised = doc.get("recognised")
        return cls(source, [Prediction.from_dict(p) for p in doc["predictions"]],
                   PhotoError.from_code(str(err["code"]), str(err["message"])) if err else None,
                   None if recognised is None else bool(recognised))


@dataclass
class Classification:
    results: list[PhotoResult]
    timings_ms: dict[str, float]

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"results": [r.to_dict() for r in self.results],
                "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()}}

    @classmethod
    def from_dict(cls, sources: list[PhotoSource], doc: Mapping[str, Any]) -> Classification:
        """The document ``to_dict`` made, read back for the photos it answered (in order)."""
        answered = doc["results"]
        if len(answered) != len(sources):
            raise ValueError(f"the document answers for {len(answered)} photos, not {len(sources)}")
        results = [PhotoResult.from_dict(s, d) for s, d in zip(sources, answered, strict=True)]
        return cls(results, {k: float(v) for k, v in (doc.get("timings_ms") or {}).items()})
