"""The result document of each classified bucket object (and local file), its key, and its CloudEvent.

The document is an HTTP API result document of one entry (predictions at ``results[0]``), plus where
the photo was, which model answered and when (openapi.yaml: ``ResultRecord``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, wait
from datetime import UTC, datetime
from typing import Any

from ..config import Config, ResultsLocation
from ..errors import ResultNotWritten
from ..infra.stores import Outbox, Sink, Stores
from .buckets import MAX_NAME_BYTES, StorageObject
from .outcomes import CLASSIFIED, FAILED, Outcome, notification_error
from .results import PhotoResult

log = logging.getLogger(__name__)

EVENT_TYPE = "dev.birdclassifier.birds.classified"  # the reply CloudEvent's type too (api/events.py)
SUFFIX = ".json"
# One entry of at most MAX_TOP_K predictions and names of at most 1024 bytes: a few KB unless a bug.
MAX_RECORD_BYTES = 64 * 1024


def worth_recording(outcome: Outcome) -> bool:
    """Classified, or failed for a reason a redelivery cannot fix: a retryable failure fails the
    delivery instead, and the retry writes the answer."""
    return outcome.status == CLASSIFIED or (outcome.status == FAILED and not outcome.retryable)


def document(result: PhotoResult, model: str, obj: StorageObject | None = None) -> dict[str, Any]:
    """The record of one photo's result: the bucket object's (``obj``) or a local file's."""
    doc: dict[str, Any] = {"results": [result.to_dict()]}
    if obj is not None:
        doc.update(bucket=obj.bucket, object=obj.name, generation=obj.generation, etag=obj.etag)
    doc.update(model=model, classified_at=_now())
    return doc


def encode(doc: Mapping[str, Any]) -> bytes:
    """The document's bytes; :class:`ValueError` past :data:`MAX_RECORD_BYTES`."""
    body = json.dumps(doc, ensure_ascii=False, indent=1).encode()
    if len(body) > MAX_RECORD_BYTES:
        raise ValueError(f"the result document is {len(body)} bytes, over the bound of {MAX_RECORD_BYTES}")
    return body


def key(location: ResultsLocation, obj: StorageObject) -> str:
    """``<prefix><bucket>/<object>.json`` (checked names keep it under the prefix); past the stores' 1024
    bytes, ``<prefix><bucket>/.long/<sha256 of the name>.json``."""
    full = f"{location.prefix}{obj.bucket}/{obj.name}{SUFFIX}"
    if len(full.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES:
        return full
    digest = hashlib.sha256(obj.name.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{location.prefix}{obj.bucket}/.long/{digest}{SUFFIX}"


def top(result: PhotoResult) -> tuple[str, float] | None:
    """The top label and its score, for the photo's own metadata or tags."""
    return (result.predictions[0].label, result.predictions[0].score) if result.predictions else None


def event_attributes(obj: StorageObject, service: str) -> dict[str, str]:
    """A classified object's CloudEvent attributes; a redelivery sends the same id."""
    version = obj.generation or obj.etag or ""
    return {"specversion": "1.0", "type": EVENT_TYPE, "source": f"/services/{service}",
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{obj.uri}#{version}")),
            "subject": f"objects/{obj.name}", "time": _now()}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Recorder:
    """Writes each object's result document, labels (``RESULTS_METADATA``) and event (``K_SINK``) in
    parallel; a failed write fails the delivery (503), and the redelivery writes again (overwrites)."""

    def __init__(self, config: Config, stores: Stores | None, sink: Sink | None, outbox: Outbox):
        self.stores, self.sink, self.outbox = stores, sink, outbox
        self.location = config.results_location()
        self.labels = config.results_metadata
        self.model, self.service, self.wait_s = config.model_url, config.k_service, config.results_timeout_s

    def record(self, found: Sequence[Outcome]) -> None:
        work: list[tuple[str, Future[None]]] = []
        try:
            for outcome in found:
                if outcome.result is not None and worth_recording(outcome):
                    work += self._submit(outcome.obj, outcome.result, outcome.status == CLASSIFIED)
        finally:
            done, late = wait([f for _, f in work], timeout=self.wait_s)
        for future in late:
            future.cancel()  # not started: nothing is sent; one under way ends at its own deadline
        failed = [(what, f.exception() if f in done else None) for what, f in work if f in late or f.exception()]
        for what, err in failed:
            log.warning("%s failed: %s", what, err or f"not done in {self.wait_s:g} s (RESULTS_TIMEOUT_S)")
        if failed:
            what, err = failed[0]
            raise ResultNotWritten(f"{len(failed)} of {len(work)} result writes failed; the first, {what}: "
                                   f"{getattr(err, 'message', None) or err or 'not done in time'}")
        if work:
            log.info("%d result write(s) done", len(work))
        unread = notification_error(found)
        if unread is not None:  # its result is still to be written: only a redelivery can do that, so ask for one
            raise unread

    def _submit(self, obj: StorageObject, result: PhotoResult, classified: bool) -> list[tuple[str, Future[None]]]:
        body = encode(document(result, self.model, obj=obj))
        work = []
        stores, sink = self.stores, self.sink
        if stores is not None and self.location is not None:
            where = key(self.location, obj)
            work.append((f"{self.location.scheme}://{self.location.bucket}/{where}",
                         self.outbox.submit(lambda: stores.put(where, body))))
            best = top(result) if classified and self.labels else None
            if best is not None:
                labels = {"bird-label": best[0], "bird-score": f"{best[1]:.3f}"}
                work.append((f"labels on {obj.uri}", self.outbox.submit(
                    lambda: stores.label(obj.scheme, obj.bucket, obj.name, labels, obj.region))))
        if sink is not None and classified:
            attributes = event_attributes(obj, self.service)
            work.append((f"the event of {obj.uri}", self.outbox.submit(lambda: sink.send(attributes, body))))
        return work


__all__ = ["EVENT_TYPE", "Recorder", "document", "encode", "event_attributes", "key", "top", "worth_recording"]
