"""Edge cases on generated captures: each checked against tshark where tshark can tell."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from tests.support.oracle import TSHARK, oracle_events, tap_keys
from tests.tap import gen
from tests.tap.conftest import run_read
from upf_tap.capture.pcapfile import read_packets
from upf_tap.pipeline import Tap, TapConfig

UE = "10.45.0.2"
UE6 = "2001:db8:cafe::2"


def decode(path: Path, **cfg) -> tuple[list[dict], Counter[str]]:
    events: list[dict] = []
    tap = Tap(TapConfig(**cfg), events.append)
    tap.consume(read_packets(path, tap.stats))
    tap.finish()
    return events, tap.stats


def assert_matches_tshark(path: Path, events: list[dict]) -> None:
    if TSHARK is None:
        pytest.skip("tshark not installed")
    expected = oracle_events(path)
    assert tap_keys(events) == expected


def test_http_split_out_of_order_and_retransmitted(tmp_path: Path) -> None:
    req = gen.http_get("shop.mec.local", "/api/v1/buy?item=3") + gen.http_get("shop.mec.local", "/next")
    segs = gen.split(req, [10, 25, 7, 30])
    # send: 2nd, 1st, 1st again (retransmission), 4th, 3rd, overlapping copy of 2nd+3rd, rest
    order = [segs[1], segs[0], segs[0], segs[3], segs[2], (segs[1][0], segs[1][1] + segs[2][1]), *segs[4:]]
    path = gen.write(tmp_path / "ooo.pcap", gen.tcp_session(UE, gen.APP, 40000, 80, order, teid=7))
    events, stats = decode(path)
    reqs = [e["app"]["path"] for e in events if e["kind"] == "http.request"]
    assert reqs == ["/api/v1/buy?item=3", "/next"]
    assert stats["tcp.out_of_order"] >= 2 and stats["tcp.retransmission"] >= 1
    assert_matches_tshark(path, events)


def test_a_hole_never_filled_ends_the_direction(tmp_path: Path) -> None:
    """An upload whose first segment (the request head) never arrives: the direction holds
    MAX_OOO_SEGMENTS segments waiting for the hole, then is over (one ``tcp.ooo_overflow``), and
    the fast path skips what follows instead of the decoder counting every later segment.
    tshark, holding what follows a hole until it fills, finds no request either."""
    from upf_tap.constants import MAX_OOO_SEGMENTS

    def upload(n: int) -> tuple[bytes, list[tuple[int, bytes]]]:  # a request head, then n segments of its body
        head = gen.http_get("up.mec.local", "/upload", f"Content-Length: {n * len(body)}\r\n")
        return head, [(len(head) + i * len(body), body) for i in range(n)]

    body = bytes(range(100))  # 104 segments: all within the 16 KiB window
    head, segs = upload(MAX_OOO_SEGMENTS + 40)
    path = gen.write(tmp_path / "hole.pcap", gen.tcp_session(UE, gen.APP, 40003, 80, segs, teid=13))
    events, stats = decode(path)
    assert [e for e in events if e["kind"] == "http.request"] == []
    assert stats["tcp.out_of_order"] == MAX_OOO_SEGMENTS
    assert stats["tcp.ooo_overflow"] == 1  # once: then the direction is skipped
    assert_matches_tshark(path, events)
    # a segment further past the hole than the window reaches is a counted drop too
    far = [(len(head) + 100, body), (len(head) + 20_000, body)]
    path = gen.write(tmp_path / "far.pcap", gen.tcp_session(UE, gen.APP, 40005, 80, far, teid=13))
    _events, stats = decode(path)
    assert (stats["tcp.out_of_order"], stats["tcp.beyond_depth"]) == (1, 1)
    # and a hole filled before that many segments are held is read as ever
    head, segs = upload(MAX_OOO_SEGMENTS - 1)
    segs.append((0, head))
    path = gen.write(tmp_path / "filled.pcap", gen.tcp_session(UE, gen.APP, 40004, 80, segs, teid=13))
    events, stats = decode(path)
    assert [e["app"]["path"] for e in events if e["kind"] == "http.request"] == ["/upload"]
    assert stats["tcp.ooo_overflow"] == 0
    assert_matches_tshark(path, events)


def test_ipv6_inside_gtpu(tmp_path: Path) -> None:
    req = gen.http_get("v6.mec.local", "/six")
    pkts = gen.tcp_session(UE6, gen.APP6, 40001, 80, [(0, req)], teid=9, v6=True)
    pkts.append(gen.n3(9, IPv6(src=UE6, dst=gen.APP6) / UDP(sport=5000, dport=53) / Raw(gen.dns_query("x.mec.local", 28))))
    path = gen.write(tmp_path / "v6.pcap", pkts)
    events, _ = decode(path)
    http = [e for e in events if e["kind"] == "http.request"]
    assert http and http[0]["ue"]["ip"] == UE6 and http[0]["flow"]["src"] == UE6
    dns = [e for e in events if e["kind"] == "dns.query"]
    assert dns[0]["app"] == {"qname": "x.mec.local", "qtype": 28, "transport": "udp"}
    assert_matches_tshark(path, events)


def test_outer_ipv4_fragments_reassembled(tmp_path: Path) -> None:
    req = gen.http_get("frag.mec.local", "/" + "a" * 1200)
    pkts = gen.tcp_session(UE, gen.APP, 40002, 80, [(0, req)], teid=11)
    frags = gen.outer_fragments(pkts[-1], 400)
    assert len(frags) >= 3
    frags = [frags[1], frags[0], *frags[2:]]  # out of order too
    path = gen.write(tmp_path / "outer-frag.pcap", pkts[:-1] + frags)
    events, stats = decode(path)
    assert [e["app"]["host"] for e in events if e["kind"] == "http.request"] == ["frag.mec.local"]
    assert stats["ip.outer_frag.reassembled"] == 1
    assert_matches_tshark(path, events)


def test_inner_ipv6_fragments_reassembled(tmp_path: Path) -> None:
    query = gen.dns_query("big." + "b" * 60 + ".mec.local", 16)
    frags = gen.inner_v6_fragments(UE6, gen.APP6, UDP(sport=5001, dport=53) / Raw(query + b"\0" * 200), 120, 13)
    assert len(frags) >= 2
    path = gen.write(tmp_path / "inner-frag.pcap", frags)
    events, stats = decode(path)
    assert [e["app"]["qtype"] for e in events if e["kind"] == "dns.query"] == [16]
    assert stats["ip.inner_frag.reassembled"] == 1


def test_link_layers_vlan_qinq_sll(tmp_path: Path) -> None:
    inner = IP(src=UE, dst=gen.APP) / UDP(sport=5002, dport=53) / Raw(gen.dns_query("vlan.mec.local"))
    base = gen.n3(21, inner)
    outer = base[IP]
    frames = [
        Ether() / Dot1Q(vlan=10) / outer,
        Ether() / Dot1AD(vlan=20) / Dot1Q(vlan=30) / outer,
    ]
    eth_path = gen.write(tmp_path / "vlan.pcap", frames)
    sll_path = gen.write(tmp_path / "sll.pcap", [CookedLinux(proto=0x0800) / outer], linktype=113)
    raw_path = gen.write(tmp_path / "raw.pcap", [outer], linktype=101)
    for path, n in ((eth_path, 2), (sll_path, 1), (raw_path, 1)):
        events, _ = decode(path)
        assert [e["app"]["qname"] for e in events] == ["vlan.mec.local"] * n, path.name


def test_gtpu_signalling_is_counted_not_decoded(tmp_path: Path) -> None:
    inner = bytes(IP(src=UE, dst=gen.APP) / ICMP(type=8, id=5, seq=1))
    pkts = [
        gen.n3(0, b"\x00\x00", mtype=1),                     # echo request
        gen.n3(0, b"\x00\x00", mtype=2),                     # echo response
        gen.n3(31, b"", mtype=254),                           # end marker
        gen.n3(31, inner, mtype=26),                          # error indication: not user data
        gen.n3(31, inner, seq=9),                             # G-PDU with a sequence number
        gen.n3(31, inner, extra_ext=b"\x40\x01\x00\x00\x00"), # an unknown extension header first
    ]
    path = gen.write(tmp_path / "signalling.pcap", pkts)
    events, stats = decode(path)
    assert stats["gtpu.echo_request"] == 1 and stats["gtpu.echo_response"] == 1
    assert stats["gtpu.end_marker"] == 1 and stats["gtpu.error_indication"] == 1
    pings = [e for e in events if e["kind"] == "icmp.echo_request"]
    assert len(pings) == 2 and all(e["app"] == {"id": 5, "seq": 1} for e in pings)
    assert all(e["ue"]["qfi"] == 1 for e in pings)


def test_stream_depth_bounds_each_message_not_the_stream(tmp_path: Path) -> None:
    """The depth bounds the bytes held for one message: a body is skipped, not held, so the
    request after a 5000-byte upload is read even with a 2 KiB depth (as tshark reads it); a
    request head longer than the depth ends the direction, counted."""
    body = b"x" * 5000
    first = (b"POST /upload HTTP/1.1\r\nHost: a.mec.local\r\nContent-Length: 5000\r\n\r\n" + body)
    second = gen.http_get("a.mec.local", "/after-body")
    data = first + second
    path = gen.write(tmp_path / "depth.pcap",
                     gen.tcp_session(UE, gen.APP, 40003, 80, gen.split(data, [1400] * 4), teid=15))
    shallow, stats = decode(path, stream_depth=2048)
    assert [e["app"]["path"] for e in shallow if e["kind"] == "http.request"] == ["/upload", "/after-body"]
    assert not stats.get("tcp.depth_reached")
    long_head = gen.http_get("a.mec.local", "/long", "X-Pad: " + "p" * 3000 + "\r\n")
    after = gen.http_get("a.mec.local", "/after-long")
    path = gen.write(tmp_path / "long.pcap", gen.tcp_session(UE, gen.APP, 40004, 80,
                                                              gen.split(second + long_head + after, [1400] * 4),
                                                              teid=15))
    shallow, stats = decode(path, stream_depth=2048)
    assert [e["app"]["path"] for e in shallow if e["kind"] == "http.request"] == ["/after-body"]
    assert stats["tcp.depth_reached"] == 1
    deep, _ = decode(path, stream_depth=16384)
    assert [e["app"]["path"] for e in deep if e["kind"] == "http.request"] == ["/after-body", "/long", "/after-long"]


def test_many_requests_on_one_connection(tmp_path: Path) -> None:
    """A keep-alive connection's requests past the first 16 KiB are read (the window slides)."""
    reqs = [gen.http_get("k.mec.local", f"/r{i}", "X-Pad: " + "q" * 900 + "\r\n") for i in range(40)]
    path = gen.write(tmp_path / "keepalive.pcap",
                     gen.tcp_session(UE, gen.APP, 40005, 80, gen.split(b"".join(reqs), [1400] * 40), teid=15))
    events, _ = decode(path)
    assert [e["app"]["path"] for e in events if e["kind"] == "http.request"] == [f"/r{i}" for i in range(40)]


