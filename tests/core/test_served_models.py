"""Serving models that differ from the birds model, by MODEL_URL alone: the function learns each one's
contract from the model (size, normalization, labels, threshold) and checks the labels against it."""

from __future__ import annotations

from pathlib import Path

import pytest

from function.app import App
from function.config import Config
from function.core.sources import PhotoSource
from function.errors import NotReady
from standin import hubmodel, litemodels

COLOURS = [0, 9, 42, 99, 555, 900, 963]


def serve(config: Config, model: Path, **settings: object) -> App:
    """An app for ``model`` (a local .tflite) with the test settings, no LABELS_URL unless given."""
    return App(Config(model_url=str(model), model_cache_dir=config.model_cache_dir, read_timeout_s=3.0,
                      connect_timeout_s=2.0, trusted_hosts="127.0.0.1", **{"labels_url": "", **settings}))


def names(k: int) -> str:
    return f"Avis colorata {k}"


def top1(app: App, serve_photo, class_ids: list[int]) -> list[tuple[int, str]]:
    result = app.classify([PhotoSource.url(serve_photo(k)) for k in class_ids], 1)
    assert all(r.ok for r in result.results), [r.error for r in result.results]
    return [(r.predictions[0].id, r.predictions[0].label) for r in result.results]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """One model per difference from the birds model, each with its labels in its metadata unless said."""
    folder = tmp_path_factory.mktemp("served")
    labels = [("labels-en.txt", "en", [names(k) for k in range(965)])]
    made = {
        "size-192": litemodels.with_metadata(litemodels.colour_tflite(size=192), label_files=labels),
        "float-127.5": litemodels.with_metadata(litemodels.colour_tflite(unit_input=(-1.0, 1.0)), mean=[127.5],
                                                std=[127.5], label_files=labels),
        "int8": litemodels.with_metadata(litemodels.colour_tflite(quantized="int8"), label_files=labels),
        "no-metadata": litemodels.colour_tflite(),
        "classes-2101": litemodels.with_metadata(litemodels.colour_tflite(classes=2101), label_files=[
            ("labels.txt", None, [names(k) for k in range(2101)])]),
        "threshold-0.9": litemodels.with_metadata(litemodels.colour_tflite(), threshold=0.9, label_files=labels),
    }
    return {name: litemodels.write(folder / f"{name}.tflite", data) for name, data in made.items()}


@pytest.mark.parametrize("name", ["size-192", "float-127.5", "int8", "classes-2101"])
def test_a_model_is_served_by_its_own_contract_and_labels(config, models, serve_photo, name):
    app = serve(config, models[name])
    assert top1(app, serve_photo, COLOURS) == [(k, names(k)) for k in COLOURS]
    readiness = app.readiness()
    assert readiness.ready, readiness.status
    assert readiness.status["labels"]["state"] == "ready"


def test_the_decoder_resizes_to_the_models_own_size(config, models, serve_photo):
    app = serve(config, models["size-192"])
    top1(app, serve_photo, [42])
    contract = app.readiness().status["model"]["contract"]
    assert (contract["input"]["height"], contract["input"]["width"]) == (192, 192)


def test_a_model_without_metadata_is_labelled_by_labels_url(config, models, serve_photo):
    app = serve(config, models["no-metadata"], labels_url=config.labels_url)
    assert top1(app, serve_photo, COLOURS) == [(k, hubmodel.species_name(k)) for k in COLOURS]


def test_labels_url_wins_over_the_models_own_labels(config, models, serve_photo):
    app = serve(config, models["int8"], labels_url=config.labels_url)
    assert top1(app, serve_photo, [42]) == [(42, hubmodel.species_name(42))]


def test_a_label_map_that_disagrees_with_the_model_is_refused_with_both_numbers(config, models, serve_photo):
    app = serve(config, models["classes-2101"], labels_url=config.labels_url)  # the birds map: 965 rows
    readiness = app.wait_until_ready(60)
    assert not readiness.ready
    error = readiness.status["labels"]["error"]
    assert "965 labels" in error and "2101 classes" in error
    with pytest.raises(NotReady) as refused:
        app.classify([PhotoSource.url(serve_photo(42))])
    assert "965 labels" in str(refused.value) and "2101 classes" in str(refused.value)


def test_a_label_map_one_row_short_is_refused(config, models, server):
    short = server.add("/labels/short.csv", "\n".join(hubmodel.label_map_csv().splitlines()[:-1]) + "\n", "text/csv")
    readiness = serve(config, models["no-metadata"], labels_url=short).wait_until_ready(60)
    assert not readiness.ready
    assert "has 964 labels but the model has 965 classes" in readiness.status["labels"]["error"]


def test_a_best_species_under_the_metadatas_threshold_is_not_recognised(config, models, serve_photo):
    # The colour model's top class of a class colour scores 0.6-0.85: under this model's 0.9.
    result = serve(config, models["threshold-0.9"]).classify([PhotoSource.url(serve_photo(42))], 3)
    (photo,) = result.results
    assert photo.recognised is False
    assert [p.id for p in photo.predictions][:1] == [42] and photo.predictions[0].score < 0.9


def test_score_threshold_applies_to_a_model_without_one(config, models, serve_photo):
    photo = PhotoSource.url(serve_photo(42))
    lenient = serve(config, models["no-metadata"], labels_url=config.labels_url).classify([photo])
    strict = serve(config, models["no-metadata"], labels_url=config.labels_url, score_threshold=0.95).classify([photo])
    assert lenient.results[0].recognised is True
    assert strict.results[0].recognised is False
    assert lenient.results[0].predictions == strict.results[0].predictions


def test_common_names_come_from_common_names_url(config, models, server, serve_photo):
    lines = [f"{names(k)} (Colour bird {k})" for k in range(964)] + ["background"]
    url = server.add("/labels/common.txt", "\n".join(lines) + "\n", "text/plain")
    app = serve(config, models["int8"], common_names_url=url)
    result = app.classify([PhotoSource.url(serve_photo(42))], 2)
    best = result.results[0].predictions[0]
    assert (best.id, best.label, best.common_name) == (42, names(42), "Colour bird 42")
    assert result.to_dict()["results"][0]["predictions"][0]["common_name"] == "Colour bird 42"


def test_a_common_names_file_of_another_length_is_refused(config, models, server):
    url = server.add("/labels/common-short.txt", "Avis colorata 0 (Colour bird 0)\n", "text/plain")
    readiness = serve(config, models["int8"], common_names_url=url).wait_until_ready(60)
    assert not readiness.ready
    assert "1 lines" in readiness.status["labels"]["error"] and "965 labels" in readiness.status["labels"]["error"]

