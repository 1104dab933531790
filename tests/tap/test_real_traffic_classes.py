"""The classes of miss found by scoring the tap against tshark on real captures (tests/corpus),
each rebuilt here small, with tshark as the oracle: DNS on mDNS/LLMNR ports and on ports of
other protocols (DNSCrypt on UDP 443), but not NetBIOS names; TLS after STARTTLS and after
an HTTP CONNECT, HTTP after a SOCKS greeting; tunnels inside the user's packet (IPv6 in
IPv4, IPv4 in IPv6, VXLAN); QUIC Initials of draft and version-negotiation versions."""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from tests.dissect.dissect_testlib import client_hello, crypto_frame, protect_initial
from tests.tap import gen
from tests.tap.test_edge_cases import assert_matches_tshark, decode

UE, UE6 = "10.45.0.7", "2001:db8:cafe::7"


def record(hs: bytes) -> bytes:
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def udp(teid: int, sport: int, dport: int, payload: bytes, dst: str = gen.APP) -> object:
    return gen.n3(teid, IP(src=UE, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload))


def keys(events: list[dict]) -> list[tuple]:
    return [(e["kind"], e["app"].get("qname") or e["app"].get("sni") or e["app"].get("path")) for e in events]


def test_dns_on_mdns_llmnr_and_other_ports(tmp_path: Path) -> None:
    pkts = [udp(1, 5353, 5353, gen.dns_query("_airplay._tcp.local", 12), "224.0.0.251"),
            udp(1, 50000, 5355, gen.dns_query("printer", 255), "224.0.0.252"),
            udp(1, 50001, 443, gen.dns_query("2.dnscrypt-cert.example", 16)),  # DNSCrypt's certificate query
            udp(1, 50002, 5333, gen.dns_query("odd-port.example", 1)),
            # NetBIOS name queries are DNS-shaped, but port 137 is NBNS to tshark: no DNS event
            udp(1, 137, 137, gen.dns_query("EJFDEBFEEBFACACACACACACACACACAAA", 32))]
    path = gen.write(tmp_path / "dns-ports.pcap", pkts)
    events, _ = decode(path)
    assert keys(events) == [("dns.query", "_airplay._tcp.local"), ("dns.query", "printer"),
                            ("dns.query", "2.dnscrypt-cert.example"), ("dns.query", "odd-port.example")]
    assert_matches_tshark(path, events)


def conversation(port: int, dport: int, turns: list[tuple[bool, bytes]], teid: int) -> list:
    """A TCP connection from the UE: handshake, then each (from the UE?, bytes) in turn, acknowledged."""
    isn, isn_s = 1000, 5000
    up = lambda flags, seq, ack, data=b"": gen.n3(teid, IP(src=UE, dst=gen.APP) / TCP(  # noqa: E731
        sport=port, dport=dport, flags=flags, seq=seq, ack=ack) / Raw(data))
    down = lambda flags, seq, ack, data=b"": gen.n3(teid + 0x10000, IP(src=gen.APP, dst=UE) / TCP(  # noqa: E731
        sport=dport, dport=port, flags=flags, seq=seq, ack=ack) / Raw(data), ul=False)
    out = [up("S", isn, 0), down("SA", isn_s, isn + 1), up("A", isn + 1, isn_s + 1)]
    c, sv = isn + 1, isn_s + 1
    for from_ue, data in turns:
        if from_ue:
            out += [up("PA", c, sv, data), down("A", sv, c + len(data))]
            c += len(data)
        else:
            out += [down("PA", sv, c, data), up("A", c, sv + len(data))]
            sv += len(data)
    return out


