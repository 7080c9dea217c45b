"""Storage-bucket events -> photo sources.

Google Cloud Storage ``google.cloud.storage.object.v1.finalized`` CloudEvents carry a
StorageObjectData (``bucket``, ``name``, ``contentType``, ``size`` as a number or a string...).
The object is read over HTTPS from ``storage.googleapis.com``, or from the emulator named by
``STORAGE_EMULATOR_HOST`` through the JSON API's media download, as Google's clients do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from .pipeline import Classification, Classifier

log = logging.getLogger(__name__)

FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBLIC_ENDPOINT = "https://storage.googleapis.com"


class EventError(ValueError):
    """The event cannot be acted on (wrong type, missing fields): retrying will not help."""


@dataclass(frozen=True)
class StorageObject:
    bucket: str
    name: str
    content_type: str | None = None
    size: int | None = None

    @property
    def is_image(self) -> bool | None:
        """True/False when the content type says; None when it does not."""
        if not self.content_type:
            return None
        return self.content_type.split(";")[0].strip().lower().startswith("image/")

    def url(self, emulator_host: str | None = None) -> str:
        if emulator_host:
            base = emulator_host if "://" in emulator_host else f"http://{emulator_host}"
            return (f"{base.rstrip('/')}/download/storage/v1/b/{quote(self.bucket, safe='')}"
                    f"/o/{quote(self.name, safe='')}?alt=media")
        return f"{PUBLIC_ENDPOINT}/{quote(self.bucket, safe='')}/{quote(self.name, safe='/')}"


def storage_object(event_type: str, data: Any) -> StorageObject:
    """The object a finalized-object event names; :class:`EventError` for anything else."""
    if event_type != FINALIZED:
        raise EventError(f"event type {event_type!r} is not handled; expected {FINALIZED}")
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except ValueError:
            raise EventError("event data is not JSON") from None
    if not isinstance(data, Mapping):
        raise EventError("event data must be a StorageObjectData JSON object")
    bucket, name = data.get("bucket"), data.get("name")
    if not isinstance(bucket, str) or not bucket or not isinstance(name, str) or not name:
        raise EventError("event data needs non-empty 'bucket' and 'name'")
    size = data.get("size")
    try:
        size = int(size) if size not in (None, "") else None
    except (TypeError, ValueError):
        raise EventError(f"event data 'size' is not a number: {size!r}") from None
    content_type = data.get("contentType")
    return StorageObject(bucket, name, content_type if isinstance(content_type, str) else None, size)


class TransientEventError(RuntimeError):
    """Classifying the object failed in a way a redelivery may fix (host down, model loading)."""


def handle(event: Any, classifier: Classifier) -> Classification | None:
    """The CloudEvent target: classify the object a storage event names and log the result.

    Returns the classification, or None when the event was skipped (not an image, not a finalized
    object). Raises :class:`TransientEventError` (or NotReady) when a retry may help, so the
    framework answers 5xx and the trigger redelivers; permanent problems are logged, not raised.
    """
    from . import logs
    from .photos import PhotoSource

    with logs.request_context(str(event.get("id") or logs.new_request_id())):
        try:
            obj = storage_object(event.get("type") or "", event.data)
        except EventError as err:
            log.warning("event ignored: %s", err, extra=logs.fields(type=event.get("type"),
                                                                     source=event.get("source")))
            return None
        where = logs.fields(bucket=obj.bucket, object=obj.name, content_type=obj.content_type, size=obj.size)
        if obj.is_image is False:
            log.info("skipped gs://%s/%s: content type %s is not an image", obj.bucket, obj.name,
                     obj.content_type, extra=where)
            return None
        result = classifier.classify([PhotoSource.url(obj.url(classifier.config.storage_emulator_host))])
        photo = result.results[0]
        if photo.error is not None:
            err = photo.error
            if err.code in NOT_IMAGE_CODES:
                log.info("skipped gs://%s/%s: %s", obj.bucket, obj.name, err.message, extra=where)
                return None
            if err.retryable:
                raise TransientEventError(f"gs://{obj.bucket}/{obj.name}: {err.code}: {err.message}")
            log.warning("could not classify gs://%s/%s: %s", obj.bucket, obj.name, err.message,
                        extra=logs.fields(**where["fields"], error=err.to_dict()))
            return result
        log.info("classified gs://%s/%s: %s (%.3f)", obj.bucket, obj.name, photo.predictions[0].label,
                 photo.predictions[0].score, extra=logs.fields(
                     **where["fields"], predictions=[p.to_dict() for p in photo.predictions],
                     timings_ms={k: round(v, 1) for k, v in result.timings_ms.items()}))
        return result


NOT_IMAGE_CODES = ("not_an_image", "empty")
