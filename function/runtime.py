"""The process-wide classifier the functions-framework targets share.

Built on first use: configuration read from the environment once, JSON logging set up, the
classifier created (cheap: the model loads later, in the background, on the first request or
readiness probe). The model and label map themselves are cached per process by URL (see
``pipeline.shared_resource``), so a container instance downloads them once.
"""

from __future__ import annotations

import threading

from . import logs
from .config import Config
from .pipeline import Classifier

_lock = threading.Lock()
_classifier: Classifier | None = None


def classifier() -> Classifier:
    global _classifier
    if _classifier is None:
        with _lock:
            if _classifier is None:
                config = Config.from_env()
                logs.setup(config.log_level, json_lines=True)
                _classifier = Classifier(config)
    return _classifier


def reset() -> None:
    """Forget the classifier so the next call reads the environment again (tests, reconfiguration)."""
    global _classifier
    with _lock:
        _classifier = None
