"""Hold back what native code writes to file descriptors 1 and 2.

TensorFlow's C++ logs and LiteRT's delegate notice bypass ``sys.stdout``/``sys.stderr``: only swapping
the descriptors keeps them out of a CLI's answer or the service's JSON log stream.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


class Held:
    """What was written to the held descriptors; filled when the block ends (also when it raises)."""

    def __init__(self) -> None:
        self.data = b""

    def tail(self) -> str:
        return self.data.decode("utf8", "replace")[-4000:]


@contextlib.contextmanager
def held_back(fds: tuple[int, ...]) -> Iterator[Held]:
    """Send ``fds`` (none if empty) to one temporary file for the block. Everything any thread writes to
    them is held back meanwhile: keep the block to the native call that needs it."""
    held = Held()
    if not fds:
        yield held
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    with tempfile.TemporaryFile() as sink:
        for fd in fds:
            os.dup2(sink.fileno(), fd)
        try:
            yield held
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in zip(fds, saved, strict=True):
                os.dup2(original, fd)
                os.close(original)
            sink.seek(0)
            held.data = sink.read()
