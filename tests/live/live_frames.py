"""Hand-built test frames (struct, no scapy: exact bytes, fast)."""

from __future__ import annotations

import socket
import struct

from tests.support import frames
from tests.support.frames import csum

DST_MAC = bytes.fromhex("020000000002")
SRC_MAC = bytes.fromhex("020000000001")




def ipv4(src: str, dst: str, proto: int, payload: bytes, *, frag: int = 0, ident: int = 1,
         options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), ident, frag, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst)) + options
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64, socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, payload: bytes = b"", flags: int = 0x18, seq: int = 1) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, flags, 65535, 0, 0) + payload


def eth(payload: bytes, ethertype: int = 0x0800) -> bytes:
    return DST_MAC + SRC_MAC + struct.pack("!H", ethertype) + payload


def gtpu(teid: int, inner: bytes, qfi: int | None = None, ul: bool = True) -> bytes:
    """G-PDU, with a PDU Session Container when ``qfi`` is given."""
    return frames.gtpu(teid, inner, qfi=qfi, ul=ul)


def dns_query(qname: str, ident: int = 0x1234) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in qname.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)
