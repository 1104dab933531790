"""The fast paths of ``upf-tap read`` change nothing but speed.

``Tap.feed`` decodes every packet in full. ``consume_batches`` over ``read_batches`` skips
the segments that need no inspection with one test per packet, and with ``runs=True`` it
also walks the pcap records itself (what ``upf-tap read`` does on one pcap file). All three
must give the same events and the same counters, on real captures, on the benchmark's bulk
workload, on chunks cut mid-record, on truncated files, and when a flow's 5-tuple is reused.
"""

from __future__ import annotations

import collections
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from tests.conftest import CAPTURES
from tests.support.n3_workload import generate
from tests.tap import gen
from upf_tap.capture import pcapfile
from upf_tap.capture.pcapfile import read_batches, read_packets
from upf_tap.pipeline import Tap, TapConfig

PCAPS = sorted(p.name for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng"))


def decode(path: Path, how: str, **cfg) -> tuple[list[dict], dict[str, int]]:
    events: list[dict] = []
    tap = Tap(TapConfig(**cfg), events.append)
    if how == "feed":
        for ts, lt, frame in read_packets(path, tap.stats):
            tap.feed(ts, lt, frame)
    else:
        tap.consume_batches(read_batches(path, tap.stats, runs=how == "runs"))
    tap.finish()
    return events, tap.counters()


def assert_same(path: Path, **cfg) -> list[dict]:
    ref = decode(path, "feed", **cfg)
    for how in ("batches", "runs"):
        got = decode(path, how, **cfg)
        assert got[0] == ref[0], f"{path.name}: events differ ({how})"
        assert got[1] == ref[1], f"{path.name}: counters differ ({how})"
    return ref[0]


@pytest.mark.parametrize("name", PCAPS)
def test_real_captures(name: str) -> None:
    assert_same(CAPTURES / name, flows=True)


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bulk") / "n3-20000.pcap"
    generate(path, 20_000, 40, 3)
    return path


def test_bulk_workload(bulk: Path) -> None:
    events = assert_same(bulk)
    assert len(events) > 30
    # most packets really took the fast path (else this test would prove nothing)
    tap = Tap(TapConfig(), lambda ev: None)
    slow = 0
    full = tap.feed_at

    def counting(*a):  # type: ignore[no-untyped-def]
        nonlocal slow
        slow += 1
        full(*a)

    tap.feed_at = counting  # type: ignore[method-assign]
    tap.consume_batches(read_batches(bulk, tap.stats, runs=True))
    assert tap.packets == tap.stats["capture.packets"] >= 20_000 and slow < 2_000


def test_bulk_workload_with_flow_counters(bulk: Path) -> None:
    events = assert_same(bulk, flows=True)
    ends = [e for e in events if e["kind"] == "flow.end"]
    assert ends and sum(e["app"]["packets_dl"] for e in ends) > 5_000


def _block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(order + "II", btype, len(body) + 12) + body + struct.pack(order + "I", len(body) + 12)


def to_pcapng(src: Path, dst: Path) -> Path:
    """The packets of ``src`` as pcapng, made to exercise every exit of the EPB walk: two
    sections (little then big endian), two Ethernet interfaces taking turns (the second in
    nanoseconds), an Interface Statistics Block every 1,000 packets, and a comment option
    on every 7th EPB."""
    packets = list(read_packets(src))
    half = len(packets) // 2
    out = []
    for order, part in (("<", packets[:half]), (">", packets[half:])):
        out.append(_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)))
        out.append(_block(order, 1, struct.pack(order + "HHI", 1, 0, 0)))  # microseconds
        out.append(_block(order, 1, struct.pack(order + "HHI", 1, 0, 0) + struct.pack(order + "HHB3x", 9, 1, 9)
                          + struct.pack(order + "HH", 0, 0)))  # nanoseconds
        for i, (ts, _lt, frame) in enumerate(part):
            ifid = i & 1
            units = ts if ifid else ts // 1000
            opts = struct.pack(order + "HH", 1, 5) + b"note\0\0\0\0" + struct.pack(order + "HH", 0, 0) if i % 7 == 0 else b""
            pad = b"\0" * (-len(frame) % 4)
            out.append(_block(order, 6, struct.pack(order + "IIIII", ifid, units >> 32, units & 0xFFFFFFFF, len(frame),
                                                    len(frame)) + frame + pad + opts))
            if i % 1000 == 999:
                out.append(_block(order, 5, struct.pack(order + "III", 0, units >> 32, units & 0xFFFFFFFF)))
    dst.write_bytes(b"".join(out))
    return dst


