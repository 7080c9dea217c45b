"""The result document both ways: what one instance answers, another (fan-out) reads back unchanged."""

from __future__ import annotations

from function.core.results import Classification, PhotoResult, Prediction
from function.core.sources import PhotoSource
from function.errors import PhotoError


def test_common_names_and_the_recognised_flag_survive_the_round_trip():
    sources = [PhotoSource.url("https://example.org/robin.jpg"), PhotoSource.url("https://example.org/cat.jpg"),
               PhotoSource.url("https://example.org/gone.jpg")]
    sent = Classification([
        PhotoResult(sources[0], [Prediction(12, "Erithacus rubecula", 0.84, "European Robin")], recognised=True),
        PhotoResult(sources[1], [Prediction(964, "None", 0.74), Prediction(3, "Passer domesticus", 0.07,
                                                                            "House Sparrow")], recognised=False),
        PhotoResult(sources[2], error=PhotoError.from_code("http_error", "HTTP 404")),
    ], {"total": 12.0})
    doc = sent.to_dict()
    assert doc["results"][0]["predictions"][0]["common_name"] == "European Robin"
    assert "common_name" not in doc["results"][1]["predictions"][0]  # none given: the key is left out
    assert [r["recognised"] for r in doc["results"]] == [True, False, None]
    back = Classification.from_dict(sources, doc)
    assert [(r.predictions, r.recognised) for r in back.results] == [(r.predictions, r.recognised)
                                                                      for r in sent.results]
