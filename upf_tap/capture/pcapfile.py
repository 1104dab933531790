"""Capture-file readers for the tap: pcap and pcapng as ``(timestamp_ns, linktype, frame)``.

This is the hot path of ``upf-tap read``. Files are read sequentially in 4 MiB chunks (so
pipes, FIFOs and files still being written work, and a file cut short never faults the
way an mmap would), record headers are parsed with precompiled ``struct.Struct`` objects,
and packets come out per chunk as offsets into it (``read_batches``: no per-packet object
at all, which is what ``upf-tap read`` walks) or one by one as ``bytes`` slices
(``read_packets``: a stored frame never keeps a 4 MiB chunk alive).

Formats: pcap in both byte orders with microsecond or nanosecond timestamps; pcapng with
any number of sections (each with its own byte order) and interfaces (each with its own
link type, ``if_tsresol`` and ``if_tsoffset``), Enhanced, Simple and obsolete Packet
Blocks; other blocks are skipped by their length. Either may be gzip-compressed, as
Wireshark allows.

Damage never raises once the file header is good: a file cut inside a record stops and
counts ``capture.truncated``; an impossible length stops and counts ``capture.bad_block``;
a packet naming an unknown interface is skipped and counts ``capture.unknown_interface``.
Only a file that cannot be read as a capture at all raises :class:`CaptureError`.
"""

from __future__ import annotations

import collections
import heapq
import mmap
import os
import stat
import struct
import zlib
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO, cast

from upf_tap.capture.common import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    CaptureError,
)

if TYPE_CHECKING:
    import gzip

# the link types are re-exported: a reader of capture files looks for them here
__all__ = [
    "CHUNK", "DEFAULT_MAX_CAPLEN", "LINKTYPE_ETHERNET", "LINKTYPE_IPV4", "LINKTYPE_IPV6", "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2", "LINKTYPE_LOOP", "LINKTYPE_NULL", "LINKTYPE_RAW", "MAX_RECORD", "Batch",
    "CaptureError", "Packet", "PcapRun", "PcapngRun", "Stats", "merge_captures", "read_batches",
    "read_packets",
]

Packet = tuple[int, int, bytes]
Batch = tuple[bytes, list[int]]  # a chunk and [ts_ns, linktype, start, end, ...] of its packets
Stats = collections.Counter[str]

CHUNK = 4 << 20
# A record longer than this is taken as a corrupt length rather than a big packet.
# Wireshark allows 256 KiB for most link types and 128 MiB for D-Bus; 64 MiB keeps
# memory bounded while accepting anything a real tap writes.
MAX_RECORD = 64 << 20
DEFAULT_MAX_CAPLEN = 262_144  # pcap: lengths up to max(snaplen, this) are plausible

_NS = 1_000_000_000

# pcap file header magic (as bytes on disk) -> (byte order, ns per timestamp fraction unit)
_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAP_HDR_LEN = 24
_PCAP_REC_LEN = 16
_LINKTYPE_MASK = 0x03FF_FFFF  # upper bits of the pcap link type field carry FCS flags

# pcapng (draft-ietf-opsawg-pcapng)
_SHB = 0x0A0D0D0A               # a palindrome: reads the same in both byte orders
_BOM_LE = b"\x4d\x3c\x2b\x1a"
_BOM_BE = b"\x1a\x2b\x3c\x4d"
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6
_MIN_BLOCK = {_SHB: 28, _IDB: 20, _PB: 32, _SPB: 16, _EPB: 32}
_OPT_ENDOFOPT, _OPT_IF_TSRESOL, _OPT_IF_TSOFFSET = 0, 9, 14
_GZIP_MAGIC = b"\x1f\x8b"