def test_tls_after_starttls_and_connect_http_after_socks(tmp_path: Path) -> None:
    """Each as a real client and server talk (tshark, like the servers, switches on the reply)."""
    smtp = [(False, b"220 mx.example ESMTP\r\n"), (True, b"EHLO ue.example\r\n"),
            (False, b"250-mx.example\r\n250 STARTTLS\r\n"), (True, b"STARTTLS\r\n"),
            (False, b"220 2.0.0 Ready to start TLS\r\n"), (True, record(client_hello("mail.example")))]
    connect = [(True, b"CONNECT apache.example:443 HTTP/1.1\r\nHost: apache.example:443\r\n\r\n"),
               (False, b"HTTP/1.1 200 Connection established\r\n\r\n"),
               (True, record(client_hello("apache.example")))]
    socks = [(True, b"\x05\x01\x00"), (False, b"\x05\x00"),
             (True, b"\x05\x01\x00\x03\x0bexample.com\x00\x50"),
             (False, b"\x05\x00\x00\x01\x0a\x00\x00\x01\x00\x50"),
             (True, gen.http_get("example.com", "/via-socks"))]
    path = gen.write(tmp_path / "resniff.pcap", conversation(41000, 25, smtp, 2) + conversation(41001, 3128, connect, 3)
                     + conversation(41002, 1080, socks, 4))
    events, _ = decode(path)
    assert keys(events) == [("tls.client_hello", "mail.example"), ("http.request", "apache.example:443"),
                            ("tls.client_hello", "apache.example"), ("http.request", "/via-socks")]
    assert_matches_tshark(path, events)


def test_tunnels_inside_the_user_packet(tmp_path: Path) -> None:
    q = gen.dns_query("inner.example", 28)
    hello = record(client_hello("vxlan.example"))
    pkts = [gen.n3(5, IP(src=UE, dst="192.0.2.1") / IPv6(src=UE6, dst="2001:db8:200::53") / UDP(sport=5000, dport=53)
                   / Raw(q)),                                                                  # 6in4
            gen.n3(5, IPv6(src=UE6, dst="2001:db8:200::1") / IP(src=UE, dst=gen.APP) / UDP(sport=5001, dport=53)
                   / Raw(gen.dns_query("four-in-six.example"))),                               # 4in6
            *[gen.n3(5, IP(src=UE, dst="192.0.2.2") / UDP(sport=40000, dport=4789) / VXLAN(vni=7)
                     / Ether() / p) for p in (
                IP(src="172.16.0.2", dst="172.16.0.9") / TCP(sport=40001, dport=443, flags="S", seq=1),
                IP(src="172.16.0.2", dst="172.16.0.9") / TCP(sport=40001, dport=443, flags="PA", seq=2) / Raw(hello))]]
    path = gen.write(tmp_path / "nested.pcap", pkts)
    events, stats = decode(path)
    assert keys(events) == [("dns.query", "inner.example"), ("dns.query", "four-in-six.example"),
                            ("tls.client_hello", "vxlan.example")]
    assert stats["inner.nested"] == 4
    # the UE of the outermost user packet (the PDU session's address), uplink
    assert [(e["ue"]["ip"], e["direction"]) for e in events] == [(UE, "ul"), (UE6, "ul"), (UE, "ul")]
    assert_matches_tshark(path, events)


def test_quic_draft_and_version_negotiation_versions(tmp_path: Path) -> None:
    pkts = [udp(6, 50010 + i, port, protect_initial(bytes([i + 1]) * 8, crypto_frame(0, client_hello(f"v{i}.example")),
                                                   version=version))
            for i, (version, port) in enumerate([(0xFF00001D, 443), (0xFF000018, 443), (0x0A0A0A0A, 4433),
                                                 (0xFACEB002, 443), (0x00000001, 784)])]
    path = gen.write(tmp_path / "quic-versions.pcap", pkts)
    events, _ = decode(path)
    assert sorted(keys(events)) == [("quic.initial", f"v{i}.example") for i in range(5)]
    assert_matches_tshark(path, events)


def test_data_in_a_syn(tmp_path: Path) -> None:
    """TCP Fast Open (RFC 7413): the request rides in the SYN; tshark reads it there, so does the tap."""
    req = gen.http_get("tfo.example", "/in-the-syn")
    pkts = [gen.n3(7, IP(src=UE, dst=gen.APP) / TCP(sport=42000, dport=80, flags="S", seq=100) / Raw(req)),
            gen.n3(0x10007, IP(src=gen.APP, dst=UE) / TCP(sport=80, dport=42000, flags="SA", seq=500,
                                                           ack=101 + len(req)), ul=False),
            gen.n3(7, IP(src=UE, dst=gen.APP) / TCP(sport=42000, dport=80, flags="A", seq=101 + len(req), ack=501))]
    path = gen.write(tmp_path / "tfo.pcap", pkts)
    events, _ = decode(path)
    assert keys(events) == [("http.request", "/in-the-syn")]
    assert_matches_tshark(path, events)
