"""PFCP (TS 29.244) decoding: header, TLV IEs, grouped IEs, and the IEs the tap needs.

Plain functions over bytes with struct.unpack_from. A message is decoded into a
``PfcpMessage`` (header + the flat list of top-level IEs as (type, start, end) spans
into the buffer); ``session_facts`` then walks the grouped IEs (Create PDR/PDI,
Create FAR/Forwarding Parameters, Create QER, Created PDR, Update PDR/FAR/QER,
Remove PDR/FAR) and returns what identifies the UE's session. Anything truncated or
inconsistent raises ``PfcpError``; the caller counts it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Any

# message types (TS 29.244 §7.2.2 table 7.3-1)
HEARTBEAT_REQ, HEARTBEAT_RESP = 1, 2
ASSOC_SETUP_REQ, ASSOC_SETUP_RESP = 5, 6
ASSOC_UPDATE_REQ, ASSOC_UPDATE_RESP = 7, 8
ASSOC_RELEASE_REQ, ASSOC_RELEASE_RESP = 9, 10
SESS_EST_REQ, SESS_EST_RESP = 50, 51
SESS_MOD_REQ, SESS_MOD_RESP = 52, 53
SESS_DEL_REQ, SESS_DEL_RESP = 54, 55
SESS_REPORT_REQ, SESS_REPORT_RESP = 56, 57

# each request type's response is type + 1 (node and session messages alike)
REQUEST_TYPES = frozenset({1, 3, 5, 7, 9, 12, 14, 16, 50, 52, 54, 56})
RESPONSE_TYPES = frozenset(t + 1 for t in REQUEST_TYPES)

# IE types (TS 29.244 §8.1.2 table 8.1.2-1)
IE_CREATE_PDR = 1
IE_PDI = 2
IE_CREATE_FAR = 3
IE_FORWARDING_PARAMETERS = 4
IE_CREATE_QER = 7
IE_CREATED_PDR = 8
IE_UPDATE_PDR = 9
IE_UPDATE_FAR = 10
IE_UPDATE_FORWARDING_PARAMETERS = 11
IE_UPDATE_QER = 14
IE_REMOVE_PDR = 15
IE_REMOVE_FAR = 16
IE_CAUSE = 19
IE_PFCPSMREQ_FLAGS = 49
IE_SOURCE_INTERFACE = 20
IE_F_TEID = 21
IE_NETWORK_INSTANCE = 22
IE_DESTINATION_INTERFACE = 42
IE_PDR_ID = 56
IE_F_SEID = 57
IE_NODE_ID = 60
IE_OUTER_HEADER_CREATION = 84
IE_UE_IP_ADDRESS = 93
IE_RECOVERY_TIME_STAMP = 96
IE_FAR_ID = 108
IE_QER_ID = 109
IE_QFI = 124
IE_USER_ID = 141

CAUSE_ACCEPTED = 1

# PFCPSMReq-Flags (§8.2.47), in Update Forwarding Parameters: SNDEM asks the UP function to
# send End Marker packets on the old path when the FAR's Outer Header Creation changes
SMREQ_SNDEM = 0x02

# interface values (§8.2.2 Source Interface, §8.2.24 Destination Interface)
IFACE_ACCESS = 0
IFACE_CORE = 1
IFACE_NAMES = {0: "access", 1: "core", 2: "n6-lan", 3: "cp-function", 4: "5g-vn-internal"}

HEADER_MIN = 8     # flags, type, length, seq(3), spare: the header without SEID


class PfcpError(ValueError):
    """Malformed PFCP: truncated header or IE, bad version, bad length."""


@dataclass(slots=True)
class PfcpMessage:
    msg_type: int
    seq: int
    seid: int | None                  # None when the S flag is clear (node messages)
    buf: bytes                        # the message's bytes (header included)
    ies: list[tuple[int, int, int]]   # top-level IEs: (type, value start, value end) into buf


def parse_messages(payload: bytes | memoryview) -> list[PfcpMessage]:
    """All PFCP messages in one UDP payload (the FO flag chains several)."""
    data = bytes(payload)
    out: list[PfcpMessage] = []
    off = 0
    while True:
        msg, nxt, follow = _parse_one(data, off)
        out.append(msg)
        if not follow or nxt >= len(data):
            return out
        off = nxt


def _parse_one(data: bytes, off: int) -> tuple[PfcpMessage, int, bool]:
    if len(data) - off < HEADER_MIN:
        raise PfcpError("short header")
    flags, mtype, length = struct.unpack_from("!BBH", data, off)
    if flags >> 5 != 1:
        raise PfcpError(f"version {flags >> 5}")
    end = off + 4 + length
    if end > len(data):
        raise PfcpError("length beyond datagram")
    has_seid = bool(flags & 0x01)
    hlen = 16 if has_seid else 8
    if length + 4 < hlen:
        raise PfcpError("length shorter than header")
    if has_seid:
        seid, seq_hi = struct.unpack_from("!QI", data, off + 4)
        seq = seq_hi >> 8
    else:
        seid = None
        seq = struct.unpack_from("!I", data, off + 4)[0] >> 8
    buf = data[off:end]
    ies = walk_ies(buf, hlen, len(buf))
    return PfcpMessage(mtype, seq, seid, buf, ies), end, bool(flags & 0x04)


def walk_ies(buf: bytes, off: int, end: int) -> list[tuple[int, int, int]]:
    """TLV IEs between off and end; enterprise IEs (type bit 15) skip their 2-byte id."""
    out: list[tuple[int, int, int]] = []
    while off < end:
        if end - off < 4:
            raise PfcpError("truncated IE header")
        itype, ilen = struct.unpack_from("!HH", buf, off)
        vstart, vend = off + 4, off + 4 + ilen
        if vend > end:
            raise PfcpError(f"IE {itype} overruns its parent")
        if itype & 0x8000:
            vstart += 2
            if vstart > vend:
                raise PfcpError("enterprise IE without enterprise id")
        out.append((itype, vstart, vend))
        off = vend
    return out


# ------------------------------------------------------------------ single IEs

def _ipv4(buf: bytes, off: int) -> str:
    return socket.inet_ntop(socket.AF_INET, buf[off:off + 4])


def _ipv6(buf: bytes, off: int) -> str:
    return socket.inet_ntop(socket.AF_INET6, buf[off:off + 16])


def _need(start: int, n: int, end: int, what: str) -> None:
    if start + n > end:
        raise PfcpError(f"truncated {what}")


def decode_f_seid(buf: bytes, s: int, e: int) -> tuple[int, str | None, str | None]:
    """F-SEID (§8.2.37): (seid, ipv4, ipv6)."""
    _need(s, 9, e, "F-SEID")
    flags = buf[s]
    seid = struct.unpack_from("!Q", buf, s + 1)[0]
    off = s + 9
    v4 = v6 = None
    if flags & 0x02:
        _need(off, 4, e, "F-SEID IPv4")
        v4 = _ipv4(buf, off)
        off += 4
    if flags & 0x01:
        _need(off, 16, e, "F-SEID IPv6")
        v6 = _ipv6(buf, off)
    return seid, v4, v6


def decode_f_teid(buf: bytes, s: int, e: int) -> dict[str, Any]:
    """F-TEID (§8.2.3). With CH set the UP function chooses: no TEID, no address."""
    _need(s, 1, e, "F-TEID")
    flags = buf[s]
    if flags & 0x04:
        out: dict[str, Any] = {"choose": True}
        if flags & 0x08:
            _need(s + 1, 1, e, "F-TEID choose id")
            out["choose_id"] = buf[s + 1]
        return out
    _need(s + 1, 4, e, "F-TEID")
    out = {"teid": struct.unpack_from("!I", buf, s + 1)[0]}
    off = s + 5
    if flags & 0x01:
        _need(off, 4, e, "F-TEID IPv4")
        out["ipv4"] = _ipv4(buf, off)
        off += 4
    if flags & 0x02:
        _need(off, 16, e, "F-TEID IPv6")
        out["ipv6"] = _ipv6(buf, off)
    return out


def decode_ue_ip(buf: bytes, s: int, e: int) -> tuple[str | None, str | None]:
    """UE IP Address (§8.2.62): (ipv4, ipv6); CHV4/CHV6 (UPF allocates) give None."""
    _need(s, 1, e, "UE IP Address")
    flags = buf[s]
    off = s + 1
    v4 = v6 = None
    if flags & 0x02:
        _need(off, 4, e, "UE IPv4")
        v4 = _ipv4(buf, off)
        off += 4
    if flags & 0x01:
        _need(off, 16, e, "UE IPv6")
        v6 = _ipv6(buf, off)
    return v4, v6


def decode_outer_header_creation(buf: bytes, s: int, e: int) -> dict[str, Any]:
    """Outer Header Creation (§8.2.56): description, then TEID/IPv4/IPv6/port as flagged."""
    _need(s, 2, e, "Outer Header Creation")
    desc = buf[s]
    off = s + 2
    out: dict[str, Any] = {"gtpu": bool(desc & 0x03)}
    if desc & 0x03:           # GTP-U/UDP/IPv4 or /IPv6
        _need(off, 4, e, "OHC TEID")
        out["teid"] = struct.unpack_from("!I", buf, off)[0]
        off += 4
    if desc & 0x15:           # any IPv4 flavour
        _need(off, 4, e, "OHC IPv4")
        out["ipv4"] = _ipv4(buf, off)
        off += 4
    if desc & 0x2A:           # any IPv6 flavour
        _need(off, 16, e, "OHC IPv6")
        out["ipv6"] = _ipv6(buf, off)
        off += 16
    if desc & 0x0C:           # UDP/IPv4 or UDP/IPv6 carry a port
        _need(off, 2, e, "OHC port")
        out["port"] = struct.unpack_from("!H", buf, off)[0]
    return out


def decode_labels(raw: bytes) -> str | None:
    """An APN/DNS label list (\\x08internet) as dotted text, or None if it is not one."""
    parts: list[str] = []
    off = 0
    while off < len(raw):
        n = raw[off]
        if n == 0 or off + 1 + n > len(raw):
            return None
        label = raw[off + 1:off + 1 + n]
        if not all(0x21 <= c < 0x7F for c in label):
            return None
        parts.append(label.decode("ascii"))
        off += 1 + n
    return ".".join(parts) if parts else None


def decode_network_instance(raw: bytes) -> str | None:
    """Network Instance (§8.2.4): an APN-encoded label list in some cores, plain text in others.

    None when empty (free5GC sends a lone NUL byte for "no network instance").
    """
    labels = decode_labels(raw)
    if labels is not None:
        return labels
    text = raw.decode("utf-8", "replace").strip("\x00")
    return text or None


def decode_node_id(buf: bytes, s: int, e: int) -> str:
    """Node ID (§8.2.38): IPv4, IPv6 or FQDN (label-encoded)."""
    _need(s, 1, e, "Node ID")
    kind = buf[s] & 0x0F
    if kind == 0:
        _need(s + 1, 4, e, "Node ID IPv4")
        return _ipv4(buf, s + 1)
    if kind == 1:
        _need(s + 1, 16, e, "Node ID IPv6")
        return _ipv6(buf, s + 1)
    if kind == 2:
        raw = buf[s + 1:e]
        return decode_labels(raw) or raw.decode("utf-8", "replace")
    raise PfcpError(f"Node ID type {kind}")


def tbcd(raw: bytes) -> str:
    """Telephony BCD (low nibble first, 0xF filler) to a digit string."""
    digits: list[str] = []
    for b in raw:
        for nib in (b & 0x0F, b >> 4):
            if nib == 0x0F:
                return "".join(digits)
            if nib > 9:
                raise PfcpError("non-decimal TBCD digit")
            digits.append(chr(0x30 + nib))
    return "".join(digits)


def decode_user_id(buf: bytes, s: int, e: int) -> dict[str, str]:
    """User ID (§8.2.101): IMSI, IMEI, MSISDN (TBCD), NAI, SUPI, GPSI, PEI (text), as flagged."""
    _need(s, 1, e, "User ID")
    flags = buf[s]
    off = s + 1
    out: dict[str, str] = {}
    for bit, name, is_bcd in ((0x01, "imsi", True), (0x02, "imei", True), (0x04, "msisdn", True),
                              (0x08, "nai", False), (0x10, "supi", False), (0x20, "gpsi", False),
                              (0x40, "pei", False)):
        if not flags & bit:
            continue
        _need(off, 1, e, f"User ID {name}")
        n = buf[off]
        _need(off + 1, n, e, f"User ID {name}")
        raw = buf[off + 1:off + 1 + n]
        out[name] = tbcd(raw) if is_bcd else raw.decode("utf-8", "replace")
        off += 1 + n
    return out


def u8(buf: bytes, s: int, e: int, what: str) -> int:
    _need(s, 1, e, what)
    return buf[s]


def u16(buf: bytes, s: int, e: int, what: str) -> int:
    _need(s, 2, e, what)
    return struct.unpack_from("!H", buf, s)[0]


def u32(buf: bytes, s: int, e: int, what: str) -> int:
    _need(s, 4, e, what)
    return struct.unpack_from("!I", buf, s)[0]


# ------------------------------------------------------------------ grouped IEs → facts

@dataclass(slots=True)
class Pdr:
    pdr_id: int | None = None
    source_iface: int | None = None
    f_teid: dict[str, Any] | None = None
    ue_ipv4: str | None = None
    ue_ipv6: str | None = None
    network_instance: str | None = None
    far_id: int | None = None
    qfis: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Far:
    far_id: int | None = None
    dest_iface: int | None = None
    ohc: dict[str, Any] | None = None
    network_instance: str | None = None
    send_end_marker: bool = False     # Update Forwarding Parameters' PFCPSMReq-Flags SNDEM


@dataclass(slots=True)
class SessionFacts:
    """What one session message says about the session (all optional)."""

    cause: int | None = None
    f_seid: tuple[int, str | None, str | None] | None = None
    node_id: str | None = None
    pdrs: list[Pdr] = field(default_factory=list)           # Create PDR / Update PDR
    created_pdrs: list[Pdr] = field(default_factory=list)   # Created PDR (response)
    fars: list[Far] = field(default_factory=list)           # Create FAR / Update FAR
    qfis: list[int] = field(default_factory=list)           # Create/Update QER
    removed_pdrs: list[int] = field(default_factory=list)
    removed_fars: list[int] = field(default_factory=list)
    user_id: dict[str, str] | None = None
    recovery_ts: int | None = None


def _pdi(buf: bytes, s: int, e: int, pdr: Pdr) -> None:
    for t, vs, ve in walk_ies(buf, s, e):
        if t == IE_SOURCE_INTERFACE:
            pdr.source_iface = u8(buf, vs, ve, "Source Interface") & 0x0F
        elif t == IE_F_TEID:
            pdr.f_teid = decode_f_teid(buf, vs, ve)
        elif t == IE_UE_IP_ADDRESS:
            v4, v6 = decode_ue_ip(buf, vs, ve)
            pdr.ue_ipv4 = pdr.ue_ipv4 or v4
            pdr.ue_ipv6 = pdr.ue_ipv6 or v6
        elif t == IE_NETWORK_INSTANCE:
            pdr.network_instance = decode_network_instance(buf[vs:ve])
        elif t == IE_QFI:
            pdr.qfis.append(u8(buf, vs, ve, "QFI") & 0x3F)


def _pdr(buf: bytes, s: int, e: int) -> Pdr:
    pdr = Pdr()
    for t, vs, ve in walk_ies(buf, s, e):
        if t == IE_PDR_ID:
            pdr.pdr_id = u16(buf, vs, ve, "PDR ID")
        elif t == IE_PDI:
            _pdi(buf, vs, ve, pdr)
        elif t == IE_F_TEID:           # Created PDR carries Local F-TEID directly
            pdr.f_teid = decode_f_teid(buf, vs, ve)
        elif t == IE_UE_IP_ADDRESS:    # ... and the UE IP when the UPF allocated it
            v4, v6 = decode_ue_ip(buf, vs, ve)
            pdr.ue_ipv4 = pdr.ue_ipv4 or v4
            pdr.ue_ipv6 = pdr.ue_ipv6 or v6
        elif t == IE_FAR_ID:
            pdr.far_id = u32(buf, vs, ve, "FAR ID")
    return pdr


def _far(buf: bytes, s: int, e: int) -> Far:
    far = Far()
    for t, vs, ve in walk_ies(buf, s, e):
        if t == IE_FAR_ID:
            far.far_id = u32(buf, vs, ve, "FAR ID")
        elif t in (IE_FORWARDING_PARAMETERS, IE_UPDATE_FORWARDING_PARAMETERS):
            for t2, s2, e2 in walk_ies(buf, vs, ve):
                if t2 == IE_DESTINATION_INTERFACE:
                    far.dest_iface = u8(buf, s2, e2, "Destination Interface") & 0x0F
                elif t2 == IE_OUTER_HEADER_CREATION:
                    far.ohc = decode_outer_header_creation(buf, s2, e2)
                elif t2 == IE_NETWORK_INSTANCE:
                    far.network_instance = decode_network_instance(buf[s2:e2])
                elif t2 == IE_PFCPSMREQ_FLAGS and t == IE_UPDATE_FORWARDING_PARAMETERS:
                    far.send_end_marker = bool(u8(buf, s2, e2, "PFCPSMReq-Flags") & SMREQ_SNDEM)
    return far


def _qer_qfis(buf: bytes, s: int, e: int) -> list[int]:
    return [u8(buf, vs, ve, "QFI") & 0x3F for t, vs, ve in walk_ies(buf, s, e) if t == IE_QFI]


def session_facts(msg: PfcpMessage) -> SessionFacts:
    """Walk a session or node message's IEs (grouped ones recursively) into SessionFacts."""
    buf = msg.buf
    f = SessionFacts()
    for t, vs, ve in msg.ies:
        if t == IE_CAUSE:
            f.cause = u8(buf, vs, ve, "Cause")
        elif t == IE_F_SEID:
            f.f_seid = decode_f_seid(buf, vs, ve)
        elif t == IE_NODE_ID:
            f.node_id = decode_node_id(buf, vs, ve)
        elif t in (IE_CREATE_PDR, IE_UPDATE_PDR):
            f.pdrs.append(_pdr(buf, vs, ve))
        elif t == IE_CREATED_PDR:
            f.created_pdrs.append(_pdr(buf, vs, ve))
        elif t in (IE_CREATE_FAR, IE_UPDATE_FAR):
            f.fars.append(_far(buf, vs, ve))
        elif t in (IE_CREATE_QER, IE_UPDATE_QER):
            f.qfis.extend(_qer_qfis(buf, vs, ve))
        elif t == IE_REMOVE_PDR:
            for t2, s2, e2 in walk_ies(buf, vs, ve):
                if t2 == IE_PDR_ID:
                    f.removed_pdrs.append(u16(buf, s2, e2, "PDR ID"))
        elif t == IE_REMOVE_FAR:
            for t2, s2, e2 in walk_ies(buf, vs, ve):
                if t2 == IE_FAR_ID:
                    f.removed_fars.append(u32(buf, s2, e2, "FAR ID"))
        elif t == IE_USER_ID:
            f.user_id = decode_user_id(buf, vs, ve)
        elif t == IE_RECOVERY_TIME_STAMP:
            f.recovery_ts = u32(buf, vs, ve, "Recovery Time Stamp")
    return f
