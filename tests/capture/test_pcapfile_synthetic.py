"""The capture readers on captures written byte by byte: every format variant, damage, fuzzing, merging."""

from __future__ import annotations

import collections
import gzip
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest
from capwriter import (
    WTAP_ENCAP,
    custom,
    epb,
    frame,
    idb,
    isb,
    nrb,
    pb,
    pcap,
    shb,
    spb,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from upf_tap.capture import pcapfile
from upf_tap.capture.pcapfile import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    CaptureError,
    merge_captures,
    read_packets,
)

Counter = collections.Counter
T0 = 1_700_000_000_000_000_000  # ns


def tshark_rows(path: Path) -> list[tuple[int | None, int, int, int]]:
    """(time ns or None when the record has none, linktype, cap_len, len) as tshark reads them."""
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch",
                          "-e", "frame.encap_type", "-e", "frame.cap_len", "-e", "frame.len"],
                         capture_output=True, text=True, check=True).stdout
    back = {v: k for k, v in WTAP_ENCAP.items()}
    rows = []
    for line in out.splitlines():
        t, encap, caplen, length = line.split("\t")
        if not encap:  # tshark shows pcapng custom blocks as records too; they are not packets
            continue
        sec, _, frac = t.partition(".")
        ts = int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")) if t else None
        rows.append((ts, back[int(encap)], int(caplen), int(length)))
    return rows


