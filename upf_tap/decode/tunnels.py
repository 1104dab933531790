"""Tunnels inside the user's packet: where the packet they carry starts.

A UE (or a capture replayed through one) may carry GRE (RFC 2784/2890; PPTP's enhanced GRE,
RFC 2637; ERSPAN types I-III; Aruba's 802.11-in-GRE; GRE in UDP, RFC 8086), VXLAN (RFC 7348),
Geneve (RFC 8926) or IP in IP; tshark decodes them all, and the tap reads the packet inside as the user's own.
Each function takes ``data[off:end]`` and returns ``(IP version, offset of the inner IP
header)`` or ``(0, drop reason)``, like ``decode.link.ip_offset``.
"""

from __future__ import annotations

import struct

from upf_tap.decode.link import LINKTYPE_ETHERNET, ip_offset

GRE_IPV4 = 0x0800
GRE_IPV6 = 0x86DD
GRE_ETHERNET = 0x6558      # transparent Ethernet bridging
GRE_ERSPAN_2 = 0x88BE      # ERSPAN type I (no sequence number) and II
GRE_ERSPAN_3 = 0x22EB
GRE_PPP = 0x880B           # PPTP
GRE_ARUBA = frozenset({0x8200, 0x8210})  # Aruba access points: 802.11 frames
PPP_IPV4 = 0x0021
PPP_IPV6 = 0x0057
LLC_SNAP = b"\xaa\xaa\x03\x00\x00\x00"

_u16 = struct.Struct("!H").unpack_from
Inner = tuple[int, int | str]


def _ethernet(data: bytes, off: int, end: int) -> Inner:
    version, where = ip_offset(LINKTYPE_ETHERNET, data[off:end])
    return (version, off + where) if not isinstance(where, str) else (0, where)


def _ethertype(kind: int, off: int, other: str = "gre.other_protocol") -> Inner:
    """The IP packet at ``off`` of an EtherType-numbered payload, or ``other`` for anything else."""
    if kind == GRE_IPV4:
        return 4, off
    if kind == GRE_IPV6:
        return 6, off
    return 0, other


def gre(data: bytes, off: int, end: int) -> Inner:
    """The packet a GRE header at ``off`` carries."""
    if end - off < 4:
        return 0, "gre.truncated"
    flags, kind = _u16(data, off)[0], _u16(data, off + 2)[0]
    version = flags & 0x7
    p = off + 4
    if version == 0:
        if flags & 0x4000:
            return 0, "gre.routing"  # source routing (RFC 1701), deprecated: not decoded
        p += 4 * (bool(flags & 0x8000) + bool(flags & 0x2000) + bool(flags & 0x1000))
    elif version == 1:  # enhanced GRE: payload length + call id always, then sequence and ack numbers
        p += 4 + 4 * bool(flags & 0x1000) + 4 * bool(flags & 0x0080)
    else:
        return 0, "gre.bad_version"
    if p >= end:
        return 0, "gre.truncated"
    if kind in (GRE_IPV4, GRE_IPV6):
        return _ethertype(kind, p)
    if kind == GRE_ETHERNET:
        return _ethernet(data, p, end)
    if kind == GRE_ERSPAN_2:
        return _ethernet(data, p + (8 if flags & 0x1000 else 0), end)  # type I has no header
    if kind == GRE_ERSPAN_3:
        if p + 12 > end:
            return 0, "gre.truncated"
        return _ethernet(data, p + 12 + (8 if data[p + 11] & 0x01 else 0), end)  # O: platform subheader
    if kind == GRE_PPP:
        return ppp(data, p, end)
    if kind in GRE_ARUBA:
        return wlan(data, p, end)
    return 0, "gre.other_protocol"


def ppp(data: bytes, off: int, end: int) -> Inner:
    """A PPP frame (RFC 1661; address/control and protocol field compression as RFC 1662 allows)."""
    p = off
    if data[p : p + 2] == b"\xff\x03":
        p += 2
    if p >= end:
        return 0, "ppp.truncated"
    if data[p] & 1:  # a compressed, one-byte protocol
        proto, p = data[p], p + 1
    elif p + 2 <= end:
        proto, p = _u16(data, p)[0], p + 2
    else:
        return 0, "ppp.truncated"
    if proto == PPP_IPV4:
        return 4, p
    if proto == PPP_IPV6:
        return 6, p
    return 0, "ppp.not_ip"


def wlan(data: bytes, off: int, end: int) -> Inner:
    """An 802.11 data frame with LLC/SNAP (as Aruba's access points tunnel them)."""
    if end - off < 24:
        return 0, "wlan.truncated"
    fc0, fc1 = data[off], data[off + 1]
    if (fc0 >> 2) & 3 != 2:
        return 0, "wlan.not_data"
    if fc1 & 0x40:
        return 0, "wlan.protected"  # encrypted (CCMP): nothing to read
    p = off + 24 + (6 if fc1 & 0x03 == 0x03 else 0) + (2 if fc0 & 0x80 else 0)  # 4th address, QoS control
    if data[p : p + 6] != LLC_SNAP or p + 8 > end:
        return 0, "wlan.not_snap"
    return _ethertype(_u16(data, p + 6)[0], p + 8, "wlan.not_ip")


def geneve(data: bytes, off: int, end: int) -> Inner:
    """Geneve (RFC 8926): 8 bytes and the options, then an Ethernet frame or an IP packet."""
    if end - off < 8 or data[off] >> 6:
        return 0, "geneve.not_decoded"
    p = off + 8 + (data[off] & 0x3F) * 4
    kind = _u16(data, off + 2)[0]
    if kind == GRE_ETHERNET:
        return _ethernet(data, p, end)
    return _ethertype(kind, p, "geneve.other_protocol")


def vxlan(data: bytes, off: int, end: int) -> Inner:
    """VXLAN (RFC 7348): an 8-byte header with the I flag, then an Ethernet frame."""
    if end - off < 8 + 14 or not data[off] & 0x08:
        return 0, "vxlan.not_decoded"
    return _ethernet(data, off + 8, end)
