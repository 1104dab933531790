"""A small pcap/pcapng writer for building test captures byte by byte (tshark checks it)."""

from __future__ import annotations

import struct

SHB_TYPE, IDB_TYPE, PB_TYPE, SPB_TYPE, NRB_TYPE, ISB_TYPE, EPB_TYPE = 0x0A0D0D0A, 1, 2, 3, 4, 5, 6
CUSTOM_TYPE = 0x00000BAD

# Link type -> Wireshark's WTAP_ENCAP number, as tshark prints in frame.encap_type.
WTAP_ENCAP = {0: 15, 1: 1, 101: 7, 108: 174, 113: 25, 228: 129, 229: 130, 276: 210}


def pcap(records: list[tuple[int, bytes]], *, order: str = "<", nano: bool = False, linktype: int = 1,
         snaplen: int = 65535, origlens: list[int] | None = None) -> bytes:
    """A pcap file; records are (timestamp_ns, data)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, (ts, data) in enumerate(records):
        sec, ns = divmod(ts, 1_000_000_000)
        frac = ns if nano else ns // 1000
        orig = origlens[i] if origlens else len(data)
        out.append(struct.pack(order + "IIII", sec, frac, len(data), orig) + data)
    return b"".join(out)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def block(order: str, btype: int, body: bytes) -> bytes:
    body = _pad(body)
    n = 12 + len(body)
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + _pad(value)


def options(order: str, opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    return b"".join(option(order, c, v) for c, v in opts) + struct.pack(order + "HH", 0, 0)


def shb(order: str = "<", major: int = 1, opts: list[tuple[int, bytes]] | None = None) -> bytes:
    body = struct.pack(order + "IHHq", 0x1A2B3C4D, major, 0, -1) + options(order, opts or [])
    return block(order, SHB_TYPE, body)


def idb(order: str, linktype: int, snaplen: int = 0, tsresol: int | None = None,
        tsoffset: int | None = None) -> bytes:
    opts: list[tuple[int, bytes]] = [(2, b"eth-test")]
    if tsresol is not None:
        opts.append((9, bytes([tsresol])))
    if tsoffset is not None:
        opts.append((14, struct.pack(order + "q", tsoffset)))
    return block(order, IDB_TYPE, struct.pack(order + "HHI", linktype, 0, snaplen) + options(order, opts))


def epb(order: str, ifid: int, ts_units: int, data: bytes, origlen: int | None = None,
        opts: list[tuple[int, bytes]] | None = None) -> bytes:
    hdr = struct.pack(order + "IIIII", ifid, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data),
                      len(data) if origlen is None else origlen)
    return block(order, EPB_TYPE, hdr + _pad(data) + options(order, opts or []))


def pb(order: str, ifid: int, ts_units: int, data: bytes) -> bytes:
    hdr = struct.pack(order + "HHIIII", ifid, 0, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), len(data))
    return block(order, PB_TYPE, hdr + _pad(data))


def spb(order: str, data: bytes, origlen: int | None = None) -> bytes:
    return block(order, SPB_TYPE, struct.pack(order + "I", len(data) if origlen is None else origlen) + data)


def nrb(order: str) -> bytes:
    rec = struct.pack(order + "HH", 1, 8) + bytes([10, 45, 0, 2]) + b"ue1\0"
    return block(order, NRB_TYPE, rec + struct.pack(order + "HH", 0, 0))


def isb(order: str, ifid: int = 0) -> bytes:
    return block(order, ISB_TYPE, struct.pack(order + "III", ifid, 0, 0))


def custom(order: str) -> bytes:
    return block(order, CUSTOM_TYPE, struct.pack(order + "I", 32473) + b"opaque data")


def frame(i: int, size: int = 60) -> bytes:
    """A recognisable Ethernet/IPv4/UDP-looking frame; the reader never parses it."""
    return (bytes([0x02, 0, 0, 0, 0, i & 0xFF]) * 2 + b"\x08\x00" + bytes([0x45]) + bytes([i & 0xFF]) * (size - 15))
