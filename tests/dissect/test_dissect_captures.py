"""The dissectors on the shared synthetic N3 capture, against its truth file.

A small test-only decoder (outer IP/UDP with scapy, the GTP-U header by hand, inner IP
with scapy, naive TCP reassembly by sequence number) feeds each uplink stream and
datagram to the dissector its port names; the events must be exactly the truth's.
"""

from __future__ import annotations

import json
import struct
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from dissect_testlib import tshark_fields
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from upf_tap.dissect import Malformed, coap, dns, http, icmp, mqtt, quic, tls

STREAM_BY_PORT = {80: http, 8080: http, 443: tls, 1883: mqtt, 53: dns}
TRUTH_FIELDS = {
    "http.request": ("method", "host", "path"),
    "dns.query": ("qname", "qtype"),
    "tls.client_hello": ("sni",),
    "mqtt.publish": ("topic",),
}


def _gtpu_inner(payload: bytes) -> bytes | None:
    if len(payload) < 8 or payload[1] != 255:  # G-PDU only
        return None
    flags = payload[0]
    p = 8
    if flags & 0x07:
        p = 12
        nxt = payload[11]
        while nxt and flags & 0x04:
            ln = payload[p] * 4
            nxt = payload[p + ln - 1]
            p += ln
    return payload[p:]


def _inner_packets(pcap: Path):
    for pkt in rdpcap(str(pcap)):
        if UDP not in pkt:
            continue
        outer = bytes(pkt[UDP].payload)
        # GTPv1-U on any port: version 1, PT 1, G-PDU, length consistent
        if len(outer) < 8 or outer[0] & 0xF0 != 0x30 or struct.unpack_from("!H", outer, 2)[0] + 8 != len(outer):
            continue
        inner = _gtpu_inner(outer)
        if not inner:
            continue
        yield IPv6(inner) if inner[0] >> 4 == 6 else IP(inner)


def _events(pcap: Path) -> Counter:
    segs: dict[tuple, dict[int, bytes]] = defaultdict(dict)
    isn: dict[tuple, int] = {}
    found: list[tuple[str, str, dict]] = []
    for ip in _inner_packets(pcap):
        src = ip.src
        if TCP in ip:
            t = ip[TCP]
            if t.dport not in STREAM_BY_PORT:
                continue
            key = (src, t.sport, ip.dst, t.dport)
            if t.flags.S:
                isn[key] = t.seq + 1
            data = bytes(t.payload)
            if data:
                segs[key].setdefault(t.seq, data)
        elif UDP in ip and ip[UDP].dport == 53:
            found += [(k, src, a) for k, a in dns.dissect_datagram(bytes(ip[UDP].payload))]
    for key, by_seq in segs.items():
        start = isn.get(key, min(by_seq))
        buf = bytearray()
        for seq in sorted(by_seq):
            off = seq - start
            chunk = by_seq[seq]
            if off <= len(buf) < off + len(chunk):
                buf += chunk[len(buf) - off :]
        module = STREAM_BY_PORT[key[3]]
        evs, _, _ = module.dissect_stream(bytes(buf), 0)
        found += [(k, key[0], a) for k, a in evs]
    return Counter(
        (k, src, tuple(a[f] for f in TRUTH_FIELDS[k])) for k, src, a in found if k in TRUTH_FIELDS
    )


def test_synthetic_n3_matches_truth(captures: Path) -> None:
    truth = Counter()
    for line in (captures / "synthetic-n3.truth.jsonl").read_text().splitlines():
        t = json.loads(line)
        truth[(t["kind"], t["ue_ip"], tuple(t[f] for f in TRUTH_FIELDS[t["kind"]]))] += 1
    got = _events(captures / "synthetic-n3.pcap")
    assert got == truth


def test_gtpu_header_walk() -> None:
    # G-PDU with the sequence flag and one PDU Session Container extension header
    hdr = struct.pack("!BBHI", 0x36, 255, 0, 1) + b"\x00\x00\x00\x85" + b"\x01\x00\x01\x00"
    assert _gtpu_inner(hdr + b"\x45inner") == b"\x45inner"


def _streams(pcap: Path) -> dict[tuple, bytes]:
    """Every inner TCP direction of a capture, reassembled naively."""
    segs: dict[tuple, dict[int, bytes]] = defaultdict(dict)
    for ip in _inner_packets(pcap):
        if TCP in ip and bytes(ip[TCP].payload):
            t = ip[TCP]
            segs[(ip.src, t.sport, ip.dst, t.dport)].setdefault(t.seq, bytes(t.payload))
    out = {}
    for key, by_seq in segs.items():
        start, buf = min(by_seq), bytearray()
        for seq in sorted(by_seq):
            off, chunk = seq - start, by_seq[seq]
            if off <= len(buf) < off + len(chunk):
                buf += chunk[len(buf) - off :]
        out[key] = bytes(buf)
    return out


GTPU_CAPTURES = ["gtp-other-port.pcap", "gtp-flags-0x32.pcap", "gtp-mixed.pcap", "gtp-ipv6.pcap",
                 "gtp-u-icmp.pcap", "gtp-short-payload.pcap", "n3-example.pcap", "n3-example-2.pcap",
                 "oai-5greplay.pcap", "free5gc-registration.pcap", "synthetic-n3.pcap"]


@pytest.mark.parametrize("name", GTPU_CAPTURES)
def test_real_payloads_only_ever_malformed(captures: Path, name: str) -> None:
    """Every dissector on every inner payload of a real capture: events or Malformed."""
    for buf in _streams(captures / name).values():
        for module in (http, tls, mqtt, dns):
            try:
                module.dissect_stream(buf, 0)
            except Malformed:
                pass
    for ip in _inner_packets(captures / name):
        if UDP in ip:
            data = bytes(ip[UDP].payload)
            for fn in (dns.dissect_datagram, coap.dissect_datagram, quic.dissect_datagram):
                try:
                    fn(data)
                except Malformed:
                    pass
        if ICMP in ip:
            icmp.dissect_icmp(bytes(ip[ICMP]), False)


@pytest.mark.parametrize("name", ["gtp-other-port.pcap", "gtp-flags-0x32.pcap"])
def test_real_http_and_tls_match_tshark(captures: Path, name: str) -> None:
    rows = tshark_fields(captures / name, ["http.request.method", "http.host", "http.request.uri",
                                           "tls.handshake.type", "tls.handshake.extensions_server_name"])
    want_http = Counter((m, h, u) for m, h, u, _, _ in rows if m)
    want_tls = Counter(s for _, _, _, t, s in rows if t.split(",")[0] == "1" and s)
    assert want_http or any(t.split(",")[0] == "1" for _, _, _, t, _ in rows)  # not vacuous
    got_http: Counter = Counter()
    got_tls: Counter = Counter()
    hellos = 0
    for (_, _, _, dport), buf in _streams(captures / name).items():
        if dport in (80, 8080):
            for _, a in http.dissect_stream(buf, 0)[0]:
                got_http[(a["method"], a["host"], a["path"])] += 1
        if tls.looks_like(buf):
            found, pos, _ = tls.dissect_stream(buf, 0)
            hellos += pos > 0  # a whole ClientHello read (with an SNI or not)
            got_tls.update(a["sni"] for _, a in found)
    assert got_http == want_http
    assert got_tls == want_tls
    if name == "gtp-flags-0x32.pcap":
        assert hellos == 1 and not got_tls  # its one ClientHello carries no SNI, as tshark shows
