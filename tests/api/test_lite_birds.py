"""The real lite birds model (TF Hub's birds_V1/3: uint8, TFLite Metadata), served by MODEL_URL alone.

Checked against a plain reference pipeline written here, apart from the function's code: Pillow
decodes, a bilinear resize to the model's size, the metadata's normalization, the interpreter called
directly. Photos already at the model's size must get the reference's scores within one step of
the output's quantization; larger ones (which the function decodes with JPEG draft scaling and
Pillow's reducing gap) the reference's top-1. Through the HTTP API and the CLI, offline: the labels
come from the model's metadata, the common names from the test hub.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import functions_framework
import numpy as np
import pytest
from PIL import Image

from function import app as service
from standin import photos
from tests.support import COMMON_NAMES, LITE_MODEL, ROOT, needs_lite_model

pytestmark = needs_lite_model

AT_SIZE = {f"photo-{seed}-224.{ext}": photos.photo_like(224, 224, seed=seed) if ext == "jpg" else
           photos.encode(Image.open(io.BytesIO(photos.photo_like(224, 224, seed=seed))), "PNG")
           for seed in range(4) for ext in ("jpg", "png")}
LARGER = {f"photo-{seed}-{w}x{h}.jpg": photos.photo_like(w, h, seed=seed)
          for seed, (w, h) in enumerate([(640, 480), (1200, 900), (480, 640), (2000, 1500), (333, 250)], start=10)}
BACKGROUND = photos.solid((200, 30, 30), fmt="PNG")  # the reference's best class: the background, "None"
UNDER_THRESHOLD = photos.solid((128, 128, 128), fmt="PNG")  # the reference's best: a species at ~6 %
THRESHOLD = 0.2  # the model's ScoreThresholdingOptions (../shared/models/README.md)


class Reference:
    """The plain pipeline: Pillow, bilinear resize, the metadata's normalization, the interpreter."""

    def __init__(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(LITE_MODEL))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        _, self.height, self.width, _ = self.input["shape"]
        self.labels = self._labels()

    def _labels(self) -> list[str]:
        import zipfile

        with zipfile.ZipFile(LITE_MODEL) as z:  # the .tflite is also a zip of its label files
            return z.read("probability-labels-en.txt").decode().splitlines()

    def pixels(self, data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        return np.asarray(img.resize((int(self.width), int(self.height)), Image.Resampling.BILINEAR), np.uint8)

    def scores(self, data: bytes) -> np.ndarray:
        pixels = self.pixels(data)
        # The metadata's NormalizationOptions (mean = std = 127.5) give (p - 127.5) / 127.5; the input
        # tensor's quantization (scale 1/128, zero point 128) stores x as x * 128 + 128. Composed, a
        # pixel is within one step of itself, and the Task Library feeds a uint8 model its pixels.
        scale, zero_point = self.input["quantization"]
        assert (scale, zero_point) == (1 / 128, 128)
        normalized = (pixels.astype(np.float64) - 127.5) / 127.5
        assert np.abs(np.round(normalized / scale + zero_point) - pixels).max() <= 1
        self.interpreter.set_tensor(self.input["index"], pixels[None])
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.output["index"])[0]
        out_scale, out_zero = self.output["quantization"]
        return (raw.astype(np.float64) - out_zero) * out_scale

    @property
    def step(self) -> float:
        return float(self.output["quantization"][0])


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference()


@pytest.fixture(scope="module")
def photo_urls(server) -> dict[str, str]:
    served = {**AT_SIZE, **LARGER, "background.png": BACKGROUND, "grey.png": UNDER_THRESHOLD}
    return {name: server.add(f"/lite/{name}", data, "image/png" if name.endswith("png") else "image/jpeg")
            for name, data in served.items()}


@pytest.fixture(scope="module")
def common_names_url(server) -> str:
    return server.add("/google-coral/test_data/master/inat_bird_labels.txt", COMMON_NAMES.read_bytes(), "text/plain")


def coral(class_id: int) -> tuple[str, str | None]:
    """(Latin, common) for a class from Coral's file, its two escaped multiplication signs read as such."""
    line = COMMON_NAMES.read_text().splitlines()[class_id].replace("\\xd7", "\u00d7")
    latin, _, common = line.partition(" (")
    return latin, common[:-1] if common else None


def check_answers(results: list[dict], names: list[str], reference: Reference, data: dict[str, bytes]) -> None:
    """Each result against the reference: at the model's size its scores, larger its top-1."""
    for name, result in zip(names, results, strict=True):
        assert result["error"] is None, (name, result["error"])
        expected = reference.scores(data[name])
        best = result["predictions"][0]
        assert best["id"] == int(np.argmax(expected)), (name, best, int(np.argmax(expected)))
        assert best["label"] == reference.labels[best["id"]]
        if name in AT_SIZE:
            for p in result["predictions"]:
                assert abs(p["score"] - expected[p["id"]]) <= reference.step + 1e-6, (name, p, expected[p["id"]])


# -- the HTTP API -------------------------------------------------------------------------------------


@pytest.fixture
def documents_read(monkeypatch) -> list[str]:
    """Every label or name file the app reads (model files are not documents)."""
    from function.infra import files

    read, urls = files.read_document, []

    def recording(session, url, *args, **kwargs):
        urls.append(url)
        return read(session, url, *args, **kwargs)

    monkeypatch.setattr(files, "read_document", recording)
    service.this_process().resources.clear()  # the label map is loaded afresh, not found loaded by an earlier test
    return urls


