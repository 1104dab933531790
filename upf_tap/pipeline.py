"""The tap pipeline: captured frames in, AppEvents out.

Link → outer IP (fragments reassembled) → UDP → GTP-U (N3) or plain IP (N6) → inner IP
(fragments reassembled) → flow table → TCP reassembly or datagram → dissectors. PFCP and
SCTP/NGAP packets go to the control plane, which enriches user-plane events with the
subscriber's identity.

This module holds ``feed``, the per-layer dispatch and the emission of events; the layers
live in their own modules:

=====================  ==============================================================
``upf_tap.walk``       the fast path: capture records walked and tested in one loop
``decode.link``        where IP starts in a frame
``decode.ip``          IPv4/IPv6 headers, extension headers, fragments (``IPLayer``)
``decode.gtpu``        GTP-U and the PDU Session Container
``flows``              the flow table (LRU, timeouts) and which end is the UE
``tcp_stream``         TCP state: reassembly up to a depth, closing
``dissect``            the dissectors and the port tables built from their declarations
``events``             AppEvent construction and the subscriber's identity
=====================  ==============================================================

The per-packet path is written for speed: frames are handled as ``bytes`` with
``struct.unpack_from``; no object is made per packet except the flow key; dicts for the
event are built only when an event is emitted.
"""

from __future__ import annotations

import gc
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from zlib import crc32 as _crc32

from upf_tap.constants import (
    DEFAULT_FLOW_HARD_TIMEOUT,
    DEFAULT_FLOW_IDLE_TIMEOUT,
    DEFAULT_MAX_FLOWS,
    DEFAULT_MAX_FRAGMENT_SETS,
    DEFAULT_STREAM_DEPTH,
    DEFAULT_TAP_ID,
    DEFAULT_UE_POOLS,
    FRAGMENT_TIMEOUT,
    GC_THRESHOLD,
    GENEVE_PORT,
    GRE_UDP_PORT,
    GTPU_ECHO_REQUEST,
    GTPU_ECHO_RESPONSE,
    GTPU_END_MARKER,
    GTPU_ERROR_INDICATION,
    GTPU_GPDU,
    GTPU_PORT,
    GTPU_SUPPORTED_EXT_HEADERS,
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LRU_TOUCH_NS,
    MAX_NESTED_TUNNELS,
    PFCP_PORT,
    RESNIFF_SEGMENTS,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    UDP_QUIET_DATAGRAMS,
    VXLAN_PORT,
)
from upf_tap.decode import tunnels
from upf_tap.decode.gtpu import BAD_REASONS, GtpuContext, parse_gtpu
from upf_tap.decode.ip import FragmentReassembler, IPLayer, ip_str
from upf_tap.decode.link import LINKTYPE_ETHERNET, ip_offset
from upf_tap.dissect import IP_PROTOS, Dissector, Malformed, datagram_dissector
from upf_tap.events import AppEvent, end_marker, identify, make_event
from upf_tap.flows import Flow, FlowTable, UeSide, owner
from upf_tap.tcp_stream import StreamDirection, closes
from upf_tap.walk import walk

if TYPE_CHECKING:
    from upf_tap.capture.pcapfile import PcapngRun, PcapRun
    from upf_tap.control.correlator import ControlPlane
    from upf_tap.walk import Batch

_ports = struct.Struct("!HH").unpack_from
_tcp_hdr = struct.Struct("!HHIIBB").unpack_from  # ports, seq, ack, data offset, flags

GTPU_COUNTED = {
    GTPU_ECHO_REQUEST: "gtpu.echo_request",
    GTPU_ECHO_RESPONSE: "gtpu.echo_response",
    GTPU_ERROR_INDICATION: "gtpu.error_indication",
    GTPU_END_MARKER: "gtpu.end_marker",
    GTPU_SUPPORTED_EXT_HEADERS: "gtpu.supported_ext_headers",
}
PROTO_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp",
               IPPROTO_ICMPV6: "icmpv6", IPPROTO_SCTP: "sctp"}
EXPIRY_EVERY_NS = 1_000_000_000
HARD_EXPIRY_EVERY_NS = 30_000_000_000


