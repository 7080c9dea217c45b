"""Storage-bucket events -> photo sources, for the CloudEvent target and for deliveries to HTTP.

Google Cloud Storage ``google.cloud.storage.object.v1.finalized`` CloudEvents carry a
StorageObjectData (``bucket``, ``name``, ``contentType``, ``size`` as a number or a string...).
The object is read over HTTPS from ``storage.googleapis.com``, or from the emulator named by
``STORAGE_EMULATOR_HOST`` through the JSON API's media download, as Google's clients do.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote_plus

from cloudevents import exceptions as ce_exceptions
from cloudevents.http import CloudEvent, from_http, to_binary

from . import logs
from .photos import PhotoSource

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


class TransientEventError(RuntimeError):
    """Classifying the object failed in a way a redelivery may fix (host down, model loading)."""


NOT_IMAGE_CODES = ("not_an_image", "empty")
CLASSIFIED, SKIPPED, FAILED = "classified", "skipped", "failed"


@dataclass
class Outcome:
    """What became of one bucket object: classified, skipped (not an image) or failed."""

    obj: StorageObject
    status: str
    result: Classification | None = None
    reason: str | None = None
    retryable: bool = False


def classify_object(obj: StorageObject, classifier: Classifier, url: str | None = None) -> Outcome:
    """Classify one bucket object and log the outcome (one INFO record on success)."""
    where = {"bucket": obj.bucket, "object": obj.name, "content_type": obj.content_type, "size": obj.size}
    if obj.is_image is False:
        log.info("skipped %s: content type %s is not an image", obj.uri, obj.content_type, extra=logs.fields(**where))
        return Outcome(obj, SKIPPED, reason=f"content type {obj.content_type} is not an image")
    url = url or obj.url(classifier.config.storage_emulator_host, classifier.config.s3_endpoint)
    result = classifier.classify([PhotoSource.url(url)])
    photo = result.results[0]
    if photo.error is not None:
        err = photo.error
        if err.code in NOT_IMAGE_CODES:
            log.info("skipped %s: %s", obj.uri, err.message, extra=logs.fields(**where))
            return Outcome(obj, SKIPPED, result, err.message)
        log.warning("could not classify %s: %s", obj.uri, err.message,
                    extra=logs.fields(**where, error=err.to_dict(), retryable=err.retryable))
        return Outcome(obj, FAILED, result, f"{err.code}: {err.message}", err.retryable)
    best = photo.predictions[0]
    log.info("classified %s: %s (%.3f)", obj.uri, best.label, best.score, extra=logs.fields(
        **where, predictions=[p.to_dict() for p in photo.predictions],
        timings_ms={k: round(v, 1) for k, v in result.timings_ms.items()}))
    return Outcome(obj, CLASSIFIED, result)


def handle(event: Any, classifier: Classifier) -> Outcome | None:
    """The CloudEvent target: classify the object a storage event names.

    Returns None when the event is not one to act on (logged). Raises
    :class:`TransientEventError` (or NotReady) when a redelivery may help, so the framework
    answers 5xx and the trigger retries; permanent problems are logged and acknowledged.
    """
    with logs.request_context(str(event.get("id") or logs.new_request_id())):
        try:
            obj = storage_object(event.get("type") or "", event.data)
        except EventError as err:
            log.warning("event ignored: %s", err, extra=logs.fields(type=event.get("type"), source=event.get("source")))
            return None
        outcome = classify_object(obj, classifier)
        if outcome.retryable:
            raise TransientEventError(f"{obj.uri}: {outcome.reason}")
        return outcome


# -- Deliveries to the HTTP target: a Knative Trigger posts CloudEvents and wants a reply ---------

REPLY_TYPE = "dev.birdclassifier.birds.classified"


@dataclass
class Reply:
    """An HTTP answer to a delivery: status, headers, body (a CloudEvent in binary mode on success)."""

    status: int
    headers: dict[str, str]
    body: bytes


class RecentDeliveries:
    """Remembers the replies to the last ``capacity`` deliveries by (source, id).

    Brokers deliver at least once: a redelivered event gets the first delivery's reply (the same
    reply event id), and a redelivery that arrives while the first is still being classified
    waits for it instead of classifying the object twice. Only final replies are kept; a 5xx
    reply is forgotten so the retry does the work again.
    """

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._replies: OrderedDict[tuple[str, str], Reply | threading.Event] = OrderedDict()

    def run(self, key: tuple[str, str], work: Callable[[], Reply]) -> tuple[Reply, bool]:
        """The reply for ``key``, doing ``work`` only if no delivery of it is done or under way."""
        while True:
            with self._lock:
                entry = self._replies.get(key)
                if entry is None:
                    pending = threading.Event()
                    self._replies[key] = pending
                    while len(self._replies) > self.capacity:
                        self._replies.popitem(last=False)
                    break
                if isinstance(entry, Reply):
                    self._replies.move_to_end(key)
                    return entry, True
            entry.wait(60)
        try:
            reply = work()
        except BaseException:
            with self._lock:
                self._replies.pop(key, None)
            pending.set()
            raise
        with self._lock:
            if reply.status >= 500:
                self._replies.pop(key, None)
            else:
                self._replies[key] = reply
        pending.set()
        return reply, False


def deliver(headers: Mapping[str, str], body: bytes, classifier: Classifier, recent: RecentDeliveries,
            reply_source: str) -> Reply:
    """A CloudEvent posted to the HTTP target (binary or structured mode) -> the reply.

    200 with a ``birds.classified`` CloudEvent carrying the HTTP API's result document; 4xx for
    what a retry cannot fix (bad event, not an image, object gone), so the Broker does not retry
    but dead-letters; 5xx with ``Retry-After`` for what it can (host down, model loading).
    """
    try:
        event = from_http(dict(headers), body)
    except (ce_exceptions.GenericException, ValueError) as exc:
        return _error_reply(400, "invalid_cloudevent", f"not a valid CloudEvent: {exc}")
    key = (str(event["source"]), str(event["id"]))
    with logs.request_context(key[1]):
        reply, duplicate = recent.run(key, lambda: _deliver(event, classifier, reply_source))
        if duplicate:
            log.info("duplicate delivery of %s from %s answered from memory", key[1], key[0])
            reply = Reply(reply.status, {**reply.headers, "X-Duplicate-Delivery": "true"}, reply.body)
        return reply


def _deliver(event: Any, classifier: Classifier, reply_source: str) -> Reply:
    from .resource import NotReady

    try:
        obj = storage_object(event["type"], event.data)
    except EventError as err:
        log.warning("event refused: %s", err, extra=logs.fields(type=event["type"], source=event["source"]))
        return _error_reply(400, "invalid_event", str(err))
    try:
        outcome = classify_object(obj, classifier)
    except NotReady as err:
        return _error_reply(503, "model_unavailable", str(err), {"Retry-After": str(math.ceil(err.retry_after_s))})
    if outcome.status == SKIPPED:
        return _error_reply(422, "not_an_image", f"{obj.uri}: {outcome.reason}")
    if outcome.status == FAILED:
        if outcome.retryable:
            return _error_reply(503, "object_unavailable", f"{obj.uri}: {outcome.reason}", {"Retry-After": "5"})
        return _error_reply(422, "object_failed", f"{obj.uri}: {outcome.reason}")
    reply = CloudEvent({
        "type": REPLY_TYPE, "source": reply_source, "subject": event.get("subject") or f"objects/{obj.name}",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event['source']}#{event['id']}")),
        "datacontenttype": "application/json",
    }, outcome.result.to_dict())  # type: ignore[union-attr]
    headers, body = to_binary(reply)
    return Reply(200, dict(headers), body)


def _error_reply(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return Reply(status, {"Content-Type": "application/json", **(headers or {})}, body)


def is_cloudevent(headers: Mapping[str, str]) -> bool:
    lowered = {k.lower(): v for k, v in headers.items()}
    return "ce-specversion" in lowered or (
        lowered.get("content-type", "").split(";")[0].strip().lower() == "application/cloudevents+json")


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