@pytest.fixture
def client(server, monkeypatch, common_names_url, documents_read):
    """The HTTP target serving the lite model by MODEL_URL alone: no LABELS_URL, so no label download."""
    monkeypatch.setenv("MODEL_URL", str(LITE_MODEL))
    monkeypatch.delenv("LABELS_URL", raising=False)
    monkeypatch.setenv("COMMON_NAMES_URL", common_names_url)
    monkeypatch.setenv("TRUSTED_HOSTS", "127.0.0.1")
    monkeypatch.setenv("MAX_TOP_K", "20")
    service.reset()
    app = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py"))
    assert service.serving().wait_until_ready(120).ready
    yield app.test_client()
    service.reset()


def test_the_http_api_answers_as_the_reference_pipeline(client, reference, photo_urls, server):
    names = [*AT_SIZE, *LARGER]
    r = client.post("/", json={"urls": [photo_urls[n] for n in names], "top_k": 20})
    assert r.status_code == 200, r.get_json()
    check_answers(r.get_json()["results"], names, reference, {**AT_SIZE, **LARGER})


def test_readyz_shows_the_contract_learned_from_the_model(client):
    model = client.get("/readyz").get_json()["model"]
    assert model["contract"] == {
        "input": {"height": 224, "width": 224, "dtype": "uint8", "normalization": "metadata", "mean": [127.5],
                  "std": [127.5], "raw_pixels": True},
        "classes": 965, "labels": "probability-labels-en.txt", "score_threshold": pytest.approx(THRESHOLD)}


def test_labels_and_common_names_come_from_the_model_and_coral_s_file(client, photo_urls, common_names_url,
                                                                     documents_read):
    r = client.post("/", json={"urls": [photo_urls["photo-0-224.png"]], "top_k": 3})
    for p in r.get_json()["results"][0]["predictions"]:
        assert (p["label"], p.get("common_name")) == coral(p["id"])
    assert documents_read == [common_names_url]  # the labels are the model's own: no label map was read


def test_a_background_photo_and_an_under_threshold_photo_are_not_recognised(client, reference, photo_urls):
    for name, data in (("background.png", BACKGROUND), ("grey.png", UNDER_THRESHOLD)):
        expected = reference.scores(data)
        best = int(np.argmax(expected))
        if name == "background.png":
            assert reference.labels[best] == "None"
        else:
            assert reference.labels[best] != "None" and expected[best] < THRESHOLD
        r = client.post("/", json={"urls": [photo_urls[name]], "top_k": 3})
        (result,) = r.get_json()["results"]
        assert result["recognised"] is False, name
        assert result["predictions"][0]["id"] == best  # the top-k is still given


def test_a_label_map_that_disagrees_is_refused_at_load_with_both_numbers(server, monkeypatch, photo_urls):
    rows = ["id,name"] + [f"{k},bird {k}" for k in range(964)]
    monkeypatch.setenv("MODEL_URL", str(LITE_MODEL))
    monkeypatch.setenv("LABELS_URL", server.add("/labels/964.csv", "\n".join(rows) + "\n", "text/csv"))
    monkeypatch.setenv("TRUSTED_HOSTS", "127.0.0.1")
    service.reset()
    try:
        app = functions_framework.create_app(target="classify_http", source=str(ROOT / "main.py"))
        service.serving().wait_until_ready(60)
        client = app.test_client()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "964 labels" in ready.get_json()["labels"]["error"]
        assert "965 classes" in ready.get_json()["labels"]["error"]
        r = client.post("/", json={"urls": [photo_urls["grey.png"]]})
        assert r.status_code == 503 and r.headers.get("Retry-After")
        message = r.get_json()["error"]["message"]
        assert "964 labels" in message and "965 classes" in message
    finally:
        service.reset()


# -- the CLI --------------------------------------------------------------------------------------


def run_cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LABELS_URL", "MODEL_URL", "COMMON_NAMES_URL")}
    env.update(MODEL_URL=str(LITE_MODEL), READ_TIMEOUT_S="3", **extra)
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_the_cli_json_answers_as_the_reference_pipeline(reference, photo_urls, common_names_url):
    names = [*AT_SIZE, *LARGER]
    r = run_cli("--json", "--top-k", "10", *[photo_urls[n] for n in names], COMMON_NAMES_URL=common_names_url)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    check_answers(results, names, reference, {**AT_SIZE, **LARGER})
    for p in (p for res in results for p in res["predictions"]):  # Coral's background line has no common name
        assert p.get("common_name") == coral(p["id"])[1]


def test_the_cli_table_shows_common_names_first_and_no_bird_recognised(reference, photo_urls, common_names_url):
    r = run_cli("--top-k", "2", photo_urls["background.png"], photo_urls["photo-1-224.png"],
                COMMON_NAMES_URL=common_names_url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith("background.png")
    assert lines[1].strip() == "no bird recognised; the closest classes:"
    assert lines[2].split()[:2] == ["1.", "None"]  # the background has no common name
    best = int(np.argmax(reference.scores(AT_SIZE["photo-1-224.png"])))
    latin, common = coral(best)
    row = next(line for line in lines[4:] if line.strip().startswith("1."))
    assert f"1. {common} ({reference.labels[best]})" in row
