"""The capture readers against tshark and capinfos on every real capture in ../shared/captures."""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from capwriter import WTAP_ENCAP

from upf_tap.capture.pcapfile import merge_captures, read_packets

# Same resolution as the `captures` fixture; needed at collection time for parametrize.
CAPTURES = Path(os.environ.get("MEC_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "captures"
CAPTURE_FILES = sorted(p.name for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng"))
ENCAP_TO_LINKTYPE = {v: k for k, v in WTAP_ENCAP.items()}


def epoch_ns(text: str) -> int | None:
    """'1591863459.892699983' or '1260442415.441511' -> ns; '' (no time stamp) -> None."""
    if not text:
        return None
    sec, _, frac = text.partition(".")
    return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


def tshark_packets(path: Path) -> list[tuple[int | None, int, int, str]]:
    """(time ns, linktype, captured length, md5 of the frame) per packet, as tshark reads them."""
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-o", "frame.generate_md5_hash:TRUE", "-T", "fields",
         "-e", "frame.time_epoch", "-e", "frame.encap_type", "-e", "frame.cap_len", "-e", "frame.md5_hash"],
        capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        t, encap, caplen, md5 = line.split("\t")
        rows.append((epoch_ns(t), ENCAP_TO_LINKTYPE[int(encap)], int(caplen), md5))
    return rows


def ours(path: Path, stats: collections.Counter[str] | None = None) -> list[tuple[int | None, int, int, str]]:
    return [(ts, lt, len(f), hashlib.md5(f).hexdigest()) for ts, lt, f in read_packets(path, stats)]


@pytest.mark.parametrize("name", CAPTURE_FILES)
def test_every_packet_matches_tshark(name: str, captures: Path) -> None:
    path = captures / name
    stats: collections.Counter[str] = collections.Counter()
    mine = ours(path, stats)
    ref = tshark_packets(path)
    assert len(mine) == len(ref) > 0
    for i, (m, r) in enumerate(zip(mine, ref, strict=True)):
        assert m == r, f"{name} packet {i + 1}: ours {m} tshark {r}"
    assert stats == {"capture.files": 1, "capture.packets": len(ref)}  # no damage in these files


@pytest.mark.parametrize("name", CAPTURE_FILES)
def test_count_and_time_span_match_capinfos(name: str, captures: Path) -> None:
    path = captures / name
    out = subprocess.run(["capinfos", "-M", "-c", "-a", "-e", "-S", "-T", "-r", str(path)],
                         capture_output=True, text=True, check=True).stdout
    _, count, first, last = out.strip().split("\t")
    times = [ts for ts, _, _ in read_packets(path)]
    assert len(times) == int(count)
    # capinfos reports the earliest and the latest time stamp, at the file's own precision
    assert min(times) == epoch_ns(first)
    assert max(times) == epoch_ns(last)


def test_merge_of_real_captures_is_a_stable_time_sort(captures: Path) -> None:
    # all four are in time order; n3-example-2 is a copy of n3-example's first 10 packets,
    # so equal times must come out in file order
    names = ["n3-example.pcap", "n3-example-2.pcap", "free5gc-registration.pcap", "pfcp-scapy.pcap"]
    paths = [captures / n for n in names]
    stats: collections.Counter[str] = collections.Counter()
    merged = [(ts, lt, bytes(f)) for ts, lt, f in merge_captures(paths, stats)]
    concat = [(ts, lt, bytes(f)) for p in paths for ts, lt, f in read_packets(p)]
    assert merged == sorted(concat, key=lambda r: r[0])  # sorted() is stable: file order on ties
    k = merged.index(concat[0])  # n3-example's first packet, then its copy from n3-example-2
    assert merged[k + 1] == concat[92] and concat[92] == concat[0]
    assert stats["capture.files"] == 4 and stats["capture.packets"] == len(merged) == 92 + 10 + 250 + 200
