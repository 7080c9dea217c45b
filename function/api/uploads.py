"""Photos sent in the request itself: ``multipart/form-data`` and ``Content-Type: image/*`` bodies.

* multipart: files in ``photo``, URLs in ``urls`` or ``url`` (each repeatable; a value may hold several
  URLs separated by white space, or a JSON array), ``top_k``. Results come files first, then URLs.
* ``image/*``: one photo, named by the ``filename`` query parameter or ``Content-Disposition``.

The whole body is refused with 413 past ``MAX_UPLOAD_BYTES`` (declared, or as soon as a chunked body
passes it); form text fields are held to ``MAX_REQUEST_BYTES``; one photo over ``MAX_PHOTO_BYTES`` is
that photo's ``too_large`` error.
"""

from __future__ import annotations

import json
import posixpath

import flask
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

from ..config import Config
from ..core.sources import PhotoSource
from ..errors import (
    BodyTooLarge,
    InvalidMultipart,
    InvalidPhoto,
    InvalidTopK,
    InvalidUrls,
    MissingPhotos,
    TooManyPhotos,
    UnknownField,
)
from .fields import ClassifyRequest, parse_top_k

MULTIPART = "multipart/form-data"
FIELDS = ("photo", "urls", "url", "top_k")


def parse(request: flask.Request, config: Config) -> ClassifyRequest:
    """The photos and ``top_k`` of an upload request; :class:`~function.errors.RequestError` if malformed."""
    limit = config.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"the upload is {request.content_length} bytes; the limit is {limit} (MAX_UPLOAD_BYTES)")
    request.max_content_length = limit  # bounds a chunked body while it is read
    try:
        if request.mimetype == MULTIPART:
            return _parse_multipart(request, config)
        return _parse_image(request, config)
    except RequestEntityTooLarge:
        raise BodyTooLarge(f"the upload is over the limit of {limit} bytes (MAX_UPLOAD_BYTES), "
                           f"or a form field is over {config.max_request_bytes} bytes") from None


def _parse_image(request: flask.Request, config: Config) -> ClassifyRequest:
    data = request.stream.read()  # a declared length is checked already; a chunked body stops at the limit
    if len(data) >= config.max_upload_bytes:
        request.stream.read(1)  # raises RequestEntityTooLarge if a chunked body goes on past the limit
    _, disposition = parse_options_header(request.headers.get("Content-Disposition", ""))
    source = PhotoSource.upload(file_name(request.args.get("filename") or disposition.get("filename")), data)
    return ClassifyRequest([source], parse_top_k(request.args.get("top_k"), config))


def file_name(name: str | None) -> str:
    """The last part of a client's file name (some clients send a path), or ``upload``."""
    base = posixpath.basename((name or "").replace("\\", "/")).strip()
    return base or "upload"


def _parse_multipart(request: flask.Request, config: Config) -> ClassifyRequest:
    if not request.mimetype_params.get("boundary"):
        raise InvalidMultipart("multipart/form-data without a boundary parameter; let your "
                           "HTTP client build the body (curl -F photo=@bird.jpg)")
    parser = FormDataParser(max_form_memory_size=config.max_request_bytes, max_content_length=config.max_upload_bytes,
                            max_form_parts=4 * config.max_urls + 16, silent=False)
    try:
        _, form, files = parser.parse(request.stream, request.mimetype, request.content_length,
                                      request.mimetype_params)
    except ValueError as exc:
        raise InvalidMultipart(f"the multipart body cannot be parsed: {exc}") from None
    try:
        return ClassifyRequest(_multipart_sources(form, files, config), _multipart_top_k(form, config))
    finally:
        for f in files.values():
            f.close()


def _multipart_sources(form: MultiDict[str, str], files: MultiDict[str, FileStorage],
                       config: Config) -> list[PhotoSource]:
    unknown = sorted((set(form) | set(files)) - set(FIELDS))
    if unknown:
        raise UnknownField(f"unknown form field(s) {', '.join(unknown)}; expected {', '.join(FIELDS)}")
    if "photo" in form:
        raise InvalidPhoto("the photo field must be a file, not text: curl -F photo=@bird.jpg (note the @)")
    for key in ("urls", "url", "top_k"):
        if key in files:
            raise UnknownField(f"{key} must be a text field, not a file")
    # A browser sends an empty part (no file name, no bytes) for a file input left empty.
    uploads = [f for f in files.getlist("photo") if f.filename or _read(f, 1)]
    urls = [u for key in ("urls", "url") for value in form.getlist(key) for u in _split_urls(value)]
    total = len(uploads) + len(urls)
    if total == 0:
        raise MissingPhotos("no photo: send files in the field 'photo' "
                           "(curl -F photo=@bird.jpg) and/or photo URLs in 'urls'")
    if total > config.max_urls:
        raise TooManyPhotos(f"{total} photos given; at most {config.max_urls} per request")
    sources = [PhotoSource.upload(file_name(f.filename), _read(f)) for f in uploads]
    return sources + [PhotoSource.url(u) for u in urls]


def _read(f: FileStorage, size: int = -1) -> bytes:
    """The part's bytes; all of them by default, so a ``too_large`` error gives the size (the body is bounded)."""
    f.stream.seek(0)
    return f.stream.read(size)


def _split_urls(value: str) -> list[str]:
    text = value.strip()
    if not text.startswith("["):
        return text.split()
    try:
        urls = json.loads(text)
    except ValueError as exc:
        raise InvalidUrls(f"urls looks like a JSON array but is not valid JSON: {exc}") from None
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise InvalidUrls("a JSON urls field must be an array of strings")
    return [u.strip() for u in urls if u.strip()]


def _multipart_top_k(form: MultiDict[str, str], config: Config) -> int:
    values = form.getlist("top_k")
    if len(values) > 1:
        raise InvalidTopK("top_k is given more than once")
    return parse_top_k(values[0] if values else None, config)
