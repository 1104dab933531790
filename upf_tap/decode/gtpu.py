"""GTP-U (TS 29.281) header decoding, with the PDU Session Container (TS 38.415).

``parse_gtpu`` returns a tuple instead of an object so that the per-packet path makes
no allocations beyond the tuple itself.
"""

from __future__ import annotations

import struct

from upf_tap.constants import GTPU_EXT_PDU_SESSION_CONTAINER

_hdr = struct.Struct("!BBHI").unpack_from  # flags, message type, length, TEID

# The GTP-U context of a user packet, as the tap hands it on (not control/tunnel.py's endpoint):
# outer src, outer dst (raw addresses), TEID, QFI (or NO_QFI), PDU type (or -1).
GtpuContext = tuple[bytes, bytes, int, int, int]

PDU_TYPE_DL = 0
PDU_TYPE_UL = 1
NO_QFI = -1

# Result codes for malformed headers (returned in place of the message type).
BAD_TRUNCATED = -1
BAD_VERSION = -2
BAD_EXT = -3
BAD_LENGTH = -4
BAD_REASONS = {
    BAD_TRUNCATED: "gtpu.truncated",
    BAD_VERSION: "gtpu.bad_version",
    BAD_EXT: "gtpu.bad_extension",
    BAD_LENGTH: "gtpu.bad_length",
}


def parse_gtpu(data: bytes, off: int, end: int) -> tuple[int, int, int, int, int, int]:
    """Decode the GTP-U header at ``data[off:end]``.

    Returns (message type or BAD_*, TEID, QFI or NO_QFI, PDU type or -1, payload offset,
    payload end). The payload bounds come from the header's length field (octets after
    the mandatory 8), clipped to ``end``; a length beyond the datagram is an error.
    """
    if end - off < 8:
        return BAD_TRUNCATED, 0, NO_QFI, -1, 0, 0
    flags, mtype, length, teid = _hdr(data, off)
    # version 1 and protocol type GTP (not GTP')
    if flags & 0xF0 != 0x30:
        return BAD_VERSION, teid, NO_QFI, -1, 0, 0
    pend = off + 8 + length
    if pend > end:
        return BAD_LENGTH, teid, NO_QFI, -1, 0, 0
    p = off + 8
    qfi = NO_QFI
    pdu_type = -1
    if flags & 0x07:
        # sequence number, N-PDU number and next-extension type are present if any flag is set
        if pend - p < 4:
            return BAD_TRUNCATED, teid, NO_QFI, -1, 0, 0
        nxt = data[p + 3] if flags & 0x04 else 0
        p += 4
        while nxt:
            if p >= pend:
                return BAD_TRUNCATED, teid, qfi, pdu_type, 0, 0
            elen = data[p] * 4  # length in 4-octet units, including the length and next-type octets
            if elen == 0 or p + elen > pend:
                return BAD_EXT, teid, qfi, pdu_type, 0, 0
            if nxt == GTPU_EXT_PDU_SESSION_CONTAINER and elen >= 4:
                pdu_type = data[p + 1] >> 4
                qfi = data[p + 2] & 0x3F
            nxt = data[p + elen - 1]
            p += elen
    return mtype, teid, qfi, pdu_type, p, pend
