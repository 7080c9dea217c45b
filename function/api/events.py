"""Storage-bucket events, for the CloudEvent target and for deliveries to the HTTP target.

The objects they name are read with the store's credentials and the photos' limits (``storage.py``
says where each object is read from, ``core/objects.py`` how) and classified; the outcome is
logged, and for a delivery answered: a Knative Trigger's CloudEvent with a reply CloudEvent, an SNS
HTTP(S) message with the result document (or the subscription confirmed, for listed topics only).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloudevents import exceptions as ce_exceptions
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

from ..app import App
from ..core.results import Classification
from ..errors import Answer, EventError, NotReady, RequestError, ServiceError, TransientEventError, answer
from ..infra import logs
from ..infra.deliveries import delivery_key
from . import storage
from .storage import Skip, StorageObject, storage_object

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


def classify_object(obj: StorageObject, app: App) -> Outcome:
    """Classify one bucket object and log the outcome (one INFO record on success)."""
    where = {"bucket": obj.bucket, "object": obj.name, "content_type": obj.content_type, "size": obj.size}
    if obj.is_image is False:
        log.info("skipped %s: content type %s is not an image", obj.uri, obj.content_type, extra=logs.fields(**where))
        return Outcome(obj, SKIPPED, reason=f"content type {obj.content_type} is not an image")
    result = app.classifier.classify([obj.source(app.config)])
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
    # The CloudEvents distributed-tracing extension carries a W3C traceparent.
    trace = logs.trace_fields(_text(event.get("traceparent")), None, app.config.google_cloud_project)
    with logs.request_context(_short(str(event.get("id") or logs.new_request_id()))), logs.trace_context(trace):
        try:
            obj = storage_object(event.get("type") or "", event.data)
        except EventError as err:
            log.warning("event ignored: %s", err, extra=logs.fields(type=event.get("type"), source=event.get("source")))
            return None
        if isinstance(obj, Skip):
            log.info("event skipped: %s", obj.reason, extra=logs.fields(type=event.get("type")))
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
    if _sns_type(headers):
        return _deliver_sns(headers, body, app)
    try:
        event = from_http(dict(headers), body)
    except (ce_exceptions.GenericException, ValueError) as exc:
        return answer(RequestError("invalid_cloudevent", f"not a valid CloudEvent: {exc}"))
    source, event_id = str(event["source"]), str(event["id"])
    return _once(delivery_key("cloudevent", source, event_id, body), source, event_id,
                 lambda: _deliver(event, app), app)


def _skipped(reason: str) -> Answer:
    """204: acknowledged (Knative, Pub/Sub and SNS take any 2xx), nothing fetched; why, in a header."""
    return Answer(204, b"", {"X-Skipped": re.sub(r"[^\x20-\x7e]", "?", reason)[:200]})


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _short(value: object, limit: int = 200) -> str:
    """Caller-chosen values as they may appear in logs: text (a structured event's attribute may be any
    JSON value), bounded."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _once(key: bytes, source: str, event_id: str, work: Any, app: App) -> Answer:
    with logs.request_context(_short(event_id)):
        reply, duplicate = app.deliveries.run(key, work)
        if duplicate:
            log.info("duplicate delivery of %s from %s answered from memory", _short(event_id), _short(source))
            reply = Answer(reply.status, reply.body, {**reply.headers, "X-Duplicate-Delivery": "true"})
        return reply


