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


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_read_to_a_text_only_stdout_gives_the_same_lines(monkeypatch: pytest.MonkeyPatch, workers: list[str]) -> None:
    """stdout without a binary side (a StringIO, as a caller embedding the CLI may set) takes the text
    path; with workers too (their merged bytes are decoded for it)."""
    cap = CAPTURES / "synthetic-n3.pcap"
    want = subprocess.run([sys.executable, "-m", "upf_tap", "read", "--no-control", *workers, str(cap)],
                          capture_output=True, text=True, check=True).stdout
    assert want.count("\n") > 100
    text = io.StringIO()
    monkeypatch.setattr(sys, "stdout", text)
    assert cli.main(["read", "--no-control", *workers, str(cap)]) == 0
    assert text.getvalue() == want


@pytest.mark.parametrize("app", [
    {"name": "example.org", "port": 443},
    {"name": "snow\u2603man", "raw": "\\x00\\xff"},                # non-ASCII kept as UTF-8, as json gives it
    {"big": 1 << 70, "n": 1},                                      # beyond 64 bits: orjson refuses, json writes it
    {1: "a non-string key"},
    {"b": b"bytes", "t": (1, 2)},                                  # default=str, tuples as lists
])
def test_json_bytes_are_the_json_line_and_a_newline(app: dict[object, object]) -> None:
    from upf_tap.events import make_event, to_json_bytes, to_json_line

    ev = make_event("http.request", 1_700_000_000_123_456_789, "n3", "tap-1", direction="ul",
                    ue={"ip": "10.45.0.2"}, app=app)  # type: ignore[arg-type]
    line = to_json_line(ev)
    assert to_json_bytes(ev) == (line + "\n").encode()
    assert json.loads(line)["kind"] == "http.request"
