"""Link layers: find where the IP packet starts in a captured frame.

Plain functions, no objects: ``ip_offset(linktype, frame)`` returns ``(version, offset)``
where version is 4 or 6, or ``(0, reason)`` when the frame does not carry IP.
"""

from __future__ import annotations

import struct

# the link types frames are tagged with: defined once, where capture sources tag them
from upf_tap.capture.common import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_QINQ_OLD = 0x9100
_VLAN_TYPES = frozenset({ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ_OLD})

_u16 = struct.Struct("!H").unpack_from
_u32le = struct.Struct("<I").unpack_from
_u32be = struct.Struct(">I").unpack_from

SUPPORTED_LINKTYPES = frozenset(
    {LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
     LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2}
)


def _by_ethertype(ethertype: int, off: int) -> tuple[int, int | str]:
    if ethertype == ETH_P_IP:
        return 4, off
    if ethertype == ETH_P_IPV6:
        return 6, off
    return 0, "link.not_ip"


def ip_offset(linktype: int, frame: bytes) -> tuple[int, int | str]:
    """(IP version, offset of the IP header) or (0, drop reason)."""
    n = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return 0, "link.truncated"
        ethertype = _u16(frame, 12)[0]
        off = 14
        # 802.1Q / QinQ: any number of stacked tags
        while ethertype in _VLAN_TYPES:
            if n < off + 4:
                return 0, "link.truncated"
            ethertype = _u16(frame, off + 2)[0]
            off += 4
        return _by_ethertype(ethertype, off)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if n < 1:
            return 0, "link.truncated"
        v = frame[0] >> 4
        return (v, 0) if v in (4, 6) else (0, "link.not_ip")
    if linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            return 0, "link.truncated"
        return _by_ethertype(_u16(frame, 14)[0], 16)
    if linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            return 0, "link.truncated"
        return _by_ethertype(_u16(frame, 0)[0], 20)
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < 4:
            return 0, "link.truncated"
        # the address family is in host byte order of the capturing machine; LOOP is big-endian
        fam = _u32be(frame, 0)[0] if linktype == LINKTYPE_LOOP else _u32le(frame, 0)[0]
        if fam > 0xFFFF:
            fam = _u32be(frame, 0)[0]
        if fam == 2:
            return 4, 4
        if fam in (10, 24, 28, 30):  # AF_INET6 differs between Linux and the BSDs
            return 6, 4
        return 0, "link.not_ip"
    return 0, "link.unsupported"