def test_n6_point_uses_ue_pool(tmp_path: Path) -> None:
    pkts = [
        Ether() / IP(src=gen.APP, dst=UE) / TCP(sport=80, dport=40004, flags="SA"),  # first packet from the DN
        Ether() / IP(src=UE, dst=gen.APP) / TCP(sport=40004, dport=80, flags="PA", seq=1)
        / Raw(gen.http_get("n6.mec.local", "/n6")),
    ]
    path = gen.write(tmp_path / "n6.pcap", pkts)
    events, _ = decode(path, point="n6")
    (ev,) = [e for e in events if e["kind"] == "http.request"]
    assert ev["point"] == "n6" and ev["direction"] == "ul" and ev["ue"] == {"ip": UE}
    assert "tunnel" not in ev


def test_flow_events_and_lru_cap(tmp_path: Path) -> None:
    pkts = []
    for i in range(5):
        pkts.append(gen.n3(40 + i, IP(src=UE, dst=gen.APP) / UDP(sport=6000 + i, dport=53)
                           / Raw(gen.dns_query(f"f{i}.mec.local"))))
    path = gen.write(tmp_path / "flows.pcap", pkts)
    events, stats = decode(path, flows=True, max_flows=2)
    starts = [e for e in events if e["kind"] == "flow.start"]
    ends = [e for e in events if e["kind"] == "flow.end"]
    assert len(starts) == 5 and len(ends) == 5
    assert stats["flows.ended.evicted"] == 3 and stats["flows.ended.end_of_input"] == 2
    assert all(e["app"]["packets_ul"] == 1 and e["app"]["packets_dl"] == 0 for e in ends)


