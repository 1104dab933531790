"""The bidirectional flow table: UE + 5-tuple, idle/hard timeouts, LRU cap; which end is the UE.

Each flow is reachable from both directional keys (source then destination address and
port bytes, exactly as they stand in the packet), so the per-packet lookup is one dict
access with no normalisation. Keys live in one dict per transport protocol.

Besides this module, only ``upf_tap.walk`` (the fast path) reads the table's insides: it
inlines :meth:`FlowTable.touch` and looks keys up in ``by_proto[TCP]`` and ``skip``.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable

from upf_tap.constants import LRU_TOUCH_NS
from upf_tap.decode.gtpu import PDU_TYPE_DL, PDU_TYPE_UL
from upf_tap.tcp_stream import StreamDirection


def owner(src: bytes, dst: bytes, workers: int) -> int:
    """Which of ``workers`` taps reads the user packets between these two addresses (either
    way), as the live tap's fanout program (``capture.bpf.fanout_n3_program``) chooses its
    socket: the XOR of the addresses' last 32 bits, folded (``h = x ^ x >> 16; h ^= h >> 8``),
    modulo the workers. XOR keeps both directions of a flow on one; the fold lets every byte
    of the addresses count, not only the last bits."""
    x = int.from_bytes(src[-4:], "big") ^ int.from_bytes(dst[-4:], "big")
    x ^= x >> 16
    return (x ^ (x >> 8)) % workers


class Flow:
    """One bidirectional flow. Direction 0 is the direction of the first packet seen."""

    __slots__ = (
        "addrs", "first_ns", "key0", "key1", "last_ns", "octets", "pkts", "proto", "quiet",
        "state", "streams", "table", "touch_at", "ue_ip", "ue_is_src0",
    )

    def __init__(self, table: dict[bytes, tuple[Flow, int]], key0: bytes, key1: bytes, proto: str,
                 addrs: tuple[str, str, int, int], ue_is_src0: bool, ts_ns: int) -> None:
        self.table = table
        self.key0 = key0
        self.key1 = key1
        self.proto = proto
        self.addrs = addrs            # (src, dst, sport, dport) of direction 0
        self.ue_is_src0 = ue_is_src0
        self.ue_ip = addrs[0] if ue_is_src0 else addrs[1]
        self.first_ns = ts_ns
        self.last_ns = ts_ns
        # A packet after this time moves the flow to the recent end of the LRU order (then
        # sets it LRU_TOUCH_NS later): one move per second at most, not one per packet.
        self.touch_at = ts_ns + LRU_TOUCH_NS
        self.pkts = [0, 0]
        self.octets = [0, 0]
        self.streams: list[StreamDirection | None] = [None, None]
        self.state: list[object] = [None, None]  # per-direction dissector state (e.g. QUIC assembly)
        self.quiet = [0, 0]  # UDP: datagrams in a row that no dissector took, per direction

    def direction(self, idx: int) -> str:
        """'ul' when direction ``idx`` goes from the UE, else 'dl'."""
        return "ul" if (idx == 0) == self.ue_is_src0 else "dl"

    def flow_fields(self, idx: int) -> dict[str, object]:
        src, dst, sport, dport = self.addrs
        if idx:
            src, dst, sport, dport = dst, src, dport, sport
        d: dict[str, object] = {"proto": self.proto, "src": src, "dst": dst}
        if self.proto in ("tcp", "udp", "sctp"):
            d["sport"] = sport
            d["dport"] = dport
        return d


class FlowTable:
    """Flows by directional key, with LRU order for eviction and idle expiry."""

    __slots__ = ("by_proto", "hard_ns", "idle_ns", "lru", "max_flows", "on_end", "skip", "udp_skip")

    def __init__(self, max_flows: int, idle_s: float, hard_s: float,
                 on_end: Callable[[Flow, int, str], None]) -> None:
        self.by_proto: dict[int, dict[bytes, tuple[Flow, int]]] = {}
        self.lru: OrderedDict[bytes, Flow] = OrderedDict()  # key0 -> flow, least recent first
        # TCP directions with nothing left to inspect (their stream is done), as in the TCP
        # table: the fast path's one lookup for a data segment
        self.skip: dict[bytes, tuple[Flow, int]] = {}
        self.udp_skip: dict[bytes, tuple[Flow, int]] = {}  # the same for UDP directions gone quiet
        self.max_flows = max_flows
        self.idle_ns = int(idle_s * 1e9)
        self.hard_ns = int(hard_s * 1e9)
        self.on_end = on_end

    def table(self, proto: int) -> dict[bytes, tuple[Flow, int]]:
        t = self.by_proto.get(proto)
        if t is None:
            t = self.by_proto[proto] = {}
        return t

    def open(self, table: dict[bytes, tuple[Flow, int]], key0: bytes, key1: bytes, proto: str,
             addrs: tuple[str, str, int, int], ue_is_src0: bool, ts_ns: int) -> Flow:
        """A new flow under both its keys (the least recently used one evicted if the table is full)."""
        flow = Flow(table, key0, key1, proto, addrs, ue_is_src0, ts_ns)
        self.add(flow, ts_ns)
        return flow

    def touch(self, flow: Flow, ts_ns: int) -> None:
        """A packet of ``flow`` at ``ts_ns``: its last time, and its place in the LRU order
        (moved to the recent end at most once per LRU_TOUCH_NS). ``upf_tap.walk`` inlines this."""
        if ts_ns > flow.touch_at:
            self.lru.move_to_end(flow.key0)
            flow.touch_at = ts_ns + LRU_TOUCH_NS
        flow.last_ns = ts_ns

    def skip_direction(self, flow: Flow, idx: int) -> None:
        """Direction ``idx`` of ``flow`` (TCP or UDP) has nothing left to inspect: the fast path skips it."""
        (self.skip if flow.proto == "tcp" else self.udp_skip)[flow.key1 if idx else flow.key0] = (flow, idx)

    def add(self, flow: Flow, ts_ns: int) -> None:
        lru = self.lru
        if len(lru) >= self.max_flows:
            _, old = next(iter(lru.items()))
            self.end(old, ts_ns, "evicted")
        flow.table[flow.key0] = (flow, 0)
        flow.table[flow.key1] = (flow, 1)
        lru[flow.key0] = flow

    def end(self, flow: Flow, ts_ns: int, reason: str) -> None:
        t = flow.table
        t.pop(flow.key0, None)
        t.pop(flow.key1, None)
        if self.skip and flow.proto == "tcp":
            self.skip.pop(flow.key0, None)
            self.skip.pop(flow.key1, None)
        elif self.udp_skip and flow.proto == "udp":
            self.udp_skip.pop(flow.key0, None)
            self.udp_skip.pop(flow.key1, None)
        self.lru.pop(flow.key0, None)
        self.on_end(flow, ts_ns, reason)

    def expire(self, now_ns: int, hard: bool) -> None:
        """End flows idle past the timeout; with ``hard``, also those older than the hard timeout.

        The idle scan stops at the first recent flow (LRU order); the hard scan walks every
        flow, so the caller runs it less often.
        """
        lru = self.lru
        idle_limit = now_ns - self.idle_ns
        hard_limit = now_ns - self.hard_ns
        stale = []
        for flow in lru.values():
            if flow.last_ns >= idle_limit:
                break
            stale.append(flow)
        for flow in stale:
            self.end(flow, now_ns, "idle")
        if hard and self.hard_ns:
            old = [f for f in lru.values() if f.first_ns < hard_limit]
            for flow in old:
                self.end(flow, now_ns, "hard_timeout")

    def end_all(self, now_ns: int) -> None:
        """End every flow (end of input), in LRU order: the tables emptied at once, not key by key."""
        flows = list(self.lru.values())
        self.lru.clear()
        self.skip.clear()
        self.udp_skip.clear()
        for table in self.by_proto.values():
            table.clear()
        for flow in flows:
            self.on_end(flow, now_ns, "end_of_input")

    def __len__(self) -> int:
        return len(self.lru)


class UeSide:
    """Which end of a new flow is the UE.

    The tunnel says so when its PDU Session Container carries the PDU type (UL: the sender);
    else the end inside a UE address pool; else the client (UEs open connections far more
    often than they accept them); else the sender.
    """

    __slots__ = ("pools",)

    def __init__(self, pools: Iterable[str]) -> None:
        self.pools = [ipaddress.ip_network(p, strict=False) for p in pools]

    def is_src(self, src: bytes, dst: bytes, pdu_type: int, client_is_src: bool | None) -> bool:
        """True when the sender (``src``, raw address) is the UE; ``pdu_type`` -1 when unknown."""
        if pdu_type == PDU_TYPE_UL:
            return True
        if pdu_type == PDU_TYPE_DL:
            return False
        s = ipaddress.ip_address(src)
        d = ipaddress.ip_address(dst)
        s_in = any(s in p for p in self.pools)
        d_in = any(d in p for p in self.pools)
        if s_in != d_in:
            return s_in
        if client_is_src is not None:
            return client_is_src
        return True
