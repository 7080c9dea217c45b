"""Hold back what native code writes to file descriptors 1 and 2.

TensorFlow's C++ logs and LiteRT's delegate notice are written to the descriptors directly, past
Python's ``sys.stdout``/``sys.stderr``: only swapping the descriptors themselves keeps them out of
a CLI's answer or the service's JSON log stream. The caller decides what to do with the bytes
(quote their tail in an error, pass on all but a known line).
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

    def tail(self, chars: int = 4000) -> str:
        return self.data.decode("utf8", "replace")[-chars:]


@contextlib.contextmanager
def held_back(fds: tuple[int, ...] = (1, 2)) -> Iterator[Held]:
    """Send ``fds`` to one temporary file for the block; an empty tuple holds nothing back.

    While it is active, everything this process writes to those descriptors, from any thread, is
    held back: keep the block to the native call that needs it.
    """
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
