"""GTP-U (TS 29.281) with the PDU Session Container (TS 38.415), as the gNB and UPF send it.

Every G-PDU carries the optional-fields word and one PDU Session Container extension
header (type 0x85) holding the PDU type (0 DL, 1 UL) and the QFI, like UERANSIM and
Open5GS do on N3.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator, MutableMapping
from typing import NamedTuple

from upf_tap.constants import (
    GTPU_ECHO_REQUEST,
    GTPU_ECHO_RESPONSE,
    GTPU_END_MARKER,
    GTPU_EXT_PDU_SESSION_CONTAINER,
    GTPU_GPDU,
)

PDU_TYPE_DL = 0
PDU_TYPE_UL = 1
_FLAGS_E = 0x34        # version 1, PT 1 (GTP), E (extension header present)
_FLAGS_S = 0x32        # version 1, PT 1, S (sequence number present)
_FLAGS_PLAIN = 0x30    # version 1, PT 1, no optional fields
_RECOVERY_IE = 14
MAX_DATAGRAM = 65535
END_MARKER_LOG = 1000   # End Markers a gNB or UPF remembers for its status (a bench makes thousands of moves)


class GtpuPacket(NamedTuple):
    msg_type: int
    teid: int
    seq: int | None
    pdu_type: int | None   # from the PDU Session Container, None when absent
    qfi: int | None
    payload: bytes


class GtpuError(ValueError):
    """Malformed GTP-U: the caller counts a drop."""


def encode_gpdu(teid: int, payload: bytes, qfi: int, pdu_type: int) -> bytes:
    """A G-PDU for `payload` (an IP packet) with a PDU Session Container."""
    if pdu_type == PDU_TYPE_UL:
        pdu_octet, qfi_octet = PDU_TYPE_UL << 4, qfi & 0x3F
    else:
        pdu_octet, qfi_octet = PDU_TYPE_DL << 4, qfi & 0x3F   # PPP=0, RQI=0
    # optional word: seq 0, N-PDU 0, next extension 0x85; extension: len 1 (4 octets), next 0
    ext = struct.pack("!HBBBBBB", 0, 0, GTPU_EXT_PDU_SESSION_CONTAINER, 1, pdu_octet, qfi_octet, 0)
    return struct.pack("!BBHI", _FLAGS_E, GTPU_GPDU, len(ext) + len(payload), teid) + ext + payload


def encode_end_marker(teid: int) -> bytes:
    """End Marker (TS 29.281 §7.3.2): the old tunnel's TEID, no payload, no IE; the last packet on a path."""
    return struct.pack("!BBHI", _FLAGS_PLAIN, GTPU_END_MARKER, 0, teid)


def encode_echo_response(seq: int) -> bytes:
    body = struct.pack("!HBBBB", seq, 0, 0, _RECOVERY_IE, 0)
    return struct.pack("!BBHI", _FLAGS_S, GTPU_ECHO_RESPONSE, len(body), 0) + body


def encode_echo_request(seq: int) -> bytes:
    body = struct.pack("!HBB", seq, 0, 0)
    return struct.pack("!BBHI", _FLAGS_S, GTPU_ECHO_REQUEST, len(body), 0) + body


def decode(data: bytes) -> GtpuPacket:
    """Parse one GTP-U message; raises GtpuError on anything malformed."""
    if len(data) < 8:
        raise GtpuError(f"short GTP-U header ({len(data)} bytes)")
    flags, msg_type, length, teid = struct.unpack_from("!BBHI", data, 0)
    if flags >> 5 != 1 or not flags & 0x10:
        raise GtpuError(f"not GTP-U v1 (flags 0x{flags:02x})")
    end = 8 + length
    if end > len(data):
        raise GtpuError(f"GTP-U length {length} beyond datagram ({len(data) - 8})")
    off, seq, pdu_type, qfi = 8, None, None, None
    if flags & 0x07:
        if end < 12:
            raise GtpuError("GTP-U optional fields truncated")
        seq_v, _npdu, next_type = struct.unpack_from("!HBB", data, 8)
        seq = seq_v if flags & 0x02 else None
        off = 12
        if not flags & 0x04:
            next_type = 0
        while next_type:
            if off >= end:
                raise GtpuError("GTP-U extension header truncated")
            ext_len = data[off] * 4
            if ext_len == 0 or off + ext_len > end:
                raise GtpuError(f"bad GTP-U extension length {ext_len}")
            if next_type == GTPU_EXT_PDU_SESSION_CONTAINER and ext_len >= 4:
                pdu_type = data[off + 1] >> 4
                qfi = data[off + 2] & 0x3F
            next_type = data[off + ext_len - 1]
            off += ext_len
    return GtpuPacket(msg_type, teid, seq, pdu_type, qfi, bytes(data[off:end]))


def receive(sock: socket.socket, counters: MutableMapping[str, int], log: logging.Logger
            ) -> Iterator[GtpuPacket]:
    """Drain a non-blocking GTP-U socket: answer echo requests, count garbage, yield G-PDUs and End Markers.

    The one N3 receive loop of the sim's gNB and UPF (TS 29.281 §7.2: a node answers echo).
    """
    while True:
        try:
            data, addr = sock.recvfrom(MAX_DATAGRAM)
        except BlockingIOError:
            return
        try:
            msg = decode(data)
        except GtpuError as e:
            counters["gtpu_bad"] += 1
            log.debug("GTP-U from %s dropped: %s", addr[0], e)
            continue
        if msg.msg_type == GTPU_ECHO_REQUEST:
            counters["echo"] += 1
            sock.sendto(encode_echo_response(msg.seq or 0), addr)
        elif msg.msg_type in (GTPU_GPDU, GTPU_END_MARKER):
            yield msg


def receive_gpdus(sock: socket.socket, counters: MutableMapping[str, int], log: logging.Logger
                  ) -> Iterator[GtpuPacket]:
    """`receive` without the End Markers (a UPF has no use for them on N3)."""
    return (msg for msg in receive(sock, counters, log) if msg.msg_type == GTPU_GPDU)
