"""`testbed corpus tunnel` on plain captures built here: every IP packet once, byte for byte, in
GTP-U with the right direction, TEIDs and QFI, as tshark reads the result.

The expected UE of every packet is written down with the packet (the side that opened its
flow); the tunnelled file is read twice, by tshark (the oracle for what an N3 capture says)
and by a header walk of our own (the exact bytes and timestamps).
"""

from __future__ import annotations

import re
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, CookedLinux, Dot1Q, Ether
from scapy.packet import Packet, Padding, Raw

from testbed.corpus.tshark import TSHARK, fields
from upf_tap.capture.pcapfile import read_packets

from .corpuslib import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_RAW,
    ip_packet,
    one_line_error,
    run_testbed,
    walk_n3,
    write_pcap,
)

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (make sysdeps)")

GNB, UPF = "10.100.0.1", "10.100.0.2"   # the outer addresses the tunnel uses
A, WEB = "192.0.2.10", "198.51.100.80"           # TCP, A sends the SYN
B, TLS_SERVER = "192.0.2.11", "198.51.100.43"    # TCP caught mid-flow, the server (443) speaks first
C, RESOLVER = "192.0.2.12", "198.51.100.53"      # DNS over UDP
V6, PEER6 = "2001:db8:1::10", "2001:db8:2::20"   # UDP over IPv6, both ports ephemeral
D, PEER_D = "192.0.2.13", "198.51.100.99"        # ICMP in 802.1Q frames
F, PEER_F = "192.0.2.14", "198.51.100.77"        # a UDP datagram in two IPv4 fragments

HTTP_REQ = b"GET /index.html HTTP/1.1\r\nHost: a.example\r\nUser-Agent: t/1\r\n\r\n"
HTTP_RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def eth(l3: Packet) -> Packet:
    return Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") / l3


def tcp_open() -> list[tuple[Packet, str]]:
    """A's connection to a web server: handshake, a request, the response, acknowledgements."""
    up = lambda flags, seq, ack, data=b"": IP(src=A, dst=WEB) / TCP(  # noqa: E731
        sport=40000, dport=80, flags=flags, seq=seq, ack=ack) / Raw(data)
    down = lambda flags, seq, ack, data=b"": IP(src=WEB, dst=A) / TCP(  # noqa: E731
        sport=80, dport=40000, flags=flags, seq=seq, ack=ack) / Raw(data)
    return [(up("S", 1000, 0), A), (down("SA", 9000, 1001), A), (up("A", 1001, 9001), A),
            (up("PA", 1001, 9001, HTTP_REQ), A), (down("PA", 9001, 1001 + len(HTTP_REQ), HTTP_RESP), A),
            (up("A", 1001 + len(HTTP_REQ), 9001 + len(HTTP_RESP)), A)]


def mid_flow() -> list[tuple[Packet, str]]:
    """A TLS connection whose capture starts with the server's record (443 -> ephemeral)."""
    record = b"\x17\x03\x03\x00\x05hello"
    return [(IP(src=TLS_SERVER, dst=B) / TCP(sport=443, dport=51000, flags="PA", seq=7000, ack=3000) / record, B),
            (IP(src=B, dst=TLS_SERVER) / TCP(sport=51000, dport=443, flags="A", seq=3000, ack=7000 + len(record)), B),
            (IP(src=B, dst=TLS_SERVER) / TCP(sport=51000, dport=443, flags="PA", seq=3000,
                                             ack=7000 + len(record)) / record, B)]


def dns() -> list[tuple[Packet, str]]:
    q = DNS(id=0x1234, rd=1, qd=DNSQR(qname="example.org", qtype="A"))
    r = DNS(id=0x1234, qr=1, rd=1, ra=1, qd=DNSQR(qname="example.org", qtype="A"),
            an=DNSRR(rrname="example.org", type="A", rdata="203.0.113.7", ttl=60))
    return [(IP(src=C, dst=RESOLVER) / UDP(sport=53001, dport=53) / q, C),
            (IP(src=RESOLVER, dst=C) / UDP(sport=53, dport=53001) / r, C)]


def udp6() -> list[tuple[Packet, str]]:
    return [(IPv6(src=V6, dst=PEER6) / UDP(sport=5000, dport=6000) / Raw(b"ping6"), V6),
            (IPv6(src=PEER6, dst=V6) / UDP(sport=6000, dport=5000) / Raw(b"pong6"), V6)]


def fragments() -> list[tuple[Packet, str]]:
    whole = IP(src=F, dst=PEER_F, id=4242) / UDP(sport=7000, dport=7001) / Raw(bytes(range(256)) * 8)
    parts = fragment(whole, fragsize=1480)
    assert len(parts) == 2
    return [(p, F) for p in parts]


