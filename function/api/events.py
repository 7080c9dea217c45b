"""Bucket events in, answers out: CloudEvents, SNS messages and bucket notifications posted as bodies.

Every delivery first proves its sender (:meth:`App.verify_sender`); one that does not is answered 401
or 403, logged once with its envelope and the reason, and nothing is fetched for it. Every envelope
goes through one door, :func:`function.core.buckets.notification`; errors become answers once, in
:func:`deliver` and :func:`handle`.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from cloudevents import exceptions as ce_exceptions
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

from ..app import App
from ..core import buckets, outcomes
from ..core.buckets import Notification
from ..errors import (
    Answer,
    EventError,
    InvalidCloudEvent,
    InvalidNotification,
    SenderKeysUnavailable,
    SenderUnproven,
    ServiceError,
    answer,
)
from ..infra import logs
from ..infra.deliveries import delivery_key
from ..infra.senders import sns_envelope
from .parsing import sns_type

log = logging.getLogger(__name__)

REPLY_TYPE = "dev.birdclassifier.birds.classified"
JSON = {"Content-Type": "application/json"}


def handle(event: Any, app: App, headers: Mapping[str, str]) -> Answer | None:
    """The CloudEvent target: classify the object a storage event names. Returns a sender's refusal; a
    failure a redelivery may fix raises, so the framework answers 5xx; anything else is acknowledged."""
    traceparent = event.get("traceparent")  # the CloudEvents distributed-tracing extension
    trace = logs.trace_fields(traceparent if isinstance(traceparent, str) else None, None,
                              app.config.google_cloud_project)
    with logs.request_context(_short(str(event.get("id") or logs.new_request_id()))), logs.trace_context(trace):
        try:
            app.verify_sender("cloudevent", headers)
        except (SenderUnproven, SenderKeysUnavailable) as err:
            return _refused("cloudevent", err)
        try:
            notification = buckets.notification(event.data, event.get("type") or "", app.config.max_urls)
        except EventError as err:
            log.warning("event ignored: %s", err, extra=logs.fields(type=event.get("type"), source=event.get("source")))
            return None
        if notification.skip:
            log.info("event skipped: %s", notification.skip, extra=logs.fields(type=event.get("type")))
            return None
        for outcome in app.classify_objects(notification).outcomes:
            refusal = outcomes.delivery_error(outcome)
            if refusal is not None and refusal.retryable:
                raise refusal
        return None


def deliver(headers: Mapping[str, str], body: bytes, app: App) -> Answer:
    """A Trigger's CloudEvent or an SNS message posted to the HTTP target, answered once per delivery: 4xx
    for what a redelivery cannot fix (the Broker dead-letters), 5xx with ``Retry-After`` for what it can."""
    try:
        if sns_type(headers) is not None:
            return _deliver_sns(headers, body, app)
        # Before the body is parsed and before the memory of answers: a forged copy learns nothing.
        app.verify_sender("cloudevent", headers)
        try:
            event = from_http(dict(headers), body)
        except (ce_exceptions.GenericException, ValueError, TypeError, AttributeError, KeyError) as exc:
            # The SDK's own errors, and what its parser raises on JSON of the wrong shape.
            raise InvalidCloudEvent(f"not a valid CloudEvent: {exc}") from None
        source, event_id = str(event["source"]), str(event["id"])
        return _once(app, delivery_key("cloudevent", source, event_id, body), source, event_id,
                     lambda: _reply(event, app))
    except (SenderUnproven, SenderKeysUnavailable) as err:
        return _refused("sns" if sns_type(headers) is not None else "cloudevent", err)
    except ServiceError as err:
        if err.status < 500:
            log.warning("delivery refused: %s", err.message, extra=logs.fields(code=err.code))
        return answer(err)


def posted(notification: Notification, headers: Mapping[str, str], app: App) -> Answer:
    """A bucket notification posted as a plain body: once its sender is proven, the result document."""
    try:
        app.verify_sender(notification.envelope, headers)
    except (SenderUnproven, SenderKeysUnavailable) as err:
        return _refused(notification.envelope, err)
    return notification_answer(notification, app, delivered=False)


def _refused(envelope: str, err: SenderUnproven | SenderKeysUnavailable) -> Answer:
    """The one record of a refused delivery (its envelope and why, never its proof), and its answer."""
    log.warning("delivery refused: %s", err.message, extra=logs.fields(
        code=err.code, status=err.status, envelope=envelope, reason=err.reason))
    return answer(err)


def notification_answer(notification: Notification, app: App, *, delivered: bool = True) -> Answer:
    """The result document; a broker's delivery (``delivered``) gets 503 instead when a redelivery may read
    some object later, and 204 when nothing is to be classified."""
    if not notification.objects and delivered:
        return _skipped(notification.empty_reason)
    found = app.classify_objects(notification)
    err = outcomes.notification_error(found.outcomes) if delivered else None
    if err is not None:
        raise err
    return Answer(200, json.dumps(found.classification.to_dict()).encode(), dict(JSON))


def _once(app: App, key: bytes, source: str, event_id: str, work: Callable[[], Answer]) -> Answer:
    def answered() -> Answer:
        try:
            return work()
        except ServiceError as err:  # remembered like any answer (a 5xx is not: the retry does it again)
            return answer(err)

    with logs.request_context(_short(event_id)):
        reply, duplicate = app.deliver_once(key, answered)
        if duplicate:
            log.info("duplicate delivery of %s from %s answered from memory", _short(event_id), _short(source))
            reply = Answer(reply.status, reply.body, {**reply.headers, "X-Duplicate-Delivery": "true"})
        return reply


def _reply(event: Any, app: App) -> Answer:
    notification = buckets.notification(event.data, event["type"], app.config.max_urls)
    if notification.skip:
        log.info("event skipped: %s", notification.skip, extra=logs.fields(type=event["type"]))
        return _skipped(notification.skip)
    found = app.classify_objects(notification)
    (outcome,) = found.outcomes  # a storage event names one object
    err = outcomes.delivery_error(outcome)
    if err is not None:
        raise err
    reply = CloudEvent({
        "type": REPLY_TYPE, "source": f"/services/{app.config.k_service}",
        "subject": event.get("subject") or f"objects/{outcome.obj.name}",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event['source']}#{event['id']}")),
        "datacontenttype": "application/json",
    }, found.classification.to_dict())
    headers, body = to_binary(reply)
    return Answer(200, body if isinstance(body, bytes) else str(body).encode(), dict(headers))


def _skipped(reason: str) -> Answer:
    """204: acknowledged (Knative, Pub/Sub and SNS take any 2xx), nothing fetched; why, in a header."""
    return Answer(204, b"", {"X-Skipped": re.sub(r"[^\x20-\x7e]", "?", reason)[:200]})


def _short(value: object, limit: int = 200) -> str:
    """A caller-chosen value (a structured event's attribute may be any JSON value) as text for logs, bounded."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


# -- SNS HTTP(S) deliveries of S3 notifications -------------------------------------------------------


def _deliver_sns(headers: Mapping[str, str], body: bytes, app: App) -> Answer:
    """An SNS message: a Notification classified; a SubscriptionConfirmation followed for listed topics only.
    A signed envelope proves itself by its signature, a raw delivery by its ``Authorization`` header."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidNotification("the SNS message is not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidNotification("the SNS message is not a JSON object")
    app.verify_sender("sns", headers, doc if sns_envelope(doc) else None)
    kind = doc.get("Type") or sns_type(headers)
    if kind == buckets.SNS_CONFIRMATION:
        url = buckets.subscribe_url(doc, app.config.sns_topic_arns)
        app.confirm_subscription(url)
        log.info("SNS subscription to %s confirmed", doc.get("TopicArn"))
        return Answer(200, json.dumps({"confirmed": doc.get("TopicArn")}).encode(), dict(JSON))
    if kind != buckets.SNS_NOTIFICATION:
        log.info("SNS message of type %s acknowledged", _short(str(kind), 40))
        return _skipped(f"SNS message type {_short(str(kind), 40)}")
    topic, message_id = str(doc.get("TopicArn") or ""), str(doc.get("MessageId") or "")
    return _once(app, delivery_key("sns", topic, message_id, body), topic, message_id,
                 lambda: notification_answer(buckets.notification(doc, None, app.config.max_urls), app))
