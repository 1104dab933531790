"""The fused walks: capture records and the fast test in one loop (``upf-tap read``'s hot path).

The bulk of N3 traffic is Ethernet/IPv4/UDP/GTP-U (one PDU Session Container)/IPv4/TCP on a
flow direction whose inspection is over, or a bare ACK. For such a packet one
``unpack_from`` at the frame's offset and one dict lookup decide it, with every name local
(see ``_FAST_N3``); anything else is copied out and goes to ``Tap.feed_at``, the full
decoder. The three walks (pcap records, pcapng Enhanced Packet Blocks, batches of offsets)
hold the same test on purpose: a function call per packet would cost more than the test.
tests/tap/test_fast_path.py checks that each gives exactly what ``Tap.feed`` gives: the
same events and the same counters.

Where it is built, ``upf_tap._walk`` (``_walk.c``) runs the same three walks compiled, decision
for decision; this module's walks stay the reference and the fallback (no compiler at install
time, ``UPF_TAP_ACCEL=0``, or something the compiled walk hands back, such as a time stamp
beyond 64 bits). tests/tap/test_accel.py checks that both give the same events and counters.

This is the one module that knows both record layouts (:class:`PcapRun`, :class:`PcapngRun`
in ``upf_tap.capture.pcapfile``) and the flow table's insides (its TCP table,
``skip``, ``lru``: each walk inlines ``FlowTable.touch``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from functools import lru_cache
from mmap import mmap
from types import ModuleType
from typing import TYPE_CHECKING, Any

from upf_tap.capture.pcapfile import MAX_RECORD, PcapngRun, PcapRun
from upf_tap.constants import (
    ACCEL_ENV,
    GENEVE_PORT,
    GRE_UDP_PORT,
    GTPU_PORT,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LRU_TOUCH_NS,
    UDP_QUIET_DATAGRAMS,
    VXLAN_PORT,
)
from upf_tap.decode.link import LINKTYPE_ETHERNET
from upf_tap.flows import owner

ACCEL: ModuleType | None
try:
    from upf_tap import _walk as ACCEL  # type: ignore[attr-defined,no-redef]
except ImportError:  # not built (no compiler at install time): the Python walks below
    ACCEL = None
if os.environ.get(ACCEL_ENV, "1") == "0":
    ACCEL = None
MAX_ACCEL_PORTS = 16  # GTP-U ports the compiled walk holds (MAX_PORTS in _walk.c)

if TYPE_CHECKING:
    from upf_tap.pipeline import Tap

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
# The same frame with IPv6 inside (the outer fields come from _FAST_N3): payload length, next
# header, the flow key (addresses and ports: 62-65, 66-101) and TCP data offset + flags (110-111).
_FAST_N3_V6 = "62xHBx36s8xH"
_fast_n3_v6 = struct.Struct("!" + _FAST_N3_V6).unpack_from
_fast_n3_v6_rec = struct.Struct("!16x" + _FAST_N3_V6).unpack_from
_fast_n3_v6_epb = struct.Struct("!28x" + _FAST_N3_V6).unpack_from
# A frame of L bytes takes the fast path only if every length in it agrees with L (outer
# IPv4 L - 14, GTP-U L - 50, inner IPv4 L - 58): then the full decoder could not count a
# truncation or padding either (written ``L - otot == 14``: a small difference is a cached
# int, nothing allocated). ``gtp == _GTP_ROOM + L`` is GTP-U flags/type 0x34FF with length L - 50.
_GTP_ROOM = 0x34FF0000 - 50
NS = 1_000_000_000  # nanoseconds per second
_WHOLE_BUFFERS = (bytes, mmap)  # what the compiled walks take: a chunk read, or the file mapped

Batch = tuple[bytes, list[int]]  # a buffer and [ts_ns, linktype, start, end, ...] of its packets


@lru_cache(maxsize=8)
def _both_ports(gtpu_ports: frozenset[int]) -> frozenset[int]:
    """Every (source port << 16 | destination port) pair of GTP-U ports: the fast test's first try."""
    return frozenset((a << 16) | b for a in gtpu_ports for b in gtpu_ports)


