"""Generated photos: solid colours the colour model can be checked against, and photo-like JPEGs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG" and "quality" not in params:
        params["quality"] = 95
    img.save(buf, fmt, **params)
    return buf.getvalue()


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (320, 240), fmt: str = "JPEG", **params) -> bytes:
    """A photo of one colour (RGB 0-255); the colour model classifies it by that colour."""
    return encode(Image.new("RGB", size, rgb), fmt, **params)


def class_colour(class_id: int) -> tuple[int, int, int]:
    """The 8-bit RGB colour nearest the colour model's prototype for ``class_id`` (0..963)."""
    from .hubmodel import prototype

    return tuple(round(c * 255) for c in prototype(class_id))  # type: ignore[return-value]


def photo_like(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """A JPEG that compresses like a photo: smooth gradients and blobs plus sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.28)]
        img[..., c] = 128 + 60 * np.sin(x / width * fx * 6.28 + phase) * np.cos(y / height * fy * 6.28)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.3) * min(width, height)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-80, 80, 3)
    img += rng.normal(0, 9, img.shape)
    return encode(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), "JPEG", quality=quality)
