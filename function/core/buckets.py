"""Bucket objects named by storage events, on every path a bucket reaches the function by: one door.

:func:`notification` turns any envelope (Cloud Storage CloudEvents, Pub/Sub notifications, S3 or
MinIO ``Records``, directly or through SNS) into a :class:`Notification`, or raises an
:class:`~function.errors.EventError`. Everything here comes from callers, so names with ``..``,
``.`` or empty segments are refused: urllib3 removes dot segments, reaching another path of the host.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote_plus, urlsplit

from ..config import Config
from ..errors import EventError, InvalidNotification, InvalidObjectName, SubscriptionRefused, TooManyUrls
from .sources import ObjectSource

FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
PUBSUB_FINALIZE = "OBJECT_FINALIZE"
MAX_NAME_BYTES = 1024  # Cloud Storage's and S3's limit for object names

_BUCKET = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,220}[A-Za-z0-9])?")
_DIGITS = re.compile(r"[0-9]{1,19}")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z0-9]+){1,3}")
_VERSION = re.compile(r"[0-9A-Za-z-]{1,64}")  # a generation or an ETag, as a document may repeat it


@dataclass(frozen=True)
class StorageObject:
    bucket: str
    name: str
    content_type: str | None = None
    size: int | None = None
    scheme: str = "gs"  # "gs" for Cloud Storage, "s3" for S3 / MinIO
    region: str | None = None  # S3: the bucket's region, from the record (signing needs it)
    generation: str | None = None  # GCS: the object's generation, as the event named it (result documents)
    etag: str | None = None  # S3: the object's ETag, as the record named it (result documents)

    def __post_init__(self) -> None:
        check_names(self.bucket, self.name)

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.name}"

    @property
    def is_image(self) -> bool | None:
        """True/False when the content type says; None when it does not."""
        if not self.content_type:
            return None
        return self.content_type.split(";")[0].strip().lower().startswith("image/")

    def url(self, emulator_host: str | None = None, s3_endpoint: str | None = None,
            gcs_endpoint: str | None = None) -> str:
        """Where to read the object: GCS, its emulator or GCS_ENDPOINT; S3 or S3_ENDPOINT."""
        if self.scheme == "s3":
            if s3_endpoint:
                return f"{s3_endpoint.rstrip('/')}/{quote(self.bucket, safe='')}/{quote(self.name, safe='/')}"
            region = self.region if self.region and _REGION.fullmatch(self.region) else None
            host = f"s3.{region}.amazonaws.com" if region else "s3.amazonaws.com"
            if "." in self.bucket:  # dotted names do not match the wildcard certificate: path-style
                return f"https://{host}/{quote(self.bucket, safe='')}/{quote(self.name, safe='/')}"
            return f"https://{self.bucket}.{host}/{quote(self.name, safe='/')}"
        base = emulator_host or gcs_endpoint
        if base:
            base = base if "://" in base else f"http://{base}"
            return (f"{base.rstrip('/')}/download/storage/v1/b/{quote(self.bucket, safe='')}"
                    f"/o/{quote(self.name, safe='')}?alt=media")
        return f"{Config.GCS_PUBLIC}/{quote(self.bucket, safe='')}/{quote(self.name, safe='/')}"

    def source(self, config: Config) -> ObjectSource:
        """The object as a photo source, read with the store's credentials."""
        return ObjectSource(self.url(config.storage_emulator_host, config.s3_endpoint, config.gcs_endpoint))


def check_names(bucket: str, name: str) -> None:
    """Refuse names that would not address exactly one object (:class:`EventError`)."""
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidObjectName(f"bucket name {bucket[:80]!r} is not a valid bucket name "
                                "(letters, digits, '.', '-', '_'; no '..')")
    if any(s in ("", ".", "..") for s in name.split("/")):
        raise InvalidObjectName(f"object name {name[:200]!r} has an empty, '.' or '..' segment; "
                                "such names are refused")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise InvalidObjectName(f"object name {name[:200]!r} is too long or holds control characters")


