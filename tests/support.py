"""Helpers the tests share: where things are, and the stand-in photos they serve.

Fixtures live in ``conftest.py``; plain helpers live here and are imported as ``tests.support``
(the repository root is on pytest's ``pythonpath``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from standin import photos
from standin.server import StandInServer

ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = "/google/aiy/vision/classifier/birds_V1/1"
LABELS_PATH = "/aihub/tfhub/labelmaps/aiy_birds_V1_labelmap.csv"
# The real lite birds model and Coral's common names for its classes, as their publishers serve them
# (../shared/models/README.md); never copied into the repository.
SHARED_MODELS = ROOT.parent / "shared" / "models"
LITE_MODEL = SHARED_MODELS / "aiy-birds-v1-lite.tflite"
COMMON_NAMES = SHARED_MODELS / "inat_bird_labels.txt"
_LITE_MISSING = not LITE_MODEL.is_file() or not COMMON_NAMES.is_file()
if _LITE_MISSING and os.environ.get("CI"):  # CI has ../shared: a missing model there is a broken checkout, not a skip
    raise RuntimeError(f"CI: the real lite model and its common names are not in {SHARED_MODELS}")
needs_lite_model = pytest.mark.skipif(_LITE_MISSING,
                                      reason=f"the real lite model and its common names are not in {SHARED_MODELS}")


def photo_url(server: StandInServer, class_id: int, fmt: str = "JPEG", **params: object) -> str:
    """Serve a solid photo that the colour model puts in ``class_id``; returns its URL."""
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}[fmt]
    path = f"/photos/{class_id}.{ext}"
    content_type = {"jpg": "image/jpeg"}.get(ext, f"image/{ext}")
    return server.add(path, photos.solid(photos.class_colour(class_id), fmt=fmt, **params), content_type)
