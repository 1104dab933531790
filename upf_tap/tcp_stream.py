"""TCP state: per-direction reassembly into a bounded window, feeding a stream dissector, and closing.

A direction holds only the bytes its dissector has not consumed yet, at most ``depth`` of
them (like Suricata's stream depth, but per message): consumed bytes are dropped and the
window slides on, so a keep-alive connection's hundredth request is read like its first,
and a body the dissector skips is never held. A message longer than the depth ends the
direction (``tcp.depth_reached``). Out-of-order segments wait in a small bounded map;
retransmitted and overlapping bytes are first-come (the copy already held wins). A hole that
``MAX_OOO_SEGMENTS`` later segments leave unfilled ends the direction (``tcp.ooo_overflow``).

Which dissector reads a direction: the one of its server port, else the first whose
``looks_like`` takes the stream's first bytes. If none does, or the dissector gives up
(``Malformed``: say a PROXY header before TLS) or hands the rest on (``HANDOFF``: an HTTP
CONNECT tunnel), the sniffers are tried again at the start of each of the next few segments
(``resniff``, given to uplink directions: the client's side, where these protocols begin),
as tshark's TCP heuristics are: that finds TLS after STARTTLS or a CONNECT, HTTP after a
SOCKS greeting. A direction with nothing to read is done at once (the fast path skips it).
"""

from __future__ import annotations

from collections import Counter

from upf_tap.constants import MAX_OOO_SEGMENTS, TCP_RST, TCP_SYN
from upf_tap.dissect import HANDOFF, Dissector, Found, Malformed, sniff_stream, stream_dissector

SEQ_MOD = 0xFFFFFFFF
HALF_SEQ = 0x80000000
SNIFF_LEN = 16  # bytes the sniffers look at
MAX_HANDOFFS = 4  # dissectors that may give up on one direction in turn