def strict_size(value: Any, where: str = "size", error: type[EventError] = EventError) -> int | None:
    """An object size: an integer or a string of digits (JSON floats like 1e400 are refused)."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise error(f"event data {where!r} is not a whole number of bytes: {str(value)[:40]!r}")


def _version(value: Any) -> str | None:
    """A generation or ETag worth repeating in a result document; anything else is left out."""
    text = str(value).strip('"') if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return text if _VERSION.fullmatch(text) else None


def _json(data: Any, what: str, error: type[EventError] = EventError) -> Any:
    if isinstance(data, (bytes, str)):
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise error(f"{what} is not JSON") from None
    return data


def gcs_object(data: Any) -> StorageObject:
    """A Cloud Storage object resource (StorageObjectData / JSON_API_V1) -> the object."""
    data = _json(data, "event data")
    if not isinstance(data, Mapping):
        raise EventError("event data must be a StorageObjectData JSON object")
    bucket, name = data.get("bucket"), data.get("name")
    if not isinstance(bucket, str) or not bucket or not isinstance(name, str) or not name:
        raise EventError("event data needs non-empty 'bucket' and 'name'")
    size = strict_size(data.get("size"))
    content_type = data.get("contentType")
    return StorageObject(bucket, name, content_type if isinstance(content_type, str) else None, size,
                         generation=_version(data.get("generation")))


def storage_object(event_type: str, data: Any) -> StorageObject | str:
    """The object a finalized-object event names, or why the event is skipped (str)."""
    if event_type == PUBSUB_PUBLISHED:
        return pubsub_object(data)
    if event_type != FINALIZED:
        raise EventError(f"event type {event_type!r} is not handled; expected {FINALIZED} or {PUBSUB_PUBLISHED}")
    return gcs_object(data)


def is_pubsub_push(doc: Mapping[str, Any]) -> bool:
    return isinstance(doc.get("message"), Mapping) and "subscription" in doc


def pubsub_object(data: Any) -> StorageObject | str:
    """A bucket's Pub/Sub notification (CloudEvent data or push body) -> the finalized object, or why not."""
    doc = _json(data, "event data", InvalidNotification)
    message = doc.get("message") if isinstance(doc, Mapping) else None
    if not isinstance(message, Mapping):
        raise InvalidNotification("a Pub/Sub message event has data {\"message\": {\"data\", \"attributes\"}}")
    attributes = message.get("attributes")
    if not isinstance(attributes, Mapping) or "eventType" not in attributes:
        raise InvalidNotification("the Pub/Sub message has no attributes.eventType: not a Cloud Storage notification")
    event_type = attributes.get("eventType")
    if event_type != PUBSUB_FINALIZE:
        return f"Cloud Storage notification {str(event_type)[:40]!r} is not {PUBSUB_FINALIZE}"
    if attributes.get("payloadFormat") == "JSON_API_V1":
        raw = message.get("data")
        try:
            payload = base64.b64decode(raw if isinstance(raw, str) else "", validate=True)
        except (binascii.Error, ValueError):
            raise InvalidNotification("the Pub/Sub message's data is not base64") from None
        return gcs_object(payload)
    bucket, name = attributes.get("bucketId"), attributes.get("objectId")  # payloadFormat NONE
    if not isinstance(bucket, str) or not bucket or not isinstance(name, str) or not name:
        raise InvalidNotification("the Pub/Sub message needs attributes bucketId and objectId")
    return StorageObject(bucket, name, generation=_version(attributes.get("objectGeneration")))


S3_CREATED = ("ObjectCreated:", "s3:ObjectCreated:")


def s3_objects(doc: Mapping[str, Any]) -> list[StorageObject]:
    """The created objects of an S3 or MinIO notification (keys arrive URL-encoded)."""
    if doc.get("Event") == "s3:TestEvent" and "Records" not in doc:
        return []
    records = doc.get("Records")
    if not isinstance(records, list):
        raise InvalidNotification("an S3 notification has a 'Records' list")
    objects = []
    for i, record in enumerate(records):
        try:
            name = record.get("eventName", "")
            if not isinstance(name, str) or not name.startswith(S3_CREATED):
                continue
            s3 = record["s3"]
            bucket, key = s3["bucket"]["name"], unquote_plus(s3["object"]["key"])
            size = s3["object"].get("size")
            content_type = s3["object"].get("contentType")
            region = record.get("awsRegion")
            etag = s3["object"].get("eTag")
        except (AttributeError, KeyError, TypeError):
            raise InvalidNotification(f"Records[{i}] lacks s3.bucket.name or s3.object.key") from None
        if not isinstance(bucket, str) or not bucket or not key:
            raise InvalidNotification(f"Records[{i}] has an empty bucket name or object key")
        size = strict_size(size, f"Records[{i}].s3.object.size", InvalidNotification)
        objects.append(StorageObject(bucket, key, content_type if isinstance(content_type, str) else None, size,
                                     scheme="s3", region=region if isinstance(region, str) else None,
                                     etag=_version(etag)))
    return objects


