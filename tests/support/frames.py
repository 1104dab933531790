"""Frame builders shared by tests and benchmarks (independent of the tap's decoders).

The sim lab has its own G-PDU encoder for the wire (testbed/sim/gtpu.py); these are the test
side's, with the knobs tests need (no extension header, a sequence number, extension headers
before the PDU Session Container, another message type).
"""

from __future__ import annotations

import struct

GTPU_GPDU = 0xFF
EXT_PDU_SESSION_CONTAINER = 0x85


def varint(v: int) -> bytes:
    """A QUIC variable-length integer (RFC 9000 §16)."""
    if v < 0x40:
        return bytes([v])
    if v < 0x4000:
        return struct.pack("!H", v | 0x4000)
    if v < 0x40000000:
        return struct.pack("!I", v | 0x80000000)
    return struct.pack("!Q", v | 0xC000000000000000)


def csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def gtpu(teid: int, inner: bytes, *, qfi: int | None = 1, ul: bool = True, seq: int | None = None,
         extra_ext: bytes = b"", mtype: int = GTPU_GPDU) -> bytes:
    """A GTP-U message: with a PDU Session Container (TS 38.415) unless ``qfi`` is None.

    ``extra_ext``: other extension headers to put first; it must end with its own next-type
    octet slot (the chain is extra -> 0x85 -> end).
    """
    if qfi is None and not extra_ext:
        flags = 0x30 | (0x02 if seq is not None else 0)
        body = (struct.pack("!HBB", seq, 0, 0) if seq is not None else b"") + inner
        return struct.pack("!BBHI", flags, mtype, len(body), teid) + body
    flags = 0x34 | (0x02 if seq is not None else 0)
    container = bytes([1, (1 if ul else 0) << 4, (qfi or 0) & 0x3F, 0])
    if extra_ext:
        first_type = extra_ext[0]
        ext = extra_ext[1:-1] + bytes([EXT_PDU_SESSION_CONTAINER]) + container
    else:
        first_type = EXT_PDU_SESSION_CONTAINER
        ext = container
    body = struct.pack("!HBB", seq or 0, 0, first_type) + ext + inner
    return struct.pack("!BBHI", flags, mtype, len(body), teid) + body
