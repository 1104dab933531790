"""ICMP echo request dissector (datagram): identifier and sequence number.

The same layout serves ICMPv4 (type 8, RFC 792) and ICMPv6 (type 128, RFC 4443 §4.1);
the caller says which, from the IP header it has already decoded.
"""

from __future__ import annotations

import struct

from upf_tap.constants import IPPROTO_ICMP, IPPROTO_ICMPV6
from upf_tap.dissect import Found, Malformed

KIND = "icmp.echo_request"

# registration (upf_tap.dissect): the payload of these IP protocols, through dissect_ip()
IP_PROTOS = frozenset({IPPROTO_ICMP, IPPROTO_ICMPV6})

ECHO_REQUEST_V4 = 8
ECHO_REQUEST_V6 = 128
_echo = struct.Struct("!BBHHH").unpack_from


def dissect_icmp(data: bytes, v6: bool) -> Found:
    """``icmp.echo_request`` with ``id`` and ``seq`` for an echo request; ``[]`` otherwise."""
    if len(data) < 4:
        raise Malformed("icmp: shorter than the ICMP header")
    want = ECHO_REQUEST_V6 if v6 else ECHO_REQUEST_V4
    if data[0] != want or data[1] != 0:
        return []
    if len(data) < 8:
        raise Malformed("icmp: echo request without identifier and sequence")
    _, _, _, ident, seq = _echo(data, 0)
    return [(KIND, {"id": ident, "seq": seq})]


def dissect_datagram(data: bytes) -> Found:
    """ICMPv4 in the common datagram shape (use :func:`dissect_icmp` for ICMPv6)."""
    return dissect_icmp(data, False)


def dissect_datagram_v6(data: bytes) -> Found:
    return dissect_icmp(data, True)


def dissect_ip(proto: int, data: bytes) -> Found:
    """The tap's entry (see upf_tap.dissect): ICMPv4 or ICMPv6 by the IP protocol number."""
    return dissect_icmp(data, proto == IPPROTO_ICMPV6)
