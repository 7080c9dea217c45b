"""Writing results back: result documents into the configured bucket, labels onto the photo itself,
CloudEvents to a Knative sink, and the outbox that bounds what waits.

No storage client library: the read credentials (:mod:`function.infra.credentials`) with write access.
Every request goes to a place the configuration names, with checked key names and no redirects, so an
event cannot move a write elsewhere; each is bounded in time (``RESULTS_TIMEOUT_S``, retries included)
and size. A failed write is :class:`~function.errors.ResultNotWritten` (503): the platform delivers again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote
from xml.etree import ElementTree

import requests

from ..config import Config, ResultsLocation
from ..errors import ResultNotWritten, ServiceError
from . import logs
from .credentials import AwsSigner, GoogleSigner, Signer

log = logging.getLogger(__name__)

T = TypeVar("T")
OK, RETRY_STATUS = (200, 201, 202, 204), (408, 429, 500, 502, 503, 504)
BACKOFF_S = 0.2
MAX_ANSWER_BYTES = 16 * 1024  # read of any answer: an error code, or a tag set (10 tags of 128 + 256 characters)
MAX_S3_TAGS = 10
GCS_CREATE, GCS_UPDATE = "storage.objects.create", "storage.objects.update"
S3_PUT, S3_TAGGING = "s3:PutObject", "s3:GetObjectTagging and s3:PutObjectTagging"
_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_REGION = re.compile(r"[a-z]{2}(?:-[a-z0-9]+){1,3}")  # a region from an S3 record names a host: checked
_S3_TAG_VALUE = re.compile(r"[^\w .:/=+\-@]")  # S3 tags allow letters, digits, spaces and _ . : / = + - @
_ERROR_CODE = re.compile(r"<Code>([A-Za-z.]{1,64})</Code>|\"reason\": ?\"([A-Za-z]{1,64})\"")


class Sender:
    """Sends one request, signed, retried while a later try may succeed, within a deadline; else
    :class:`ResultNotWritten` naming what failed and, for a refusal, who and what to grant."""

    def __init__(self, session: requests.Session, connect_timeout_s: float, read_timeout_s: float, deadline_s: float,
                 retries: int):
        self.session = session
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.deadline_s, self.retries = deadline_s, retries

    def send(self, method: str, url: str, what: str, *, body: bytes = b"", headers: Mapping[str, str] | None = None,
             signer: Signer | None = None, region: str | None = None, permission: str = "") -> bytes:
        """The answer's first bytes (``MAX_ANSWER_BYTES``) once it is a success."""
        deadline = time.monotonic() + self.deadline_s
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            retry_after: float | None = None
            try:
                request = self.session.prepare_request(requests.Request(method, url, data=body,
                                                                         headers=dict(headers or {})))
                if signer is not None:
                    signer.sign(request, region)
                timeout = (min(self.timeout[0], max(0.05, remaining)), min(self.timeout[1], max(0.05, remaining)))
                with self.session.send(request, timeout=timeout, allow_redirects=False, stream=True) as response:
                    answer = response.raw.read(MAX_ANSWER_BYTES, decode_content=True) or b""
                    status = response.status_code
                    if status in OK:
                        return bytes(answer)
                    retry_after = _seconds(response.headers.get("Retry-After"))
                problem = f"HTTP {status}{_code(answer)}"
                if status in (401, 403) and permission:
                    who = signer.identity() if signer is not None else "anonymously"
                    problem += f" to a write as {who}: grant it {permission} (docs/deploy.md, Where the results go)"
                if status not in RETRY_STATUS:
                    raise ResultNotWritten(f"{what}: {problem}")
            except ResultNotWritten:
                raise
            except requests.RequestException as exc:
                problem = type(exc).__name__
            except ServiceError as exc:  # signing: credentials that cannot be had now
                problem = exc.message
            pause = retry_after if retry_after is not None else BACKOFF_S * 2 ** attempt
            if attempt >= self.retries or time.monotonic() + pause >= deadline:
                raise ResultNotWritten(f"{what}: {problem} after {attempt + 1} attempt(s)")
            attempt += 1
            log.debug("retrying a write", extra=logs.fields(what=what, problem=problem, attempt=attempt))
            time.sleep(pause)


