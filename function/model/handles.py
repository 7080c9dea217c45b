"""What a model handle (the text of ``MODEL_URL``: http(s) URL, ``file://`` URL or local path) names:
a ``.tflite`` file, or a TF Hub module / SavedModel to convert. Touches neither network nor disk."""

from __future__ import annotations

import hashlib
import urllib.parse


def is_tflite(handle: str) -> bool:
    """Whether ``handle`` names a ``.tflite`` file: its path ends in ``.tflite``, or an http(s) URL's
    query asks for ``lite-format=tflite`` (how TF Hub serves its lite models)."""
    parsed = urllib.parse.urlsplit(handle)
    if parsed.scheme in ("http", "https"):
        query = urllib.parse.parse_qs(parsed.query)
        return parsed.path.lower().endswith(".tflite") or "tflite" in query.get("lite-format", [])
    return (local_path(handle) or "").lower().endswith(".tflite")


def local_path(handle: str) -> str | None:
    """The file a local path or ``file://`` URL names; None for an http(s) URL."""
    parsed = urllib.parse.urlsplit(handle)
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path)
    if parsed.scheme in ("http", "https"):
        return None
    return handle


def key(handle: str) -> str:
    """The cache key of a handle: sha256 of its text."""
    return hashlib.sha256(handle.encode("utf8")).hexdigest()