def test_idle_timeout_ends_flows(tmp_path: Path) -> None:
    p1 = gen.n3(50, IP(src=UE, dst=gen.APP) / UDP(sport=7000, dport=53) / Raw(gen.dns_query("a.mec.local")))
    p2 = gen.n3(50, IP(src=UE, dst=gen.APP) / UDP(sport=7001, dport=53) / Raw(gen.dns_query("b.mec.local")))
    path = tmp_path / "idle.pcap"
    gen.write(path, [p1, p2])
    # rewrite the second packet's time 10 s later
    from scapy.utils import PcapWriter

    w = PcapWriter(str(path), sync=True)
    p1.time, p2.time = gen.T0, gen.T0 + 10
    w.write(p1)
    w.write(p2)
    w.close()
    events, stats = decode(path, flows=True, idle_timeout=5)
    assert stats["flows.ended.idle"] == 1
    kinds = [e["kind"] for e in events]
    assert kinds.index("flow.end") < len(kinds) - 1  # the idle end came before the second flow's events


def test_quic_initial_in_gtpu(tmp_path: Path) -> None:
    """The RFC 9001 Appendix A.2 client Initial, tunnelled: decrypted to its SNI, as tshark does."""
    hexfile = Path(__file__).resolve().parent.parent / "dissect" / "rfc9001_a2_client_initial.hex"
    initial = bytes.fromhex(hexfile.read_text().replace("\n", ""))
    pkt = gen.n3(61, IP(src=UE, dst=gen.APP) / UDP(sport=50000, dport=443) / Raw(initial))
    path = gen.write(tmp_path / "quic.pcap", [pkt, pkt])  # a retransmitted Initial is not a new event
    events, _ = decode(path)
    quic = [e for e in events if e["kind"] == "quic.initial"]
    assert len(quic) == 1 and quic[0]["app"]["sni"] == "example.com"
    if TSHARK is None:
        pytest.skip("tshark not installed")
    # tshark shows the SNI in both packets; the tap reports the ClientHello once
    assert set(oracle_events(path)) == set(tap_keys(events)) == {("sni", "example.com")}


