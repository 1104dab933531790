"""Test-only capture reading: pull the outer UDP/SCTP payloads out of a pcap/pcapng.

scapy's raw readers give the frame bytes and the timestamp; the link and IP headers
are peeled here with a few struct calls (scapy's full dissection is ~1.5k packets/s,
too slow to run on every test). This is test code: the runtime tap has its own reader.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scapy.utils import RawPcapReader

from upf_tap.capture.common import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_RAW,
)


@dataclass(frozen=True)
class Outer:
    """One outer IP packet: addresses, protocol and the L4 bytes (header included for SCTP)."""

    frame: int          # 1-based frame number, as tshark counts
    ts_ns: int
    src: str
    dst: str
    proto: int
    l4: bytes           # the whole L4 segment (UDP header + payload, or the SCTP packet)

    @property
    def sport(self) -> int:
        return struct.unpack_from("!H", self.l4, 0)[0]

    @property
    def dport(self) -> int:
        return struct.unpack_from("!H", self.l4, 2)[0]

    @property
    def udp_payload(self) -> bytes:
        return self.l4[8:]


def _ts_ns(meta: object) -> int:
    if hasattr(meta, "tshigh"):
        ticks = (meta.tshigh << 32) | meta.tslow
        return ticks * 1_000_000_000 // meta.tsresol
    return meta.sec * 1_000_000_000 + meta.usec * 1000


def _ip_offset(linktype: int, frame: bytes) -> int | None:
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return 0
    if linktype == LINKTYPE_LINUX_SLL:
        etype, off = struct.unpack_from("!H", frame, 14)[0], 16
    elif linktype == LINKTYPE_ETHERNET:
        etype, off = struct.unpack_from("!H", frame, 12)[0], 14
        while etype in (0x8100, 0x88A8):
            etype, off = struct.unpack_from("!H", frame, off + 2)[0], off + 4
    else:
        return None
    return off if etype in (0x0800, 0x86DD) else None


def read_outer(path: str | Path) -> Iterator[Outer]:
    """Every unfragmented IPv4/IPv6 packet of the capture, in capture order."""
    reader = RawPcapReader(str(path))
    linktype = getattr(reader, "linktype", None)
    try:
        for n, (frame, meta) in enumerate(reader, start=1):
            lt = getattr(meta, "linktype", None) or linktype
            off = _ip_offset(lt, frame)
            if off is None or len(frame) < off + 20:
                continue
            ver = frame[off] >> 4
            if ver == 4:
                ihl = (frame[off] & 0x0F) * 4
                total, frag = struct.unpack_from("!H2xH", frame, off + 2)
                if frag & 0x3FFF:      # fragments: control traffic here never needs them
                    continue
                proto = frame[off + 9]
                src = socket.inet_ntop(socket.AF_INET, frame[off + 12:off + 16])
                dst = socket.inet_ntop(socket.AF_INET, frame[off + 16:off + 20])
                l4 = frame[off + ihl:off + total]
            elif ver == 6:
                plen = struct.unpack_from("!H", frame, off + 4)[0]
                proto = frame[off + 6]
                src = socket.inet_ntop(socket.AF_INET6, frame[off + 8:off + 24])
                dst = socket.inet_ntop(socket.AF_INET6, frame[off + 24:off + 40])
                l4 = frame[off + 40:off + 40 + plen]
            else:
                continue
            yield Outer(n, _ts_ns(meta), src, dst, proto, bytes(l4))
    finally:
        reader.close()