def test_bulk_workload_pcapng(bulk: Path, tmp_path: Path) -> None:
    ng = to_pcapng(bulk, tmp_path / "bulk.pcapng")
    events = assert_same(ng, flows=True)
    assert events == decode(bulk, "feed", flows=True)[0]  # the same packets, the same events


def test_records_straddling_chunks(bulk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ng = to_pcapng(bulk, tmp_path / "bulk.pcapng")
    refs = {p: decode(p, "feed") for p in (bulk, ng)}
    monkeypatch.setattr(pcapfile, "CHUNK", 4093)  # prime: every few records straddle two chunks
    for p, ref in refs.items():
        for how in ("batches", "runs"):
            assert decode(p, how) == ref, f"{p.name} {how}"


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("cut", [10, 24 + 7, 24 + 16 + 50])
def test_truncated_file(bulk: Path, tmp_path: Path, cut: int, fmt: str) -> None:
    src = bulk if fmt == "pcap" else to_pcapng(bulk, tmp_path / "bulk.pcapng")
    data = src.read_bytes()
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(data[: len(data) // 3 + cut])
    events, counters = assert_same(path), decode(path, "runs")[1]
    assert counters["capture.truncated"] == 1 and events


def _fin(teid: int, src: str, dst: str, sport: int, dport: int, seq: int, ul: bool) -> object:
    return gen.n3(teid, IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="FA", seq=seq, ack=1), ul=ul)


def test_reused_five_tuple_is_inspected_again(tmp_path: Path) -> None:
    """A direction skipped because its stream was done must not stay skipped for a new
    connection on the same addresses and ports."""
    ue, port = "10.45.0.9", 41000
    body = b"x" * 20_000  # past the 16 KiB depth: the upload direction is done
    first = gen.http_get("up.mec.local", "/upload", f"Content-Length: {len(body)}\r\n") + body
    pkts = gen.tcp_session(ue, gen.APP, port, 80, gen.split(first, [1400] * 15), teid=9)
    pkts += [_fin(9, ue, gen.APP, port, 80, 1001 + len(first), True),
             _fin(0x10009, gen.APP, ue, 80, port, 5001, False)]
    second = gen.http_get("shop.mec.local", "/again")
    pkts += gen.tcp_session(ue, gen.APP, port, 80, [(0, second)], teid=9)
    pkts += [gen.n3(9, IP(src=ue, dst=gen.APP) / TCP(sport=port, dport=80, flags="PA", seq=5, ack=1)
                    / Raw(b"more bytes"))]
    path = gen.write(tmp_path / "reuse.pcap", pkts)
    events = assert_same(path)
    assert [e["app"]["path"] for e in events if e["kind"] == "http.request"] == ["/upload", "/again"]
    assert collections.Counter(e["kind"] for e in events) == {"http.request": 2}


def test_lru_order_follows_activity(tmp_path: Path) -> None:
    """A flow that keeps sending (here every 0.5 s, under the 1 s LRU precision) stays at
    the recent end of the LRU order: the idle flow behind it is the one that times out, and
    the one evicted when the table is full."""
    def seg(ue: str, port: int, t: float, payload: bytes = b"") -> object:
        p = gen.n3(1, IP(src=ue, dst=gen.APP) / TCP(sport=port, dport=80, flags="A", seq=1, ack=1) / Raw(payload))
        p.time = gen.T0 + t
        return p

    def syn(ue: str, port: int, t: float) -> object:
        p = gen.n3(1, IP(src=ue, dst=gen.APP) / TCP(sport=port, dport=80, flags="S", seq=0))
        p.time = gen.T0 + t
        return p

    active, idle = ("10.45.0.1", 40001), ("10.45.0.2", 40002)
    pkts = [syn(*active, 0.0), syn(*idle, 0.1)]
    pkts += [seg(*active, 0.5 * i) for i in range(1, 21)]  # 0.5 s .. 10 s
    pkts += [syn("10.45.0.3", 40003, 10.2)]  # a third flow: the table (max 2) must evict one
    path = tmp_path / "lru.pcap"
    from scapy.utils import PcapWriter

    with PcapWriter(str(path)) as w:
        for p in pkts:
            w.write(p)
    for cfg in ({"idle_timeout": 5.0}, {"max_flows": 2}):
        events = assert_same(path, flows=True, **cfg)
        ends = {e["flow"]["src"]: e["app"]["reason"] for e in events if e["kind"] == "flow.end"}
        assert ends["10.45.0.1"] == "end_of_input", cfg  # the active flow lives to the end
        assert ends["10.45.0.2"] == ("idle" if "idle_timeout" in cfg else "evicted"), cfg


@pytest.fixture(scope="module")
def small_bulk(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("small") / "n3-1500.pcap"
    generate(path, 1_500, 6, 5)
    return path.read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(24, 10**9), st.integers(0, 255)), min_size=1, max_size=12),
       fmt=st.sampled_from(["pcap", "pcapng"]))