def _deliver(event: Any, app: App) -> Answer:
    try:
        obj = storage_object(event["type"], event.data)
    except EventError as err:
        log.warning("event refused: %s", err, extra=logs.fields(type=event["type"], source=_short(event["source"])))
        return answer(err)
    if isinstance(obj, Skip):
        log.info("event skipped: %s", obj.reason, extra=logs.fields(type=event["type"]))
        return _skipped(obj.reason)
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
    """A delivery for :func:`deliver`: a CloudEvent, or an SNS HTTP(S) message (``x-amz-sns-message-type``)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return "ce-specversion" in lowered or _sns_type(headers) is not None or (
        lowered.get("content-type", "").split(";")[0].strip().lower() == "application/cloudevents+json")


# -- SNS HTTP(S) deliveries of S3 notifications -------------------------------------------------------

def _sns_type(headers: Mapping[str, str]) -> str | None:
    for name, value in headers.items():
        if name.lower() == "x-amz-sns-message-type":
            return value
    return None


def _deliver_sns(headers: Mapping[str, str], body: bytes, app: App) -> Answer:
    """An SNS message: a Notification (envelope, or raw S3 Records) classified; a confirmation followed if listed.

    The signature of SNS messages is not verified (that needs the signing certificate from an
    amazonaws.com URL); what an unverified message can do is bounded: read objects the function may
    read anyway, and confirm subscriptions only to topics listed in ``SNS_TOPIC_ARNS``.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return answer(EventError("the SNS message is not JSON", "invalid_notification"))
    if not isinstance(doc, dict):
        return answer(EventError("the SNS message is not a JSON object", "invalid_notification"))
    kind = doc.get("Type") or _sns_type(headers)
    if kind == storage.SNS_CONFIRMATION:
        return _confirm(doc, app)
    if kind != storage.SNS_NOTIFICATION:
        log.info("SNS message of type %s acknowledged", _short(str(kind), 40))
        return _skipped(f"SNS message type {_short(str(kind), 40)}")
    topic, message_id = str(doc.get("TopicArn") or ""), str(doc.get("MessageId") or "")
    return _once(delivery_key("sns", topic, message_id, body), topic, message_id, lambda: _sns_objects(doc, app), app)


def _sns_objects(doc: Mapping[str, Any], app: App) -> Answer:
    try:
        objects = storage.sns_records(doc) if "Message" in doc and "Records" not in doc else storage.s3_objects(doc)
    except EventError as err:
        log.warning("SNS notification refused: %s", err)
        return answer(err)
    images = [o for o in objects if o.is_image is not False]
    if len(images) > app.config.max_urls:
        return answer(EventError(f"{len(images)} objects; at most {app.config.max_urls} per notification"))
    if not images:
        return _skipped("no created image objects")
    try:
        result = app.classifier.classify([o.source(app.config) for o in images])
    except NotReady as err:
        return answer(err)
    for obj, photo in zip(images, result.results, strict=True):
        if photo.error is not None:
            log.warning("could not classify %s: %s", obj.uri, photo.error.message,
                        extra=logs.fields(bucket=obj.bucket, object=obj.name, error=photo.error.to_dict()))
        else:
            log.info("classified %s: %s (%.3f)", obj.uri, photo.predictions[0].label, photo.predictions[0].score,
                     extra=logs.fields(bucket=obj.bucket, object=obj.name,
                                       predictions=[p.to_dict() for p in photo.predictions]))
    retry = [r.error for r in result.results if r.error is not None and r.error.retryable]
    if retry:  # SNS retries 5xx answers (its delivery policy): the object may be readable later
        return answer(TransientEventError(f"{len(retry)} object(s) could not be read yet: {retry[0].message}"))
    return Answer(200, json.dumps(result.to_dict()).encode(), {"Content-Type": "application/json"})


def _confirm(doc: Mapping[str, Any], app: App) -> Answer:
    try:
        url = storage.subscribe_url(doc, app.config.topic_arns())
    except EventError as err:
        log.warning("SNS subscription not confirmed: %s", err.message)
        return answer(err)
    try:
        with app.photo_session.get(url, timeout=(app.config.connect_timeout_s, app.config.read_timeout_s),
                                   stream=True, allow_redirects=False) as response:
            status = response.status_code
    except Exception as exc:  # the confirmation is retried by SNS; a 503 asks for that
        log.warning("SNS subscription confirmation failed: %s", type(exc).__name__)
        return answer(TransientEventError(f"could not reach SNS to confirm the subscription: {type(exc).__name__}"))
    if status != 200:
        log.warning("SNS answered HTTP %d to the subscription confirmation", status)
        return answer(TransientEventError(f"SNS answered HTTP {status} to the subscription confirmation"))
    log.info("SNS subscription to %s confirmed", doc.get("TopicArn"))
    return Answer(200, json.dumps({"confirmed": doc.get("TopicArn")}).encode(), {"Content-Type": "application/json"})