def _code(answer: bytes) -> str:
    """The store's error code (S3's ``<Code>``, GCS's ``reason``), never its message."""
    match = _ERROR_CODE.search(answer.decode("utf-8", "replace"))
    return f" ({match.group(1) or match.group(2)})" if match else ""


def _seconds(value: str | None) -> float | None:
    try:
        return min(5.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None


class GcsStore:
    """Cloud Storage's JSON API (``GCS_ENDPOINT``, or the emulator, read and written anonymously)."""

    def __init__(self, sender: Sender, base_url: str, signer: Signer | None):
        self.sender, self.base, self.signer = sender, base_url.rstrip("/"), signer

    def put(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        """A multipart upload (resource, then bytes), as Google's clients send small objects; no-cache,
        since a redelivery overwrites it."""
        boundary = uuid.uuid4().hex
        resource = json.dumps({"name": key, "contentType": content_type, "cacheControl": "no-cache"}).encode()
        payload = b"".join([
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(), resource,
            f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode(), body,
            f"\r\n--{boundary}--\r\n".encode()])
        url = f"{self.base}/upload/storage/v1/b/{quote(bucket, safe='')}/o?uploadType=multipart"
        self.sender.send("POST", url, f"writing gs://{bucket}/{key}", body=payload,
                         headers={"Content-Type": f"multipart/related; boundary={boundary}"}, signer=self.signer,
                         permission=GCS_CREATE)

    def label(self, bucket: str, name: str, labels: Mapping[str, str]) -> None:
        """Custom metadata: a PATCH changes only these keys and makes no new generation (no finalized event)."""
        url = f"{self.base}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
        self.sender.send("PATCH", url, f"labelling gs://{bucket}/{name}", body=json.dumps({"metadata": dict(labels)})
                         .encode(), headers={"Content-Type": "application/json"}, signer=self.signer,
                         permission=GCS_UPDATE)


class S3Store:
    """S3 (virtual-hosted in the signing region) or ``S3_ENDPOINT`` (path-style, MinIO), SigV4."""

    def __init__(self, sender: Sender, endpoint: str | None, signer: AwsSigner | None):
        self.sender, self.endpoint, self.signer = sender, endpoint.rstrip("/") if endpoint else None, signer

    def _url(self, bucket: str, key: str, region: str | None) -> str:
        path = quote(key, safe="/")
        if self.endpoint:
            return f"{self.endpoint}/{quote(bucket, safe='')}/{path}"
        host = f"s3.{region or 'us-east-1'}.amazonaws.com"
        if "." in bucket:  # dotted names do not match the wildcard certificate: path-style
            return f"https://{host}/{quote(bucket, safe='')}/{path}"
        return f"https://{bucket}.{host}/{path}"

    def _region(self, region: str | None) -> str | None:
        if region and _REGION.fullmatch(region):
            return region
        return self.signer.region() if self.signer is not None else None

    def put(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        region = self._region(None)
        self.sender.send("PUT", self._url(bucket, key, region), f"writing s3://{bucket}/{key}", body=body,
                         headers={"Content-Type": content_type}, signer=self.signer, region=region, permission=S3_PUT)

    def label(self, bucket: str, name: str, labels: Mapping[str, str], region: str | None = None) -> None:
        """Object tags, merged into the object's set (PutObjectTagging replaces it). Not metadata: S3 changes
        that only by a copy, a new ObjectCreated event that would be classified again, and again."""
        region = self._region(region)
        url = self._url(bucket, name, region) + "?tagging"
        what = f"tagging s3://{bucket}/{name}"
        current = self.sender.send("GET", url, what, signer=self.signer, region=region, permission=S3_TAGGING)
        tags = {k: v for k, v in _tags(current).items() if k not in labels}
        tags.update({k: _S3_TAG_VALUE.sub("_", v)[:256] for k, v in labels.items()})
        if len(tags) > MAX_S3_TAGS:  # S3's limit: the object's own tags come first, the document has it all
            log.warning("%s: the object has %d tags already; S3 allows %d, so the labels are not added", what,
                        len(tags) - len(labels), MAX_S3_TAGS)
            return
        body = _tagging_xml(tags)
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        self.sender.send("PUT", url, what, body=body, headers={"Content-Type": "application/xml", "Content-MD5": md5},
                         signer=self.signer, region=region, permission=S3_TAGGING)


def _tags(xml: bytes) -> dict[str, str]:
    """An object's tag set from GetObjectTagging's answer (its first MAX_ANSWER_BYTES)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return {}
    out = {}
    for tag in root.iterfind(".//{*}Tag"):
        key = tag.findtext("{*}Key")
        if key:
            out[key] = tag.findtext("{*}Value") or ""
    return out


def _tagging_xml(tags: Mapping[str, str]) -> bytes:
    root = ElementTree.Element("Tagging", xmlns=_S3_NS)
    tag_set = ElementTree.SubElement(root, "TagSet")
    for k, v in tags.items():
        tag = ElementTree.SubElement(tag_set, "Tag")
        ElementTree.SubElement(tag, "Key").text = k
        ElementTree.SubElement(tag, "Value").text = v
    return bytes(ElementTree.tostring(root, encoding="utf-8", xml_declaration=True))


class Stores:
    """The results bucket of ``RESULTS_URL``, and the two kinds of store a photo may be labelled in."""

    def __init__(self, location: ResultsLocation, gcs: GcsStore, s3: S3Store):
        self.location, self.gcs, self.s3 = location, gcs, s3

    def put(self, key: str, body: bytes) -> None:
        store = self.gcs if self.location.scheme == "gs" else self.s3
        store.put(self.location.bucket, key, body, "application/json")

    def label(self, scheme: str, bucket: str, name: str, labels: Mapping[str, str], region: str | None) -> None:
        if scheme == "gs":
            self.gcs.label(bucket, name, labels)
        else:
            self.s3.label(bucket, name, labels, region)


class Sink:
    """Knative's ``K_SINK``: a classified object's CloudEvent, in binary mode, POSTed and retried."""

    def __init__(self, sender: Sender, url: str, extensions: Mapping[str, str]):
        self.sender, self.url, self.extensions = sender, url, dict(extensions)

    def send(self, attributes: Mapping[str, str], body: bytes) -> None:
        headers = {f"ce-{k}": v for k, v in {**self.extensions, **attributes}.items()}
        self.sender.send("POST", self.url, f"sending {attributes.get('subject', 'an event')} to K_SINK", body=body,
                         headers={**headers, "Content-Type": "application/json"})


class Outbox:
    """The writes and events under way, in a pool of ``workers``. One past ``limit`` is refused at once
    (:class:`ResultNotWritten`, 503): redelivered later rather than queued behind a slow store."""

    def __init__(self, workers: int, limit: int):
        self.limit = limit
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="result")
        self._lock = threading.Lock()
        self._pending = 0

    def submit(self, work: Callable[[], T]) -> Future[T]:
        with self._lock:
            if self._pending >= self.limit:
                raise ResultNotWritten(f"{self._pending} result writes wait already (RESULTS_PENDING); "
                                       "the store or the sink is slower than the deliveries")
            self._pending += 1
        try:
            future = self._pool.submit(work)
        except RuntimeError:  # shut down: the delivery is answered 503 and comes back to another instance
            self._done(None)
            raise ResultNotWritten("the instance is stopping") from None
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Any) -> None:
        with self._lock:
            self._pending -= 1

    def stop(self) -> None:
        """Let the writes under way finish: their deliveries wait for them."""
        self._pool.shutdown(wait=True)


def sender(config: Config, session: requests.Session) -> Sender:
    return Sender(session, config.connect_timeout_s, config.read_timeout_s, config.results_timeout_s,
                  config.results_retries)


def stores(config: Config, send: Sender) -> Stores | None:
    """The stores results are written to, signed like reads (``STORAGE_CREDENTIALS``) but with write access."""
    location = config.results_location()
    if location is None:
        return None
    anonymous = config.storage_credentials == "anonymous"
    google = None if anonymous or config.storage_emulator_host else GoogleSigner(write=True)
    aws = None if anonymous else AwsSigner(write=True)
    base = config.storage_emulator_host or config.gcs_base_url()
    base = base if "://" in base else f"http://{base}"
    return Stores(location, GcsStore(send, base, google), S3Store(send, config.s3_endpoint, aws))


def sink(config: Config, send: Sender) -> Sink | None:
    return Sink(send, config.k_sink, config.ce_extensions()) if config.k_sink else None