class PcapRun:
    """A chunk of a pcap file for a consumer that walks its records itself.

    ``read_batches(..., runs=True)`` yields one of these per chunk of a pcap file instead of
    a :data:`Batch`, so that the tap's hot loop reads each record header and the packet
    behind it in one pass (no list of offsets in between). The consumer walks the records
    from ``off``: a 16-byte header (``rec(buf, off)`` gives seconds, fraction and captured
    length), ``ts_ns = sec * 10**9 + frac * mul``, the frame right after it.
    It stops at the first record that is not whole in ``buf`` (``off + 16 + incl >
    len(buf)``, or fewer than 16 bytes left) or whose length is above ``limit``, and
    leaves ``off`` there and the number of packets it took added to ``packets``; the reader
    then judges that record (truncated file, bogus length, or just the chunk's end).
    """

    __slots__ = ("buf", "limit", "linktype", "mul", "off", "packets", "rec")

    def __init__(self, rec: struct.Struct, mul: int, linktype: int, limit: int) -> None:
        self.rec = rec.unpack_from
        self.mul = mul
        self.linktype = linktype
        self.limit = limit
        self.buf = b""
        self.off = 0
        self.packets = 0

    def records(self) -> list[int]:
        """Walk the whole records from ``off``: ``[ts_ns, linktype, start, end, ...]``."""
        buf, off, n = self.buf, self.off, len(self.buf)
        unpack, ns, mul, linktype, limit = self.rec, _NS, self.mul, self.linktype, self.limit
        recs: list[int] = []
        add = recs.extend
        try:
            while True:  # hot loop: every whole record in this chunk
                sec, frac, incl = unpack(buf, off)
                end = off + 16 + incl
                if end > n or incl > limit:
                    break
                add((sec * ns + frac * mul, linktype, off + 16, end))
                off = end
        except struct.error:  # fewer than 16 bytes left in the chunk
            pass
        self.off = off
        self.packets += len(recs) >> 2
        return recs


class PcapngRun:
    """A chunk of a pcapng file for a consumer that walks its Enhanced Packet Blocks itself.

    The pcapng counterpart of :class:`PcapRun`. From ``off`` the consumer takes consecutive
    EPBs: ``epb(buf, off)`` gives block type, block length, interface, timestamp high and
    low, captured length; the frame is at ``off + 28``. It stops at the first block that is
    not an EPB (type 6), not whole in ``buf``, not a multiple of 4 long, whose captured
    length overflows it, whose trailing length (``trailer(buf, end - 4)[0]``) differs, or
    whose interface is unknown or has a timestamp resolution that needs a division
    (``ifaces[i]``: linktype, mul, div, tsoffset_ns, snaplen; ``ts_ns = ts * mul +
    tsoffset_ns`` when ``div == 1``). It leaves ``off`` there and adds what it took to
    ``packets``; the reader handles that block.
    """

    __slots__ = ("buf", "epb", "ifaces", "off", "packets", "trailer")

    def __init__(self) -> None:
        self.buf = b""
        self.off = 0
        self.packets = 0
        self.ifaces: list[tuple[int, int, int, int, int]] = []
        self.epb = _LE.epb
        self.trailer = _LE.blen

    def records(self) -> list[int]:
        """Walk the EPBs from ``off``: ``[ts_ns, linktype, start, end, ...]``."""
        buf, off, n = self.buf, self.off, len(self.buf)
        epb, trailer, ifaces = self.epb, self.trailer, self.ifaces
        cur = -1  # interface of the previous packet: most files have one
        lt = mul = tsoff = 0
        recs: list[int] = []
        add = recs.extend
        try:
            while True:
                btype, blen, ifid, th, tl, cap = epb(buf, off)
                end = off + blen
                if btype != 6 or end > n or blen & 3 or blen - cap < 32 or trailer(buf, end - 4)[0] != blen:
                    break
                if ifid != cur:
                    lt, mul, div, tsoff, _ = ifaces[ifid]
                    if div != 1:  # inexact resolution (2^-n): the reader divides
                        break
                    cur = ifid
                add((((th << 32) | tl) * mul + tsoff, lt, off + 28, off + 28 + cap))
                off = end
        except (struct.error, IndexError):  # chunk end, or unknown interface
            pass
        self.off = off
        self.packets += len(recs) >> 2
        return recs


_Records = Generator[Batch | PcapRun | PcapngRun | None, None, None]  # first item None: see read_batches