def walk(tap: Tap, batches: Iterable[Batch | PcapRun | PcapngRun], accel: bool = True) -> None:
    """Decode what ``capture.pcapfile.read_batches`` yields (``Tap.consume_batches``): batches
    ``(buf, [ts_ns, linktype, start, end, ...])``, or with ``runs=True`` :class:`PcapRun` /
    :class:`PcapngRun` chunks, whose records are walked here. No object is made per packet for
    the bulk of the traffic. ``accel``: the compiled walks where they are built."""
    if accel and ACCEL is not None and len(tap.gtpu_ports) <= MAX_ACCEL_PORTS:
        wpcap, wpcapng, wbatch = walk_pcap_c, walk_pcapng_c, walk_batch_c
    else:
        wpcap, wpcapng, wbatch = walk_pcap, walk_pcapng, walk_batch
    for item in batches:
        if type(item) is PcapRun:
            wpcap(tap, item)
        elif type(item) is PcapngRun:
            wpcapng(tap, item)
        else:
            buf, recs = item  # type: ignore[misc]
            wbatch(tap, buf, recs)


def _context(tap: Tap) -> tuple[Any, ...]:
    """What the compiled walks read of the tap and its flow table (one tuple per chunk)."""
    flows = tap.flows
    return (flows.table(IPPROTO_TCP), flows.skip, flows.udp_skip, flows.lru.move_to_end, tap.feed_at, tap.expire,
            tap, tap._tcp, tap._udp, tuple(tap.gtpu_ports), tap.cfg.flows, LRU_TOUCH_NS, tap.workers, tap.worker,
            tap.next_expiry, _quiet_udp_context(tap), tap.stats)


@lru_cache(maxsize=1)
def _udp_rules() -> tuple[Any, ...] | None:
    """What the compiled walk's ``udp_kind`` (_walk.c) needs to tell, without Python, that Tap._udp
    would find no dissector for a datagram: (destination ports Tap._udp or a dissector reads
    itself, QUIC's ports, source ports _udp reads itself, UDP_QUIET_DATAGRAMS, the DNS sniffer's
    limits). It knows the tests of the two UDP sniffers (DNS's exactly, QUIC's first) and QUIC's
    claims_datagram: None (every datagram left to _udp) when the dissectors are no longer those."""
    from upf_tap.dissect import NOT_SNIFFED_UDP_PORTS, UDP_PORTS, UDP_SNIFFERS, dns

    if tuple(s.name for s in UDP_SNIFFERS) != ("dns", "quic"):
        return None
    if any(d.claims_datagram is not None and d.name != "quic" for d in UDP_PORTS.values()):
        return None
    # Tap._udp's tunnels (GTP-U as either port), the ports no sniffer is offered (either port)
    own = {VXLAN_PORT, GENEVE_PORT, GRE_UDP_PORT, GTPU_PORT} | NOT_SNIFFED_UDP_PORTS
    quic = tuple(sorted(p for p, d in UDP_PORTS.items() if d.name == "quic"))
    others = tuple(sorted(own | {p for p, d in UDP_PORTS.items() if d.name != "quic"}))
    return (others, quic, tuple(sorted({GTPU_PORT} | NOT_SNIFFED_UDP_PORTS)), UDP_QUIET_DATAGRAMS,
            (dns.SNIFF_MAX_ANSWERS, dns.SNIFF_MAX_AUTHORITIES, dns.SNIFF_MAX_ADDITIONALS))


def _quiet_udp_context(tap: Tap) -> tuple[Any, ...] | None:
    """The compiled walk's part of Tap._udp: a datagram on a known UDP flow that no dissector
    takes, or a DNS response there, is counted in the walk (its quiet count and all) instead of
    handed to the tap. None: off."""
    rules = _udp_rules()
    return None if rules is None else (tap.flows.table(IPPROTO_UDP), *rules)


def walk_pcap_c(tap: Tap, run: PcapRun) -> None:
    """``walk_pcap`` compiled; the Python walk carries on where the compiled one hands back."""
    if type(run.buf) not in _WHOLE_BUFFERS:
        walk_pcap(tap, run)
        return
    assert ACCEL is not None
    big = run.rec.__self__.format[0] in ">!"  # type: ignore[attr-defined]
    min_fast = 98 if not tap.n6 and run.linktype == LINKTYPE_ETHERNET else MAX_RECORD
    first = run.off
    state: list[int] = [first, 0, tap.last_ns, 0, 0]  # offset, packets, ts_ns, done, bytes (pcapng)
    try:
        ACCEL.walk_pcap(_context(tap), state, run.buf, first, big, run.linktype, run.mul, run.limit, min_fast,
                        tap.last_ns)
    finally:
        off, npk, ts_ns, done, _ = state
        run.off = off
        run.packets += npk
        tap.packets += npk
        tap.octets += off - first - 16 * npk
        tap.last_ns = ts_ns
    if not done:
        walk_pcap(tap, run)


