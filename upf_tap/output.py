"""Where `upf-tap read` and `upf-tap live` write their JSON lines: a text stream over stdout.

Under ``python -u`` or PYTHONUNBUFFERED=1 (the tap's image sets it) ``sys.stdout.buffer`` is the
raw FileIO, and one write() on a pipe may take only part of the bytes: a full pipe whose writer
is interrupted by a signal (SIGTERM, SIGINT, a stop) returns the short count. A TextIOWrapper
straight over the raw file never looks at that count: the rest is dropped, lines cut mid-way and
lost. A BufferedWriter writes the rest, so one goes in between.
"""

from __future__ import annotations

import io
import sys
from typing import BinaryIO, TextIO


def stdout_bytes() -> BinaryIO | None:
    """A buffered binary stream over stdout that writes every byte it is given, or raises;
    None when stdout has no binary side (a test's StringIO)."""
    if not hasattr(sys.stdout, "buffer"):
        return None
    buf: BinaryIO = sys.stdout.buffer
    if not isinstance(buf, io.BufferedIOBase):  # raw: short writes are the caller's to finish
        buf = io.BufferedWriter(buf)  # type: ignore[arg-type]  # a RawIOBase here
    return buf


def stdout_text() -> TextIO:
    """A text stream over stdout that writes every byte it is given, or raises."""
    buf = stdout_bytes()
    if buf is None:
        return sys.stdout
    return io.TextIOWrapper(buf, encoding="utf-8", newline="\n", write_through=False)
