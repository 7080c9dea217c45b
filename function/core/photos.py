"""Photos: fetching them (or reading files and uploads), and decoding them into the model's input.

A photo fails on its own: every problem becomes a :class:`PhotoError` with a stable ``code``
that the caller sees next to the other photos' results.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import io
import itertools
import logging
import os
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import requests
import urllib3
from PIL import Image, UnidentifiedImageError
from urllib3.connectionpool import HTTPConnectionPool

from ..errors import BlockedAddress, ConfigError, PhotoError
from ..infra import logs
from .sources import PhotoSource

log = logging.getLogger(__name__)

IMAGE_SIZE = 224
RECHECK_S = 0.05  # a fired watch whose connection has no socket yet (still connecting) looks again this often


@dataclass(order=True)
class _Watch:
    """One photo fetch's hard deadline and the connection it is using."""

    deadline: float
    seq: int
    conn: Any = field(default=None, compare=False)
    fired: bool = field(default=False, compare=False)
    done: bool = field(default=False, compare=False)

    def attach(self, conn: Any) -> None:
        self.conn = conn
        if self.fired:
            _shut(conn)

    def fire(self) -> bool:
        """Shut the connection's socket down; True when there is none yet, to look again shortly."""
        self.fired = True
        conn = self.conn
        return not _shut(conn)


def _shut(conn: Any) -> bool:
    """``shutdown(SHUT_RDWR)`` on the connection's socket: a thread blocked in recv() on it wakes
    with EOF at once, whatever it was reading (status line, headers, body, a TLS record). The plain
    socket method, also for TLS sockets: ``SSLSocket.shutdown`` would drop the SSL object under the
    reading thread."""
    sock = getattr(conn, "sock", None) if conn is not None else None
    if sock is None:
        return False
    with contextlib.suppress(OSError):  # already closed or never connected: nothing left to wake
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    return True


class Watchdog:
    """One thread that enforces every photo fetch's hard deadline (not a timer thread per photo).

    Read and connect timeouts bound each wait for a byte; they cannot bound a host that sends one
    header byte every 2 s (measured: 150 s on one fetch worker). At the deadline the watchdog shuts
    the fetch's socket down, so the fetch ends whatever phase it is in; the fetcher then answers
    ``timeout``. The thread starts on first use and ends with :meth:`stop`.
    """

    def __init__(self) -> None:
        self._heap: list[_Watch] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def watch(self, deadline: float) -> _Watch:
        watch = _Watch(deadline, next(self._seq))
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="photo-watchdog", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, watch)
            self._cond.notify()
        return watch

    def done(self, watch: _Watch) -> None:
        watch.done = True  # left in the heap; dropped when its time comes (no O(n) removal)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            due: list[_Watch] = []
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    while self._heap and (self._heap[0].done or self._heap[0].deadline <= now):
                        watch = heapq.heappop(self._heap)
                        if not watch.done:
                            due.append(watch)
                    if due:
                        break
                    self._cond.wait(self._heap[0].deadline - now if self._heap else None)
                if self._stopped:
                    return
            for watch in due:
                if watch.fire() and not watch.done:  # still connecting: look again shortly
                    with self._cond:
                        watch.deadline = time.monotonic() + RECHECK_S
                        heapq.heappush(self._heap, watch)


def _watched_pool(pool_cls: type[HTTPConnectionPool], local: threading.local) -> type[HTTPConnectionPool]:
    """A connection pool class that hands each connection it gives out to the thread's watch."""

    def _get_conn(self: Any, timeout: float | None = None) -> Any:
        conn = pool_cls._get_conn(self, timeout)
        watch = getattr(local, "watch", None)
        if watch is not None:
            watch.attach(conn)
        return conn

    return type(f"Watched{pool_cls.__name__}", (pool_cls,), {"_get_conn": _get_conn})


class PhotoReader(Protocol):
    """What the classifier needs to get a photo's bytes: a :class:`PhotoFetcher`, or one per kind of source."""

    def read(self, source: PhotoSource) -> bytes: ...

    def close(self) -> None: ...


