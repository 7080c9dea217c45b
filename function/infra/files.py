"""Local files: photos named on the command line, documents from configuration (the label map the image
carries), within the same limits as fetched ones; result documents written beside photos."""

from __future__ import annotations

import contextlib
import os
import tempfile
from urllib.parse import unquote, urlsplit

import requests

from ..errors import Empty, FileNotFound, FileUnreadable, TooLarge


def checked_size(data: bytes, max_bytes: int) -> bytes:
    """The photo's bytes, or :class:`TooLarge` / :class:`Empty`."""
    if len(data) > max_bytes:
        raise TooLarge(f"photo is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise Empty("photo is empty (0 bytes)")
    return data


def read_file(path: str, max_bytes: int) -> bytes:
    """A local photo (the CLI's arguments), within the same byte limit as a fetched one."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise TooLarge(f"{path} is {size} bytes; the limit is {max_bytes}")
            return checked_size(f.read(), max_bytes)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFound(f"no such file: {path}") from None
    except IsADirectoryError:
        raise FileNotFound(f"{path} is a directory, not a photo") from None
    except PermissionError:
        raise FileUnreadable(f"no permission to read {path}") from None
    except OSError as exc:  # name too long, symlink loop, I/O error...
        raise FileUnreadable(f"cannot read {path}: {exc.strerror or exc}") from None


def read_document(session: requests.Session, url: str, timeout: float) -> bytes:
    """A small document from configuration: an http(s) URL, or a local path or ``file://`` URL.
    ``OSError`` or ``requests`` errors propagate."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        response = session.get(url, timeout=timeout)
        if response.status_code != 200:
            raise OSError(f"{url} answered HTTP {response.status_code}")
        return response.content
    with open(unquote(parts.path) if parts.scheme == "file" else url, "rb") as f:
        return f.read()


def write_beside(path: str, suffix: str, data: bytes) -> str:
    """``data`` into ``path + suffix``, whole or not at all (a temporary file renamed over it): a
    second run overwrites the first, and an interrupted one leaves the last complete document."""
    target = path + suffix
    directory, name = os.path.split(os.path.abspath(target))
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return target