SNS_NOTIFICATION, SNS_CONFIRMATION = "Notification", "SubscriptionConfirmation"
SNS_TYPES = (SNS_NOTIFICATION, SNS_CONFIRMATION, "UnsubscribeConfirmation")
_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?")


def is_sns_envelope(doc: Mapping[str, Any]) -> bool:
    return doc.get("Type") in SNS_TYPES and isinstance(doc.get("TopicArn"), str)


def subscribe_url(doc: Mapping[str, Any], topics: frozenset[str]) -> str:
    """The SubscribeURL of a confirmation worth following (403 otherwise): only for topics listed in
    ``SNS_TOPIC_ARNS``, and only an https SNS endpoint confirming that topic; anything else is a
    caller asking the function to fetch a URL of its choosing."""
    topic, url = doc.get("TopicArn"), doc.get("SubscribeURL")
    if not isinstance(topic, str) or topic not in topics:
        raise SubscriptionRefused(f"SNS topic {str(topic)[:200]!r} is not listed in SNS_TOPIC_ARNS; "
                                  "the subscription is not confirmed")
    if not isinstance(url, str):
        raise SubscriptionRefused("the SubscriptionConfirmation has no SubscribeURL")
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if (parts.scheme != "https" or not _SNS_HOST.fullmatch(parts.hostname or "") or parts.port not in (None, 443)
            or parts.username or parts.password or query.get("Action") != ["ConfirmSubscription"]
            or query.get("TopicArn") != [topic]):
        raise SubscriptionRefused("the SubscribeURL is not an https SNS endpoint (sns.REGION.amazonaws.com) "
                                  "confirming that topic; the subscription is not confirmed")
    return url


@dataclass(frozen=True)
class Notification:
    """The objects to classify, those whose content type says they are not images, or why neither."""

    objects: tuple[StorageObject, ...] = ()
    not_images: tuple[StorageObject, ...] = ()
    skip: str | None = None
    envelope: str = "s3"  # what carried it: cloudevent, pubsub, sns, s3 (its sender proves itself by that)

    @property
    def empty_reason(self) -> str:
        return self.skip or ("no created image objects" if self.not_images or not self.objects else "")


def notification(data: Any, event_type: str | None = None, max_objects: int | None = None) -> Notification:
    """Any bucket envelope -> :class:`Notification`, at most ``max_objects`` images. ``event_type``: a
    CloudEvent's type, ``data`` its data; without it, ``data`` is a body posted as it is."""
    envelope = "cloudevent"
    if event_type is not None:
        found: list[StorageObject] | StorageObject | str = storage_object(event_type, data)
    else:
        doc = _json(data, "the notification", InvalidNotification)
        if not isinstance(doc, Mapping):
            raise InvalidNotification("a bucket notification is a JSON object")
        if is_pubsub_push(doc):
            envelope, found = "pubsub", pubsub_object(doc)
        elif is_sns_envelope(doc):
            if doc.get("Type") != SNS_NOTIFICATION:
                raise InvalidNotification("SNS confirmations are only taken with SNS's x-amz-sns-message-type header")
            message = doc if "Records" in doc else _json(doc.get("Message"), "the SNS Message", InvalidNotification)
            if not isinstance(message, Mapping):
                raise InvalidNotification("the SNS Message is not an S3 notification (a JSON object with 'Records')")
            envelope, found = "sns", s3_objects(message)
        else:
            envelope, found = "s3", s3_objects(doc)
    if isinstance(found, str):
        return Notification(skip=found, envelope=envelope)
    objects = [found] if isinstance(found, StorageObject) else found
    images = tuple(o for o in objects if o.is_image is not False)
    if max_objects is not None and len(images) > max_objects:
        raise TooManyUrls(f"{len(images)} objects; at most {max_objects} per notification")
    return Notification(images, tuple(o for o in objects if o.is_image is False), envelope=envelope)


def is_notification(doc: Mapping[str, Any]) -> bool:
    """Whether a JSON body posted to the HTTP target is a bucket notification rather than a request."""
    return "Records" in doc or is_pubsub_push(doc) or is_sns_envelope(doc)
