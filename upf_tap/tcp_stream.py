"""TCP state: per-direction reassembly up to a depth, feeding a stream dissector, and closing.

Only the first ``depth`` bytes of each direction are kept (like Suricata's stream depth):
application events live in the first request bytes, and bulk transfers then cost one
flag test per packet. Out-of-order segments wait in a small bounded map; retransmitted
and overlapping bytes are first-come (the copy already in the buffer wins).
"""

from __future__ import annotations

from collections import Counter

from upf_tap.constants import MAX_OOO_SEGMENTS, TCP_RST, TCP_SYN
from upf_tap.dissect import Dissector, Found, Malformed, stream_dissector

SEQ_MOD = 0xFFFFFFFF
HALF_SEQ = 0x80000000


class StreamDirection:
    """The in-order bytes of one TCP direction and the dissector reading them."""

    __slots__ = ("buf", "dissector", "done", "isn", "name", "ooo", "pos")

    def __init__(self) -> None:
        self.isn: int = -1             # sequence number of the first stream byte (-1: unknown yet)
        self.buf = bytearray()
        self.ooo: dict[int, bytes] = {}
        self.pos = 0                   # where the dissector resumes
        self.dissector: Dissector | None = None
        self.name = ""
        self.done = False

    def finish(self) -> None:
        self.done = True
        self.buf = bytearray()
        self.ooo = {}

    def segment(self, flags: int, seq: int, data: bytes, start: int, end: int, dport: int, depth: int,
                stats: Counter[str]) -> Found:
        """One segment of this direction, not done yet, payload ``data[start:end]``: a SYN sets
        the ISN; new in-order bytes go to the dissector (chosen at the first, by ``dport`` or
        content). Returns the events found."""
        if flags & TCP_SYN:
            self.isn = (seq + 1) & 0xFFFFFFFF
        elif start < end:
            if self.isn < 0:
                self.isn = seq
            if self.add_segment(seq, data[start:end], depth, stats):
                if not self.name:
                    d = self.dissector = stream_dissector(dport, bytes(self.buf[:16]))
                    if d is None:
                        self.finish()
                    else:
                        self.name = d.name
                if not self.done:
                    return self.run(depth, stats)
        return []

    def add_segment(
        self, seq: int, payload: bytes, depth: int, stats: Counter[str]
    ) -> bool:
        """Place a segment; True when new in-order bytes were appended."""
        if self.isn < 0:
            self.isn = seq
        rel = (seq - self.isn) & SEQ_MOD
        if rel >= HALF_SEQ:
            # before the stream start: a retransmission whose tail may still be new
            back = SEQ_MOD + 1 - rel
            if back >= len(payload):
                stats["tcp.retransmission"] += 1
                return False
            payload = payload[back:]
            rel = 0
        buf = self.buf
        blen = len(buf)
        if rel > blen:
            if rel >= depth:
                return False
            if len(self.ooo) >= MAX_OOO_SEGMENTS:
                stats["tcp.ooo_overflow"] += 1
                return False
            old = self.ooo.get(rel)
            if old is None or len(old) < len(payload):
                self.ooo[rel] = payload
            stats["tcp.out_of_order"] += 1
            return False
        end = rel + len(payload)
        if end <= blen:
            stats["tcp.retransmission"] += 1
            return False
        buf += payload[blen - rel : depth - rel]
        if self.ooo:
            self._drain(depth)
        return True

    def _drain(self, depth: int) -> None:
        ooo = self.ooo
        buf = self.buf
        progressed = True
        while progressed and ooo and len(buf) < depth:
            progressed = False
            blen = len(buf)
            for rel in sorted(ooo):
                if rel > blen:
                    break
                data = ooo.pop(rel)
                if rel + len(data) > blen:
                    buf += data[blen - rel : depth - rel]
                    progressed = True
                    break

    def run(self, depth: int, stats: Counter[str]) -> Found:
        """Let the dissector read what is new; finish the direction when nothing more can come."""
        d = self.dissector
        if d is None or d.stream is None:
            self.finish()
            return []
        try:
            found, pos, done = d.stream(bytes(self.buf), self.pos)
        except Malformed:
            stats[f"{self.name}.malformed"] += 1
            self.finish()
            return []
        self.pos = pos
        if done or pos >= depth or len(self.buf) >= depth:
            if not done and len(self.buf) >= depth and pos < len(self.buf):
                stats["tcp.depth_reached"] += 1
            self.finish()
        return found


def closes(state: list[object], idx: int, flags: int) -> bool:
    """A FIN or RST on direction ``idx``; ``state`` is the flow's per-direction state, where
    True marks a direction closed. True when the flow is over: a reset, or both sides closed
    (until then the stream stays open for late segments)."""
    state[idx] = True
    return bool(flags & TCP_RST) or state[1 - idx] is True