def walk_pcapng_c(tap: Tap, run: PcapngRun) -> None:
    """``walk_pcapng`` compiled; the Python walk carries on where the compiled one hands back."""
    if type(run.buf) not in _WHOLE_BUFFERS:
        walk_pcapng(tap, run)
        return
    assert ACCEL is not None
    first = run.off
    state: list[int] = [first, 0, tap.last_ns, 0, 0]
    try:
        ACCEL.walk_pcapng(_context(tap), state, run.buf, first, run.ifaces, tap.n6, tap.last_ns)
    finally:
        off, npk, ts_ns, done, nbytes = state
        run.off = off
        run.packets += npk
        tap.packets += npk
        tap.octets += nbytes
        tap.last_ns = ts_ns
    if not done:
        walk_pcapng(tap, run)


def walk_batch_c(tap: Tap, buf: bytes, recs: list[int]) -> None:
    """``walk_batch`` compiled; the Python walk carries on where the compiled one hands back."""
    if type(buf) is not bytes or type(recs) is not list:
        walk_batch(tap, buf, recs)
        return
    assert ACCEL is not None
    tap.packets += len(recs) >> 2
    tap.octets += sum(recs[3::4]) - sum(recs[2::4])
    state: list[int] = [0, 0, tap.last_ns, 0, 0]  # next packet, -, ts_ns, done, -
    try:
        ACCEL.walk_batch(_context(tap), state, buf, recs, not tap.n6, tap.last_ns)
    finally:
        tap.last_ns = state[2]
    if not state[3]:
        _walk_batch_from(tap, buf, recs, state[0])


def walk_pcap(tap: Tap, run: PcapRun) -> None:
    """Every whole record of one pcap chunk (the contract is in PcapRun's docstring)."""
    fast, fast6, rec, slow = _fast_n3_rec, _fast_n3_v6_rec, run.rec, tap.feed_at
    flows = tap.flows
    flows_get, skip_get, udp_skip_get = flows.table(IPPROTO_TCP).get, flows.skip.get, flows.udp_skip.get
    lru_touch = flows.lru.move_to_end
    gtpu_ports = tap.gtpu_ports
    both_ports = _both_ports(gtpu_ports)
    linktype, mul, limit, ns = run.linktype, run.mul, run.limit, NS
    gtp_room, touch_ns = _GTP_ROOM, LRU_TOUCH_NS
    min_fast = 98 if not tap.n6 and linktype == LINKTYPE_ETHERNET else MAX_RECORD  # frames the fast test reads
    count_flows = tap.cfg.flows
    next_expiry = tap.next_expiry
    workers, me = tap.workers, tap.worker
    buf, off = run.buf, run.off
    first, n = off, len(buf)
    npk = 0
    ts_ns = tap.last_ns
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
                tap.expire(ts_ns)
                next_expiry = tap.next_expiry
            if incl >= min_fast:
                eth_ip, otot, frag_proto, ports, gtp, ext, ext_ip, itot, ifrag_proto, key, tcp = fast(buf, off)
                if (0x08004500 <= eth_ip <= 0x080045FF and incl - otot == 14 and frag_proto & 0x3FFF00FF == 17
                        and gtp == gtp_room + incl and ext == 0x8501
                        and (ports in both_ports or ports >> 16 in gtpu_ports or ports & 0xFFFF in gtpu_ports)):
                    hit = None
                    if ext_ip == 0x0045:  # inner IPv4 without options
                        if workers > 1 and owner(key[:4], key[4:8], workers) != me:
                            off = end
                            continue  # another worker's flow (flows.owner)
                        if incl - itot == 58:
                            iproto = ifrag_proto & 0x3FFF00FF
                            if iproto == 6 and not tcp & 0x07 and tcp >= 0x5000 and itot >= (tcp_end := 20 + (tcp >> 12) * 4):
                                # a bare ACK: any flow; data: a direction with nothing left to inspect
                                hit = (flows_get if itot == tcp_end else skip_get)(key)
                            elif iproto == 17:  # a UDP direction gone quiet (pipeline: UDP_QUIET_DATAGRAMS)
                                hit = udp_skip_get(key)
                    elif ext_ip >> 4 == 6 and incl >= 118:  # inner IPv6, TCP or UDP right after its header
                        plen, nh, key, tcp = fast6(buf, off)
                        if (nh == 6 and incl - plen == 98 and not tcp & 0x07 and tcp >= 0x5000
                                and plen >= (tcp_end := (tcp >> 12) * 4)):
                            if workers > 1 and owner(key[:16], key[16:32], workers) != me:
                                off = end
                                continue  # another worker's flow (flows.owner)
                            hit = (flows_get if plen == tcp_end else skip_get)(key)
                            itot = plen + 20  # the counters below take itot - 20: the TCP segment's length
                        elif nh == 17 and incl - plen == 98:  # UDP in IPv6: a direction gone quiet
                            if workers > 1 and owner(key[:16], key[16:32], workers) != me:
                                off = end
                                continue  # another worker's flow (flows.owner)
                            hit = udp_skip_get(key)
                            itot = plen + 20
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
            tap.last_ns = ts_ns
            slow(ts_ns, linktype, buf[off + 16 : end], 0, incl)
            off = end
    finally:
        run.off = off
        run.packets += npk
        tap.packets += npk
        tap.octets += off - first - 16 * npk
        tap.last_ns = ts_ns