def quiet_gc() -> None:
    """Ready the process for decoding (``read`` and ``live`` call this once, before any worker
    forks): the objects made so far (modules, tables) move out of the collector's sight, and it
    runs every GC_THRESHOLD allocations, not every 700. Collection stays on, for the cycles the
    control plane's decoders make. On nDPI's corpus, 7 % of `upf-tap read`'s time."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)


def _ignore(_event: AppEvent) -> None:
    pass


class TapConfig:
    """How the tap decodes; every option has a default that suits a UPF's N3 interface.

    A plain class rather than a dataclass: importing dataclasses costs about 10 ms, a
    noticeable part of reading a small capture.
    """

    __slots__ = ("control_plane", "flows", "gtpu_ports", "hard_timeout", "identity_file", "idle_timeout",
                 "max_flows", "max_fragment_sets", "point", "stream_depth", "tap_id", "ue_pools", "worker", "workers")

    def __init__(self, *, point: str = "n3", tap_id: str = DEFAULT_TAP_ID,
                 gtpu_ports: tuple[int, ...] = (GTPU_PORT,), ue_pools: tuple[str, ...] = DEFAULT_UE_POOLS,
                 flows: bool = False, stream_depth: int = DEFAULT_STREAM_DEPTH,
                 max_flows: int = DEFAULT_MAX_FLOWS, idle_timeout: float = DEFAULT_FLOW_IDLE_TIMEOUT,
                 hard_timeout: float = DEFAULT_FLOW_HARD_TIMEOUT,
                 max_fragment_sets: int = DEFAULT_MAX_FRAGMENT_SETS, identity_file: str | None = None,
                 control_plane: bool = True, worker: int = 0, workers: int = 1) -> None:
        self.point = point
        self.tap_id = tap_id
        self.gtpu_ports = gtpu_ports
        self.ue_pools = ue_pools
        self.flows = flows
        self.stream_depth = stream_depth
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.hard_timeout = hard_timeout
        self.max_fragment_sets = max_fragment_sets
        self.identity_file = identity_file
        self.control_plane = control_plane
        # one of ``workers`` taps sharing a capture: this one reads the flows whose inner
        # addresses it owns (see owns()); the control plane is followed by all, reported by worker 0
        self.worker = worker
        self.workers = workers

    def __repr__(self) -> str:
        return "TapConfig(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


class Tap:
    """Decode frames and emit AppEvents through ``emit``.

    Lifecycle: construct, ``feed`` every frame in capture order (or ``consume`` /
    ``consume_batches`` many), ``finish`` at the end.
    """

    def __init__(self, config: TapConfig, emit: Callable[[AppEvent], None]) -> None:
        self.cfg = config
        self.emit = emit
        self.stats: Counter[str] = Counter()
        self.packets = 0
        self.octets = 0
        self.n6 = config.point == "n6"
        self.workers = config.workers
        self.worker = config.worker
        self.gtpu_ports = frozenset(config.gtpu_ports)
        self.depth = config.stream_depth
        self.ue_side = UeSide(config.ue_pools)
        self.outer_ip = IPLayer(self.stats, "ip", FragmentReassembler(
            self.stats, "ip.outer_frag", config.max_fragment_sets, FRAGMENT_TIMEOUT))
        self.inner_ip = IPLayer(self.stats, "inner", FragmentReassembler(
            self.stats, "ip.inner_frag", config.max_fragment_sets, FRAGMENT_TIMEOUT))
        self.flows = FlowTable(config.max_flows, config.idle_timeout, config.hard_timeout, self._flow_ended)
        self.tcp_flows = self.flows.table(IPPROTO_TCP)
        self.udp_flows = self.flows.table(IPPROTO_UDP)
        self.next_expiry = 0
        self.next_hard_expiry = 0
        self.last_ns = 0
        self._seq = 0
        self._nesting = 0  # tunnels inside the user's packet being decoded now
        self._nesting_ue = ""  # and the UE of the outermost user packet, while they are
        self.control: ControlPlane | None = None
        if config.control_plane and config.identity_file:
            self.start_control()  # now: a bad identity file is an error before any packet

    def start_control(self) -> ControlPlane | None:
        """The control plane, made on first need (its decoders cost imports a pure N3 trace never uses)."""
        if self.control is None and self.cfg.control_plane:
            from upf_tap.control.correlator import ControlPlane

            emit = self.emit if self.worker == 0 else _ignore  # one report of each control-plane event
            self.control = ControlPlane(self.cfg.tap_id, emit, self.stats, self.cfg.identity_file)
        return self.control

    # ------------------------------------------------------------------ input
    def feed(self, ts_ns: int, linktype: int, frame: bytes | memoryview) -> None:
        """Decode one captured frame."""
        if type(frame) is not bytes:
            frame = bytes(frame)
        self.packets += 1
        self.octets += len(frame)
        if ts_ns >= self.next_expiry:
            self.expire(ts_ns)
        self.last_ns = ts_ns
        self.feed_at(ts_ns, linktype, frame, 0, len(frame))

    def consume(self, packets: Iterable[tuple[int, int, bytes | memoryview]]) -> None:
        """Decode many frames: the same as ``feed`` on each, through the fast path."""
        self.consume_batches((f if type(f) is bytes else bytes(f), [ts, lt, 0, len(f)]) for ts, lt, f in packets)

    def consume_batches(self, batches: Iterable[Batch | PcapRun | PcapngRun]) -> None:
        """Decode what ``capture.pcapfile.read_batches`` yields (batches of offsets, or with
        ``runs=True`` whole chunks): the same as ``feed`` on each packet, through the fast path
        of ``upf_tap.walk``, which hands whatever it cannot skip to :meth:`feed_at`."""
        walk(self, batches)

    # ------------------------------------------------------------------ outer layers
    def feed_at(self, ts_ns: int, linktype: int, data: bytes, off: int, end: int) -> None:
        """Decode the frame at ``data[off:end]`` the general way (counting is the caller's)."""
        self._seq = 0
        if linktype == LINKTYPE_ETHERNET and data[off + 12 : off + 14] == b"\x08\x00":
            version, ip = 4, off + 14
        else:
            version, where = ip_offset(linktype, data[off:end] if off else data)
            if isinstance(where, str):
                self.stats[where] += 1
                return
            ip = where + off
        if self.n6:
            self._user_ip(ts_ns, data, ip, end, version, None)
        else:
            self._outer_ip(ts_ns, data, ip, end, version)

    def _outer_ip(self, ts_ns: int, data: bytes, off: int, end: int, version: int) -> None:
        ip = self.outer_ip.decode(ts_ns, data, off, end, version)
        if ip is None:
            return
        proto, src, dst, data, l4, end = ip
        if proto == IPPROTO_UDP:
            if end - l4 < 8:
                self.stats["udp.truncated"] += 1
                return
            sport, dport = _ports(data, l4)
            gtpu = self.gtpu_ports
            if dport in gtpu or sport in gtpu:
                self._gtpu(ts_ns, data, l4 + 8, end, src, dst)
            elif (dport == PFCP_PORT or sport == PFCP_PORT) and (control := self.start_control()) is not None:
                control.on_pfcp(ts_ns, ip_str(src), sport, ip_str(dst), dport, data[l4 + 8 : end])
            else:
                self.stats["outer.other_udp"] += 1
        elif proto == IPPROTO_SCTP and (control := self.start_control()) is not None:
            control.on_sctp(ts_ns, ip_str(src), ip_str(dst), data[l4:end])
        else:
            self.stats["outer.other"] += 1

    def _gtpu(self, ts_ns: int, data: bytes, off: int, end: int, osrc: bytes, odst: bytes) -> None:
        mtype, teid, qfi, pdu_type, p, pend = parse_gtpu(data, off, end)
        if mtype != GTPU_GPDU:
            if mtype < 0:
                self.stats[BAD_REASONS[mtype]] += 1
            else:
                self.stats[GTPU_COUNTED.get(mtype, "gtpu.other_message")] += 1
                if mtype == GTPU_END_MARKER and self.worker == 0:
                    self._end_marker(ts_ns, osrc, odst, teid)
            return
        if pend - p < 1:
            self.stats["gtpu.empty"] += 1
            return
        version = data[p] >> 4
        if version != 4 and version != 6:
            self.stats["gtpu.not_ip"] += 1
            return
        self._user_ip(ts_ns, data, p, pend, version, (osrc, odst, teid, qfi, pdu_type))

    def _end_marker(self, ts_ns: int, osrc: bytes, odst: bytes, teid: int) -> None:
        """An End Marker is reported (``gtpu.end_marker``), not only counted: it closes the old
        DL path of a handover. One worker reports it (it has no inner addresses to share out by)."""
        self.emit(end_marker(ts_ns, self.cfg.point, self.cfg.tap_id, osrc, odst, teid, self.control, self._seq))
        self._seq += 1
        self.stats["events.gtpu.end_marker"] += 1

    # ------------------------------------------------------------------ user plane
    def _user_ip(self, ts_ns: int, data: bytes, off: int, end: int, version: int,
                 tun: GtpuContext | None) -> None:
        ip = self.inner_ip.decode(ts_ns, data, off, end, version)
        if ip is None:
            return
        proto, src, dst, data, l4, end = ip
        if self.workers > 1 and not self._nesting and owner(src, dst, self.workers) != self.worker:
            return  # another worker's flow
        if proto == IPPROTO_TCP:
            self._tcp(ts_ns, data, l4, end, src, dst, tun)
        elif proto == IPPROTO_UDP:
            self._udp(ts_ns, data, l4, end, src, dst, tun)
        elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            self._icmp(ts_ns, data, l4, end, src, dst, proto, tun)
        elif proto in (IPPROTO_IPIP, IPPROTO_IPV6):
            self._nested(ts_ns, data, l4, end, tun, src, dst)  # IPv4 or IPv6 in IP (RFC 2003, RFC 4213)
        elif proto == IPPROTO_GRE:
            self._tunnel(ts_ns, tunnels.gre(data, l4, end), data, end, tun, src, dst)
        else:
            self.stats["inner.other_proto"] += 1

    def _nested(self, ts_ns: int, data: bytes, off: int, end: int, tun: GtpuContext | None, src: bytes,
                dst: bytes) -> None:
        """A tunnel inside the user's packet (IP in IP, VXLAN): its inner packet is the user's too,
        and its flows belong to the UE of the outermost user packet (``src``/``dst``)."""
        if self._nesting >= MAX_NESTED_TUNNELS:
            self.stats["inner.nested_too_deep"] += 1
            return
        if off >= end:
            self.stats["inner.truncated"] += 1
            return
        self.stats["inner.nested"] += 1
        outer = self._nesting_ue
        if not outer:
            ue_src = self.ue_side.is_src(src, dst, -1 if tun is None else tun[4], None)
            self._nesting_ue = ip_str(src if ue_src else dst)
        self._nesting += 1
        try:
            self._user_ip(ts_ns, data, off, end, data[off] >> 4, tun)
        finally:
            self._nesting -= 1
            self._nesting_ue = outer

    def _inner_gtpu(self, ts_ns: int, data: bytes, off: int, end: int, tun: GtpuContext | None, src: bytes,
                    dst: bytes) -> None:
        """GTP-U inside the user's packet (a core behind a UE, a capture of one): its G-PDUs' packets."""
        mtype, _teid, _qfi, _pdu, p, pend = parse_gtpu(data, off, end)
        if mtype != GTPU_GPDU or pend <= p:
            self.stats["inner.gtpu_not_decoded"] += 1
            return
        self._nested(ts_ns, data, p, pend, tun, src, dst)

    def _tunnel(self, ts_ns: int, found: tuple[int, int | str], data: bytes, end: int, tun: GtpuContext | None,
                src: bytes, dst: bytes) -> None:
        """The packet a tunnel inside the user's packet carries (``decode.tunnels``), or its drop counted."""
        _version, where = found
        if isinstance(where, str):
            self.stats[f"inner.{where}"] += 1
            return
        self._nested(ts_ns, data, where, end, tun, src, dst)

    def _flow_for(self, ts_ns: int, hit: tuple[Flow, int] | None, table: dict[bytes, tuple[Flow, int]], proto: int,
                  key: bytes, data: bytes, l4: int, end: int, src: bytes, dst: bytes, sport: int, dport: int,
                  tun: GtpuContext | None, client_is_src: bool | None) -> tuple[Flow, int]:
        """The packet's flow and direction (``hit``, the table's entry for ``key``, or a new flow
        if None), with its counters updated."""
        if hit is None:
            rkey = dst + src + data[l4 + 2 : l4 + 4] + data[l4 : l4 + 2] if sport or dport else dst + src + key[-2:]
            ue_is_src = self.ue_side.is_src(src, dst, -1 if tun is None else tun[4], client_is_src)
            flow = self.flows.open(table, key, rkey, PROTO_NAMES.get(proto, "other"),
                                   (ip_str(src), ip_str(dst), sport, dport), ue_is_src, ts_ns)
            if self._nesting_ue:
                flow.ue_ip = self._nesting_ue
            idx = 0
            hit = (flow, 0)
            self.stats["flows.created"] += 1
            if self.cfg.flows:
                self._emit("flow.start", ts_ns, flow, 0, tun, {})
        else:
            flow, idx = hit
            if ts_ns > flow.touch_at:  # FlowTable.touch, inlined: it runs for every packet here
                self.flows.lru.move_to_end(flow.key0)
                flow.touch_at = ts_ns + LRU_TOUCH_NS
            flow.last_ns = ts_ns
        flow.pkts[idx] += 1
        flow.octets[idx] += end - l4
        return hit

    def _tcp(self, ts_ns: int, data: bytes, l4: int, end: int, src: bytes, dst: bytes,
             tun: GtpuContext | None) -> None:
        if end - l4 < 20:
            self.stats["tcp.truncated"] += 1
            return
        sport, dport, seq, _ack, doff, flags = _tcp_hdr(data, l4)
        hlen = (doff >> 4) * 4
        if hlen < 20 or l4 + hlen > end:
            self.stats["tcp.bad_header"] += 1
            return
        key = src + dst + data[l4 : l4 + 4]
        hit = self.tcp_flows.get(key)
        if hit is None and not flags & TCP_SYN and l4 + hlen == end:
            self.stats["tcp.stray"] += 1  # e.g. the last ACK after a close: no flow to start
            return
        client = (not flags & TCP_ACK) if flags & TCP_SYN else None
        flow, idx = self._flow_for(ts_ns, hit, self.tcp_flows, IPPROTO_TCP, key, data, l4, end, src, dst, sport,
                                   dport, tun, client)
        sd = flow.streams[idx]
        if sd is None:
            sd = flow.streams[idx] = StreamDirection(RESNIFF_SEGMENTS if flow.direction(idx) == "ul" else 0)
        if not sd.done:
            for kind, app in sd.segment(flags, seq, data, l4 + hlen, end, dport, self.depth, self.stats):
                self._emit(kind, ts_ns, flow, idx, tun, app)
        if sd.done:  # from now on the fast path skips this direction's segments
            self.flows.skip_direction(flow, idx)
        if flags & (TCP_FIN | TCP_RST) and closes(flow.state, idx, flags):
            self.flows.end(flow, ts_ns, "closed")

    def _udp(self, ts_ns: int, data: bytes, l4: int, end: int, src: bytes, dst: bytes,
             tun: GtpuContext | None) -> None:
        if end - l4 < 8:
            self.stats["udp.truncated"] += 1
            return
        sport, dport = _ports(data, l4)
        if dport == VXLAN_PORT:
            self._tunnel(ts_ns, tunnels.vxlan(data, l4 + 8, end), data, end, tun, src, dst)
            return
        if dport == GENEVE_PORT:
            self._tunnel(ts_ns, tunnels.geneve(data, l4 + 8, end), data, end, tun, src, dst)
            return
        if dport == GRE_UDP_PORT:
            self._tunnel(ts_ns, tunnels.gre(data, l4 + 8, end), data, end, tun, src, dst)
            return
        if dport == GTPU_PORT or sport == GTPU_PORT:
            self._inner_gtpu(ts_ns, data, l4 + 8, end, tun, src, dst)
            return
        key = src + dst + data[l4 : l4 + 4]
        hit = self.udp_flows.get(key)
        if hit is not None and hit[0].quiet[hit[1]] >= UDP_QUIET_DATAGRAMS:
            flow, idx = hit  # a direction gone quiet: counted only (the fast path skips it the same way)
            self.flows.touch(flow, ts_ns)
            flow.pkts[idx] += 1
            flow.octets[idx] += end - l4
            return
        payload = data[l4 + 8 : end]
        d = datagram_dissector(sport, dport, payload)  # a sender to a dissector's port is the client
        flow, idx = self._flow_for(ts_ns, hit, self.udp_flows, IPPROTO_UDP, key, data, l4,
                                   end, src, dst, sport, dport, tun, None if d is None else True)
        if d is None:
            quiet = flow.quiet[idx] = flow.quiet[idx] + 1
        else:
            self._datagram(d, ts_ns, flow, idx, tun, payload)
            quiet = flow.quiet[idx] = UDP_QUIET_DATAGRAMS if flow.state[idx] is False else 0
        if quiet >= UDP_QUIET_DATAGRAMS:
            self.flows.skip_direction(flow, idx)

    def _datagram(self, d: Dissector, ts_ns: int, flow: Flow, idx: int, tun: GtpuContext | None,
                  payload: bytes) -> None:
        if d.new_state is None:
            if d.datagram is None:
                return
            try:
                found = d.datagram(payload)
            except Malformed:
                self.stats[f"{d.name}.malformed"] += 1
                return
        else:  # per-direction state (QUIC: a ClientHello may span datagrams; after a Retry, or a
            # version negotiation, the client sends a new one under a new DCID, as tshark shows)
            state = flow.state[idx]
            if state is False:
                return  # this direction is done
            if state is None:
                peer = flow.state[1 - idx]
                if getattr(peer, "client", False):
                    flow.state[idx] = False  # the server's side of a client the other direction holds
                    return
                state = flow.state[idx] = d.new_state()
            try:
                found = state.feed(payload)  # type: ignore[attr-defined]
            except Malformed:
                self.stats[f"{d.name}.malformed"] += 1
                flow.state[idx] = False
                return
        for kind, app in found:
            self._emit(kind, ts_ns, flow, idx, tun, app)

    def _icmp(self, ts_ns: int, data: bytes, l4: int, end: int, src: bytes, dst: bytes, proto: int,
              tun: GtpuContext | None) -> None:
        if end - l4 < 4:
            self.stats["icmp.truncated"] += 1
            return
        # ICMP "flows" are keyed by the addresses and the echo identifier
        table = self.flows.table(proto)
        ident = data[l4 + 4 : l4 + 6] if end - l4 >= 6 else b"\0\0"
        t = data[l4]
        client = True if t in (8, 128) else (False if t in (0, 129) else None)  # echo request / reply
        key = src + dst + ident
        flow, idx = self._flow_for(ts_ns, table.get(key), table, proto, key, data, l4, end, src, dst, 0, 0, tun,
                                   client)
        d = IP_PROTOS.get(proto)
        if d is None or d.ip is None:
            return
        try:
            found = d.ip(proto, data[l4:end])
        except Malformed:
            self.stats[f"{d.name}.malformed"] += 1
            return
        for kind, app in found:
            self._emit(kind, ts_ns, flow, idx, tun, app)

    # ------------------------------------------------------------------ events
    def _emit(self, kind: str, ts_ns: int, flow: Flow, idx: int, tun: GtpuContext | None,
              app: dict[str, Any], seq: int = -1) -> None:
        direction = flow.direction(idx)
        ue, tunnel = identify(flow.ue_ip, tun, self.control, direction)
        if seq < 0:
            seq = self._seq
            self._seq += 1
        ev = make_event(kind, ts_ns, self.cfg.point, self.cfg.tap_id, direction=direction,
                        ue=ue, flow=flow.flow_fields(idx), tunnel=tunnel, app=app, seq=seq)
        self.stats[f"events.{kind}"] += 1
        self.emit(ev)

    def _flow_ended(self, flow: Flow, ts_ns: int, reason: str) -> None:
        self.stats[f"flows.ended.{reason}"] += 1
        if self.cfg.flows:
            self._emit("flow.end", ts_ns, flow, 0, None, {
                "packets_ul": flow.pkts[0 if flow.ue_is_src0 else 1],
                "packets_dl": flow.pkts[1 if flow.ue_is_src0 else 0],
                "bytes_ul": flow.octets[0 if flow.ue_is_src0 else 1],
                "bytes_dl": flow.octets[1 if flow.ue_is_src0 else 0],
                "duration": round((flow.last_ns - flow.first_ns) / 1e9, 6),
                "reason": reason,
            }, seq=_crc32(flow.key0))  # the flow's own number: its id depends on no other flow ending with it

    def expire(self, ts_ns: int) -> None:
        """Time has reached ``ts_ns``: end idle flows (and, less often, those past the hard timeout)."""
        self._seq = 0  # the flow.end events of one expiry are numbered apart from any packet's
        hard = ts_ns >= self.next_hard_expiry
        if self.next_expiry:
            self.flows.expire(ts_ns, hard)
        self.next_expiry = ts_ns + EXPIRY_EVERY_NS
        if hard:
            self.next_hard_expiry = ts_ns + HARD_EXPIRY_EVERY_NS

    def finish(self) -> None:
        """End of input: end every flow (flow.end events with --flows) and flush the control plane."""
        self.flows.end_all(self.last_ns)
        if self.control is not None:
            self.control.flush(self.last_ns)

    def counters(self) -> dict[str, int]:
        out = dict(sorted(self.stats.items()))
        out["packets"] = self.packets
        out["bytes"] = self.octets
        out["flows.active"] = len(self.flows)
        return out
