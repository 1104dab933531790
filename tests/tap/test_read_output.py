"""`upf-tap read` writes whole lines to a raw stdout that takes part of each write.

Under ``python -u`` / PYTHONUNBUFFERED=1 (the tap's image sets it) stdout's buffer is the raw
file, and a write() to a full pipe interrupted by a signal returns a short count. A text stream
straight over it drops the rest (tests/live/test_live_cli.py shows the live tap losing lines that
way); upf_tap.output.stdout_text puts a BufferedWriter in between, for read as for live.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import cast

import pytest

from tests.conftest import CAPTURES
from upf_tap import cli


class ShortPipe(io.RawIOBase):
    """A raw stdout whose write() takes at most one page, as an interrupted full pipe does."""

    def __init__(self) -> None:
        self.got = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b, /) -> int:  # type: ignore[no-untyped-def,override]
        data = memoryview(b).cast("B")
        n = min(len(data), 4096)
        self.got += data[:n]
        return n


def test_read_finishes_short_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    cap = CAPTURES / "synthetic-n3.pcap"
    want = subprocess.run([sys.executable, "-m", "upf_tap", "read", "--no-control", str(cap)],
                          capture_output=True, text=True, check=True).stdout
    assert len(want) > 3 * 4096  # more than a few short writes' worth
    raw = ShortPipe()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(cast("io.BufferedIOBase", raw), encoding="utf-8",
                                                        newline="\n", write_through=True))  # as under -u
    assert cli.main(["read", "--no-control", str(cap)]) == 0
    sys.stdout.flush()
    got = raw.got.decode()
    assert got == want
    assert all(json.loads(line) for line in got.splitlines())