def test_garbled_timestamp_is_clamped_not_fatal(tmp_path: Path) -> None:
    """A pcapng timestamp beyond year 9999 (here 10^12 s: if_tsresol says seconds) gives an
    event at the last time RFC 3339 can write, not a crash."""
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    frame = bytes(gen.n3(5, IP(src=UE, dst=gen.APP) / UDP(sport=5353, dport=53) / Raw(gen.dns_query("a.mec"))))
    ts = 10**12
    data = (block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
            + block(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HHB3x", 9, 1, 0) + struct.pack("<HH", 0, 0))
            + block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + frame))
    path = tmp_path / "far-future.pcapng"
    path.write_bytes(data)
    res = run_read(path)
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(e["kind"], e["time"]) for e in events] == [("dns.query", "9999-12-31T23:59:59.999999Z")]


def test_the_server_side_of_a_quic_client_is_not_opened(tmp_path: Path) -> None:
    """A server's Initial answers a client the other direction already holds: it carries no SNI and
    is not decrypted (its keys come from the client's DCID, not its own), nor counted as malformed."""
    from tests.support.n3_workload import quic_initial

    hexfile = Path(__file__).resolve().parent.parent / "dissect" / "rfc9001_a2_client_initial.hex"
    client = bytes.fromhex(hexfile.read_text().replace("\n", ""))
    dcid = bytes.fromhex("8394c8f03e515708")  # RFC 9001 A.1's original DCID
    server = quic_initial(b"", bytes.fromhex("f067a5502a4262b5"), b"\x02\0\0\0\0" + b"\x06\0\x10" + bytes(16), 1,
                          key_dcid=dcid, server=True)
    pkts = [gen.n3(61, IP(src=UE, dst=gen.APP) / UDP(sport=50000, dport=443) / Raw(client)),
            gen.n3(61, IP(src=gen.APP, dst=UE) / UDP(sport=443, dport=50000) / Raw(server), ul=False)]
    path = gen.write(tmp_path / "quic-both.pcap", pkts)
    events, stats = decode(path)
    assert [(e["kind"], e["app"]["sni"]) for e in events] == [("quic.initial", "example.com")]
    assert stats["quic.malformed"] == 0
    tap = Tap(TapConfig(control_plane=False), lambda ev: None)
    tap.consume(read_packets(path, tap.stats))
    (flow,) = {id(f): f for f, _ in tap.udp_flows.values()}.values()  # one flow, under both its keys
    client = [i for i, s in enumerate(flow.state) if getattr(s, "client", False)]
    assert len(client) == 1
    assert flow.state[1 - client[0]] is False  # never tried: no assembler made for the server's side
