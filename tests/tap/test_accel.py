"""The compiled walk (upf_tap/_walk.c) gives exactly what the Python walk gives.

``upf_tap.walk`` runs the compiled walks where the extension is built and keeps its own as
the reference. Both are run here on the same input, in one process, and must leave the same
events (ids included), the same counters and the same flow table: on every shared capture,
with and without --flows, split between two workers, as pcap records, as batches and as
pcapng; on generated bulk and mixed N3 workloads; on the real-traffic corpus when one is
built ($MEC_CORPUS, skipped with the reason otherwise); when a callback raises in the middle;
and on time stamps the compiled walk cannot hold in 64 bits, which it hands back.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CAPTURES
from tests.support.n3_workload import generate, generate_mixed
from tests.tap.test_fast_path import to_pcapng
from upf_tap import walk
from upf_tap.capture.pcapfile import read_batches, read_packets
from upf_tap.pipeline import Tap, TapConfig

PCAPS = sorted(p.name for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng"))
needs_accel = pytest.mark.skipif(walk.ACCEL is None, reason="upf_tap._walk is not built (no C compiler at install time)")


def run(path: Path, accel: bool, how: str = "runs", **cfg: Any) -> tuple[list[dict], dict[str, int], list[Any]]:
    events: list[dict] = []
    tap = Tap(TapConfig(control_plane=False, **cfg), events.append)
    walk.walk(tap, read_batches(path, tap.stats, runs=how == "runs"), accel=accel)
    # the flow table as the walks leave it, before finish() ends every flow
    table = [(f.key0, f.pkts, f.octets, f.last_ns, f.touch_at) for f in tap.flows.lru.values()]
    tap.finish()
    return events, tap.counters(), table


def assert_same(path: Path, **cfg: Any) -> list[dict]:
    for how in ("runs", "batches"):
        ref = run(path, False, how, **cfg)
        got = run(path, True, how, **cfg)
        assert got[0] == ref[0], f"{path.name} ({how}): events differ"
        assert got[1] == ref[1], f"{path.name} ({how}): counters differ"
        assert got[2] == ref[2], f"{path.name} ({how}): flow tables differ"
    return ref[0]


def test_built_where_a_compiler_is() -> None:
    """CI installs with a compiler: a build that silently fell back would hide here."""
    cc = sysconfig.get_config_var("CC") or "cc"
    headers = Path(sysconfig.get_paths()["include"], "Python.h").exists()
    if shutil.which(cc.split()[0]) is None or not headers or os.environ.get("UPF_TAP_ACCEL") == "0":
        pytest.skip("no C compiler or Python headers here: the Python walk is the one in use")
    assert walk.ACCEL is not None, "upf_tap._walk was not built: run `pip install -e .` (or `make setup`) again"


@needs_accel
@pytest.mark.parametrize("name", PCAPS)
def test_shared_captures(name: str) -> None:
    assert_same(CAPTURES / name, flows=True)
    assert_same(CAPTURES / name)


@needs_accel
@pytest.mark.parametrize("name", PCAPS)
def test_shared_captures_two_workers(name: str) -> None:
    for me in (0, 1):
        assert_same(CAPTURES / name, workers=2, worker=me)


@pytest.fixture(scope="module")
def workloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("accel")
    bulk, mixed = d / "bulk.pcap", d / "mixed.pcap"
    generate(bulk, 20_000, 40, 5)
    generate_mixed(mixed, 20_000, 60, 2)
    return {"bulk": bulk, "mixed": mixed, "bulk-ng": to_pcapng(bulk, d / "bulk.pcapng"),
            "mixed-ng": to_pcapng(mixed, d / "mixed.pcapng")}


@needs_accel
@pytest.mark.parametrize("name", ["bulk", "mixed", "bulk-ng", "mixed-ng"])
def test_generated_workloads(workloads: dict[str, Path], name: str) -> None:
    events = assert_same(workloads[name], flows=True)
    assert len(events) > 100  # the workload is not empty, so agreement means something
    for me in (0, 1):
        assert_same(workloads[name], workers=2, worker=me)


@needs_accel
def test_compiled_walk_takes_most_packets(workloads: dict[str, Path]) -> None:
    """On bulk traffic the compiled walk decides nearly every packet itself."""
    tap = Tap(TapConfig(control_plane=False), lambda ev: None)
    slow = 0
    full = tap.feed_at

    def counting(*a: Any) -> None:
        nonlocal slow
        slow += 1
        full(*a)

    tap.feed_at = counting  # type: ignore[method-assign]
    walk.walk(tap, read_batches(workloads["bulk"], tap.stats, runs=True), accel=True)
    assert tap.packets >= 20_000 and slow < 1_000


@needs_accel
def test_a_raising_callback_leaves_the_same_state(workloads: dict[str, Path]) -> None:
    """An exception out of the slow path stops both walks at the same packet, with the same
    counts (what ``finally`` in walk.py writes back)."""

    class Stop(Exception):
        pass

    def attempt(accel: bool, how: str) -> tuple[int, int, int, int]:
        seen = 0

        def emit(_ev: dict) -> None:
            nonlocal seen
            seen += 1
            if seen == 50:
                raise Stop

        tap = Tap(TapConfig(control_plane=False), emit)
        with pytest.raises(Stop):
            walk.walk(tap, read_batches(workloads["mixed"], tap.stats, runs=how == "runs"), accel=accel)
        return tap.packets, tap.octets, tap.last_ns, len(tap.flows)

    for how in ("runs", "batches"):
        assert attempt(True, how) == attempt(False, how), how


def _pcapng_with_offset(src: Path, dst: Path, tsoffset: int) -> Path:
    """``src``'s packets in a little-endian pcapng whose interface has an if_tsoffset (seconds)
    so large that the compiled walk's 64-bit time stamp overflows."""
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
           block(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HHq", 14, 8, tsoffset) + struct.pack("<HH", 0, 0))]
    for ts, _lt, frame in list(read_packets(src))[:3000]:
        us = ts // 1000
        out.append(block(6, struct.pack("<IIIII", 0, us >> 32, us & 0xFFFFFFFF, len(frame), len(frame)) + frame))
    dst.write_bytes(b"".join(out))
    return dst


@needs_accel
def test_time_beyond_64_bits_is_handed_back(workloads: dict[str, Path], tmp_path: Path) -> None:
    big = _pcapng_with_offset(workloads["mixed"], tmp_path / "far.pcapng", 1 << 40)
    events = assert_same(big)
    assert events, "the packets were decoded (by the Python walk, from where the compiled one stopped)"


def _corpus() -> Path | None:
    where = os.environ.get("MEC_CORPUS")
    return Path(where) if where and (Path(where) / "n3").is_dir() else None


@needs_accel
@pytest.mark.skipif(_corpus() is None, reason="MEC_CORPUS is not set (or holds no n3/): build one with "
                    "`testbed corpus build --out DIR` from fetched snapshots to check every real capture")
def test_every_corpus_capture() -> None:
    corpus = _corpus()
    assert corpus is not None
    caps = sorted((corpus / "n3").glob("*.pcap"))
    assert caps
    differ = []
    for cap in caps:
        for how in ("runs", "batches"):
            for flows in (True, False):  # without --flows the walks count less on a skipped direction
                if run(cap, True, how, flows=flows) != run(cap, False, how, flows=flows):
                    differ.append(f"{cap.name} ({how}{', --flows' if flows else ''})")
    print(f"{len(caps)} corpus captures compared", file=sys.stderr)
    assert not differ, f"{len(differ)} captures differ: {differ[:10]}"


def _dns_response(name: str, ident: int = 7) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    answer = struct.pack("!HHHIH4s", 0xC00C, 1, 1, 60, 4, bytes([10, 200, 0, 9]))
    return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + q + answer


def _calls(path: Path, accel: bool, layer: str = "_udp") -> tuple[list[dict], int, Tap]:
    """The events, how many packets reached Tap._udp (or ``layer``) with one walk or the other,
    and the tap."""
    events: list[dict] = []
    tap = Tap(TapConfig(control_plane=False), events.append)
    calls = 0
    method = getattr(tap, layer)

    def counted(*args: Any) -> None:
        nonlocal calls
        calls += 1
        method(*args)

    setattr(tap, layer, counted)  # _context reads it from the tap
    walk.walk(tap, read_batches(path, tap.stats, runs=True), accel=accel)
    tap.finish()
    return events, calls, tap


@needs_accel
@pytest.mark.parametrize("v6", [False, True])
def test_datagrams_no_dissector_takes_are_counted_in_the_walk(tmp_path: Path, v6: bool) -> None:
    """On a known UDP flow the compiled walk counts what Tap._udp would only count: datagrams no
    dissector takes (their direction goes quiet after UDP_QUIET_DATAGRAMS), and DNS responses,
    which set the count back. The same events, counters and flow table as the Python walk, with
    fewer datagrams handed to the tap: here a DNS response between two runs of seven media
    datagrams keeps the direction open, so a query to the same high port is still found; after
    eight in a row the direction is skipped and a later query is not (as the full decoder does)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    from tests.tap import gen
    from upf_tap.constants import UDP_QUIET_DATAGRAMS

    ue, srv = ("2001:db8:cafe::21", "2001:db8:ffff::9") if v6 else ("10.45.0.21", "10.200.0.9")
    ip = IPv6 if v6 else IP

    def dgram(sport: int, dport: int, payload: bytes, ul: bool = True) -> Any:
        s, d = (ue, srv) if ul else (srv, ue)
        return gen.n3(21 if ul else 0x10021, ip(src=s, dst=d) / UDP(sport=sport, dport=dport) / Raw(payload), ul=ul)

    media = bytes(range(160))  # no sniffer takes it: not a DNS header, not a long QUIC header
    kept = [dgram(40000, 41000, media) for _ in range(UDP_QUIET_DATAGRAMS - 1)]
    kept += [dgram(40000, 41000, _dns_response("a.example"))]
    kept += [dgram(40000, 41000, media) for _ in range(UDP_QUIET_DATAGRAMS - 1)]
    kept += [dgram(40000, 41000, gen.dns_query("still.example"))]
    quiet = [dgram(40002, 41002, media) for _ in range(UDP_QUIET_DATAGRAMS)]
    quiet += [dgram(40002, 41002, gen.dns_query("too-late.example"))]
    short = [dgram(40004, 443, b"\x40" + media) for _ in range(UDP_QUIET_DATAGRAMS + 2)]  # QUIC short headers
    path = gen.write(tmp_path / "udp.pcap", kept + quiet + short)
    assert_same(path, flows=True)
    assert_same(path)
    (ref, py_calls, _), (got, c_calls, _) = _calls(path, False), _calls(path, True)
    assert got == ref
    names = [e["app"]["qname"] for e in got if e["kind"] == "dns.query"]
    assert names == ["still.example"]
    assert py_calls == len(kept) + 2 * UDP_QUIET_DATAGRAMS  # the Python walk hands every datagram
    # over until its direction is quiet; the compiled walk only each flow's first (it opens the
    # flow) and the query it cannot rule out
    assert c_calls == 3 + 1


@needs_accel
@pytest.mark.parametrize("v6", [False, True])
def test_stray_acks_are_counted_in_the_walk(tmp_path: Path, v6: bool) -> None:
    """A bare ACK of no known flow (a capture that starts mid-flow, the last ACK after a close)
    is only counted by Tap._tcp (tcp.stray): the compiled walk counts it itself, the same count."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    from tests.tap import gen

    ue, srv = ("2001:db8:cafe::22", "2001:db8:ffff::9") if v6 else ("10.45.0.22", "10.200.0.9")
    ip = IPv6 if v6 else IP
    acks = [gen.n3(22, ip(src=ue, dst=srv) / TCP(sport=40000 + i, dport=443, flags="A", seq=7, ack=9))
            for i in range(12)]
    fin = gen.n3(22, ip(src=ue, dst=srv) / TCP(sport=40100, dport=443, flags="FA", seq=7, ack=9))  # not bare
    path = gen.write(tmp_path / "stray.pcap", [*acks, fin])
    assert_same(path)
    (_, py_calls, py_tap), (_, c_calls, c_tap) = _calls(path, False, "_tcp"), _calls(path, True, "_tcp")
    assert py_tap.stats["tcp.stray"] == c_tap.stats["tcp.stray"] == len(acks) + 1
    assert (py_calls, c_calls) == (len(acks) + 1, 1)  # the compiled walk hands over only the FIN
