"""Every error the service names, each with its stable ``code``, HTTP ``status``, ``retryable`` and headers.

Photo problems (:class:`PhotoError`) are values in a 200, request problems (:class:`RequestError`) 4xx.
:func:`answer` alone turns an error into an answer, for every transport. A leaf module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Self


class ServiceError(Exception):
    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    retryable: bool = False  # a later try of the same thing may succeed (a host down, a model loading)
    headers: ClassVar[Mapping[str, str]] = {}
    default_retry_after_s: ClassVar[float | None] = None

    def __init__(self, message: str, *, retry_after_s: float | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after_s = self.default_retry_after_s if retry_after_s is None else retry_after_s
        if retryable is not None:
            self.retryable = retryable

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class Internal(ServiceError):
    """Something nobody foresaw; logged with its stack trace, answered with the request id."""


class ConfigError(ServiceError, ValueError):
    """An environment value that cannot be used; the message names the variable."""

    code = "invalid_config"


# -- the instance: the model and the label map not ready, too many connections ---------------------
class NotReady(ServiceError):
    """The model or the label map cannot be had now (still loading past the wait, or failed)."""

    code = "model_unavailable"
    status = 503
    retryable = True

    name: str = ""  # what is not ready: "model", "label map"
    state: str = ""  # its lifecycle state: loading, failed...
    reason: str | None = None  # why it failed, if it did

    @classmethod
    def of(cls, name: str, state: str, reason: str | None, retry_after_s: float) -> NotReady:
        detail = f": {reason}" if reason else ""
        err = cls(f"{name} is {state.replace('_', ' ')}{detail}", retry_after_s=retry_after_s)
        err.name, err.state, err.reason = name, state, reason
        return err


class TooManyConnections(ServiceError):
    """This instance holds MAX_CONNECTIONS already: the gunicorn worker refuses the connection at once."""

    code = "too_many_connections"
    status = 503
    retryable = True


class ModelError(ServiceError):
    """The model at the configured URL cannot be used (no fitting signature, wrong input shape...)."""

    code = "model_invalid"


class ModelFormatError(ModelError, ValueError):
    """The model file cannot be run: not a TFLite flatbuffer, or not an image classifier's shape."""

    code = "model_format"


class InputShapeError(ModelError, ValueError):
    """A batch that is not float [N,H,W,3] at the model's own height and width (a bug upstream)."""

    code = "model_input_shape"


class ConversionError(ModelError):
    """The handle could not be turned into a usable ``.tflite``; ``output``: the tail of TensorFlow's output."""

    code = "model_conversion_failed"
    output: str = ""


class TensorFlowMissing(ConversionError):
    code = "tensorflow_missing"


class ModelSourceUnavailable(ConversionError):
    """The module could not be downloaded (or found): no other runtime would do better."""

    code = "model_source_unavailable"


class ModelCacheError(ModelError):
    code = "model_cache_unusable"


class LabelMapError(ServiceError, ValueError):
    code = "label_map_invalid"


# -- requests: 4xx, retrying the same request will not help ----------------------------------------
class RequestError(ServiceError):
    code = "invalid_request"
    status = 400


class InvalidJson(RequestError):
    code = "invalid_json"


class MissingUrls(RequestError):
    code = "missing_urls"


class InvalidUrls(RequestError):
    code = "invalid_urls"


class OwnChunk(RequestError):
    """A fan-out chunk routed back to the instance that sent it, which classifies its share itself."""

    code = "fanout_own_chunk"
    status = 421  # Misdirected Request: another instance can answer it


class TooManyUrls(RequestError):
    code = "too_many_urls"


class InvalidTopK(RequestError):
    code = "invalid_top_k"


class UnknownField(RequestError):
    code = "unknown_field"


class MissingPhotos(RequestError):
    code = "missing_photos"


class TooManyPhotos(RequestError):
    code = "too_many_photos"


class InvalidPhoto(RequestError):
    code = "invalid_photo"


class InvalidMultipart(RequestError):
    code = "invalid_multipart"


class InvalidContentLength(RequestError):
    code = "invalid_content_length"


class BodyTooLarge(RequestError):
    code = "body_too_large"
    status = 413


class BodyTimeout(RequestError):
    code = "body_timeout"
    status = 408


class QueryTooLong(RequestError):
    code = "query_too_long"
    status = 414


class UnsupportedMediaType(RequestError):
    code = "unsupported_media_type"
    status = 415


class NotFound(RequestError):
    code = "not_found"
    status = 404


class MethodNotAllowed(RequestError):
    code = "method_not_allowed"
    status = 405
    headers = {"Allow": "GET, POST"}


class DeliveryMethodNotAllowed(MethodNotAllowed):
    headers = {"Allow": "POST"}


class InvalidCloudEvent(RequestError):
    code = "invalid_cloudevent"


# -- bucket events and notifications ---------------------------------------------------------------
class EventError(RequestError):
    """An event that cannot be acted on (wrong type, missing fields): a redelivery will not help."""

    code = "invalid_event"