class StreamDirection:
    """The unconsumed in-order bytes of one TCP direction and the dissector reading them."""

    __slots__ = ("buf", "dissector", "done", "handoffs", "isn", "name", "ooo", "pos", "resniff", "sniff_left")

    def __init__(self, resniff: int = 0) -> None:
        self.isn: int = -1             # sequence number of buf[0] (-1: unknown yet)
        self.buf = bytearray()
        self.ooo: dict[int, bytes] = {}  # offset from isn -> bytes that arrived early
        self.pos = 0                   # where the dissector resumes in buf
        self.dissector: Dissector | None = None
        self.name = ""                 # the dissector chosen at the first bytes ("" before)
        self.done = False
        self.resniff = resniff         # segments offered to the sniffers when no dissector reads on
        self.sniff_left = 0            # of which left now
        self.handoffs = 0

    def finish(self) -> None:
        self.done = True
        self.dissector = None
        self.buf = bytearray()
        self.ooo = {}

    def segment(self, flags: int, seq: int, data: bytes, start: int, end: int, dport: int, depth: int,
                stats: Counter[str]) -> Found:
        """One segment of this direction, not done yet, payload ``data[start:end]``: a SYN sets
        the ISN; new in-order bytes go to the dissector (chosen at the first, by ``dport`` or
        content). Returns the events found."""
        if flags & TCP_SYN:
            if not self.name:  # no byte yet (a retransmitted SYN must not move the window back)
                self.isn = (seq + 1) & 0xFFFFFFFF
            seq = (seq + 1) & 0xFFFFFFFF  # data in a SYN (TCP Fast Open, RFC 7413) follows it
        if start >= end:
            return []
        if self.isn < 0:
            self.isn = seq
        held = len(self.buf)
        if not self.add_segment(seq, data[start:end], depth, stats):
            return []
        if not self.name:
            d = self.dissector = stream_dissector(dport, bytes(self.buf[:SNIFF_LEN]))
            self.name = d.name if d is not None else "-"
            if d is None:
                self.sniff_left = self.resniff
                self._consume(len(self.buf))
                if self.sniff_left <= 0:
                    self.finish()
                return []
        if self.dissector is None:
            return self._sniff(held, depth, stats)
        return self.run(depth, stats)

    def add_segment(self, seq: int, payload: bytes, depth: int, stats: Counter[str]) -> bool:
        """Place a segment; True when new in-order bytes were appended."""
        if self.isn < 0:
            self.isn = seq
        rel = (seq - self.isn) & SEQ_MOD
        if rel >= HALF_SEQ:
            # before the window: bytes already consumed (or a retransmission) whose tail may be new
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
                stats["tcp.beyond_depth"] += 1  # past a hole, further on than the window reaches
                return False
            if len(self.ooo) >= MAX_OOO_SEGMENTS:
                # a hole that this many later segments have not filled will not be: the direction
                # is over (tshark, holding what follows a hole until it fills, reads nothing past
                # it either), and the fast path skips the rest instead of counting each segment here
                stats["tcp.ooo_overflow"] += 1
                self.finish()
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

    def _consume(self, n: int) -> None:
        """Slide the window ``n`` bytes on (past what is held, too: a body being skipped)."""
        if n <= 0:
            return
        del self.buf[:n]
        self.isn = (self.isn + n) & SEQ_MOD
        if self.ooo:
            self.ooo = {k - n: v if k >= n else v[n - k :] for k, v in self.ooo.items() if k + len(v) > n}
        self.pos = max(self.pos - n, 0)

    def _sniff(self, new_at: int, depth: int, stats: Counter[str]) -> Found:
        """No dissector: offer the bytes that start a new segment (at ``new_at``) to the sniffers."""
        d = sniff_stream(bytes(self.buf[new_at : new_at + SNIFF_LEN]))
        if d is None:
            self.sniff_left -= 1
            self._consume(len(self.buf))
            if self.sniff_left <= 0:
                self.finish()
            return []
        self._consume(new_at)
        self.dissector = d
        self.pos = 0
        return self.run(depth, stats)

    def run(self, depth: int, stats: Counter[str]) -> Found:
        """Let the dissector read what is new; slide the window past what it consumed."""
        d = self.dissector
        if d is None or d.stream is None:
            self.finish()
            return []
        try:
            found, pos, done = d.stream(bytes(self.buf), self.pos)
        except Malformed:
            stats[f"{d.name}.malformed"] += 1
            return self._hand_off(self.pos, depth, stats, d)
        if done:
            if done == HANDOFF:
                return found + self._hand_off(pos, depth, stats, d)
            self.finish()
            return found
        self.pos = pos
        if pos >= len(self.buf):
            self._consume(pos)  # everything read (or a body to skip beyond it)
        elif pos > 0 and len(self.buf) >= depth // 2:
            self._consume(pos)  # keep room for the next message
        if len(self.buf) >= depth:
            stats["tcp.depth_reached"] += 1
            self.finish()
        return found

    def _hand_off(self, pos: int, depth: int, stats: Counter[str], failed: Dissector) -> Found:
        """``failed`` cannot read on from ``pos``: the sniffers get what follows, for the next
        ``resniff`` segments (another dissector than ``failed`` for the bytes held now)."""
        self.handoffs += 1
        if self.handoffs > MAX_HANDOFFS or not self.resniff:
            self.finish()
            return []
        self._consume(min(pos, len(self.buf)))
        self.dissector = None
        self.sniff_left = self.resniff
        if self.buf:
            d = sniff_stream(bytes(self.buf[:SNIFF_LEN]), failed)
            if d is not None:
                self.dissector = d
                self.pos = 0
                return self.run(depth, stats)
            self._consume(len(self.buf))
        return []


def closes(state: list[object], idx: int, flags: int) -> bool:
    """A FIN or RST on direction ``idx``; ``state`` is the flow's per-direction state, where
    True marks a direction closed. True when the flow is over: a reset, or both sides closed
    (until then the stream stays open for late segments)."""
    state[idx] = True
    return bool(flags & TCP_RST) or state[1 - idx] is True