class PhotoFetcher:
    """Fetches photo bytes over one pooled ``requests.Session``, streaming up to a byte limit.

    Each URL fetch has a hard deadline (``deadline_s``, retries included) kept by a
    :class:`Watchdog`: the session's connection pools are wrapped so the watchdog knows which
    connection a fetch is using. Bytes are counted on the wire: the fetcher asks for ``identity``
    and reads the body undecoded; a host that compresses anyway is decompressed here, bounded.
    """

    def __init__(self, session: requests.Session, connect_timeout_s: float, read_timeout_s: float,
                 max_bytes: int, retries: int = 0, deadline_s: float = 30.0, backoff_s: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep, watchdog: Watchdog | None = None):
        self.session = session
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.max_bytes = max_bytes
        self.retries = retries
        self.deadline_s = deadline_s
        self.backoff_s = backoff_s
        self._sleep = sleep
        self.watchdog = watchdog or Watchdog()
        self._local = threading.local()
        for adapter in session.adapters.values():
            manager = getattr(adapter, "poolmanager", None)
            if manager is not None:  # a new dict: the default one is urllib3's module-level table
                manager.pool_classes_by_scheme = {
                    scheme: _watched_pool(cls, self._local) for scheme, cls in manager.pool_classes_by_scheme.items()}

    def close(self) -> None:
        self.watchdog.stop()

    def read(self, source: PhotoSource) -> bytes:
        if source.kind == "bytes":
            return self._check_size(source.data or b"", source.ref)
        if source.kind == "path":
            return self._read_file(source.ref)
        return self._fetch(source.ref)

    def _check_size(self, data: bytes, ref: str) -> bytes:
        if len(data) > self.max_bytes:
            raise PhotoError("too_large", f"photo is {len(data)} bytes; the limit is {self.max_bytes}")
        if not data:
            raise PhotoError("empty", "photo is empty (0 bytes)")
        return data

    def _read_file(self, path: str) -> bytes:
        try:
            if os.path.isdir(path):
                raise IsADirectoryError(path)
            size = os.path.getsize(path)
            if size > self.max_bytes:
                raise PhotoError("too_large", f"{path} is {size} bytes; the limit is {self.max_bytes}")
            with open(path, "rb") as f:
                return self._check_size(f.read(), path)
        except (FileNotFoundError, NotADirectoryError):
            raise PhotoError("file_not_found", f"no such file: {path}") from None
        except IsADirectoryError:
            raise PhotoError("file_not_found", f"{path} is a directory, not a photo") from None
        except PermissionError:
            raise PhotoError("file_unreadable", f"no permission to read {path}") from None
        except OSError as exc:  # name too long, symlink loop, I/O error...
            raise PhotoError("file_unreadable", f"cannot read {path}: {exc.strerror or exc}") from None

    def _fetch(self, url: str) -> bytes:
        """GET with bounded retries for transient failures, all within the photo's deadline."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:  # "http://[oops/": an unbalanced IPv6 bracket
            raise PhotoError("invalid_url", f"not a valid URL: {url!r}") from None
        if parts.scheme.lower() not in ("http", "https") or not host:
            raise PhotoError("invalid_url", f"not an http(s) URL: {url!r}")
        deadline = time.monotonic() + self.deadline_s
        watch = self.watchdog.watch(deadline)
        self._local.watch = watch
        try:
            return self._fetch_retrying(url, deadline, watch)
        finally:
            self._local.watch = None
            self.watchdog.done(watch)

    def _fetch_retrying(self, url: str, deadline: float, watch: _Watch) -> bytes:
        attempt = 0
        while True:
            try:
                return self._fetch_once(url, deadline, watch)
            except PhotoError as err:
                pause = (err.retry_after_s if err.retry_after_s is not None else self.backoff_s * 2 ** attempt)
                if not err.retryable or attempt >= self.retries or time.monotonic() + pause >= deadline:
                    raise
                attempt += 1
                log.debug("retrying photo", extra=logs.fields(photo=url, attempt=attempt, error=err.code,
                                                              pause_s=round(pause, 2)))
                self._sleep(pause)

    def _timeout(self) -> PhotoError:
        return PhotoError("timeout", f"the photo took longer than {self.deadline_s:g} s to arrive")

    def _fetch_once(self, url: str, deadline: float, watch: _Watch) -> bytes:
        try:
            data = self._get(url, deadline, watch)
        except PhotoError:
            if watch.fired:  # whatever the socket's shutdown looked like to the reader
                raise self._timeout() from None
            raise
        if watch.fired:  # EOF from the shutdown can look like the end of headers or of the body
            raise self._timeout()
        return data

    def _get(self, url: str, deadline: float, watch: _Watch) -> bytes:
        remaining = max(0.05, deadline - time.monotonic())  # no attempt may outlast the photo's deadline
        timeout = (min(self.timeout[0], remaining), min(self.timeout[1], remaining))
        try:
            # identity: the byte limit counts what crosses the wire, not what a decoder makes of it
            with self.session.get(url, timeout=timeout, stream=True,
                                  headers={"Accept-Encoding": "identity"}) as response:
                if watch.fired:
                    raise self._timeout()
                if response.status_code != 200:
                    status = response.status_code
                    raise PhotoError("http_error", f"the photo host answered HTTP {status}",
                                     retryable=status in (429, 502, 503, 504),
                                     retry_after_s=_retry_after(response.headers.get("Retry-After")))
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise PhotoError("too_large", f"photo is {declared} bytes; the limit is {self.max_bytes}")
                body = bytearray()
                # read1 returns what one receive brings; iter_content's read(n) waits for all n bytes, so
                # a host trickling a byte at a time could hold the photo far past its deadline. Undecoded:
                # a gzip header that never ends would keep urllib3's decoder reading without returning.
                while chunk := response.raw.read1(64 * 1024, decode_content=False):
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise PhotoError("too_large", f"photo is over the limit of {self.max_bytes} bytes")
                    if time.monotonic() > deadline or watch.fired:
                        raise self._timeout()
                data = _decompress(bytes(body), response.headers.get("Content-Encoding", ""), self.max_bytes)
                return self._check_size(data, url)
        except BlockedAddress as exc:
            raise PhotoError("blocked_address", str(exc)) from None
        except requests.TooManyRedirects:
            raise PhotoError("too_many_redirects", "the photo URL redirects too many times") from None
        except requests.Timeout:
            raise PhotoError("timeout", "the photo host did not answer in time", retryable=True) from None
        except requests.exceptions.InvalidURL as exc:
            raise PhotoError("invalid_url", f"invalid URL: {exc}") from None
        except urllib3.exceptions.ReadTimeoutError:
            raise PhotoError("timeout", "the photo host stopped sending in time", retryable=True) from None
        except urllib3.exceptions.HTTPError as exc:  # the body broke off: reset, short read, bad encoding
            raise PhotoError("fetch_failed", f"could not fetch the photo: {_reason(exc)}", retryable=True) from None
        except requests.RequestException as exc:
            if exc.args and isinstance(exc.args[0], urllib3.exceptions.ReadTimeoutError):
                # a read timeout while streaming the body: requests reports it as a ConnectionError
                raise PhotoError("timeout", "the photo host stopped sending in time", retryable=True) from None
            raise PhotoError("fetch_failed", f"could not fetch the photo: {_reason(exc)}", retryable=True) from None


def _decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """The body a host compressed although asked for ``identity``, decoded up to ``max_bytes``."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip() and c.strip().lower() != "identity"]
    for coding in reversed(codings):  # applied in the order listed: undone last first
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise PhotoError("fetch_failed", f"the photo host sent Content-Encoding {coding!r}, which this "
                             "service does not decode (it asks for identity)")
        out = bytearray()
        data = body
        while data:  # a gzip stream may hold several members
            decoder = zlib.decompressobj(47)  # 32 + 15: a gzip or a zlib header, whichever it is
            try:
                out += decoder.decompress(data, max_bytes + 1 - len(out))
            except zlib.error as exc:
                raise PhotoError("fetch_failed", f"the photo's {coding} encoding is broken: {exc}") from None
            if len(out) > max_bytes:
                raise PhotoError("too_large", f"photo is over the limit of {max_bytes} bytes once decompressed")
            if not decoder.eof:
                raise PhotoError("fetch_failed", f"the photo's {coding} encoding is cut short")
            data = decoder.unused_data
        body = bytes(out)
    return body