def walk_pcapng(tap: Tap, run: PcapngRun) -> None:
    """Consecutive Enhanced Packet Blocks of one pcapng chunk (contract: PcapngRun)."""
    fast, fast6, epb, trailer, ifaces, slow = _fast_n3_epb, _fast_n3_v6_epb, run.epb, run.trailer, run.ifaces, tap.feed_at
    flows = tap.flows
    flows_get, skip_get, udp_skip_get = flows.table(IPPROTO_TCP).get, flows.skip.get, flows.udp_skip.get
    lru_touch = flows.lru.move_to_end
    gtpu_ports = tap.gtpu_ports
    both_ports = _both_ports(gtpu_ports)
    gtp_room, touch_ns, n6 = _GTP_ROOM, LRU_TOUCH_NS, tap.n6
    count_flows = tap.cfg.flows
    next_expiry = tap.next_expiry
    workers, me = tap.workers, tap.worker
    buf, off = run.buf, run.off
    n = len(buf)
    npk = nbytes = 0
    cur = -1  # interface of the previous block: most files have one
    linktype = mul = tsoff = 0
    min_fast = MAX_RECORD
    ts_ns = tap.last_ns
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
                tap.expire(ts_ns)
                next_expiry = tap.next_expiry
            if cap >= min_fast:
                eth_ip, otot, frag_proto, ports, gtp, ext, ext_ip, itot, ifrag_proto, key, tcp = fast(buf, off)
                if (0x08004500 <= eth_ip <= 0x080045FF and cap - otot == 14 and frag_proto & 0x3FFF00FF == 17
                        and gtp == gtp_room + cap and ext == 0x8501
                        and (ports in both_ports or ports >> 16 in gtpu_ports or ports & 0xFFFF in gtpu_ports)):
                    hit = None
                    if ext_ip == 0x0045:  # inner IPv4 without options
                        if workers > 1 and owner(key[:4], key[4:8], workers) != me:
                            off = end
                            continue  # another worker's flow (flows.owner)
                        if cap - itot == 58:
                            iproto = ifrag_proto & 0x3FFF00FF
                            if iproto == 6 and not tcp & 0x07 and tcp >= 0x5000 and itot >= (tcp_end := 20 + (tcp >> 12) * 4):
                                # a bare ACK: any flow; data: a direction with nothing left to inspect
                                hit = (flows_get if itot == tcp_end else skip_get)(key)
                            elif iproto == 17:  # a UDP direction gone quiet (pipeline: UDP_QUIET_DATAGRAMS)
                                hit = udp_skip_get(key)
                    elif ext_ip >> 4 == 6 and cap >= 118:  # inner IPv6, TCP or UDP right after its header
                        plen, nh, key, tcp = fast6(buf, off)
                        if (nh == 6 and cap - plen == 98 and not tcp & 0x07 and tcp >= 0x5000
                                and plen >= (tcp_end := (tcp >> 12) * 4)):
                            if workers > 1 and owner(key[:16], key[16:32], workers) != me:
                                off = end
                                continue  # another worker's flow (flows.owner)
                            hit = (flows_get if plen == tcp_end else skip_get)(key)
                            itot = plen + 20  # the counters below take itot - 20: the TCP segment's length
                        elif nh == 17 and cap - plen == 98:  # UDP in IPv6: a direction gone quiet
                            if workers > 1 and owner(key[:16], key[16:32], workers) != me:
                                off = end
                                continue  # another worker's flow (flows.owner)
                            hit = udp_skip_get(key)
                            itot = plen + 20
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
            tap.last_ns = ts_ns
            slow(ts_ns, linktype, buf[off + 28 : off + 28 + cap], 0, cap)
            off = end
    finally:
        run.off = off
        run.packets += npk
        tap.packets += npk
        tap.octets += nbytes
        tap.last_ns = ts_ns


