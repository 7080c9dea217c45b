"""Getting bytes from elsewhere: pooled sessions behind the SSRF guard, bounded photo fetches.

:class:`HttpFetcher` streams one URL's body up to a byte limit, with bounded retries, inside a hard
per-fetch deadline: the pools' connections tell the deadline which socket a fetch is using, and
the deadline shuts it down, whatever phase the fetch is in. Read and connect timeouts bound each
wait for a byte, not a host that sends one header byte every 2 s. Bytes are counted on the wire:
the fetcher asks for ``identity``, and a host that compresses anyway is decompressed here, bounded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

from ..config import Config
from ..errors import (
    FanoutFailed,
    FanoutRefused,
    FetchFailed,
    HttpError,
    InvalidUrl,
    PhotoError,
    Timeout,
    TooLarge,
    TooManyRedirects,
)
from . import logs
from .credentials import AwsSigner, GoogleSigner, StoreAuth
from .deadlines import Deadlines, shut
from .files import checked_size
from .guard import AddressPolicy, guard_session, wrap_connections

log = logging.getLogger(__name__)

RECHECK_S = 0.05  # a fired deadline whose connection has no socket yet (still connecting) looks again this often
MAX_RETRY_AFTER_S = 5.0  # a photo is not worth a longer wait
BACKOFF_S = 0.2  # the first retry's pause, doubled for each next one


def new_session(pool_size: int, user_agent: str) -> requests.Session:
    """One pooled session: ``pool_size`` connections per host, our User-Agent on every request."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    return session


class _Watch:
    """One fetch's hard deadline and the connection it is using."""

    def __init__(self) -> None:
        self.conn: Any = None
        self.fired = False

    def attach(self, conn: Any) -> None:
        self.conn = conn
        if self.fired:
            shut(getattr(conn, "sock", None))

    def fire(self) -> float | None:
        """Shut the connection's socket down; look again shortly when there is none yet."""
        self.fired = True
        sock = getattr(self.conn, "sock", None)
        if sock is None:
            return RECHECK_S
        shut(sock)
        return None


def _watched(connection_cls: type[HTTPConnection], local: threading.local) -> type[HTTPConnection]:
    """Connections that hand themselves to the fetching thread's watch: a new one before it connects (a
    connect that hangs is cut too), a kept-alive one before its request."""

    def attach(conn: Any) -> None:
        watch = getattr(local, "watch", None)
        if watch is not None:
            watch.attach(conn)

    # A class built from a variable base: mypy cannot check it as a class definition.
    class WatchedConnection(connection_cls):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            attach(self)
            super().connect()

        def request(self, *args: Any, **kwargs: Any) -> None:
            attach(self)
            super().request(*args, **kwargs)

    return WatchedConnection


class CutOff:
    """A session whose connections a deadline shuts down in any phase (connect, headers, body): a host
    that sends a byte just within each read timeout is still cut off at the deadline."""

    def __init__(self, session: requests.Session, deadlines: Deadlines):
        self.session, self.deadlines = session, deadlines
        self._local = threading.local()
        wrap_connections(session, functools.partial(_watched, local=self._local))

    @contextlib.contextmanager
    def within(self, seconds: float) -> Iterator[_Watch]:
        """This thread's requests on the session within ``seconds``; the watch says whether it cut them."""
        watch = _Watch()
        armed = self.deadlines.arm(seconds, watch.fire)
        self._local.watch = watch
        try:
            yield watch
        finally:
            self._local.watch = None
            armed.cancel()


