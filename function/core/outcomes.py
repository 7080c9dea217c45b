"""What became of each bucket object a notification named (``classified``, ``skipped`` or ``failed``),
logged once, here; and the error it makes the answer (None: 200).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ObjectFailed, ObjectNotAnImage, ObjectUnavailable, ServiceError
from ..infra import logs
from .buckets import Notification, StorageObject
from .results import Classification, PhotoResult

log = logging.getLogger(__name__)

CLASSIFIED, SKIPPED, FAILED = "classified", "skipped", "failed"
NOT_IMAGE_CODES = ("not_an_image", "empty")


@dataclass(frozen=True)
class Outcome:
    obj: StorageObject
    status: str
    result: PhotoResult | None = None
    reason: str | None = None
    retryable: bool = False


@dataclass(frozen=True)
class ObjectsOutcome:
    """Every object's outcome, in the notification's order, and the classification of those fetched."""

    outcomes: tuple[Outcome, ...]
    classification: Classification


def outcomes(notification: Notification, classification: Classification) -> ObjectsOutcome:
    """Outcomes for the notification's objects (``classification`` answers ``notification.objects``)."""
    found = [_skipped(o, f"content type {o.content_type} is not an image") for o in notification.not_images]
    found += [_outcome(o, r, classification) for o, r in zip(notification.objects, classification.results,
                                                               strict=True)]
    return ObjectsOutcome(tuple(found), classification)


def _skipped(obj: StorageObject, reason: str, result: PhotoResult | None = None) -> Outcome:
    log.info("skipped %s: %s", obj.uri, reason, extra=logs.fields(**_where(obj)))
    return Outcome(obj, SKIPPED, result, reason)


def _outcome(obj: StorageObject, result: PhotoResult, classification: Classification) -> Outcome:
    err = result.error
    if err is not None:
        if err.code in NOT_IMAGE_CODES:
            return _skipped(obj, err.message, result)
        log.warning("could not classify %s: %s", obj.uri, err.message,
                    extra=logs.fields(**_where(obj), error=err.to_dict(), retryable=err.retryable))
        return Outcome(obj, FAILED, result, f"{err.code}: {err.message}", err.retryable)
    best = result.predictions[0]
    log.info("classified %s: %s (%.3f)", obj.uri, best.label, best.score, extra=logs.fields(
        **_where(obj), predictions=[p.to_dict() for p in result.predictions],
        timings_ms={k: round(v, 1) for k, v in classification.timings_ms.items()}))
    return Outcome(obj, CLASSIFIED, result)


def _where(obj: StorageObject) -> dict[str, object]:
    return {"bucket": obj.bucket, "object": obj.name, "content_type": obj.content_type, "size": obj.size}


def delivery_error(outcome: Outcome) -> ServiceError | None:
    """One object's answer: None (200, the reply), 422 when a redelivery cannot help, 503 when it may."""
    if outcome.status == SKIPPED:
        return ObjectNotAnImage(f"{outcome.obj.uri}: {outcome.reason}")
    if outcome.status == FAILED:
        if outcome.retryable:
            return ObjectUnavailable(f"{outcome.obj.uri}: {outcome.reason}")
        return ObjectFailed(f"{outcome.obj.uri}: {outcome.reason}")
    return None


def notification_error(found: Sequence[Outcome]) -> ServiceError | None:
    """Several objects' answer: the result document (None), unless a redelivery may read some object
    later (503: SNS and Pub/Sub redeliver 5xx answers)."""
    retry = [o for o in found if o.status == FAILED and o.retryable]
    if retry:
        return ObjectUnavailable(f"{len(retry)} object(s) could not be read yet: {retry[0].reason}")
    return None