def walk_batch(tap: Tap, buf: bytes, recs: list[int]) -> None:
    """The packets of one batch (``read_batches``): the same fast test as ``walk_pcap``."""
    tap.packets += len(recs) >> 2
    tap.octets += sum(recs[3::4]) - sum(recs[2::4])
    _walk_batch_from(tap, buf, recs, 0)


def _walk_batch_from(tap: Tap, buf: bytes, recs: list[int], first: int) -> None:
    """``walk_batch`` from packet ``first`` on (the counting is the caller's)."""
    fast, fast6, slow = _fast_n3, _fast_n3_v6, tap.feed_at
    flows = tap.flows
    flows_get, skip_get, udp_skip_get = flows.table(IPPROTO_TCP).get, flows.skip.get, flows.udp_skip.get
    lru_touch, touch_ns, gtp_room = flows.lru.move_to_end, LRU_TOUCH_NS, _GTP_ROOM
    gtpu_ports = tap.gtpu_ports
    both_ports = _both_ports(gtpu_ports)
    use_fast = not tap.n6
    count_flows = tap.cfg.flows
    next_expiry = tap.next_expiry
    workers, me = tap.workers, tap.worker
    ts_ns = tap.last_ns
    it = iter(recs[4 * first :] if first else recs)
    try:
        for ts_ns, linktype, start, end in zip(it, it, it, it):  # noqa: B905 - always 4 per packet
            if ts_ns >= next_expiry:
                tap.expire(ts_ns)
                next_expiry = tap.next_expiry
            flen = end - start
            if use_fast and linktype == 1 and flen >= 98:
                eth_ip, otot, frag_proto, ports, gtp, ext, ext_ip, itot, ifrag_proto, key, tcp = fast(buf, start)
                if (0x08004500 <= eth_ip <= 0x080045FF and flen - otot == 14 and frag_proto & 0x3FFF00FF == 17
                        and gtp == gtp_room + flen and ext == 0x8501
                        and (ports in both_ports or ports >> 16 in gtpu_ports or ports & 0xFFFF in gtpu_ports)):
                    hit = None
                    if ext_ip == 0x0045:  # inner IPv4 without options
                        if workers > 1 and owner(key[:4], key[4:8], workers) != me:
                            continue  # another worker's flow (flows.owner)
                        if flen - itot == 58:
                            iproto = ifrag_proto & 0x3FFF00FF
                            if iproto == 6 and not tcp & 0x07 and tcp >= 0x5000 and itot >= (tcp_end := 20 + (tcp >> 12) * 4):
                                # a bare ACK: any flow; data: a direction with nothing left to inspect
                                hit = (flows_get if itot == tcp_end else skip_get)(key)
                            elif iproto == 17:  # a UDP direction gone quiet (pipeline: UDP_QUIET_DATAGRAMS)
                                hit = udp_skip_get(key)
                    elif ext_ip >> 4 == 6 and flen >= 118:  # inner IPv6, TCP or UDP right after its header
                        plen, nh, key, tcp = fast6(buf, start)
                        if (nh == 6 and flen - plen == 98 and not tcp & 0x07 and tcp >= 0x5000
                                and plen >= (tcp_end := (tcp >> 12) * 4)):
                            if workers > 1 and owner(key[:16], key[16:32], workers) != me:
                                continue  # another worker's flow (flows.owner)
                            hit = (flows_get if plen == tcp_end else skip_get)(key)
                            itot = plen + 20  # the counters below take itot - 20: the TCP segment's length
                        elif nh == 17 and flen - plen == 98:  # UDP in IPv6: a direction gone quiet
                            if workers > 1 and owner(key[:16], key[16:32], workers) != me:
                                continue  # another worker's flow (flows.owner)
                            hit = udp_skip_get(key)
                            itot = plen + 20
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
            tap.last_ns = ts_ns
            slow(ts_ns, linktype, buf if start == 0 and end == len(buf) else buf[start:end], 0, flen)
    finally:
        tap.last_ns = ts_ns
