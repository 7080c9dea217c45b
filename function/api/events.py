"""Storage-bucket events, for the CloudEvent target and for Trigger deliveries to the HTTP target.

The objects they name are read and classified like photo URLs (see ``storage.py`` for where each
object is read from); the outcome is logged, and for a delivery answered with a reply CloudEvent.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloudevents import exceptions as ce_exceptions
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

from ..app import App
from ..core.results import Classification
from ..core.sources import PhotoSource
from ..errors import Answer, EventError, NotReady, RequestError, ServiceError, TransientEventError, answer
from ..infra import logs
from .storage import StorageObject, storage_object

log = logging.getLogger(__name__)

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


def classify_object(obj: StorageObject, app: App, url: str | None = None) -> Outcome:
    """Classify one bucket object and log the outcome (one INFO record on success)."""
    where = {"bucket": obj.bucket, "object": obj.name, "content_type": obj.content_type, "size": obj.size}
    if obj.is_image is False:
        log.info("skipped %s: content type %s is not an image", obj.uri, obj.content_type, extra=logs.fields(**where))
        return Outcome(obj, SKIPPED, reason=f"content type {obj.content_type} is not an image")
    url = url or obj.url(app.config.storage_emulator_host, app.config.s3_endpoint)
    result = app.classifier.classify([PhotoSource.url(url)])
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


def handle(event: Any, app: App) -> Outcome | None:
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
        outcome = classify_object(obj, app)
        if outcome.retryable:
            raise TransientEventError(f"{obj.uri}: {outcome.reason}")
        return outcome


# -- Deliveries to the HTTP target: a Knative Trigger posts CloudEvents and wants a reply ---------

REPLY_TYPE = "dev.birdclassifier.birds.classified"


def deliver(headers: Mapping[str, str], body: bytes, app: App) -> Answer:
    """A CloudEvent posted to the HTTP target (binary or structured mode) -> the reply.

    200 with a ``birds.classified`` CloudEvent carrying the HTTP API's result document; 4xx for
    what a retry cannot fix (bad event, not an image, object gone), so the Broker does not retry
    but dead-letters; 5xx with ``Retry-After`` for what it can (host down, model loading).
    """
    try:
        event = from_http(dict(headers), body)
    except (ce_exceptions.GenericException, ValueError) as exc:
        return answer(RequestError("invalid_cloudevent", f"not a valid CloudEvent: {exc}"))
    key = (str(event["source"]), str(event["id"]))
    with logs.request_context(key[1]):
        reply, duplicate = app.deliveries.run(key, lambda: _deliver(event, app))
        if duplicate:
            log.info("duplicate delivery of %s from %s answered from memory", key[1], key[0])
            reply = Answer(reply.status, reply.body, {**reply.headers, "X-Duplicate-Delivery": "true"})
        return reply


def _deliver(event: Any, app: App) -> Answer:
    try:
        obj = storage_object(event["type"], event.data)
    except EventError as err:
        log.warning("event refused: %s", err, extra=logs.fields(type=event["type"], source=event["source"]))
        return answer(err)
    try:
        outcome = classify_object(obj, app)
    except NotReady as err:
        return answer(err)
    if outcome.status == SKIPPED:
        return answer(ServiceError(f"{obj.uri}: {outcome.reason}", code="not_an_image", status=422))
    if outcome.status == FAILED:
        if outcome.retryable:
            return answer(TransientEventError(f"{obj.uri}: {outcome.reason}"))
        return answer(ServiceError(f"{obj.uri}: {outcome.reason}", code="object_failed", status=422))
    assert outcome.result is not None
    reply = CloudEvent({
        "type": REPLY_TYPE, "source": f"/services/{app.config.k_service}",
        "subject": event.get("subject") or f"objects/{obj.name}",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event['source']}#{event['id']}")),
        "datacontenttype": "application/json",
    }, outcome.result.to_dict())
    headers, body = to_binary(reply)
    return Answer(200, body if isinstance(body, bytes) else str(body).encode(), dict(headers))


def is_cloudevent(headers: Mapping[str, str]) -> bool:
    lowered = {k.lower(): v for k, v in headers.items()}
    return "ce-specversion" in lowered or (
        lowered.get("content-type", "").split(";")[0].strip().lower() == "application/cloudevents+json")


