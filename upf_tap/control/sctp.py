"""SCTP (RFC 9260) as far as the tap needs it: common header, chunks, DATA user messages.

``SctpReader.feed`` takes one whole SCTP packet and returns the complete user messages
it finishes, as (ppid, stream id, bytes). Several chunks per packet (bundling) are
walked in order; chunk types other than DATA are skipped; a fragmented message
(B/E bits) is reassembled per direction and stream when its pieces arrive with
consecutive TSNs, otherwise it is dropped and counted. A DATA chunk whose TSN was
already seen in that direction is a retransmission and is not delivered twice.
I-DATA (RFC 8260) is out of scope and counted.
"""

from __future__ import annotations

import collections
import struct

CHUNK_DATA = 0
CHUNK_IDATA = 64
COMMON_HEADER = 12
DATA_HEADER = 16            # chunk header (4) + TSN, stream id, stream seq, PPID (12)
MAX_MESSAGE = 256 * 1024    # NGAP messages are a few kB; anything larger is dropped
MAX_PARTIAL = 1024          # messages being reassembled at once
RECENT_TSNS = 512           # TSNs remembered per direction to spot retransmissions

Message = tuple[int, int, bytes]          # (ppid, stream id, payload)
DirKey = tuple[str, int, str, int, int]   # (src, sport, dst, dport, verification tag)


class SctpError(ValueError):
    """Malformed SCTP packet."""


def ports(packet: bytes | memoryview) -> tuple[int, int]:
    if len(packet) < COMMON_HEADER:
        raise SctpError("short SCTP common header")
    sport, dport = struct.unpack_from("!HH", packet, 0)
    return sport, dport


def iter_chunks(packet: bytes) -> list[tuple[int, int, int, int]]:
    """(type, flags, value start, value end) of every chunk, in order."""
    out: list[tuple[int, int, int, int]] = []
    off = COMMON_HEADER
    n = len(packet)
    while off < n:
        if n - off < 4:
            raise SctpError("truncated chunk header")
        ctype, flags, clen = struct.unpack_from("!BBH", packet, off)
        if clen < 4 or off + clen > n:
            raise SctpError(f"chunk length {clen} out of bounds")
        out.append((ctype, flags, off + 4, off + clen))
        off += (clen + 3) & ~3
    return out


class _Partial:
    __slots__ = ("next_tsn", "parts", "ppid", "size")

    def __init__(self, tsn: int, ppid: int, first: bytes) -> None:
        self.next_tsn = (tsn + 1) & 0xFFFFFFFF
        self.ppid = ppid
        self.parts = [first]
        self.size = len(first)


class SctpReader:
    def __init__(self, stats: collections.Counter[str]) -> None:
        self.stats = stats
        self.partial: dict[tuple[DirKey, int, bool], _Partial] = {}
        self.recent: dict[DirKey, collections.OrderedDict[int, None]] = {}

    def feed(self, src: str, dst: str, packet: bytes | memoryview) -> list[Message]:
        pkt = bytes(packet)
        if len(pkt) < COMMON_HEADER:
            raise SctpError("short SCTP common header")
        sport, dport, vtag = struct.unpack_from("!HHI", pkt, 0)
        direction: DirKey = (src, sport, dst, dport, vtag)
        out: list[Message] = []
        for ctype, flags, vs, ve in iter_chunks(pkt):
            if ctype == CHUNK_IDATA:
                self.stats["sctp.idata"] += 1
                continue
            if ctype != CHUNK_DATA:
                continue
            if ve - vs < DATA_HEADER - 4:
                raise SctpError("short DATA chunk")
            tsn, sid, _ssn, ppid = struct.unpack_from("!IHHI", pkt, vs)
            if self._seen(direction, tsn):
                self.stats["sctp.retransmission"] += 1
                continue
            data = pkt[vs + 12:ve]
            begin, end, unordered = bool(flags & 0x02), bool(flags & 0x01), bool(flags & 0x04)
            if begin and end:
                out.append((ppid, sid, data))
                continue
            self._fragment(direction, sid, unordered, tsn, ppid, begin, end, data, out)
        return out

    def _seen(self, direction: DirKey, tsn: int) -> bool:
        recent = self.recent.get(direction)
        if recent is None:
            if len(self.recent) >= MAX_PARTIAL * 4:
                self.recent.pop(next(iter(self.recent)))
            recent = self.recent[direction] = collections.OrderedDict()
        if tsn in recent:
            return True
        recent[tsn] = None
        if len(recent) > RECENT_TSNS:
            recent.popitem(last=False)
        return False

    def _fragment(self, direction: DirKey, sid: int, unordered: bool, tsn: int, ppid: int,
                  begin: bool, end: bool, data: bytes, out: list[Message]) -> None:
        key = (direction, sid, unordered)
        if begin:
            if key in self.partial:
                self.stats["sctp.fragment_dropped"] += 1
            if len(self.partial) >= MAX_PARTIAL:
                self.partial.pop(next(iter(self.partial)))
                self.stats["sctp.fragment_dropped"] += 1
            self.partial[key] = _Partial(tsn, ppid, data)
            return
        part = self.partial.get(key)
        if part is None or part.next_tsn != tsn:
            # a piece out of order or without its start: not worth a full reorder buffer
            self.stats["sctp.fragment_dropped"] += 1
            self.partial.pop(key, None)
            return
        part.parts.append(data)
        part.size += len(data)
        part.next_tsn = (tsn + 1) & 0xFFFFFFFF
        if part.size > MAX_MESSAGE:
            self.stats["sctp.fragment_dropped"] += 1
            del self.partial[key]
            return
        if end:
            del self.partial[key]
            self.stats["sctp.reassembled"] += 1
            out.append((part.ppid, sid, b"".join(part.parts)))
