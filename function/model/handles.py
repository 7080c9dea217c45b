"""What a model handle names: a ``.tflite`` file, or a TF Hub module / SavedModel to convert.

A handle is the text of ``MODEL_URL``: an http(s) URL, a ``file://`` URL or a local path. Nothing
here touches the network or the disk; the cache keys its entries by :func:`key`.
"""

from __future__ import annotations

import hashlib
import urllib.parse


def is_tflite(handle: str) -> bool:
    """Whether ``handle`` names a ``.tflite`` file rather than a TF Hub module or SavedModel.

    A local path or ``file://`` URL ending in ``.tflite``; an http(s) URL whose path ends in
    ``.tflite`` or whose query asks for ``lite-format=tflite`` (how TF Hub serves its lite models).
    """
    parsed = urllib.parse.urlsplit(handle)
    if parsed.scheme in ("http", "https"):
        query = urllib.parse.parse_qs(parsed.query)
        return parsed.path.lower().endswith(".tflite") or "tflite" in query.get("lite-format", [])
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path).lower().endswith(".tflite")
    return handle.lower().endswith(".tflite")


def local_path(handle: str) -> str | None:
    """The file a local path or ``file://`` URL names; None for an http(s) URL or a hub handle."""
    parsed = urllib.parse.urlsplit(handle)
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path)
    if parsed.scheme in ("http", "https"):
        return None
    return handle


def key(handle: str) -> str:
    """The cache key of a handle: sha256 of its text."""
    return hashlib.sha256(handle.encode("utf8")).hexdigest()