class _Order:
    """Precompiled structs for one byte order (a pcapng section may switch it)."""

    __slots__ = ("blen", "epb", "idb", "opt", "pb", "spb", "tsoff", "u16", "u32")

    def __init__(self, order: str) -> None:
        self.blen = struct.Struct(order + "I").unpack_from           # any u32 (block lengths)
        # EPB fast path: type, length, interface, ts high, ts low, captured length
        self.epb = struct.Struct(order + "6I").unpack_from
        self.pb = struct.Struct(order + "HHIII").unpack_from         # at +8: if, drops, tsh, tsl, cap
        self.spb = self.blen                                         # at +8: original length
        self.idb = struct.Struct(order + "HHI").unpack_from          # at +8: linktype, rsvd, snaplen
        self.opt = struct.Struct(order + "HH").unpack_from           # option code, length
        self.tsoff = struct.Struct(order + "q").unpack_from
        self.u16 = struct.Struct(order + "H").unpack_from
        self.u32 = self.blen


_LE, _BE = _Order("<"), _Order(">")


class _Source:
    """Sequential chunked reader: ``buf[off:]`` holds the bytes not yet consumed.

    A record that straddles two chunks is put together in a small buffer of its own
    (``more``), and the next chunk then becomes ``buf`` as read: the big chunks are never
    copied (joining each 4 MiB chunk to the tail of the last one cost more than walking it).
    """

    __slots__ = ("buf", "cut", "eof", "f", "name", "off", "pending", "poff", "z")

    def __init__(self, name: str, f: BinaryIO) -> None:
        self.name, self.f, self.buf, self.off = name, f, b"", 0
        self.pending, self.poff = b"", 0  # a chunk read ahead, and how much of it is used
        self.z: gzip.GzipFile | None = None  # gzip is imported only for a compressed file
        self.eof = False
        self.cut = False  # the compressed stream ended early

    def left(self) -> int:
        return len(self.buf) - self.off + len(self.pending) - self.poff

    def _fill(self, need: int) -> bool:
        """Have unused bytes in ``pending``; False at the end of the file."""
        if self.poff < len(self.pending):
            return True
        if self.eof:
            return False
        chunk = self.read(max(CHUNK, need))
        if not chunk:
            self.eof = True
            return False
        self.pending, self.poff = chunk, 0
        return True

    def more(self, need: int) -> bool:
        """Make ``need`` bytes available at ``off``; False when the file ends first."""
        have = len(self.buf) - self.off
        if have >= need:
            return True
        if not have and self._fill(need):  # at a chunk boundary: move to the next chunk whole
            self.buf, self.off = self.pending, self.poff
            self.pending, self.poff = b"", 0
            have = len(self.buf) - self.off
            if have >= need:
                return True
        # Straddling: exactly the missing bytes are copied, into a buffer of their own.
        # Frames already yielded keep the old chunk alive; bytes never change under them.
        parts: list[bytes | memoryview] = [memoryview(self.buf)[self.off:]]
        while have < need and self._fill(need - have):
            take = min(need - have, len(self.pending) - self.poff)
            parts.append(memoryview(self.pending)[self.poff:self.poff + take])
            self.poff += take
            have += take
        self.buf = b"".join(parts)
        self.off = 0
        return have >= need

    def map(self) -> None:
        """Make the whole file ``buf``, mapped, when it is a regular file: then no chunk is read
        or copied (on bulk N3, reading 4 MiB chunks was a sixth of `upf-tap read`'s time).
        Anything else (a pipe, an empty file, a failed mapping) is read in chunks as before.
        The mapping is the file's size at open: bytes appended later are not seen. A file cut
        short by another program while mapped would fault, so this is for ``upf-tap read``."""
        try:
            st = os.fstat(self.f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                return
            m = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return
        m.madvise(mmap.MADV_SEQUENTIAL)
        # never closed here: a walk or a batch may still hold it; it goes with its last reference
        # typed as bytes: what the readers do with buf (len, index, slice, unpack_from, memoryview) an mmap does alike
        self.buf, self.off, self.eof = cast(bytes, m), 0, True

    def read(self, n: int) -> bytes:
        try:
            # read1: a gzip stream cut short then still gives what it had before the cut
            return self.z.read1(n) if self.z is not None else self.f.read(n)
        except EOFError:  # gzip stream cut short
            self.cut = True
            return b""
        except (OSError, zlib.error) as e:
            raise CaptureError(f"{self.name}: read error: {e}") from None

    def close(self) -> None:
        if self.z is not None:
            self.z.close()  # does not close the file it reads from
        self.f.close()


def _open(name: str, mapped: bool = False) -> _Source:
    try:
        f = open(name, "rb")  # noqa: SIM115 - the generator that reads it closes it
    except OSError as e:
        raise CaptureError(f"{name}: cannot open: {e.strerror or e}") from None
    src = _Source(name, f)
    try:
        try:
            compressed = f.peek(2)[:2] == _GZIP_MAGIC  # peek: a pipe cannot be rewound
        except OSError as e:
            raise CaptureError(f"{name}: read error: {e.strerror or e}") from None
        if compressed:
            import gzip

            src.z = gzip.GzipFile(fileobj=f, mode="rb")
        elif mapped:
            src.map()
        src.more(4)
    except BaseException:
        src.close()
        raise
    return src


def read_packets(path: str | os.PathLike[str], stats: Stats | None = None) -> Iterator[Packet]:
    """Yield ``(timestamp_ns, linktype, frame)`` for every packet of one file, in file order.

    The file header is checked now (raising :class:`CaptureError` for a missing, empty or
    unknown file); packets are read lazily. Iterate to the end or ``close()`` the iterator
    to release the file. Counters land in ``stats``: ``capture.files``, ``capture.packets``,
    ``capture.truncated``, ``capture.bad_block``, ``capture.unknown_interface``.
    Simple Packet Blocks carry no time: they are yielded with timestamp 0, as Wireshark shows them.
    """
    return _frames(read_batches(path, stats))


def _frames(batches: Iterator[Batch]) -> Generator[Packet, None, None]:
    try:
        for buf, recs in batches:
            for i in range(0, len(recs), 4):
                yield recs[i], recs[i + 1], buf[recs[i + 2]:recs[i + 3]]
    finally:
        cast(Generator[Batch, None, None], batches).close()


def read_batches(path: str | os.PathLike[str], stats: Stats | None = None,
                 runs: bool = False) -> Iterator[Batch]:
    """The same packets as :func:`read_packets`, without copying them: ``(buf, recs)`` per
    chunk read, where ``recs`` is flat, four ints per packet: timestamp_ns, linktype, and
    the frame's start and end in ``buf`` (one list per 4 MiB instead of one object per
    packet); errors and counters are as in read_packets.

    With ``runs``, the chunks come as :class:`PcapRun` or :class:`PcapngRun` items instead,
    for a consumer that walks the records itself (``upf-tap read`` does); the blocks such a
    walk stops at (other block types, a new interface, damage) still come as batches.
    """
    name = os.fsdecode(path)
    if stats is None:
        stats = collections.Counter()
    src = _open(name, mapped=runs)  # a walk of whole runs (upf-tap read) reads the file mapped
    try:
        head = src.buf
        if not head:
            raise CaptureError(f"{name}: empty file" + (" (gzip)" if src.cut else ""))
        magic = head[:4]
        if magic in _PCAP_MAGICS:
            gen = _read_pcap(src, stats, runs)
        elif magic == b"\x0a\x0d\x0d\x0a":
            gen = _read_pcapng(src, stats, runs)
        else:
            raise CaptureError(f"{name}: not a pcap or pcapng file (starts with 0x{magic.hex()})")
        # Run the generator up to its try/finally: from now on close() or garbage
        # collection closes the file even if no packet is ever read.
        next(gen)
    except BaseException:
        src.close()
        raise
    stats["capture.files"] += 1
    return cast(Iterator[Batch], gen)


def merge_captures(paths: Sequence[str | os.PathLike[str]], stats: Stats | None = None) -> Iterator[Packet]:
    """Packets of several files merged by timestamp; equal times keep file order, then record order.

    Each file is assumed to be in time order (true of what a capture tool writes); if one
    is not, its packets still come out in its own order, interleaved as ``heapq.merge`` does.
    All headers are checked before the first packet is yielded.
    """
    if stats is None:
        stats = collections.Counter()
    readers: list[Iterator[Packet]] = []
    try:
        for p in paths:
            readers.append(read_packets(p, stats))
    except CaptureError:
        for r in readers:
            cast(Generator[Packet, None, None], r).close()
        raise
    if len(readers) == 1:
        return readers[0]
    # heapq.merge breaks ties on the iterable's position, so equal times keep file order.
    return heapq.merge(*readers, key=_ts)


def _ts(p: Packet) -> int:
    return p[0]


# --- pcap ----------------------------------------------------------------------------------


def _read_pcap(src: _Source, stats: Stats, runs: bool) -> _Records:
    if not src.more(_PCAP_HDR_LEN):
        raise CaptureError(f"{src.name}: truncated pcap file header ({src.left()} of {_PCAP_HDR_LEN} bytes)")
    order, mul = _PCAP_MAGICS[src.buf[:4]]
    snaplen, network = struct.unpack_from(order + "II", src.buf, 16)
    src.off = _PCAP_HDR_LEN
    limit = min(max(snaplen, DEFAULT_MAX_CAPLEN), MAX_RECORD)
    run = PcapRun(struct.Struct(order + "III4x"), mul, network & _LINKTYPE_MASK, limit)  # orig. length unused
    return _pcap_records(src, stats, run, runs)


def _pcap_records(src: _Source, stats: Stats, run: PcapRun, runs: bool) -> _Records:
    unpack, limit = run.rec, run.limit
    try:
        yield None
        while True:
            run.buf, run.off = src.buf, src.off
            if runs:
                yield run  # the consumer walks the whole records and moves run.off past them
            else:
                recs = run.records()
                if recs:
                    yield run.buf, recs
            src.off = run.off
            # The record at off is not whole in this chunk: judge it, then refill.
            if not src.more(_PCAP_REC_LEN):
                if src.left() or src.cut:
                    stats["capture.truncated"] += 1
                return
            incl = unpack(src.buf, src.off)[2]
            if incl > limit:
                stats["capture.bad_block"] += 1
                return
            if not src.more(_PCAP_REC_LEN + incl):
                stats["capture.truncated"] += 1
                return
    finally:
        stats["capture.packets"] += run.packets
        src.close()


# --- pcapng --------------------------------------------------------------------------------


def _read_pcapng(src: _Source, stats: Stats, runs: bool) -> _Records:
    # The first Section Header Block must be sane, or this is not a pcapng file at all.
    if not src.more(_MIN_BLOCK[_SHB]):
        raise CaptureError(f"{src.name}: truncated pcapng section header ({src.left()} bytes)")
    buf = src.buf
    bom = buf[8:12]
    if bom not in (_BOM_LE, _BOM_BE):
        raise CaptureError(f"{src.name}: pcapng section header has a bad byte-order magic 0x{bom.hex()}")
    o = _LE if bom == _BOM_LE else _BE
    major = o.u16(buf, 12)[0]
    if major != 1:
        raise CaptureError(f"{src.name}: unsupported pcapng version {major}")
    return _pcapng_blocks(src, stats, runs)


def _tsresol_units(v: int) -> int:
    """if_tsresol: units per second, 10^v or 2^(v & 0x7f) when the top bit is set."""
    return 1 << (v & 0x7F) if v & 0x80 else 10**v


def _parse_idb(o: _Order, buf: bytes, off: int, blen: int) -> tuple[int, int, int, int, int]:
    """(linktype, mul, div, tsoffset_ns, snaplen): timestamp_ns = raw * mul // div + tsoffset_ns."""
    linktype, _, snaplen = o.idb(buf, off + 8)
    units, tsoff = 1_000_000, 0
    seen_resol = seen_off = False
    p, end = off + 16, off + blen - 4
    while p + 4 <= end:  # options: code, length, value padded to 4 bytes
        code, olen = o.opt(buf, p)
        if code == _OPT_ENDOFOPT or p + 4 + olen > end:
            break
        if code == _OPT_IF_TSRESOL and olen >= 1 and not seen_resol:
            units, seen_resol = _tsresol_units(buf[p + 4]), True
        elif code == _OPT_IF_TSOFFSET and olen >= 8 and not seen_off:
            tsoff, seen_off = o.tsoff(buf, p + 4)[0], True
        p += 4 + ((olen + 3) & ~3)
    if _NS % units == 0:  # exact: a multiply, no division, on the hot path
        mul, div = _NS // units, 1
    else:  # finer than ns or a power of 2: floor, as Wireshark does
        mul, div = _NS, units
    return linktype, mul, div, tsoff * _NS, snaplen


def _pcapng_blocks(src: _Source, stats: Stats, runs: bool) -> _Records:
    o = _LE
    run = PcapngRun()
    ifaces = run.ifaces
    npk = 0
    try:
        yield None
        while True:
            # --- hot loop: consecutive well-formed EPBs of known interfaces in this chunk
            run.buf, run.off = src.buf, src.off
            if runs:
                yield run  # the consumer walks them and moves run.off past them
            else:
                recs = run.records()
                if recs:
                    yield run.buf, recs
            src.off = run.off

            # --- slow path: exactly one block at src.off, any type, all checks
            if not src.more(12):
                if src.left() or src.cut:
                    stats["capture.truncated"] += 1
                return
            buf, off = src.buf, src.off
            btype = _LE.u32(buf, off)[0]
            if btype == _SHB:
                bom = buf[off + 8:off + 12]
                if bom == _BOM_LE:
                    o = _LE
                elif bom == _BOM_BE:
                    o = _BE
                else:
                    stats["capture.bad_block"] += 1
                    return
                run.epb, run.trailer = o.epb, o.blen
            else:
                btype = o.u32(buf, off)[0]
            blen = o.blen(buf, off + 4)[0]
            if blen & 3 or blen < _MIN_BLOCK.get(btype, 12) or blen > MAX_RECORD:
                stats["capture.bad_block"] += 1
                return
            if not src.more(blen):
                stats["capture.truncated"] += 1
                return
            buf, off = src.buf, src.off
            if o.blen(buf, off + blen - 4)[0] != blen:  # trailing copy of the length
                stats["capture.bad_block"] += 1
                return
            src.off = off + blen
            if btype in (_EPB, _PB):
                if btype == _EPB:
                    ifid, th, tl, cap = o.epb(buf, off)[2:]
                else:
                    ifid, _drops, th, tl, cap = o.pb(buf, off + 8)
                if cap > blen - 32:
                    stats["capture.bad_block"] += 1
                    return
                if ifid >= len(ifaces):
                    stats["capture.unknown_interface"] += 1
                    continue
                lt, mul, div, tsoff, _ = ifaces[ifid]
                yield buf, [((th << 32) | tl) * mul // div + tsoff, lt, off + 28, off + 28 + cap]
                npk += 1
            elif btype == _SPB:
                if not ifaces:
                    stats["capture.unknown_interface"] += 1
                    continue
                lt, _, _, _, snaplen = ifaces[0]
                cap = min(o.spb(buf, off + 8)[0], blen - 16)
                if snaplen:
                    cap = min(cap, snaplen)
                yield buf, [0, lt, off + 12, off + 12 + cap]
                npk += 1
            elif btype == _IDB:
                ifaces.append(_parse_idb(o, buf, off, blen))
            elif btype == _SHB:
                if o.u16(buf, off + 12)[0] != 1:  # a major version we cannot read
                    stats["capture.bad_block"] += 1
                    return
                ifaces.clear()  # interface ids restart in every section
            # anything else (NRB, ISB, DSB, custom, unknown) is skipped by its length
    finally:
        stats["capture.packets"] += npk + run.packets
        src.close()
