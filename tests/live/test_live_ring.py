"""The TPACKET_V3 ring delivers exactly what was sent: tcpreplay into a veth pair."""

from __future__ import annotations

import os
import socket
import time

import live_frames as F
import pytest
from conftest import open_tun
from scapy.utils import RawPcapReader

from upf_tap.capture import bpf
from upf_tap.capture.ring import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    CaptureError,
    Ring,
    poll_rings,
)

pytestmark = pytest.mark.root


def _drain_until(rings: list[Ring], got: list, want: int, timeout: float = 3.0, blocks: bool = False) -> None:
    """Frames as (ts, linktype, bytes), taken one by one or (``blocks``) a block at a time."""
    def frame(ts: int, lt: int, f: bytes) -> None:
        got.append((ts, lt, f))

    def block(buf: bytes, recs: list[int]) -> None:
        got.extend((recs[i], recs[i + 1], buf[recs[i + 2] : recs[i + 3]]) for i in range(0, len(recs), 4))

    sink, batch_sink = (None, block) if blocks else (frame, None)
    end = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < end:
        poll_rings(rings, sink, 50, batch_sink=batch_sink)
    poll_rings(rings, sink, 60, batch_sink=batch_sink)  # nothing extra may follow


BY = pytest.mark.parametrize("blocks", [False, True], ids=["frames", "blocks"])


@BY
@pytest.mark.parametrize("name", ["synthetic-n3.pcap", "gtp-http-fragmented.pcap", "oai-5greplay.pcap"])
def test_ring_delivers_tcpreplay_frames_byte_for_byte_in_order(veth_ns, captures, name, blocks) -> None:
    pcap = str(captures / name)
    with veth_ns.inside():
        # small blocks so the capture spans many blocks and the ring wraps
        ring = Ring(veth_ns.rx, ring_mb=2, block_size=1 << 16)
        ring.start()
    try:
        res = veth_ns.replay(pcap, "--topspeed")
        want = [bytes(d) for d, _meta in RawPcapReader(pcap)]
        assert f"Actual: {len(want)} packets" in res.stdout
        got: list[tuple[int, int, bytes]] = []
        _drain_until([ring], got, len(want), blocks=blocks)
        assert [f for _ts, _lt, f in got] == want
        assert {lt for _ts, lt, _f in got} == {LINKTYPE_ETHERNET}
        ts = [t for t, _lt, _f in got]
        assert ts == sorted(ts) and abs(ts[0] / 1e9 - time.time()) < 60  # kernel receive times
        k = ring.read_stats()
        assert (k.packets, k.drops) == (len(want), 0)
        assert (ring.frames, ring.bytes) == (len(want), sum(map(len, want)))
    finally:
        ring.close()


def test_full_ring_counts_kernel_drops(veth_ns) -> None:
    """Nobody reads: the two 64 KiB blocks fill and PACKET_STATISTICS counts the rest."""
    with veth_ns.inside():
        ring = Ring(veth_ns.rx, ring_mb=0, block_size=1 << 16)  # the minimum: 2 blocks
        ring.start()
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        tx.bind((veth_ns.tx, 0))
    try:
        frame = F.eth(F.ipv4("10.0.0.1", "10.0.0.2", 17, F.udp(1, 2152, b"x" * 1000)))
        for _ in range(400):
            tx.send(frame)
        time.sleep(0.1)
        k = ring.read_stats()
        assert k.packets == 400 and 0 < k.drops < 400
        got: list = []
        _drain_until([ring], got, 400 - k.drops, timeout=1.0)
        assert len(got) == 400 - k.drops
        assert ring.read_stats().drops == k.drops  # reading resets the kernel's count; ours accumulate
    finally:
        tx.close()
        ring.close()


@BY
def test_tun_frames_are_raw_ip(veth_ns, blocks) -> None:
    fd = open_tun(veth_ns)
    try:
        with veth_ns.inside():
            ring = Ring("tun0", ring_mb=2, block_size=1 << 16)
            bpf.attach(ring.sock, bpf.capture_program("n6", 0))
            ring.start()
        p4 = F.ipv4("10.45.0.2", "10.200.0.10", 17, F.udp(4000, 53, F.dns_query("shop.mec.local")))
        p6 = F.ipv6("2001:db8:cafe::2", "2001:db8::10", 17, F.udp(4000, 53, F.dns_query("a.mec.local")))
        os.write(fd, p4)
        os.write(fd, p6)
        got: list = []
        _drain_until([ring], got, 2, blocks=blocks)
        assert [(lt, f) for _ts, lt, f in got] == [(LINKTYPE_IPV4, p4), (LINKTYPE_IPV6, p6)]
        ring.close()
    finally:
        os.close(fd)


@BY
def test_loopback_shows_each_packet_once(veth_ns, blocks) -> None:
    with veth_ns.inside():
        ring = Ring("lo", ring_mb=2, block_size=1 << 16)
        bpf.attach(ring.sock, bpf.capture_program("n3", 14, (2152,), sctp=False))
        ring.start()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(5):
            s.sendto(bytes([i]) * 20, ("127.0.0.1", 2152))
        got: list = []
        _drain_until([ring], got, 5, blocks=blocks)
        assert [f[-20:] for _ts, _lt, f in got] == [bytes([i]) * 20 for i in range(5)]
    finally:
        s.close()
        ring.close()


def test_unknown_interface_is_a_clear_error(veth_ns) -> None:
    with veth_ns.inside(), pytest.raises(CaptureError, match="no such interface: nope0"):
        Ring("nope0")
    with pytest.raises(CaptureError, match="bad interface name"):
        Ring("x" * 20)