def test_mutated_bulk_same_on_every_path(small_bulk: bytes, tmp_path: Path, flips: list[tuple[int, int]],
                                         fmt: str) -> None:
    """Bytes changed anywhere after the file header (record headers, lengths, flags, ports
    of flows the fast path skips): the three paths still agree on every event and counter."""
    data = bytearray(small_bulk)
    for pos, val in flips:
        data[24 + pos % (len(data) - 24)] = val
    path = tmp_path / "mutated.pcap"
    path.write_bytes(bytes(data))
    if fmt == "pcapng":
        path = to_pcapng(path, tmp_path / "mutated.pcapng")
    assert_same(path)


def test_quiet_udp_directions_are_skipped_alike(tmp_path: Path) -> None:
    """A UDP direction no dissector takes for UDP_QUIET_DATAGRAMS datagrams in a row (RTP, a
    game, QUIC's short headers) is skipped by the fast path and by the full decoder alike; its
    packets still count in flow.end; a DNS flow's datagrams never go quiet."""
    from scapy.layers.inet import UDP

    from upf_tap.constants import UDP_QUIET_DATAGRAMS

    ue = "10.45.0.21"
    media = [gen.n3(21, IP(src=ue, dst=gen.APP) / UDP(sport=40000, dport=40002) / Raw(bytes(range(160))))
             for _ in range(3 * UDP_QUIET_DATAGRAMS)]
    dns = [gen.n3(21, IP(src=ue, dst="10.200.0.53") / UDP(sport=40001, dport=53)
                  / Raw(gen.dns_query(f"q{i}.example"))) for i in range(2 * UDP_QUIET_DATAGRAMS)]
    pkts = [p for pair in zip(media, dns + dns[:UDP_QUIET_DATAGRAMS], strict=True) for p in pair]
    path = gen.write(tmp_path / "quiet.pcap", pkts)
    events = assert_same(path, flows=True)
    ends = {e["flow"]["dport"]: e["app"]["packets_ul"] for e in events if e["kind"] == "flow.end"}
    assert ends == {40002: 3 * UDP_QUIET_DATAGRAMS, 53: 3 * UDP_QUIET_DATAGRAMS}
    assert sum(e["kind"] == "dns.query" for e in events) == 3 * UDP_QUIET_DATAGRAMS
    tap = Tap(TapConfig(), lambda _e: None)
    tap.consume_batches(read_batches(path, tap.stats, runs=True))
    assert [flow.addrs[3] for flow, _ in tap.flows.udp_skip.values()] == [40002]  # the media direction only


def test_mixed_workload_with_ipv6_inside(tmp_path: Path) -> None:
    """The mixed N3 workload (a third of its flows IPv6 in GTP-U): the same events and counters
    on every path, and IPv6 bulk segments take the fast path as IPv4 ones do."""
    from tests.support.n3_workload import generate_mixed

    path = tmp_path / "mixed.pcap"
    generate_mixed(path, 20_000, 60, 5)
    assert_same(path, flows=True)
    v6_tcp = sum(1 for _, _, f in read_packets(path) if len(f) > 64 and f[58] >> 4 == 6 and f[64] == 6)
    slow_v6: list[int] = []
    tap = Tap(TapConfig(), lambda _e: None)
    full = tap.feed_at

    def counting(ts_ns: int, linktype: int, data: bytes, off: int, end: int) -> None:
        if end - off > 64 and data[off + 58] >> 4 == 6 and data[off + 64] == 6:
            slow_v6.append(1)
        full(ts_ns, linktype, data, off, end)

    tap.feed_at = counting  # type: ignore[method-assign]
    tap.consume_batches(read_batches(path, tap.stats, runs=True))
    assert v6_tcp > 1000 and len(slow_v6) < v6_tcp / 2, (v6_tcp, len(slow_v6))