MAX_RETRY_AFTER_S = 5.0


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (numeric form only), capped: a photo is not worth a long wait."""
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


PHOTO_FORMATS = "JPEG,PNG,WEBP,GIF,BMP,TIFF,HEIF,AVIF"
OPTIONAL_FORMATS = frozenset({"HEIF", "AVIF"})  # allowed when their Pillow plugin is there, else skipped
# Orientation tag -> the transpose that shows the photo upright (ImageOps.exif_transpose's table).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
TRIM_AFTER_PIXELS = 4_000_000  # give freed memory back to the OS after decoding an image this big


def allowed_formats(spec: str = PHOTO_FORMATS) -> tuple[str, ...]:
    """The Pillow formats a comma-separated PHOTO_FORMATS names; :class:`ConfigError` for unknown ones.

    Only these decoders ever see a photo's bytes. Pillow knows ~40 formats, and some decode pixels
    while opening (ICO and ICNS decode their embedded PNG inside ``Image.open``: a 2.6 MB ICO took
    9.2 s and 3.5 GB before any size check could run). JPEG includes MPO (phone cameras' JPEGs).
    """
    Image.init()
    names = [n.strip().upper() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in Image.OPEN and n not in OPTIONAL_FORMATS]
    if unknown or not names:
        raise ConfigError(f"PHOTO_FORMATS names formats Pillow cannot open: {', '.join(unknown) or '(none)'}; "
                          f"it knows {', '.join(sorted(Image.OPEN))}")
    return tuple(n for n in names if n in Image.OPEN)


def limit_decoders(max_pixels: int) -> None:
    """Pillow's own pixel check set to our limit, and its warning made an error.

    Pillow checks the size of every image it opens, including the ones inside containers (an ICO's
    PNG, an ICNS's 12000x12000 PNG behind a 512x512 header), which our check on the outer header
    cannot see. It raises past twice ``MAX_IMAGE_PIXELS`` and only warns past it: as an error the
    warning stops the decode too. Process-wide settings, so set when the app is built (and checked
    on each decode), never at import.
    """
    if max_pixels != Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    if not any(f[0] == "error" and f[2] is Image.DecompressionBombWarning for f in warnings.filters):
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


class DecodeBudget:
    """Megapixels being decoded at once in this instance; a decode waits for its share, until its deadline.

    A decoded image costs far more than its bytes: one 262 KB 8000x7999 RGBA PNG held 1.2 GB at its
    peak (20 B/px), four at once 4.8 GB, twice the pod's limit. The budget bounds the sum; a photo
    bigger than the whole budget (but under MAX_PHOTO_PIXELS) is decoded alone.
    """

    def __init__(self, pixels: int):
        self.capacity = pixels
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, pixels: int, deadline: float | None) -> None:
        with self._cond:
            while self.used and self.used + pixels > self.capacity:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PhotoError("deadline_exceeded", f"the request's deadline passed while this photo "
                                     f"({pixels / 1e6:.0f} Mpx) waited for decoding memory", retryable=True)
                self._cond.wait(left)
            self.used += pixels

    def release(self, pixels: int) -> None:
        with self._cond:
            self.used -= pixels
            self._cond.notify_all()


def _trim() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``); nothing elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _bare(err: PhotoError) -> PhotoError:
    """The error without its traceback and context: their frames hold the image and its pixel buffer,
    in a cycle with the error that only a full collection breaks (3.1 GB held for 30 requests)."""
    err.__traceback__ = err.__context__ = err.__cause__ = None
    return err


def decode(data: bytes, max_pixels: int, size: int = IMAGE_SIZE, formats: tuple[str, ...] | None = None,
           budget: DecodeBudget | None = None, deadline: float | None = None) -> np.ndarray:
    """Bytes of an allowed format -> float32 [size,size,3] RGB in [0,1].

    The format is sniffed from the content, never trusted from a header, and must be one of
    ``formats`` (PHOTO_FORMATS). The pixel count is checked from the header before decoding, by
    Pillow inside containers, and again after decoding. JPEGs are decoded with DCT scaling (draft
    mode) close to the target size; other images are scaled down before any conversion, so no
    full-size copy is made. EXIF orientation is applied; transparency is composited onto white;
    16-bit grayscale is scaled, not clipped; GIF and other animations give their first frame.
    """
    limit_decoders(max_pixels)
    allowed = formats if formats is not None else allowed_formats()
    result: np.ndarray | PhotoError = _decode(data, max_pixels, size, allowed, budget, deadline)
    if isinstance(result, PhotoError):  # raised here, with the image and its frames already gone
        raise _bare(result)
    return result


def _decode(data: bytes, max_pixels: int, size: int, allowed: tuple[str, ...], budget: DecodeBudget | None,
            deadline: float | None) -> np.ndarray | PhotoError:
    """The decode, returning its error rather than raising it from frames that hold the image."""
    try:
        img = Image.open(io.BytesIO(data), formats=allowed)
    except UnidentifiedImageError:
        other = _sniff(data, allowed)
        if other:
            return PhotoError("unsupported_format", f"the image is {other}; accepted formats: {', '.join(allowed)}")
        return PhotoError("not_an_image", "the content is not an image in a known format")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _too_large(_declared_size(data, allowed), max_pixels, str(exc))
    except Exception as exc:
        return PhotoError("not_an_image", f"cannot read the image header: {exc}")
    with img:
        width, height = img.size
        if width * height > max_pixels:
            return _too_large((width, height), max_pixels)
        try:
            img.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale; a no-op for others
        except Exception as exc:
            return PhotoError("corrupt_image", f"cannot decode the image: {exc}")
        need = img.size[0] * img.size[1]
        if budget is not None:
            try:
                budget.acquire(need, deadline)
            except PhotoError as err:
                return err
        try:
            return _pixels(img, max_pixels, size)
        except PhotoError as err:
            return err
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return _too_large(None, max_pixels, str(exc))
        except Exception as exc:  # truncated or corrupt data, unsupported mode...
            return PhotoError("corrupt_image", f"cannot decode the image: {exc}")
        finally:
            if budget is not None:
                budget.release(need)
            if need >= TRIM_AFTER_PIXELS:
                img.close()
                _trim()


def _too_large(dims: tuple[int, int] | None, max_pixels: int, pillow: str | None = None) -> PhotoError:
    if dims is not None:
        w, h = dims
        return PhotoError("image_too_large", f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    return PhotoError("image_too_large", f"an image in the file is over the limit of {max_pixels} pixels"
                      + (f" ({pillow.split(',')[0]})" if pillow else ""))


def _sniff(data: bytes, allowed: tuple[str, ...]) -> str | None:
    """The format of content no allowed decoder took, by the plugins' own prefix checks (nothing decoded)."""
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        if name not in allowed and accept is not None and _accepts(accept, prefix):
            return name
    return None


def _accepts(accept: Callable[[bytes], bool | str], prefix: bytes) -> bool:
    try:
        return bool(accept(prefix))
    except Exception:  # some plugins' checks fail on a prefix shorter than they expect
        return False


def _declared_size(data: bytes, allowed: tuple[str, ...]) -> tuple[int, int] | None:
    """Width and height from the header, for the message when Pillow's check refused the image.

    Opening an allowed format's plugin class reads its header only (unlike ``Image.open``, without
    the pixel check); a container would decode, but containers are not allowed by default.
    """
    prefix = data[:16]
    for name in allowed:
        factory, accept = Image.OPEN[name]
        if accept is None or _accepts(accept, prefix):
            try:
                with factory(io.BytesIO(data), "") as im:
                    return im.size
            except Exception:  # noqa: S112 - not this format, or the header is unreadable: try the next
                continue
    return None


def _pixels(img: Image.Image, max_pixels: int, size: int) -> np.ndarray:
    orientation = img.getexif().get(0x0112)
    img.load()
    width, height = img.size
    if width * height > max_pixels:  # an ICNS decodes a bigger image than its header declares
        raise PhotoError("image_too_large", f"image decoded to {width}x{height} = {width * height} pixels; "
                         f"the limit is {max_pixels}")
    small = _to_rgb(img, size)
    turn = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    if turn is not None:  # on the small image: turning a square after scaling is turning before it
        small = small.transpose(turn)
    return np.asarray(small, dtype=np.float32) / 255.0


def _to_rgb(img: Image.Image, size: int) -> Image.Image:
    """``size`` x ``size`` RGB, scaled down first: converting or compositing at full size would add up
    to 11 bytes a pixel (measured 20 B/px at the peak for an RGBA PNG, 9 after)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float grayscale: scale to the type's range instead of clipping at 255.
        a = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode in ("PA",) or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    elif img.mode not in ("RGB", "RGBA", "LA", "L", "CMYK"):
        img = img.convert("RGB")
    if img.size != (size, size):  # RGBA and LA are resized premultiplied: no colour bleeds from clear pixels
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB")


@dataclass
class LoadedPhoto:
    pixels: np.ndarray | None
    error: PhotoError | None
    fetch_ms: float
    decode_ms: float
    nbytes: int


def _unexpected(source: PhotoSource, exc: Exception, code: str) -> PhotoError:
    log.error("unexpected error on photo %s", source.ref, exc_info=exc)
    exc.__traceback__ = None  # logged; its frames would hold the photo
    return PhotoError(code, f"could not process the photo ({type(exc).__name__})")


def load(fetcher: PhotoReader, source: PhotoSource, max_pixels: int, formats: tuple[str, ...] | None = None,
         budget: DecodeBudget | None = None, deadline: float | None = None) -> LoadedPhoto:
    """Fetch and decode one photo; never raises for a photo-level problem.

    Errors are kept without their tracebacks: a traceback's frames would keep the photo's bytes and
    pixels alive for as long as the result is.
    """
    t0 = time.perf_counter()
    try:
        data = fetcher.read(source)
    except PhotoError as err:
        return LoadedPhoto(None, _bare(err), (time.perf_counter() - t0) * 1000, 0.0, 0)
    except Exception as exc:  # a case nobody foresaw is still this photo's problem, not the request's
        return LoadedPhoto(None, _unexpected(source, exc, "fetch_failed"), (time.perf_counter() - t0) * 1000, 0.0, 0)
    t1 = time.perf_counter()
    try:
        pixels, error = decode(data, max_pixels, formats=formats, budget=budget, deadline=deadline), None
    except PhotoError as err:
        pixels, error = None, _bare(err)
    except Exception as exc:
        pixels, error = None, _unexpected(source, exc, "corrupt_image")
    t2 = time.perf_counter()
    photo = LoadedPhoto(pixels, error, (t1 - t0) * 1000, (t2 - t1) * 1000, len(data))
    log.debug("photo loaded", extra=logs.fields(
        photo=source.ref, bytes=len(data), fetch_ms=round(photo.fetch_ms, 1),
        decode_ms=round(photo.decode_ms, 1), error=error.code if error else None))
    return photo
