"""Helpers the tests share: where things are, and the stand-in photos they serve.

Fixtures live in ``conftest.py``; plain helpers live here and are imported as ``tests.support``
(the repository root is on pytest's ``pythonpath``).
"""

from __future__ import annotations

from pathlib import Path

from standin import photos
from standin.server import StandInServer

ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = "/google/aiy/vision/classifier/birds_V1/1"
LABELS_PATH = "/aihub/tfhub/labelmaps/aiy_birds_V1_labelmap.csv"


def photo_url(server: StandInServer, class_id: int, fmt: str = "JPEG", **params: object) -> str:
    """Serve a solid photo that the colour model puts in ``class_id``; returns its URL."""
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}[fmt]
    path = f"/photos/{class_id}.{ext}"
    content_type = {"jpg": "image/jpeg"}.get(ext, f"image/{ext}")
    return server.add(path, photos.solid(photos.class_colour(class_id), fmt=fmt, **params), content_type)