class HttpFetcher:
    """Fetches one URL's bytes over a pooled ``requests.Session``, streaming up to a byte limit."""

    def __init__(self, session: requests.Session, connect_timeout_s: float, read_timeout_s: float,
                 max_bytes: int, retries: int = 0, deadline_s: float = 30.0, deadlines: Deadlines | None = None):
        self.session = session
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.max_bytes = max_bytes
        self.retries = retries
        self.deadline_s = deadline_s
        self._owns_deadlines = deadlines is None
        self.deadlines = deadlines or Deadlines()
        self._cut = CutOff(session, self.deadlines)

    def close(self) -> None:
        if self._owns_deadlines:
            self.deadlines.stop()
        try:
            self.session.close()
        except Exception:  # closing is best effort at shutdown
            log.debug("closing a session failed", exc_info=True)

    def get(self, url: str) -> bytes:
        """GET with bounded retries for transient failures, all within the fetch's deadline."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:  # "http://[oops/": an unbalanced IPv6 bracket
            raise InvalidUrl(f"not a valid URL: {url!r}") from None
        if parts.scheme.lower() not in ("http", "https") or not host:
            raise InvalidUrl(f"not an http(s) URL: {url!r}")
        deadline = time.monotonic() + self.deadline_s
        attempt = 0
        with self._cut.within(self.deadline_s) as watch:
            while True:
                try:
                    data = self._get(url, deadline, watch)
                except PhotoError as err:
                    if watch.fired:  # whatever the socket's shutdown looked like to the reader
                        raise self._timeout() from None
                    pause = err.retry_after_s if err.retry_after_s is not None else BACKOFF_S * 2 ** attempt
                    if not err.retryable or attempt >= self.retries or time.monotonic() + pause >= deadline:
                        raise
                    attempt += 1
                    log.debug("retrying photo", extra=logs.fields(photo=url, attempt=attempt, error=err.code,
                                                                  pause_s=round(pause, 2)))
                    time.sleep(pause)
                    continue
                if watch.fired:  # EOF from the shutdown can look like the end of headers or of the body
                    raise self._timeout()
                return data

    def status(self, url: str) -> int:
        """The status one GET of ``url`` answers (no redirects followed, the body left unread)."""
        with self.session.get(url, timeout=self.timeout, stream=True, allow_redirects=False) as response:
            return response.status_code

    def _timeout(self) -> Timeout:
        return Timeout(f"the photo took longer than {self.deadline_s:g} s to arrive")

    def _get(self, url: str, deadline: float, watch: _Watch) -> bytes:
        remaining = max(0.05, deadline - time.monotonic())  # no attempt may outlast the fetch's deadline
        timeout = (min(self.timeout[0], remaining), min(self.timeout[1], remaining))
        try:
            # identity: the byte limit counts what crosses the wire, not what a decoder makes of it
            with self.session.get(url, timeout=timeout, stream=True,
                                  headers={"Accept-Encoding": "identity"}) as response:
                if response.status_code != 200:
                    status = response.status_code
                    raise HttpError(f"the photo host answered HTTP {status}", retryable=status in (429, 502, 503, 504),
                                    retry_after_s=_retry_after(response.headers.get("Retry-After")))
                declared = response.headers.get("Content-Length")
                length = int(declared) if declared and declared.isdigit() else None
                if length is not None and length > self.max_bytes:
                    raise TooLarge(f"photo is {declared} bytes; the limit is {self.max_bytes}")
                body = self._read_body(response.raw, length, deadline, watch)
                data = _decompress(body, response.headers.get("Content-Encoding", ""), self.max_bytes)
                return checked_size(data, self.max_bytes)
        except requests.TooManyRedirects:
            raise TooManyRedirects("the photo URL redirects too many times") from None
        except requests.Timeout:
            raise Timeout("the photo host did not answer in time", retryable=True) from None
        except requests.exceptions.InvalidURL as exc:
            raise InvalidUrl(f"invalid URL: {exc}") from None
        except (urllib3.exceptions.HTTPError, requests.RequestException) as exc:  # reset, short read, bad encoding
            # a read timeout while streaming the body, bare or (from requests) wrapped in a ConnectionError
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError) or (
                    exc.args and isinstance(exc.args[0], urllib3.exceptions.ReadTimeoutError)):
                raise Timeout("the photo host stopped sending in time", retryable=True) from None
            raise FetchFailed(f"could not fetch the photo: {_reason(exc)}") from None

    def _read_body(self, raw: Any, length: int | None, deadline: float, watch: _Watch) -> bytes:
        """The body as sent (undecoded), within the byte limit and the deadline.

        A declared length is read in one call: http.client allocates the result once and receives into
        it, with no zero-filled buffer and no copy (each a fresh mmap of the photo's size).
        """
        if length is not None:
            body: bytes = raw.read(length, decode_content=False)
            if len(body) < length:
                raise FetchFailed(f"could not fetch the photo: the body broke off after {len(body)} of {length} bytes")
            return body
        chunks = bytearray()
        # read1 returns what one receive brings; a read(n) would wait for all n bytes. Undecoded: a gzip
        # header that never ends would keep urllib3's decoder reading without returning.
        while chunk := raw.read1(min(1 << 20, self.max_bytes + 1 - len(chunks)), decode_content=False):
            chunks += chunk
            if len(chunks) > self.max_bytes:
                raise TooLarge(f"photo is over the limit of {self.max_bytes} bytes")
            if time.monotonic() > deadline or watch.fired:
                raise self._timeout()
        return bytes(chunks)


def _decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """The body a host compressed although asked for ``identity``, decoded up to ``max_bytes``."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip() and c.strip().lower() != "identity"]
    for coding in reversed(codings):  # applied in the order listed: undone last first
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise FetchFailed(f"the photo host sent Content-Encoding {coding!r}, which this service does not "
                              "decode (it asks for identity)", retryable=False)
        out = bytearray()
        data = body
        while data:  # a gzip stream may hold several members
            decoder = zlib.decompressobj(47)  # 32 + 15: a gzip or a zlib header, whichever it is
            try:
                out += decoder.decompress(data, max_bytes + 1 - len(out))
            except zlib.error as exc:
                raise FetchFailed(f"the photo's {coding} encoding is broken: {exc}", retryable=False) from None
            if len(out) > max_bytes:
                raise TooLarge(f"photo is over the limit of {max_bytes} bytes once decompressed")
            if not decoder.eof:
                raise FetchFailed(f"the photo's {coding} encoding is cut short", retryable=False)
            data = decoder.unused_data
        body = bytes(out)
    return body


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (numeric form only), capped."""
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value))) if value else None
    except ValueError:
        return None


def _reason(exc: Exception) -> str:
    """The innermost cause of a requests error, without the noise of urllib3's wrappers."""
    inner: BaseException = exc
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    text = str(inner)
    return text.split(": ", 1)[-1] if "Failed to establish" in text else text or type(inner).__name__


def photo_fetcher(config: Config, deadlines: Deadlines) -> HttpFetcher:
    """For callers' photo URLs: behind the SSRF guard (``TRUSTED_HOSTS`` exempt), at most 5 redirects."""
    return _fetcher(config, deadlines, config.trusted_hosts, max_redirects=5)


def object_fetcher(config: Config, deadlines: Deadlines) -> HttpFetcher:
    """For bucket objects: URLs worked out from configured endpoints, signed with the platform's
    credentials (infra/credentials.py), never redirected; the photos' limits."""
    fetcher = _fetcher(config, deadlines, (*config.trusted_hosts, *config.storage_hosts()), max_redirects=0)
    anonymous = config.storage_credentials == "anonymous"
    fetcher.session.auth = StoreAuth(None if anonymous else GoogleSigner(), None if anonymous else AwsSigner(),
                                     [config.gcs_base_url()], config.s3_endpoint,
                                     [config.storage_emulator_host] if config.storage_emulator_host else [])
    return fetcher


def _fetcher(config: Config, deadlines: Deadlines, trusted: Iterable[str], max_redirects: int) -> HttpFetcher:
    session = new_session(config.fetch_workers, config.user_agent)
    if config.ssrf_guard:
        guard_session(session, AddressPolicy.from_trusted(trusted))
    session.max_redirects = max_redirects
    return HttpFetcher(session, config.connect_timeout_s, config.read_timeout_s, config.max_photo_bytes,
                       config.fetch_retries, config.photo_deadline_s, deadlines=deadlines)


class JsonPoster:
    """POSTs a JSON document to one configured URL (fan-out to the Service's other instances)."""

    def __init__(self, session: requests.Session, url: str, timeout_s: float):
        self.session, self.url, self.timeout_s = session, url, timeout_s

    def __call__(self, doc: Mapping[str, Any], headers: Mapping[str, str]) -> Any:
        try:
            response = self.session.post(self.url, json=doc, headers=dict(headers), timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise FanoutFailed(f"the chunk could not be sent to another instance: {_reason(exc)}") from None
        if response.status_code == 421:  # Misdirected Request: the chunk came back to its sender
            raise FanoutRefused("the chunk was routed back to the instance that sent it (HTTP 421)")
        if response.status_code != 200:
            raise FanoutFailed(f"the instance handling this chunk answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise FanoutFailed("the instance handling this chunk did not answer JSON") from None
