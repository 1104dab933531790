"""The tap pipeline: captured frames in, AppEvents out.

Link → outer IP (fragments reassembled) → UDP → GTP-U (N3) or plain IP (N6) → inner IP
(fragments reassembled) → flow table → TCP reassembly or datagram → dissectors. PFCP and
SCTP/NGAP packets go to the control plane, which enriches user-plane events with the
subscriber's identity.

The per-packet path is written for speed: frames are handled as ``bytes`` with
``struct.unpack_from``; no object is made per packet except the flow key; dicts for the
event are built only when an event is emitted.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from testbed.constants import UE_POOLS
from upf_tap.capture.pcapfile import MAX_RECORD, PcapngRun, PcapRun
from upf_tap.constants import (
    COAP_PORTS,
    DEFAULT_FLOW_HARD_TIMEOUT,
    DEFAULT_FLOW_IDLE_TIMEOUT,
    DEFAULT_MAX_FLOWS,
    DEFAULT_MAX_FRAGMENT_SETS,
    DEFAULT_STREAM_DEPTH,
    DEFAULT_TAP_ID,
    DNS_PORT,
    FRAGMENT_TIMEOUT,
    GTPU_ECHO_REQUEST,
    GTPU_ECHO_RESPONSE,
    GTPU_END_MARKER,
    GTPU_ERROR_INDICATION,
    GTPU_GPDU,
    GTPU_PORT,
    GTPU_SUPPORTED_EXT_HEADERS,
    HTTP_PORTS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LRU_TOUCH_NS,
    MQTT_PORTS,
    PFCP_PORT,
    QUIC_PORTS,
    TLS_PORTS,
)
from upf_tap.decode.gtpu import BAD_REASONS, PDU_TYPE_DL, PDU_TYPE_UL, parse_gtpu
from upf_tap.decode.ip import FragmentReassembler, ip_str, walk_ipv6_ext
from upf_tap.decode.link import LINKTYPE_ETHERNET, ip_offset
from upf_tap.dissect import Malformed, coap, dns, http, icmp, mqtt, tls
from upf_tap.events import AppEvent, make_event
from upf_tap.flows import Flow, FlowTable
from upf_tap.tcp_stream import StreamDirection

_ipv4_hdr = struct.Struct("!BBHHHBBH4s4s").unpack_from
_ports = struct.Struct("!HH").unpack_from
_tcp_hdr = struct.Struct("!HHIIBB").unpack_from  # ports, seq, ack, data offset, flags
# The common N3 frame read in one call, fields packed by what is tested together:
# Ethernet type + IPv4 version/IHL (12-15), outer total length, fragment bits + protocol
# (20-23), both UDP ports, GTP-U flags + type + length (42-45), next-extension type + PDU
# Session Container length (53-54), its next type + inner IPv4 version/IHL (57-58), inner
# total length, inner fragment bits + protocol (64-67), the inner addresses and ports
# (70-81: the flow key, as bytes), TCP data offset + flags (90-91).
_FAST_N3 = "12xIH2xI10xI4xI7xH2xHxH2xI2x12s8xH"
_fast_n3 = struct.Struct("!" + _FAST_N3).unpack_from
_fast_n3_rec = struct.Struct("!16x" + _FAST_N3).unpack_from  # from the start of a pcap record
_fast_n3_epb = struct.Struct("!28x" + _FAST_N3).unpack_from  # from the start of a pcapng EPB
# A frame of L bytes takes the fast path only if every length in it agrees with L (outer
# IPv4 L - 14, GTP-U L - 50, inner IPv4 L - 58): then the full decoder could not count a
# truncation or padding either (written ``L - otot == 14``: a small difference is a cached
# int, nothing allocated). ``gtp == _GTP_ROOM + L`` is GTP-U flags/type 0x34FF with length L - 50.
_GTP_ROOM = 0x34FF0000 - 50

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

GTPU_COUNTED = {
    GTPU_ECHO_REQUEST: "gtpu.echo_request",
    GTPU_ECHO_RESPONSE: "gtpu.echo_response",
    GTPU_ERROR_INDICATION: "gtpu.error_indication",
    GTPU_END_MARKER: "gtpu.end_marker",
    GTPU_SUPPORTED_EXT_HEADERS: "gtpu.supported_ext_headers",
}
PROTO_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp",
               IPPROTO_ICMPV6: "icmpv6", IPPROTO_SCTP: "sctp"}
STREAM_SNIFFERS: tuple[tuple[str, ModuleType], ...] = (("http", http), ("tls", tls), ("mqtt", mqtt))
CLIENT_UDP_PORTS = frozenset({DNS_PORT, *QUIC_PORTS, *COAP_PORTS})  # a sender to these is the client
NS = 1_000_000_000  # nanoseconds per second
EXPIRY_EVERY_NS = 1_000_000_000
HARD_EXPIRY_EVERY_NS = 30_000_000_000

# Tunnel context of the packet being decoded: outer src, outer dst (raw), TEID, QFI, PDU type.
Tunnel = tuple[bytes, bytes, int, int, int]


class TapConfig:
    """How the tap decodes; every option has a default that suits a UPF's N3 interface.

    A plain class rather than a dataclass: importing dataclasses costs about 10 ms, a
    noticeable part of reading a small capture.
    """

    __slots__ = ("control_plane", "flows", "gtpu_ports", "hard_timeout", "identity_file", "idle_timeout",
                 "max_flows", "max_fragment_sets", "point", "stream_depth", "tap_id", "ue_pools")

    def __init__(self, *, point: str = "n3", tap_id: str = DEFAULT_TAP_ID,
                 gtpu_ports: tuple[int, ...] = (GTPU_PORT,), ue_pools: tuple[str, ...] = UE_POOLS,
                 flows: bool = False, stream_depth: int = DEFAULT_STREAM_DEPTH,
                 max_flows: int = DEFAULT_MAX_FLOWS, idle_timeout: float = DEFAULT_FLOW_IDLE_TIMEOUT,
                 hard_timeout: float = DEFAULT_FLOW_HARD_TIMEOUT,
                 max_fragment_sets: int = DEFAULT_MAX_FRAGMENT_SETS, identity_file: str | None = None,
                 control_plane: bool = True) -> None:
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

    def __repr__(self) -> str:
        return "TapConfig(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


def _stream_dissector(dport: int, first: bytes) -> tuple[str, ModuleType | None]:
    """Pick a stream dissector by the service port, else by the first bytes."""
    if dport in HTTP_PORTS:
        return "http", http
    if dport in TLS_PORTS:
        return "tls", tls
    if dport in MQTT_PORTS:
        return "mqtt", mqtt
    if dport == DNS_PORT:
        return "dns", dns
    for name, mod in STREAM_SNIFFERS:
        if mod.looks_like(first):
            return name, mod
    return "", None


class Tap:
    """Decode frames and emit AppEvents through ``emit``.

    Lifecycle: construct, ``feed`` every frame in capture order, ``finish`` at the end.
    """

    def __init__(self, config: TapConfig, emit: Callable[[AppEvent], None]) -> None:
        self.cfg = config
        self.emit = emit
        self.stats: Counter[str] = Counter()
        self.packets = 0
        self.octets = 0
        self.n6 = config.point == "n6"
        self.gtpu_ports = frozenset(config.gtpu_ports)
        self.both_gtpu_ports = frozenset((a << 16) | b for a in self.gtpu_ports for b in self.gtpu_ports)
        self.depth = config.stream_depth
        self.pools = [ipaddress.ip_network(p, strict=False) for p in config.ue_pools]
        self.outer_frags = FragmentReassembler(self.stats, "ip.outer_frag", config.max_fragment_sets,
                                               FRAGMENT_TIMEOUT)
        self.inner_frags = FragmentReassembler(self.stats, "ip.inner_frag", config.max_fragment_sets,
                                               FRAGMENT_TIMEOUT)
        self.flows = FlowTable(config.max_flows, config.idle_timeout, config.hard_timeout, self._flow_ended)
        self.tcp_flows = self.flows.table(IPPROTO_TCP)
        self.udp_flows = self.flows.table(IPPROTO_UDP)
        self.next_expiry = 0
        self.next_hard_expiry = 0
        self.last_ns = 0
        self._seq = 0
        self.control: Any = None
        if config.control_plane and config.identity_file:
            self.start_control()  # now: a bad identity file is an error before any packet

    def start_control(self) -> Any:
        """The control plane, made on first need (its decoders cost imports a pure N3 trace never uses)."""
        if self.control is None and self.cfg.control_plane:
            from upf_tap.control.correlator import ControlPlane

            self.control = ControlPlane(self.cfg.tap_id, self.emit, self.stats, self.cfg.identity_file)
        return self.control

    # ------------------------------------------------------------------ outer layers
    def feed(self, ts_ns: int, linktype: int, frame: bytes | memoryview) -> None:
        """Decode one captured frame."""
        if type(frame) is not bytes:
            frame = bytes(frame)
        self.packets += 1
        self.octets += len(frame)
        if ts_ns >= self.next_expiry:
            self._expire(ts_ns)
        self.last_ns = ts_ns
        self.feed_at(ts_ns, linktype, frame, 0, len(frame))

    def consume(self, packets: Iterable[tuple[int, int, bytes | memoryview]]) -> None:
        """Decode many frames: the same as ``feed`` on each, through the fast path."""
        self.consume_batches((f if type(f) is bytes else bytes(f), [ts, lt, 0, len(f)]) for ts, lt, f in packets)

    def consume_batches(self, batches: Iterable[tuple[bytes, list[int]] | PcapRun]) -> None:
        """Decode what ``capture.pcapfile.read_batches`` yields: batches ``(buf, [ts_ns,
        linktype, start, end, ...])``, or with ``runs=True`` :class:`PcapRun` chunks of a pcap
        file, whose records this loop walks itself. No object is made per packet for the bulk
        of the traffic.

        The bulk of N3 traffic is Ethernet/IPv4/UDP/GTP-U (one PDU Session Container)/IPv4/TCP
        on a flow direction whose inspection is over, or a bare ACK: one ``unpack_from`` at
        the frame's offset and one dict lookup decide it, with every name local (see
        ``_fast_n3``). Anything else is copied out and takes ``feed_at``. The three loops below
        (pcap records, pcapng blocks, batches) hold the same test on purpose: a function call
        per packet would cost more than the test itself. tests/tap/test_fast_path.py checks
        that each gives exactly what ``feed`` gives.
        """
        for item in batches:
            if type(item) is PcapRun:
                self._walk_pcap(item)
            elif type(item) is PcapngRun:
                self._walk_pcapng(item)
            else:
                self._walk_batch(*item)

    def _walk_pcap(self, run: PcapRun) -> None:
        """Every whole record of one pcap chunk (the contract is in PcapRun's docstring)."""
        fast, rec, slow = _fast_n3_rec, run.rec, self.feed_at
        flows_get, skip_get = self.tcp_flows.get, self.flows.skip.get
        lru_touch = self.flows.lru.move_to_end
        gtpu_ports, both_ports = self.gtpu_ports, self.both_gtpu_ports
        linktype, mul, limit, ns = run.linktype, run.mul, run.limit, NS
        gtp_room, touch_ns = _GTP_ROOM, LRU_TOUCH_NS
        min_fast = 98 if not self.n6 and linktype == LINKTYPE_ETHERNET else MAX_RECORD  # frames the fast test reads
        count_flows = self.cfg.flows
        next_expiry = self.next_expiry
        buf, off = run.buf, run.off
        first, n = off, len(buf)
        npk = 0
        ts_ns = self.last_ns
        sec0 = base = -1  # the second of the last record and its start in ns: one multiply per second
        try:
            while True:
                try:
                    sec, frac, incl = rec(buf, off)
                except struct.error:  # fewer than 16 bytes left in the chunk
                    break
                end = off + 16 + incl
                if end > n or incl > limit:
                    break
                npk += 1
                if sec != sec0:
                    sec0, base = sec, sec * ns
                ts_ns = base + frac * mul
                if ts_ns >= next_expiry:
                    self._expire(ts_ns)
                    next_expiry = self.next_expiry
                if incl >= min_fast:
                    eth_ip, otot, frag_proto, ports, gtp, ext, ext_ip, itot, ifrag_proto, key, tcp = fast(buf, off)
                    if (0x08004500 <= eth_ip <= 0x080045FF and incl - otot == 14 and frag_proto & 0x3FFF00FF == 17
                            and gtp == gtp_room + incl and ext == 0x8501 and ext_ip == 0x0045
                            and incl - itot == 58 and ifrag_proto & 0x3FFF00FF == 6 and not tcp & 0x07
                            and tcp >= 0x5000 and itot >= (tcp_end := 20 + (tcp >> 12) * 4)
                            and (ports in both_ports or ports >> 16 in gtpu_ports or ports & 0xFFFF in gtpu_ports)):
                        # a bare ACK: any flow; data: a direction with nothing left to inspect
                        hit = (flows_get if itot == tcp_end else skip_get)(key)
                        if hit is not None:
                            off = end
                            flow, idx = hit
                            if ts_ns > flow.touch_at:
                                lru_touch(flow.key0)
                                flow.touch_at = ts_ns + touch_ns
                            flow.last_ns = ts_ns
                            if count_flows:  # per-flow counters only show in flow.end events
                                flow.pkts[idx] += 1
                                flow.octets[idx] += itot - 20
                            continue
                self.last_ns = ts_ns
                slow(ts_ns, linktype, buf[off + 16 : end], 0, incl)
                off = end
        finally:
            run.off = off
            run.packets += npk
            self.packets += npk
            self.octets += off - first - 16 * npk
            self.last_ns = ts_ns

    def _walk_pcapng(self, run: PcapngRun) -> None:
        """Consecutive Enhanced Packet Blocks of one pcapng chunk (contract: PcapngRun)."""
        fast, epb, trailer, ifaces, slow = _fast_n3_epb, run.epb, run.trailer, run.ifaces, self.feed_at
        flows_get, skip_get = self.tcp_flows.get, self.flows.skip.get
        lru_touch = self.flows.lru.move_to_end
        gtpu_ports, both_ports = self.gtpu_ports, self.both_gtpu_ports
        gtp_room, touch_ns, n6 = _GTP_ROOM, LRU_TOUCH_NS, self.n6
        count_flows = self.cfg.flows
        next_expiry = self.next_expiry
        buf, off = run.buf, run.off
        n = len(buf)
        npk = nbytes = 0
        cur = -1  # interface of the previous block: most files have one
        linktype = mul = tsoff = 0
        min_fast = MAX_RECORD
        ts_ns = self.last_ns
        th0 = hi = -1  # the high timestamp word of the last block and its share of ts_ns
        try:
            while True:
                try:
                    btype, blen, ifid, th, tl, cap = epb(buf, off)
                except struct.error:  # fewer than 28 bytes left in the chunk
                    break
                end = off + blen
                if btype != 6 or end > n or blen & 3 or blen - cap < 32 or trailer(buf, end - 4)[0] != blen:
                    break
                if ifid != cur:
                    if ifid >= len(ifaces) or ifaces[ifid][2] != 1:  # unknown, or a resolution to divide by
                        break
                    linktype, mul, _div, tsoff, _snap = ifaces[ifid]
                    th0 = -1
                    min_fast = 98 if not n6 and linktype == LINKTYPE_ETHERNET else MAX_RECORD
                    cur = ifid
                npk += 1
                nbytes += cap
                if th != th0:
                    th0, hi = th, (th << 32) * mul + tsoff
                ts_ns = hi + tl * mul
                if ts_ns >= next_expiry:
                    self._expire(ts_ns)
                    next_expiry = self.next_expiry
                if cap >= min_fast:
                    eth_ip, otot, frag_proto, ports, gtp, ext, ext_ip, itot, ifrag_proto, key, tcp = fast(buf, off)
                    if (0x08004500 <= eth_ip <= 0x080045FF and cap - otot == 14 and frag_proto & 0x3FFF00FF == 17
                            and gtp == gtp_room + cap and ext == 0x8501 and ext_ip == 0x0045
                            and cap - itot == 58 and ifrag_proto & 0x3FFF00FF == 6 and not tcp & 0x07
                            and tcp >= 0x5000 and itot >= (tcp_end := 20 + (tcp >> 12) * 4)
                            and (ports in both_ports or ports >> 16 in gtpu_ports or ports & 0xFFFF in gtpu_ports)):
                        hit = (flows_get if itot == tcp_end else skip_get)(key)
                        if hit is not None:
                            off = end
                            flow, idx = hit
                            if ts_ns > flow.touch_at:
                                lru_touch(flow.key0)
                                flow.touch_at = ts_ns + touch_ns
                            flow.last_ns = ts_ns
                            if count_flows:
                                flow.pkts[idx] += 1
                                flow.octets[idx] += itot - 20
                            continue
                self.last_ns = ts_ns
                slow(ts_ns, linktype, buf[off + 28 : off + 28 + cap], 0, cap)
                off = end
        finally:
            run.off = off
            run.packets += npk
            self.packets += npk
            self.octets += nbytes
            self.last_ns = ts_ns

    def _walk_batch(self, buf: bytes, recs: list[int]) -> None:
        """The packets of one batch (``read_batches``): the same fast test as ``_walk_pcap``."""
        fast, slow = _fast_n3, self.feed_at
        flows_get, skip_get = self.tcp_flows.get, self.flows.skip.get
        lru_touch, touch_ns, gtp_room = self.flows.lru.move_to_end, LRU_TOUCH_NS, _GTP_ROOM
        gtpu_ports, both_ports = self.gtpu_ports, self.both_gtpu_ports
        use_fast = not self.n6
        count_flows = self.cfg.flows
        next_expiry = self.next_expiry
        self.packets += len(recs) >> 2
        self.octets += sum(recs[3::4]) - sum(recs[2::4])
        ts_ns = self.last_ns
        it = iter(recs)
        try:
            for ts_ns, linktype, start, end in zip(it, it, it, it):  # noqa: B905 - always 4 per packet
                if ts_ns >= next_expiry:
                    self._expire(ts_ns)
                    next_expiry = self.next_expiry
                flen = end - start
                if use_fast and linktype == 1 and flen >= 98:
                    eth_ip, otot, frag_proto, ports, gtp, ext, ext_ip, itot, ifrag_proto, key, tcp = fast(buf, start)
                    if (0x08004500 <= eth_ip <= 0x080045FF and flen - otot == 14 and frag_proto & 0x3FFF00FF == 17
                            and gtp == gtp_room + flen and ext == 0x8501 and ext_ip == 0x0045
                            and flen - itot == 58 and ifrag_proto & 0x3FFF00FF == 6 and not tcp & 0x07
                            and tcp >= 0x5000 and itot >= (tcp_end := 20 + (tcp >> 12) * 4)
                            and (ports in both_ports or ports >> 16 in gtpu_ports or ports & 0xFFFF in gtpu_ports)):
                        hit = (flows_get if itot == tcp_end else skip_get)(key)
                        if hit is not None:
                            flow, idx = hit
                            if ts_ns > flow.touch_at:
                                lru_touch(flow.key0)
                                flow.touch_at = ts_ns + touch_ns
                            flow.last_ns = ts_ns
                            if count_flows:
                                flow.pkts[idx] += 1
                                flow.octets[idx] += itot - 20
                            continue
                self.last_ns = ts_ns
                slow(ts_ns, linktype, buf if start == 0 and end == len(buf) else buf[start:end], 0, flen)
        finally:
            self.last_ns = ts_ns

    def feed_at(self, ts_ns: int, linktype: int, data: bytes, off: int, end: int) -> None:
        """Decode the frame at ``data[off:end]`` the general way (counting is the caller's)."""
        self._seq = 0
        if linktype == LINKTYPE_ETHERNET and data[off + 12 : off + 14] == b"\x08\x00":
            version, ip = 4, off + 14
        else:
            version, ip = ip_offset(linktype, data[off:end] if off else data)
            if not version:
                self.stats[ip] += 1  # type: ignore[index]
                return
            ip += off  # type: ignore[operator]
        if self.n6:
            self._user_ip(ts_ns, data, ip, end, version, None)  # type: ignore[arg-type]
        else:
            self._outer_ip(ts_ns, data, ip, end, version)  # type: ignore[arg-type]

    def _ip(self, ts_ns: int, data: bytes, off: int, end: int, version: int, frags: FragmentReassembler,
            where: str) -> tuple[int, bytes, bytes, bytes, int, int] | None:
        """One IPv4 or IPv6 header (extension headers walked, fragments reassembled).

        Returns (protocol, src, dst, data, upper-layer offset, end) - ``data`` is a new buffer
        when fragments were put together - or None when the packet is dropped (counted under
        ``where``: "ip" for the outer header, "inner" for the user's) or waits for fragments.
        """
        st = self.stats
        if version == 4:
            if end - off < 20:
                st[f"{where}.truncated"] += 1
                return None
            vihl, _tos, tot, ident, frag, _ttl, proto, _csum, src, dst = _ipv4_hdr(data, off)
            ihl = (vihl & 0x0F) * 4
            if vihl >> 4 != 4 or ihl < 20 or tot < ihl:
                st[f"{where}.bad_header"] += 1
                return None
            if off + tot < end:
                end = off + tot  # Ethernet padding
            elif off + tot > end:
                st[f"{where}.truncated"] += 1  # cut by the snap length: decode what is there
            l4 = off + ihl
            if frag & 0x3FFF:
                whole = frags.add((src, dst, proto, ident), ts_ns, (frag & 0x1FFF) * 8, bool(frag & 0x2000),
                                  data[l4:end])
                if whole is None:
                    return None
                data, l4, end = whole, 0, len(whole)
            return proto, src, dst, data, l4, end
        if version == 6:
            if end - off < 40:
                st[f"{where}.truncated"] += 1
                return None
            plen = int.from_bytes(data[off + 4 : off + 6], "big")
            if off + 40 + plen < end:
                end = off + 40 + plen
            src = data[off + 8 : off + 24]
            dst = data[off + 24 : off + 40]
            proto, l4, fraginfo = walk_ipv6_ext(data, data[off + 6], off + 40, end)
            if proto < 0:
                st[f"{where}.bad_ext_header"] += 1
                return None
            if fraginfo is not None:
                whole = frags.add((src, dst, proto, fraginfo[2]), ts_ns, fraginfo[0], bool(fraginfo[1]),
                                  data[l4:end])
                if whole is None:
                    return None
                data, l4, end = whole, 0, len(whole)
            return proto, src, dst, data, l4, end
        st[f"{where}.bad_version"] += 1
        return None

    def _outer_ip(self, ts_ns: int, data: bytes, off: int, end: int, version: int) -> None:
        ip = self._ip(ts_ns, data, off, end, version, self.outer_frags, "ip")
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
            elif (dport == PFCP_PORT or sport == PFCP_PORT) and self.start_control() is not None:
                self.control.on_pfcp(ts_ns, ip_str(src), sport, ip_str(dst), dport, data[l4 + 8 : end])
            else:
                self.stats["outer.other_udp"] += 1
        elif proto == IPPROTO_SCTP and self.start_control() is not None:
            self.control.on_sctp(ts_ns, ip_str(src), ip_str(dst), data[l4:end])
        else:
            self.stats["outer.other"] += 1

    def _gtpu(self, ts_ns: int, data: bytes, off: int, end: int, osrc: bytes, odst: bytes) -> None:
        mtype, teid, qfi, pdu_type, p, pend = parse_gtpu(data, off, end)
        if mtype != GTPU_GPDU:
            if mtype < 0:
                self.stats[BAD_REASONS[mtype]] += 1
            else:
                self.stats[GTPU_COUNTED.get(mtype, "gtpu.other_message")] += 1
            return
        if pend - p < 1:
            self.stats["gtpu.empty"] += 1
            return
        version = data[p] >> 4
        if version != 4 and version != 6:
            self.stats["gtpu.not_ip"] += 1
            return
        self._user_ip(ts_ns, data, p, pend, version, (osrc, odst, teid, qfi, pdu_type))

    # ------------------------------------------------------------------ user plane
    def _user_ip(self, ts_ns: int, data: bytes, off: int, end: int, version: int,
                 tun: Tunnel | None) -> None:
        ip = self._ip(ts_ns, data, off, end, version, self.inner_frags, "inner")
        if ip is None:
            return
        proto, src, dst, data, l4, end = ip
        if proto == IPPROTO_TCP:
            self._tcp(ts_ns, data, l4, end, src, dst, tun)
        elif proto == IPPROTO_UDP:
            self._udp(ts_ns, data, l4, end, src, dst, tun)
        elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            self._icmp(ts_ns, data, l4, end, src, dst, proto, tun)
        else:
            self.stats["inner.other_proto"] += 1

    def _ue_is_src(self, src: bytes, dst: bytes, tun: Tunnel | None, client_is_src: bool | None) -> bool:
        """Which end is the UE, for a new flow."""
        if tun is not None:
            if tun[4] == PDU_TYPE_UL:
                return True
            if tun[4] == PDU_TYPE_DL:
                return False
        s = ipaddress.ip_address(src)
        d = ipaddress.ip_address(dst)
        s_in = any(s in p for p in self.pools)
        d_in = any(d in p for p in self.pools)
        if s_in != d_in:
            return s_in
        if client_is_src is not None:
            return client_is_src  # UEs open connections far more often than they accept them
        return True

    def _flow_for(self, ts_ns: int, table: dict[bytes, tuple[Flow, int]], proto: int, key: bytes, data: bytes,
                  l4: int, end: int, src: bytes, dst: bytes, sport: int, dport: int, tun: Tunnel | None,
                  client_is_src: bool | None) -> tuple[Flow, int]:
        """The packet's flow and direction (a new flow if none), with its counters updated."""
        hit = table.get(key)
        if hit is None:
            rkey = dst + src + data[l4 + 2 : l4 + 4] + data[l4 : l4 + 2] if sport or dport else dst + src + key[-2:]
            flow = self._new_flow(ts_ns, table, key, rkey, proto, src, dst, sport, dport, tun, client_is_src)
            idx = 0
        else:
            flow, idx = hit
            if ts_ns > flow.touch_at:
                self.flows.lru.move_to_end(flow.key0)
                flow.touch_at = ts_ns + LRU_TOUCH_NS
        flow.last_ns = ts_ns
        flow.pkts[idx] += 1
        flow.octets[idx] += end - l4
        return flow, idx

    def _new_flow(self, ts_ns: int, table: dict[bytes, tuple[Flow, int]], key: bytes, rkey: bytes,
                  proto: int, src: bytes, dst: bytes, sport: int, dport: int, tun: Tunnel | None,
                  client_is_src: bool | None) -> Flow:
        flow = Flow(table, key, rkey, PROTO_NAMES.get(proto, "other"),
                    (ip_str(src), ip_str(dst), sport, dport),
                    self._ue_is_src(src, dst, tun, client_is_src), ts_ns)
        self.flows.add(flow, ts_ns)
        self.stats["flows.created"] += 1
        if self.cfg.flows:
            self._emit("flow.start", ts_ns, flow, 0, tun, {})
        return flow

    def _tcp(self, ts_ns: int, data: bytes, l4: int, end: int, src: bytes, dst: bytes,
             tun: Tunnel | None) -> None:
        if end - l4 < 20:
            self.stats["tcp.truncated"] += 1
            return
        sport, dport, seq, _ack, doff, flags = _tcp_hdr(data, l4)
        hlen = (doff >> 4) * 4
        if hlen < 20 or l4 + hlen > end:
            self.stats["tcp.bad_header"] += 1
            return
        key = src + dst + data[l4 : l4 + 4]
        plen = end - l4 - hlen
        if not flags & TCP_SYN and not plen and key not in self.tcp_flows:
            self.stats["tcp.stray"] += 1  # e.g. the last ACK after a close: no flow to start
            return
        client = (not flags & TCP_ACK) if flags & TCP_SYN else None
        flow, idx = self._flow_for(ts_ns, self.tcp_flows, IPPROTO_TCP, key, data, l4, end, src, dst, sport,
                                   dport, tun, client)
        sd = flow.streams[idx]
        if sd is None:
            sd = flow.streams[idx] = StreamDirection()
        if not sd.done:
            if flags & TCP_SYN:
                sd.isn = (seq + 1) & 0xFFFFFFFF
            elif plen:
                if sd.isn < 0:
                    sd.isn = seq
                if sd.add_segment(seq, data[l4 + hlen : end], self.depth, self.stats):
                    if not sd.name:
                        sd.name, sd.dissector = _stream_dissector(dport, bytes(sd.buf[:16]))
                        if sd.dissector is None:
                            sd.finish()
                    if not sd.done:
                        for kind, app in sd.run(self.depth, self.stats):
                            self._emit(kind, ts_ns, flow, idx, tun, app)
        if sd.done:  # from now on the fast path skips this direction's segments
            self.flows.skip[key] = (flow, idx)
        if flags & (TCP_FIN | TCP_RST):
            # The stream stays open for late segments until both sides have closed.
            flow.state[idx] = True
            if flags & TCP_RST or flow.state[1 - idx] is True:
                self.flows.end(flow, ts_ns, "closed")

    def _udp(self, ts_ns: int, data: bytes, l4: int, end: int, src: bytes, dst: bytes,
             tun: Tunnel | None) -> None:
        if end - l4 < 8:
            self.stats["udp.truncated"] += 1
            return
        sport, dport = _ports(data, l4)
        flow, idx = self._flow_for(ts_ns, self.udp_flows, IPPROTO_UDP, src + dst + data[l4 : l4 + 4], data, l4,
                                   end, src, dst, sport, dport, tun, True if dport in CLIENT_UDP_PORTS else None)
        if dport == DNS_PORT:
            self._datagram("dns", dns, ts_ns, flow, idx, tun, data[l4 + 8 : end])
        elif dport in QUIC_PORTS:
            self._quic(ts_ns, flow, idx, tun, data[l4 + 8 : end])
        elif dport in COAP_PORTS:
            self._datagram("coap", coap, ts_ns, flow, idx, tun, data[l4 + 8 : end])

    def _datagram(self, name: str, mod: ModuleType, ts_ns: int, flow: Flow, idx: int,
                  tun: Tunnel | None, payload: bytes) -> None:
        try:
            found = mod.dissect_datagram(payload)
        except Malformed:
            self.stats[f"{name}.malformed"] += 1
            return
        for kind, app in found:
            self._emit(kind, ts_ns, flow, idx, tun, app)

    def _quic(self, ts_ns: int, flow: Flow, idx: int, tun: Tunnel | None, payload: bytes) -> None:
        state = flow.state[idx]
        if state is False:
            return  # this direction is done
        if state is None:
            from upf_tap.dissect import quic  # AES/HKDF from `cryptography`: loaded on the first QUIC flow

            state = flow.state[idx] = quic.QuicInitialAssembler()
        try:
            found = state.feed(payload)
        except Malformed:
            self.stats["quic.malformed"] += 1
            flow.state[idx] = False
            return
        if found:
            flow.state[idx] = False  # the ClientHello is in: the rest is 1-RTT, opaque
        for kind, app in found:
            self._emit(kind, ts_ns, flow, idx, tun, app)

    def _icmp(self, ts_ns: int, data: bytes, l4: int, end: int, src: bytes, dst: bytes, proto: int,
              tun: Tunnel | None) -> None:
        if end - l4 < 4:
            self.stats["icmp.truncated"] += 1
            return
        # ICMP "flows" are keyed by the addresses and the echo identifier
        table = self.flows.table(proto)
        ident = data[l4 + 4 : l4 + 6] if end - l4 >= 6 else b"\0\0"
        t = data[l4]
        client = True if t in (8, 128) else (False if t in (0, 129) else None)  # echo request / reply
        flow, idx = self._flow_for(ts_ns, table, proto, src + dst + ident, data, l4, end, src, dst, 0, 0, tun,
                                   client)
        try:
            found = icmp.dissect_icmp(data[l4:end], proto == IPPROTO_ICMPV6)
        except Malformed:
            self.stats["icmp.malformed"] += 1
            return
        for kind, app in found:
            self._emit(kind, ts_ns, flow, idx, tun, app)

    # ------------------------------------------------------------------ events
    def _emit(self, kind: str, ts_ns: int, flow: Flow, idx: int, tun: Tunnel | None,
              app: dict[str, Any]) -> None:
        ue: dict[str, Any] = {"ip": flow.ue_ip}
        tunnel = None
        known = None
        if tun is not None:
            osrc, odst, teid, qfi, _pdu = tun
            ue["teid"] = teid
            tunnel = {"src": ip_str(osrc), "dst": ip_str(odst), "teid": teid}
            if qfi >= 0:
                ue["qfi"] = qfi
                tunnel["qfi"] = qfi
            if self.control is not None:
                known = self.control.ue_for_teid(teid, tunnel["dst"], ue_ip=flow.ue_ip)
        if known is None and self.control is not None:
            known = self.control.ue_for_ip(flow.ue_ip)
        if known:
            for k, v in known.items():
                if v is not None and k not in ue:
                    ue[k] = v
        ev = make_event(kind, ts_ns, self.cfg.point, self.cfg.tap_id, direction=flow.direction(idx),
                        ue=ue, flow=flow.flow_fields(idx), tunnel=tunnel, app=app, seq=self._seq)
        self._seq += 1
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
            })

    def _expire(self, ts_ns: int) -> None:
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