def read_all(path: Path, stats: Counter[str] | None = None) -> list[tuple[int, int, bytes]]:
    return [(ts, lt, bytes(f)) for ts, lt, f in read_packets(path, stats)]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# --- pcap --------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, order: str, nano: bool) -> None:
    times = [T0 + 123_456_789, T0 + 999_999_999, T0 + 5_000_000_001, T0 + 5_000_000_001]
    frames = [frame(1), frame(2, 1514), frame(3, 14), frame(4, 100)[:64]]
    origlens = [60, 1514, 14, 100]  # the last one cut by a 64-byte snaplen
    path = write(tmp_path, "f.pcap", pcap(list(zip(times, frames, strict=True)), order=order, nano=nano,
                                          snaplen=65535, origlens=origlens))
    stats: Counter[str] = Counter()
    got = read_all(path, stats)
    want_ts = [t if nano else t // 1000 * 1000 for t in times]
    assert got == [(t, LINKTYPE_ETHERNET, f) for t, f in zip(want_ts, frames, strict=True)]
    assert tshark_rows(path) == [(t, 1, len(f), o) for t, f, o in zip(want_ts, frames, origlens, strict=True)]
    assert stats == {"capture.files": 1, "capture.packets": 4}


@pytest.mark.parametrize("linktype", [LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP,
                                      LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2])
def test_linktype_constants_are_what_tshark_sees(tmp_path: Path, linktype: int) -> None:
    path = write(tmp_path, "l.pcap", pcap([(T0, frame(7))], linktype=linktype))
    assert [lt for _, lt, _ in read_packets(path)] == [linktype]
    assert tshark_rows(path)[0][1] == linktype


def test_pcap_linktype_fcs_bits_are_masked(tmp_path: Path) -> None:
    # bits 28-31 of the link type field announce an FCS length; the link type is the low bits
    path = write(tmp_path, "fcs.pcap", pcap([(T0, frame(1))], linktype=LINKTYPE_ETHERNET | 0x1000_0000 | 4 << 28))
    assert [lt for _, lt, _ in read_packets(path)] == [LINKTYPE_ETHERNET]


def test_pcap_with_header_only_is_empty_not_an_error(tmp_path: Path) -> None:
    stats: Counter[str] = Counter()
    assert read_all(write(tmp_path, "h.pcap", pcap([])), stats) == []
    assert stats == {"capture.files": 1, "capture.packets": 0}


# --- pcapng ------------------------------------------------------------------------------------


def mixed_pcapng() -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """Two sections (little then big endian), several interfaces and every packet block type."""
    le, be = "<", ">"
    f = [frame(i, 40 + 7 * i) for i in range(10)]
    data = b"".join([
        shb(le, opts=[(4, b"pcapfile test")]),
        idb(le, LINKTYPE_ETHERNET, 0, tsresol=9),                # if 0: ns
        idb(le, LINKTYPE_RAW, 0, tsresol=0x80 | 10, tsoffset=100),  # if 1: 2^-10 s, +100 s
        nrb(le),
        epb(le, 0, T0 + 1, f[0]),
        epb(le, 1, ((1_700_000_000 << 10) | 1023), f[1]),        # 1023/1024 s: floor to ns
        isb(le, 0),
        custom(le),
        spb(le, f[2]),                                           # no time stamp, interface 0
        pb(le, 1, 12345, f[3]),                                  # obsolete Packet Block
        epb(le, 0, T0 + 2, f[4][:30], origlen=len(f[4]), opts=[(1, b"a comment")]),
        shb(be),                                                 # new section: ids restart
        idb(be, LINKTYPE_LINUX_SLL, 32),                         # default 10^-6
        idb(be, LINKTYPE_IPV6, 0, tsresol=3, tsoffset=-1),       # ms, -1 s
        epb(be, 1, 1_700_000_000_002, f[5]),
        spb(be, f[6][:32], origlen=len(f[6])),                   # cut by snaplen 32
        epb(be, 0, 1_700_000_000_000_001, f[7]),
        pb(be, 0, 1_700_000_000_000_002, f[8]),
    ])
    want = [
        (T0 + 1, LINKTYPE_ETHERNET, f[0]),
        (1_700_000_100_999_023_437, LINKTYPE_RAW, f[1]),
        (0, LINKTYPE_ETHERNET, f[2]),
        (12345 * 1_000_000_000 // 1024 + 100_000_000_000, LINKTYPE_RAW, f[3]),
        (T0 + 2, LINKTYPE_ETHERNET, f[4][:30]),
        (1_699_999_999_002_000_000, LINKTYPE_IPV6, f[5]),
        (0, LINKTYPE_LINUX_SLL, f[6][:32]),
        (1_700_000_000_000_001_000, LINKTYPE_LINUX_SLL, f[7]),
        (1_700_000_000_000_002_000, LINKTYPE_LINUX_SLL, f[8]),
    ]
    return data, want


def test_pcapng_sections_interfaces_and_block_types(tmp_path: Path) -> None:
    data, want = mixed_pcapng()
    path = write(tmp_path, "m.pcapng", data)
    stats: Counter[str] = Counter()
    got = read_all(path, stats)
    assert got == want
    assert stats == {"capture.files": 1, "capture.packets": len(want)}
    # tshark agrees on every time stamp (Simple Packet Blocks have none), link type and length
    assert tshark_rows(path) == [(ts or None, lt, len(f), _orig(f, i)) for i, (ts, lt, f) in enumerate(want)]


def _orig(f: bytes, i: int) -> int:
    return {4: 40 + 7 * 4, 6: 40 + 7 * 6}.get(i, len(f))


def test_pcapng_unknown_interface_is_counted_and_skipped(tmp_path: Path) -> None:
    o = "<"
    data = shb(o) + idb(o, 1) + epb(o, 0, 1, frame(1)) + epb(o, 3, 2, frame(2)) + epb(o, 0, 3, frame(3))
    stats: Counter[str] = Counter()
    got = read_all(write(tmp_path, "u.pcapng", data), stats)
    assert [f for _, _, f in got] == [frame(1), frame(3)]
    assert stats["capture.unknown_interface"] == 1 and stats["capture.packets"] == 2
    # a Simple Packet Block before any interface is the same fault
    stats.clear()
    assert read_all(write(tmp_path, "s.pcapng", shb(o) + spb(o, frame(1))), stats) == []
    assert stats["capture.unknown_interface"] == 1


def test_pcapng_tsresol_large_and_small(tmp_path: Path) -> None:
    o = "<"
    data = (shb(o) + idb(o, 1, tsresol=12) + idb(o, 1, tsresol=0) + idb(o, 1, tsresol=0x80)
            + epb(o, 0, 10_000_000_123_456_789_999, frame(1))     # ps: floor to ns
            + epb(o, 1, 1_700_000_000, frame(2))                  # whole seconds
            + epb(o, 2, 1_700_000_001, frame(3)))                 # 2^0: whole seconds too
    path = write(tmp_path, "r.pcapng", data)
    want = [10_000_000_123_456_789, T0, T0 + 1_000_000_000]
    assert [ts for ts, _, _ in read_packets(path)] == want
    # tshark 4.0 overflows 64 bits on the ps fraction (123456789999 * 10^9); it agrees on the rest
    assert [r[0] for r in tshark_rows(path)][1:] == want[1:]


# --- damage ------------------------------------------------------------------------------------


def small_pcap() -> tuple[bytes, list[int], list[bytes]]:
    """A pcap and the byte offsets where each record ends."""
    frames = [frame(i, n) for i, n in enumerate([60, 14, 0, 99, 61])]
    data = pcap([(T0 + i * 1000, f) for i, f in enumerate(frames)])
    ends, off = [], 24
    for f in frames:
        off += 16 + len(f)
        ends.append(off)
    return data, ends, frames


def small_pcapng() -> tuple[bytes, list[tuple[int, bytes | None]]]:
    """A pcapng as (block end offset, frame or None for a non-packet block) per block."""
    o = "<"
    blocks = [(shb(o), None), (idb(o, 1, 0, tsresol=9), None), (epb(o, 0, T0, frame(1)), frame(1)),
              (isb(o), None), (spb(o, frame(2, 33)), frame(2, 33)), (epb(o, 0, T0 + 5, frame(3, 1)), frame(3, 1)),
              (shb(">"), None), (idb(">", 101), None), (pb(">", 0, 7, frame(4)), frame(4)),
              (epb(">", 0, 9, frame(5, 2)), frame(5, 2))]
    out, off = [], 0
    for b, f in blocks:
        off += len(b)
        out.append((off, f))
    return b"".join(b for b, _ in blocks), out


def test_pcap_cut_at_every_byte(tmp_path: Path) -> None:
    data, ends, frames = small_pcap()
    path = tmp_path / "cut.pcap"
    for k in range(len(data) + 1):
        path.write_bytes(data[:k])
        if k < 24:
            with pytest.raises(CaptureError):
                list(read_packets(path))
            continue
        stats: Counter[str] = Counter()
        got = [bytes(f) for _, _, f in read_packets(path, stats)]
        whole = [f for f, e in zip(frames, ends, strict=True) if e <= k]
        assert got == whole, k
        assert stats["capture.truncated"] == (0 if k == 24 or k in ends else 1), k
        assert stats["capture.packets"] == len(whole) and stats["capture.bad_block"] == 0


def test_pcapng_cut_at_every_byte(tmp_path: Path) -> None:
    data, blocks = small_pcapng()
    path = tmp_path / "cut.pcapng"
    ends = {e for e, _ in blocks}
    for k in range(len(data) + 1):
        path.write_bytes(data[:k])
        if k < 28:  # not even a whole Section Header Block
            with pytest.raises(CaptureError):
                list(read_packets(path))
            continue
        stats: Counter[str] = Counter()
        got = [bytes(f) for _, _, f in read_packets(path, stats)]
        assert got == [f for e, f in blocks if f is not None and e <= k], k
        assert stats["capture.truncated"] == (0 if k in ends else 1), k
        assert stats["capture.bad_block"] == 0 and stats["capture.unknown_interface"] == 0


def _with_u32(data: bytes, off: int, value: int, order: str = "<") -> bytes:
    return data[:off] + struct.pack(order + "I", value) + data[off + 4:]


def pcapng_damage_cases() -> list[tuple[str, bytes]]:
    o = "<"
    head = shb(o) + idb(o, 1) + epb(o, 0, 1, frame(1))
    tail = epb(o, 0, 2, frame(2))
    n = len(head)
    cases = [
        ("length not a multiple of 4", _with_u32(head + tail, n + 4, len(tail) + 2)),
        ("length below the EPB minimum", _with_u32(head + tail, n + 4, 28)),
        ("length below any block minimum", _with_u32(head + tail, n + 4, 8)),
        ("length zero", _with_u32(head + tail, n + 4, 0)),
        ("length far beyond the file", _with_u32(head + tail, n + 4, 0xFFFF_FFFC)),
        ("trailing length differs", _with_u32(head + tail, n + len(tail) - 4, len(tail) + 4)),
        ("captured length beyond the block", _with_u32(head + tail, n + 20, 1000)),
        ("bad byte-order magic in a later section", head + _with_u32(shb(o), 8, 0x12345678) + tail),
        ("later section of major version 2", head + shb(o, major=2) + idb(o, 1) + tail),
        ("unknown block with a bad length", head + struct.pack("<II", 0x999, 13) + tail),
    ]
    return cases


@pytest.mark.parametrize("case", range(len(pcapng_damage_cases())))
def test_pcapng_bad_block_stops_and_counts(tmp_path: Path, case: int) -> None:
    name, data = pcapng_damage_cases()[case]
    stats: Counter[str] = Counter()
    got = read_all(write(tmp_path, "bad.pcapng", data), stats)
    assert [f for _, _, f in got] == [frame(1)], name
    assert stats["capture.bad_block"] == 1 and stats["capture.truncated"] == 0, name


def test_pcap_absurd_record_length_is_a_bad_block(tmp_path: Path) -> None:
    data = pcap([(T0, frame(1)), (T0, frame(2))])
    bad = _with_u32(data, 24 + 16 + 60 + 8, 0x7FFF_FFFF)  # second record's captured length
    stats: Counter[str] = Counter()
    assert [f for _, _, f in read_all(write(tmp_path, "bad.pcap", bad), stats)] == [frame(1)]
    assert stats["capture.bad_block"] == 1 and stats["capture.truncated"] == 0


@pytest.mark.parametrize(("name", "data", "why"), [
    ("empty.pcap", b"", "empty file"),
    ("text.pcap", b"GET / HTTP/1.1\r\n\r\n" * 3, "not a pcap or pcapng file"),
    ("short.pcap", pcap([])[:20], "truncated pcap file header"),
    ("short.pcapng", shb("<")[:20], "truncated pcapng section header"),
    ("bom.pcapng", _with_u32(shb("<"), 8, 0xDEADBEEF), "bad byte-order magic"),
    ("v2.pcapng", shb("<", major=2), "unsupported pcapng version 2"),
    ("empty.pcap.gz", gzip.compress(b""), "empty file"),
])
def test_not_a_capture_raises_one_clear_line(tmp_path: Path, name: str, data: bytes, why: str) -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(CaptureError) as e:
        read_packets(path)  # checked at the call, before iterating
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and why in msg


def test_missing_file_and_directory_raise(tmp_path: Path) -> None:
    for p in (tmp_path / "nope.pcap", tmp_path):
        with pytest.raises(CaptureError, match=re.escape(str(p))):
            read_packets(p)


# --- fuzzing -----------------------------------------------------------------------------------

PCAP_HEADERS = [pcap([]), pcap([], order=">", nano=True)]
PCAPNG_HEADERS = [shb("<") + idb("<", 1), shb(">") + idb(">", 101, 64, tsresol=0x8A) + idb(">", 1)]


def _drain(path: Path) -> Counter[str]:
    stats: Counter[str] = Counter()
    size = path.stat().st_size
    try:
        for ts, lt, f in read_packets(path, stats):
            assert isinstance(ts, int) and isinstance(lt, int) and len(f) <= size
    except CaptureError:
        pass
    return stats


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.sampled_from(PCAP_HEADERS + PCAPNG_HEADERS), tail=st.binary(max_size=400))
def test_fuzz_random_bytes_after_a_valid_header(tmp_path: Path, head: bytes, tail: bytes) -> None:
    path = write(tmp_path, "fuzz", head + tail)
    stats = _drain(path)
    assert stats["capture.truncated"] + stats["capture.bad_block"] <= 1  # at most one way to stop early


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.integers(0, 10_000), which=st.booleans())
def test_fuzz_mutated_valid_files(tmp_path: Path, edits: list[tuple[int, int]], cut: int, which: bool) -> None:
    data = bytearray(mixed_pcapng()[0] if which else small_pcap()[0])
    for pos, val in edits:
        data[pos % len(data)] = val
    _drain(write(tmp_path, "fuzz", bytes(data[: max(cut, len(data) // 2)])))


# --- chunk boundaries, gzip, merge -------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 5, 64, 1000])
def test_records_across_chunk_boundaries(tmp_path: Path, captures: Path, monkeypatch: pytest.MonkeyPatch,
                                         chunk: int) -> None:
    names = ["open5gs-registration.pcapng", "oai-5greplay.pcap", "pfcp-scapy.pcap"]
    want = {n: read_all(captures / n) for n in names}
    data, _ = mixed_pcapng()
    want["mixed"] = read_all(write(tmp_path, "m.pcapng", data))
    monkeypatch.setattr(pcapfile, "CHUNK", chunk)
    for n in names:
        assert read_all(captures / n) == want[n], n
    assert read_all(tmp_path / "m.pcapng") == want["mixed"]


def test_gzip_compressed_capture(tmp_path: Path, captures: Path) -> None:
    src = captures / "free5gc-registration.pcap"
    gz = write(tmp_path, "f.pcapng.gz", gzip.compress(src.read_bytes()))
    assert read_all(gz) == read_all(src)
    # a compressed stream cut short reads what it can and counts the cut
    blob = gz.read_bytes()
    cut = write(tmp_path, "cut.pcapng.gz", blob[: len(blob) // 2])
    stats: Counter[str] = Counter()
    got = read_all(cut, stats)
    assert 0 < len(got) < 250 and got == read_all(src)[: len(got)]
    assert stats["capture.truncated"] == 1


def test_merge_two_files_by_time_with_file_order_on_ties(tmp_path: Path) -> None:
    a = write(tmp_path, "a.pcap", pcap([(T0 + t, frame(i)) for i, t in enumerate([0, 10, 20, 30])], nano=True))
    o = "<"
    b = write(tmp_path, "b.pcapng", shb(o) + idb(o, LINKTYPE_RAW, tsresol=9)
              + b"".join(epb(o, 0, T0 + t, frame(100 + i)) for i, t in enumerate([5, 10, 10, 31])))
    stats: Counter[str] = Counter()
    got = [(ts - T0, lt, bytes(f)[5]) for ts, lt, f in merge_captures([a, b], stats)]
    assert got == [(0, 1, 0), (5, 101, 100), (10, 1, 1), (10, 101, 101), (10, 101, 102),
                   (20, 1, 2), (30, 1, 3), (31, 101, 103)]
    assert stats == {"capture.files": 2, "capture.packets": 8}
    # the other way round, b's packets win the tie
    assert [bytes(f)[5] for _, _, f in merge_captures([b, a])][1:5] == [100, 101, 102, 1]


def test_merge_checks_every_header_first(tmp_path: Path) -> None:
    good = write(tmp_path, "g.pcap", pcap([(T0, frame(1))]))
    bad = write(tmp_path, "b.pcap", b"nonsense" * 4)
    with pytest.raises(CaptureError, match=r"b\.pcap"):
        merge_captures([good, bad])
    assert [f for _, _, f in read_all(good)] == [frame(1)]
    assert list(merge_captures([])) == []


def test_frames_are_independent_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "v.pcap", pcap([(T0, frame(1)), (T0, frame(2))]))
    frames = [f for _, _, f in read_packets(path)]
    assert all(type(f) is bytes for f in frames)  # what the tap hashes and slices
    assert frames == [frame(1), frame(2)]


def test_fifo_input(tmp_path: Path) -> None:
    # a pipe has no size and no seek: the reader only ever reads forward
    fifo = tmp_path / "p.pcap"
    os.mkfifo(fifo)
    data = pcap([(T0 + i, frame(i)) for i in range(100)], nano=True)
    w = subprocess.Popen(["dd", f"of={fifo}", "bs=100", "status=none"], stdin=subprocess.PIPE)
    assert w.stdin is not None
    w.stdin.write(data)
    w.stdin.close()
    got = read_all(fifo)
    assert w.wait(timeout=30) == 0
    assert [ts - T0 for ts, _, _ in got] == list(range(100))


def test_files_are_released_when_readers_are_dropped(tmp_path: Path) -> None:
    path = write(tmp_path, "r.pcap", pcap([(T0, frame(1)), (T0, frame(2))]))
    before = len(os.listdir("/proc/self/fd"))
    readers = [read_packets(path) for _ in range(20)]
    assert len(os.listdir("/proc/self/fd")) == before + 20
    for r in readers[:10]:
        next(r)
        r.close()  # type: ignore[attr-defined]
    del readers  # never iterated or half-read: the generator's finally still closes the file
    assert len(os.listdir("/proc/self/fd")) == before


# --- runs (what `upf-tap read` walks): a regular file is read mapped --------------------------


def read_runs(path: Path, stats: Counter[str]) -> tuple[list[tuple[int, int, bytes]], set[type]]:
    """Every packet of ``read_batches(runs=True)``, walking the runs as a consumer does, and the
    types of the buffers the runs came in."""
    from upf_tap.capture.pcapfile import PcapngRun, PcapRun, read_batches

    got: list[tuple[int, int, bytes]] = []
    kinds: set[type] = set()
    for item in read_batches(path, stats, runs=True):
        if isinstance(item, (PcapRun, PcapngRun)):
            kinds.add(type(item.buf))
            recs = item.records()  # moves item.off past them, as a walk must
            buf = item.buf
        else:
            buf, recs = item
        for i in range(0, len(recs), 4):
            got.append((recs[i], recs[i + 1], bytes(buf[recs[i + 2]:recs[i + 3]])))
    return got, kinds


def test_runs_of_a_regular_file_are_mapped_and_give_what_read_packets_gives(tmp_path: Path) -> None:
    import mmap

    for data, name in ((small_pcap()[0], "s.pcap"), (small_pcapng()[0], "s.pcapng"), (mixed_pcapng()[0], "m.pcapng")):
        path = write(tmp_path, name, data)
        want_stats: Counter[str] = Counter()
        want = read_all(path, want_stats)
        stats: Counter[str] = Counter()
        got, kinds = read_runs(path, stats)
        assert got == want and stats == want_stats, name
        assert kinds == {mmap.mmap}, name


def test_runs_of_a_file_cut_at_every_byte_count_as_read_packets_does(tmp_path: Path) -> None:
    """The mapped reader ends where the file does: the same packets and counters at every cut."""
    for data, name, least in ((small_pcap()[0], "cut.pcap", 24), (small_pcapng()[0], "cut.pcapng", 28)):
        path = tmp_path / name
        for k in range(least, len(data) + 1):
            path.write_bytes(data[:k])
            want_stats: Counter[str] = Counter()
            want = read_all(path, want_stats)
            stats: Counter[str] = Counter()
            assert read_runs(path, stats)[0] == want, (name, k)
            assert stats == want_stats, (name, k)


def test_runs_from_a_pipe_are_read_in_chunks(tmp_path: Path) -> None:
    """A FIFO cannot be mapped: it is read as before, with the same packets."""
    import threading

    data = small_pcap()[0]
    want = read_all(write(tmp_path, "f.pcap", data))
    fifo = tmp_path / "cap.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as w:
            w.write(data)

    t = threading.Thread(target=feed)
    t.start()
    try:
        got, kinds = read_runs(fifo, Counter())
    finally:
        t.join(10)
    assert got == want
    assert kinds == {bytes}