class InvalidNotification(EventError):
    code = "invalid_notification"


class InvalidObjectName(EventError):
    """A bucket or object name that would not address exactly one object."""

    code = "invalid_object_name"


class SubscriptionRefused(EventError):
    """An SNS subscription confirmation for a topic that is not listed, or to a URL that is not SNS's."""

    code = "subscription_refused"
    status = 403


class SenderUnproven(RequestError):
    """A delivery without a proof of its sender that verifies; ``envelope`` and ``reason`` name it, never the proof."""

    code = "sender_unproven"
    status = 401
    headers = {"WWW-Authenticate": 'Bearer realm="bucket events"'}
    envelope: str = ""
    reason: str = ""

    @classmethod
    def of(cls, envelope: str, reason: str, message: str) -> Self:
        err = cls(message)
        err.envelope, err.reason = envelope, reason
        return err


class SenderNotAllowed(SenderUnproven):
    """A delivery that proves its sender, who is not one the function takes deliveries from."""

    code = "sender_not_allowed"
    status = 403
    headers = {}


class SenderKeysUnavailable(ServiceError):
    """The keys that would verify a delivery's proof could not be fetched now; the broker retries."""

    code = "sender_keys_unavailable"
    status = 503
    retryable = True
    envelope: str = ""
    reason: str = "keys_unavailable"

    default_retry_after_s = 10.0


class ObjectNotAnImage(ServiceError):
    code = "not_an_image"
    status = 422


class ObjectFailed(ServiceError):
    """The object a delivery names could not be classified, and a redelivery will not change that."""

    code = "object_failed"
    status = 422


class ObjectUnavailable(ServiceError):
    """Classifying a bucket object failed in a way a redelivery may fix (host down)."""

    code = "object_unavailable"
    status = 503
    retryable = True

    default_retry_after_s = 5.0


class ResultNotWritten(ServiceError):
    """A result not written to ``RESULTS_URL`` or ``K_SINK`` after the retries: the platform delivers again."""

    code = "result_not_written"
    status = 503
    retryable = True

    default_retry_after_s = 5.0


# -- photos: values inside a 200, next to the other photos' results --------------------------------
class PhotoError(ServiceError):
    code = "photo_failed"
    status = 422
    _by_code: ClassVar[dict[str, type[PhotoError]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        PhotoError._by_code[cls.code] = cls

    @classmethod
    def from_code(cls, code: str, message: str) -> PhotoError:
        """The photo error a result document names (another instance's answer, read back by fan-out)."""
        known = PhotoError._by_code.get(code)
        if known is not None:
            return known(message)
        err = PhotoError(message)
        err.code = code  # type: ignore[misc]  # a code this version does not know: kept as sent
        return err


class InvalidUrl(PhotoError):
    code = "invalid_url"


class BlockedAddress(PhotoError):
    """A connection the SSRF guard refused; deliberately not an OSError, so no retry layer swallows it."""

    code = "blocked_address"
    why: str = ""  # "loopback", "private", ...: what kind of address was refused


class HttpError(PhotoError):
    code = "http_error"


class Timeout(PhotoError):
    code = "timeout"


class FetchFailed(PhotoError):
    code = "fetch_failed"
    retryable = True


class TooManyRedirects(PhotoError):
    code = "too_many_redirects"


class TooLarge(PhotoError):
    code = "too_large"


class Empty(PhotoError):
    code = "empty"


class NotAnImage(PhotoError):
    code = "not_an_image"


class UnsupportedFormat(PhotoError):
    code = "unsupported_format"


class CorruptImage(PhotoError):
    code = "corrupt_image"


class ImageTooLarge(PhotoError):
    code = "image_too_large"


class DecodeTooCostly(PhotoError):
    """Decoding would cost (or did cost) more memory or CPU than one photo's budget."""

    code = "decode_too_costly"


class DeadlineExceeded(PhotoError):
    code = "deadline_exceeded"
    retryable = True


class FanoutFailed(PhotoError):
    code = "fanout_failed"
    retryable = True


class FanoutRefused(FanoutFailed):
    """The instance a chunk reached is the one that sent it (421): another instance can take it."""


class FileNotFound(PhotoError):
    code = "file_not_found"


class FileUnreadable(PhotoError):
    code = "file_unreadable"


class AccessDenied(PhotoError):
    code = "access_denied"


class CredentialsUnavailable(PhotoError):
    code = "credentials_unavailable"
    retryable = True


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, transport-free."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def answer(err: ServiceError, headers: Mapping[str, str] | None = None) -> Answer:
    """The one mapping of an error to an answer: its status, a JSON error body, ``Retry-After`` if any."""
    out = {"Content-Type": "application/json", **(headers or {}), **err.headers}
    if err.retry_after_s is not None and err.status >= 500:
        out["Retry-After"] = str(max(1, math.ceil(err.retry_after_s)))
    return Answer(err.status, json.dumps({"error": err.to_dict()}).encode(), out)