def ethernet_frames() -> list[tuple[bytes, bytes | None, str | None]]:
    """(frame, its IP packet or None, the UE or None) in capture order: flows interleaved."""
    out: list[tuple[bytes, bytes | None, str | None]] = []

    def ip_frames(items: list[tuple[Packet, str]]) -> list[tuple[bytes, bytes | None, str | None]]:
        return [(bytes(eth(p)), bytes(p), ue) for p, ue in items]

    flows = [ip_frames(tcp_open()), ip_frames(mid_flow()), ip_frames(dns()), ip_frames(udp6()), ip_frames(fragments())]
    # 802.1Q-tagged ICMP echo, both ways
    ping = IP(src=D, dst=PEER_D) / ICMP(type=8, id=1, seq=1) / Raw(b"abcd")
    pong = IP(src=PEER_D, dst=D) / ICMP(type=0, id=1, seq=1) / Raw(b"abcd")
    flows.append([(bytes(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") / Dot1Q(vlan=100) / p), bytes(p), D)
                  for p in (ping, pong)])
    # a short frame padded to Ethernet's minimum: the padding is not part of the IP packet
    ack = IP(src=A, dst=WEB) / TCP(sport=40000, dport=80, flags="A", seq=1001 + len(HTTP_REQ),
                                   ack=9001 + len(HTTP_RESP))
    flows[0].append((bytes(eth(ack) / Padding(b"\0" * 6)), bytes(ack), A))
    arp = Ether(src="02:00:00:00:00:0a", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=A, pdst=WEB)
    out.append((bytes(arp), None, None))
    while any(flows):
        for f in flows:
            if f:
                out.append(f.pop(0))
    return out


def tunnel(src: Path, dst: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_testbed("corpus", "tunnel", src, dst, *args)


SUMMARY = re.compile(r"(\d+) packets \((\d+) uplink, (\d+) downlink\) of (\d+) frames, (\d+) UEs(?:; left out: (.*))?$")


def summary(res: subprocess.CompletedProcess[str]) -> tuple[int, int, int, int, int, str]:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    m = SUMMARY.search(lines[0])
    assert m, lines[0]
    return int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), m[6] or ""


TSHARK_FIELDS = ["frame.time_epoch", "ip.src", "ip.dst", "ipv6.src", "gtp.teid", "gtp.ext_hdr.pdu_ses_con.pdu_type",
                 "gtp.ext_hdr.pdu_ses_con.qos_flow_id", "_ws.malformed", "dns.qry.name", "http.request.method",
                 "http.host"]


def tshark_rows(path: Path) -> list[dict[str, list[str]]]:
    return fields(path, TSHARK_FIELDS)


def epoch_ns(s: str) -> int:
    return int(Decimal(s) * 1_000_000_000)


@pytest.fixture(scope="module")
def ethernet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("tunnel")
    frames = ethernet_frames()
    src = d / "plain.pcap"
    stamps = write_pcap(src, [f for f, _ip, _ue in frames], LINKTYPE_ETHERNET)
    out = d / "n3.pcap"
    res = tunnel(src, out, "--qfi", "5")
    assert res.returncode == 0, res.stderr
    expected = [(ts, ip, ue) for ts, (_f, ip, ue) in zip(stamps, frames, strict=True) if ip is not None]
    return {"src": src, "out": out, "res": res, "expected": expected, "frames": len(frames),
            "ours": [(ts, walk_n3(fr)) for ts, _lt, fr in read_packets(out)], "tshark": tshark_rows(out)}


def test_every_ip_packet_once_byte_for_byte_with_its_timestamp(ethernet: dict) -> None:
    assert [lt for _ts, lt, _fr in read_packets(ethernet["out"])] == [LINKTYPE_ETHERNET] * len(ethernet["expected"])
    assert [inner for _ts, inner in ((ts, n["inner"]) for ts, n in ethernet["ours"])] == \
        [ip for _ts, ip, _ue in ethernet["expected"]]
    assert [ts for ts, _n in ethernet["ours"]] == [ts for ts, _ip, _ue in ethernet["expected"]]
    # tshark reads the same nanoseconds
    assert [epoch_ns(r["frame.time_epoch"][0]) for r in ethernet["tshark"]] == \
        [ts for ts, _ip, _ue in ethernet["expected"]]


def test_direction_teids_and_qfi_as_tshark_reads_them(ethernet: dict) -> None:
    rows = ethernet["tshark"]
    assert len(rows) == len(ethernet["expected"])
    teids: dict[str, dict[str, set[str]]] = {}
    for (_ts, ip, ue), r in zip(ethernet["expected"], rows, strict=True):
        assert ip is not None and ue is not None
        assert not r["_ws.malformed"], r
        inner_src = r["ip.src"][1] if ip[0] >> 4 == 4 else r["ipv6.src"][0]
        uplink = inner_src == ue
        assert r["ip.src"][0] == (GNB if uplink else UPF) and r["ip.dst"][0] == (UPF if uplink else GNB), r
        assert r["gtp.ext_hdr.pdu_ses_con.pdu_type"] == ["1" if uplink else "0"], r
        assert r["gtp.ext_hdr.pdu_ses_con.qos_flow_id"] == ["5"], r
        assert len(r["gtp.teid"]) == 1, r
        teids.setdefault(ue, {"ul": set(), "dl": set()})["ul" if uplink else "dl"].add(r["gtp.teid"][0])
    # every UE both ways, one TEID each way, no TEID shared
    assert set(teids) == {A, B, C, V6, D, F}
    for ue, t in teids.items():
        assert len(t["ul"]) == 1 and len(t["dl"]) <= 1, (ue, t)
    every = [x for t in teids.values() for x in (*t["ul"], *t["dl"])]
    assert len(every) == len(set(every))
    assert all(len(teids[ue]["dl"]) == 1 for ue in (A, B, C, V6, D))  # F only sent
    # and our own read agrees with tshark's
    for (_ts, n), r in zip(ethernet["ours"], rows, strict=True):
        assert (n["src"], int(r["gtp.teid"][0], 0), n["pdu_type"], n["qfi"]) == \
            (r["ip.src"][0], n["teid"], int(r["gtp.ext_hdr.pdu_ses_con.pdu_type"][0]), 5)


def test_tshark_reads_the_applications_inside(ethernet: dict) -> None:
    rows = ethernet["tshark"]
    assert [r["dns.qry.name"] for r in rows if r["dns.qry.name"]] == [["example.org"], ["example.org"]]
    assert [(r["http.request.method"], r["http.host"]) for r in rows if r["http.request.method"]] == \
        [(["GET"], ["a.example"])]


def test_summary_counts_and_arp_left_out(ethernet: dict) -> None:
    expected = ethernet["expected"]
    up = sum(1 for _ts, ip, ue in expected if ip is not None and _src(ip) == ue)
    packets, ul, dl, frames, ues, left_out = summary(ethernet["res"])
    assert (packets, ul, dl, frames, ues) == (len(expected), up, len(expected) - up, ethernet["frames"], 6)
    assert left_out == "{'dropped.link.not_ip': 1}"


def _src(ip: bytes) -> str:
    if ip[0] >> 4 == 4:
        return ".".join(map(str, ip[12:16]))
    import ipaddress

    return str(ipaddress.IPv6Address(ip[8:24]))


@pytest.mark.parametrize("linktype", [LINKTYPE_LINUX_SLL, LINKTYPE_RAW])
def test_cooked_and_raw_ip_captures(tmp_path: Path, linktype: int) -> None:
    """The same TCP connection captured on Linux's "any" device and as raw IP (microsecond pcaps):
    the same inner packets and directions as from Ethernet, timestamps in nanoseconds."""
    flow = tcp_open()
    if linktype == LINKTYPE_LINUX_SLL:
        frames = [bytes(CookedLinux(pkttype=4 if ue == _src(bytes(p)) else 0, lladdrtype=1, lladdrlen=6,
                                    src=b"\x02\0\0\0\0\x0a\0\0", proto=0x0800) / p) for p, ue in flow]
    else:
        frames = [bytes(p) for p, _ue in flow]
    src, out = tmp_path / "in.pcap", tmp_path / "n3.pcap"
    stamps = write_pcap(src, frames, linktype, nano=False)
    res = tunnel(src, out)  # the default QFI
    assert res.returncode == 0, res.stderr
    assert summary(res)[:5] == (6, 4, 2, 6, 1)
    ours = [(ts, walk_n3(fr)) for ts, _lt, fr in read_packets(out)]
    assert [n["inner"] for _ts, n in ours] == [bytes(p) for p, _ue in flow]
    assert [ts for ts, _n in ours] == stamps
    assert [n["pdu_type"] for _ts, n in ours] == [1, 0, 1, 1, 0, 1]
    assert {n["qfi"] for _ts, n in ours} == {9}
    rows = tshark_rows(out)
    assert [r["gtp.ext_hdr.pdu_ses_con.pdu_type"] for r in rows] == [["1"], ["0"], ["1"], ["1"], ["0"], ["1"]]
    assert [epoch_ns(r["frame.time_epoch"][0]) for r in rows] == stamps
    assert [r["http.host"] for r in rows if r["http.host"]] == [["a.example"]]


def test_a_packet_too_big_for_one_outer_datagram_is_left_out(tmp_path: Path) -> None:
    big = IP(src=A, dst=WEB) / UDP(sport=40001, dport=9) / Raw(b"\0" * 65480)  # 65508 bytes: + 44 > 65535
    small = IP(src=A, dst=WEB) / UDP(sport=40001, dport=9) / Raw(b"x")
    src, out = tmp_path / "in.pcap", tmp_path / "n3.pcap"
    write_pcap(src, [bytes(big), bytes(small)], LINKTYPE_RAW)
    res = tunnel(src, out)
    assert res.returncode == 0, res.stderr
    assert summary(res) == (1, 1, 0, 2, 1, "{'dropped.too_big': 1}")
    assert [walk_n3(fr)["inner"] for _ts, _lt, fr in read_packets(out)] == [bytes(small)]


def test_not_a_capture_is_one_line_and_exit_2(tmp_path: Path) -> None:
    src, out = tmp_path / "notes.pcap", tmp_path / "n3.pcap"
    src.write_text("these are notes, not packets\n")
    assert "not a pcap or pcapng file" in one_line_error(tunnel(src, out))
    assert not out.exists(), "no half-written output is left behind"
    assert "absent.pcap" in one_line_error(tunnel(tmp_path / "absent.pcap", out))
    assert not out.exists()


def test_the_output_never_overwrites_the_input(tmp_path: Path) -> None:
    src = tmp_path / "in.pcap"
    write_pcap(src, [bytes(p) for p, _ue in dns()], LINKTYPE_RAW)
    before = src.read_bytes()
    one_line_error(tunnel(src, tmp_path / "." / "in.pcap"))
    assert src.read_bytes() == before


@pytest.mark.parametrize("qfi", ["64", "-1"])
def test_qfi_out_of_range_is_refused(tmp_path: Path, qfi: str) -> None:
    src, out = tmp_path / "in.pcap", tmp_path / "n3.pcap"
    write_pcap(src, [bytes(p) for p, _ue in dns()], LINKTYPE_RAW)
    assert "QFI" in one_line_error(tunnel(src, out, f"--qfi={qfi}"))
    assert not out.exists()


def test_qfi_63_is_the_largest(tmp_path: Path) -> None:
    src, out = tmp_path / "in.pcap", tmp_path / "n3.pcap"
    write_pcap(src, [bytes(p) for p, _ue in dns()], LINKTYPE_RAW)
    assert tunnel(src, out, "--qfi", "63").returncode == 0
    assert [r["gtp.ext_hdr.pdu_ses_con.qos_flow_id"] for r in tshark_rows(out)] == [["63"], ["63"]]


@pytest.mark.parametrize(("name", "offset"), [("free5gc-registration.pcap", 16),  # pcapng, Linux cooked
                                              ("pfcp-scapy.pcap", 0)])           # pcapng, raw IP
def test_real_captures(captures: Path, tmp_path: Path, name: str, offset: int) -> None:
    """Real pcapng captures (a 5G core's N2/N4/N3 traffic, as any capture may be): every IP frame
    tshark finds is tunnelled once, with its bytes and its time."""
    src, out = captures / name, tmp_path / "n3.pcap"
    res = tunnel(src, out)
    assert res.returncode == 0, res.stderr
    ip_rows = fields(src, ["frame.number", "frame.time_epoch"], "ip || ipv6")
    got = list(read_packets(out))
    assert summary(res)[0] == len(ip_rows) == len(got)
    assert [ts for ts, _lt, _fr in got] == [epoch_ns(r["frame.time_epoch"][0]) for r in ip_rows]
    wanted = {int(r["frame.number"][0]) for r in ip_rows}
    originals = [fr for i, (_ts, _lt, fr) in enumerate(read_packets(src), 1) if i in wanted]
    assert [walk_n3(fr)["inner"] for _ts, _lt, fr in got] == [ip_packet(fr, offset) for fr in originals]
    rows = fields(out, ["gtp.teid", "gtp.ext_hdr.pdu_ses_con.qos_flow_id"])
    assert len(rows) == len(got)
    assert all(len(r["gtp.teid"]) >= 1 and r["gtp.ext_hdr.pdu_ses_con.qos_flow_id"][:1] == ["9"] for r in rows)
