"""Bucket objects named by storage events: Cloud Storage CloudEvents and S3 / MinIO notifications.

Google Cloud Storage ``google.cloud.storage.object.v1.finalized`` CloudEvents carry a
StorageObjectData (``bucket``, ``name``, ``contentType``, ``size`` as a number or a string...).
The object is read over HTTPS from ``storage.googleapis.com``, or from the emulator named by
``STORAGE_EMULATOR_HOST`` through the JSON API's media download, as Google's clients do. S3 and
MinIO notifications (``{"Records": [...]}``) name objects read from an S3 endpoint, path-style.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_plus

from ..errors import EventError

FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBLIC_ENDPOINT = "https://storage.googleapis.com"


@dataclass(frozen=True)
class StorageObject:
    bucket: str
    name: str
    content_type: str | None = None
    size: int | None = None
    scheme: str = "gs"  # "gs" for Cloud Storage, "s3" for S3 / MinIO

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.name}"

    @property
    def is_image(self) -> bool | None:
        """True/False when the content type says; None when it does not."""
        if not self.content_type:
            return None
        return self.content_type.split(";")[0].strip().lower().startswith("image/")

    def url(self, emulator_host: str | None = None, s3_endpoint: str | None = None) -> str:
        """Where to read the object: GCS (or its emulator), or an S3 endpoint, path-style."""
        if self.scheme == "s3":
            endpoint = (s3_endpoint or f"https://{self.bucket}.s3.amazonaws.com").rstrip("/")
            prefix = "" if not s3_endpoint else f"/{quote(self.bucket, safe='')}"
            return f"{endpoint}{prefix}/{quote(self.name, safe='/')}"
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


# -- S3 / MinIO bucket notifications posted to the HTTP target ------------------------------------

S3_CREATED = ("ObjectCreated:", "s3:ObjectCreated:")


def s3_objects(doc: Mapping[str, Any]) -> list[StorageObject]:
    """The created objects of an S3 or MinIO notification (``{"Records": [...]}``).

    Keys arrive URL-encoded (spaces as ``+``); MinIO prefixes event names with ``s3:``. Records
    for other events (removals...) are left out.
    """
    records = doc.get("Records")
    if not isinstance(records, list):
        raise EventError("an S3 notification has a 'Records' list")
    objects = []
    for i, record in enumerate(records):
        try:
            name = record.get("eventName", "")
            if not name.startswith(S3_CREATED):
                continue
            s3 = record["s3"]
            bucket, key = s3["bucket"]["name"], unquote_plus(s3["object"]["key"])
            size = s3["object"].get("size")
            content_type = s3["object"].get("contentType")
        except (AttributeError, KeyError, TypeError):
            raise EventError(f"Records[{i}] lacks s3.bucket.name or s3.object.key") from None
        objects.append(StorageObject(bucket, key, content_type if isinstance(content_type, str) else None,
                                     int(size) if isinstance(size, int) else None, scheme="s3"))
    return objects
