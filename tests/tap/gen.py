"""Generated N3/N6 captures for edge cases, built with scapy (test-only)."""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import PcapWriter

from tests.support import frames

GNB, UPF = "192.168.100.10", "192.168.100.20"
APP, APP6 = "10.200.0.10", "2001:db8:200::10"
T0 = 1_700_000_000.0


gtpu = frames.gtpu      # a GTP-U header with a PDU Session Container (tests/support/frames.py)


def n3(teid: int, inner: Packet | bytes, *, ul: bool = True, **kw) -> Packet:
    raw = bytes(inner)
    src, dst = (GNB, UPF) if ul else (UPF, GNB)
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst) / \
        UDP(sport=2152, dport=2152) / Raw(gtpu(teid, raw, ul=ul, **kw))


def write(path: Path, packets: list[Packet], linktype: int | None = None) -> Path:
    w = PcapWriter(str(path), sync=True, linktype=linktype) if linktype is not None else PcapWriter(str(path), sync=True)
    for i, p in enumerate(packets):
        p.time = T0 + i * 0.001
        w.write(p)
    w.close()
    return path


def http_get(host: str, path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gen/1.0\r\n{extra}\r\n".encode()


def tcp_session(ue: str, dst: str, sport: int, dport: int, segments: list[tuple[int, bytes]],
                teid: int, v6: bool = False, handshake: bool = True, **kw) -> list[Packet]:
    """SYN, SYN/ACK, ACK, then data segments given as (relative seq, bytes) in the order to send."""
    L3 = IPv6 if v6 else IP
    out: list[Packet] = []
    isn, isn_s = 1000, 5000
    if handshake:
        out.append(n3(teid, L3(src=ue, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=isn), **kw))
        out.append(n3(teid + 0x10000, L3(src=dst, dst=ue) / TCP(sport=dport, dport=sport, flags="SA", seq=isn_s,
                                                              ack=isn + 1), ul=False))
        out.append(n3(teid, L3(src=ue, dst=dst) / TCP(sport=sport, dport=dport, flags="A", seq=isn + 1,
                                                    ack=isn_s + 1), **kw))
    for rel, data in segments:
        out.append(n3(teid, L3(src=ue, dst=dst) / TCP(sport=sport, dport=dport, flags="PA", seq=isn + 1 + rel,
                                                    ack=isn_s + 1) / Raw(data), **kw))
    return out


def split(data: bytes, sizes: list[int]) -> list[tuple[int, bytes]]:
    out, off = [], 0
    for n in sizes:
        out.append((off, data[off:off + n]))
        off += n
    if off < len(data):
        out.append((off, data[off:]))
    return out


def dns_query(name: str, qtype: int = 1, qid: int = 7) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def outer_fragments(pkt: Packet, size: int) -> list[Packet]:
    """Fragment the outer IPv4 packet of an Ethernet frame."""
    eth = pkt[Ether]
    frags = fragment(eth[IP], fragsize=size)
    return [Ether(src=eth.src, dst=eth.dst) / f for f in frags]


def inner_v6_fragments(ue: str, dst: str, payload: Packet, size: int, teid: int) -> list[Packet]:
    from scapy.layers.inet6 import fragment6

    whole = IPv6(src=ue, dst=dst) / IPv6ExtHdrFragment(id=77) / payload
    return [n3(teid, f) for f in fragment6(whole, size)]


__all__ = [
    "APP",
    "APP6",
    "ICMP",
    "IP",
    "TCP",
    "UDP",
    "CookedLinux",
    "Dot1AD",
    "Dot1Q",
    "IPv6",
    "dns_query",
    "gtpu",
    "http_get",
    "inner_v6_fragments",
    "n3",
    "outer_fragments",
    "split",
    "tcp_session",
    "write",
]
