"""AF_PACKET socket with a TPACKET_V3 memory-mapped receive ring (pure Python).

The kernel writes captured frames into blocks of a shared ring; we walk a block
with struct.unpack_from, hand each frame on, and give the block back by writing
TP_STATUS_KERNEL into its header. No copy through recv(), no syscall per frame.

Layouts (linux/if_packet.h):
  tpacket_req3      7 x u32: block_size, block_nr, frame_size, frame_nr,
                    retire_blk_tov (ms), sizeof_priv, feature_req_word
  tpacket_block_desc  u32 version, u32 offset_to_priv, then tpacket_hdr_v1:
                    u32 block_status, u32 num_pkts, u32 offset_to_first_pkt, u32 blk_len,
                    u64 seq_num (the kernel numbers the blocks it fills), ...
  tpacket3_hdr      u32 next_offset, sec, nsec, snaplen, len, status; u16 mac, net; ...
                    followed (TPACKET_ALIGN(48) = 48) by a sockaddr_ll whose
                    sll_pkttype sits at byte 10.
  tpacket_stats_v3  u32 tp_packets, tp_drops, tp_freeze_q_cnt

A ring outlives the process that reads it when its socket is kept elsewhere (systemd's file
descriptor store: ``mec_common.fdstore``): the kernel goes on filling blocks while no one
reads, and a new process adopts the socket (``Ring(..., sock=…)``), maps the same ring and
resumes at the oldest block handed to user space (lowest ``seq_num``). For that to lose
nothing, a block is given back only once its frames are decoded (``hold``: only once the
events they gave are durable, see ``release_held``), so a crash replays it instead.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from upf_tap.capture.common import LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_RAW, CaptureError

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_MR_PROMISC = 1
TPACKET_V3 = 2
ETH_P_ALL = 0x0003

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
PACKET_OUTGOING = 4

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE  # TUN in IFF_TUN mode: frames start at the IP header

# Frame layout offsets inside a block (see module docstring).
_HDR = struct.Struct("<IIIIII HH")  # next_offset, sec, nsec, snaplen, len, status, mac, net
_SLL_PKTTYPE = 48 + 10
_BLK_STATUS = 8
_BLK_HDR = struct.Struct("<IIII")  # block_status, num_pkts, offset_to_first_pkt, blk_len
_BLK_SEQ = struct.Struct("<Q")      # seq_num, at 24 in the block

DEFAULT_BLOCK_SIZE = 1 << 20      # 1 MiB: a power-of-two multiple of the page size
KEPT_BLOCK_SIZE = 1 << 16         # a ring kept across restarts: the kernel closes a block every retire
                                  # period even with one frame in it, so while no one reads it is the
                                  # number of blocks that says how long the ring lasts (64 MiB: 1024
                                  # blocks, at least 2 s); frames above ~65,400 bytes are truncated
DEFAULT_RING_MB = 64
DEFAULT_RETIRE_MS = 2             # a partly filled block is handed over after this long: short, since
                                  # an event may start a function (a full block goes at once)
SNAPLEN = 65535
SIOCGIFHWADDR = 0x8927

# frame callback: (ts_ns, linktype, frame)
FrameSink = Callable[[int, int, bytes], None]
BatchSink = Callable[[bytes, list[int]], None]


@dataclass
class KernelStats:
    packets: int = 0  # received by the socket, including the dropped ones
    drops: int = 0    # the ring was full
    freeze_q: int = 0


def hw_type(sock: socket.socket, iface: str) -> int:
    """ARPHRD_* hardware type of an interface, asked through ``sock`` (SIOCGIFHWADDR).

    An ioctl rather than sysfs, because /sys/class/net shows the namespace sysfs was
    mounted in, not the one the socket lives in.
    """
    if not iface or len(iface.encode()) >= 16:
        raise CaptureError(f"bad interface name: {iface!r}")
    try:
        res = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", iface.encode()))
    except OSError as e:
        raise CaptureError(f"no such interface: {iface}") from e
    return int(struct.unpack_from("<H", res, 16)[0])


def linktype_for(hwtype: int) -> int:
    """The pcap linktype of frames read from a SOCK_RAW socket on this hardware type.

    Ethernet and loopback frames carry a 14-byte Ethernet header; TUN (ARPHRD_NONE)
    and other header-less devices give raw IP (the version is picked per frame).
    """
    if hwtype in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
        return LINKTYPE_ETHERNET
    return LINKTYPE_RAW


def raw_ip_linktype(frame: bytes) -> int:
    """228 for an IPv4 frame, 229 for IPv6, 101 (raw) when the version is unknown."""
    if not frame:
        return LINKTYPE_RAW
    v = frame[0] >> 4
    return LINKTYPE_IPV4 if v == 4 else LINKTYPE_IPV6 if v == 6 else LINKTYPE_RAW


class Ring:
    """One AF_PACKET TPACKET_V3 socket bound to one interface.

    Attach a filter (bpf.attach on ``sock``) *before* ``start()``, which maps the
    ring and binds: frames only flow after the bind, so the filter sees them all.
    A fanout group can only be joined after the bind (see worker.open_ring).
    """

    def __init__(self, iface: str, ring_mb: int = DEFAULT_RING_MB,
                 block_size: int = DEFAULT_BLOCK_SIZE, retire_ms: int = DEFAULT_RETIRE_MS,
                 promisc: bool = False, sock: socket.socket | None = None) -> None:
        """A new socket, or with ``sock`` one that an earlier process set up (its ring, filter
        and bind kept, as ``ring_mb``/``block_size`` said then): ``start`` only maps it."""
        self.iface = iface
        self.adopted = sock is not None
        try:
            # protocol 0: nothing is queued until bind() (so no unfiltered frames slip in)
            self.sock = sock if sock is not None else socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError as e:
            raise CaptureError("live capture needs root or CAP_NET_RAW") from e
        try:
            self.hwtype = hw_type(self.sock, iface)
            self.ifindex = socket.if_nametoindex(iface)
        except CaptureError:
            self.sock.close()
            raise
        except OSError as e:
            self.sock.close()
            raise CaptureError(f"no such interface: {iface}") from e
        self.linktype = linktype_for(self.hwtype)
        self.skip_outgoing = self.hwtype == ARPHRD_LOOPBACK  # lo shows each packet twice
        self.block_size = block_size
        self.block_nr = max(2, (ring_mb << 20) // block_size)
        self.retire_ms = retire_ms
        self.promisc = promisc
        if not self.adopted:
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        self.map: mmap.mmap | None = None
        self.next_block = 0
        self.synced = not self.adopted  # an adopted ring's next block is found by its seq_num
        self.hold = False  # give blocks back only in release_held(), once their events are durable
        self.held: list[tuple[int, int]] = []  # (block index, latest frame time in it), in ring order
        self.replayed_blocks = 0  # blocks an earlier process had taken but not given back
        self.stats = KernelStats()
        self.frames = 0
        self.bytes = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def geometry(self) -> tuple[int, int]:
        """(block size, block count): an adopting process must map the ring with the same."""
        return self.block_size, self.block_nr

    def start(self) -> None:
        if self.adopted:
            try:
                self.map = mmap.mmap(self.sock.fileno(), self.block_size * self.block_nr,
                                     mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as e:  # EINVAL: a ring of another size than the one given
                raise CaptureError(f"cannot map the kept ring of {self.iface} as {self.block_nr} blocks of "
                                   f"{self.block_size} bytes: {e}") from e
            self._resync()
            return
        req = struct.pack("<7I", self.block_size, self.block_nr, self.block_size, self.block_nr,
                          self.retire_ms, 0, 0)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        except OSError as e:
            raise CaptureError(f"cannot set up a {self.block_nr} MiB ring on {self.iface}: {e}") from e
        self.map = mmap.mmap(self.sock.fileno(), self.block_size * self.block_nr,
                             mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.sock.bind((self.iface, ETH_P_ALL))
        if self.promisc:
            mreq = struct.pack("<iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b"")
            self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)

    def _resync(self) -> bool:
        """Point next_block at the oldest block the kernel has handed to user space (an
        adopted ring: the last reader may have stopped anywhere); False while there is none."""
        m = self.map
        assert m is not None
        bs = self.block_size
        ready = []
        for i in range(self.block_nr):
            if _BLK_HDR.unpack_from(m, i * bs + _BLK_STATUS)[0] & TP_STATUS_USER:
                ready.append((_BLK_SEQ.unpack_from(m, i * bs + 24)[0], i))
        if not ready:
            return False
        self.next_block = min(ready)[1]
        self.replayed_blocks = len(ready)
        self.synced = True
        return True

    def release_held(self, upto_ns: int = 1 << 63) -> int:
        """Give back the held blocks whose frames are all at or before ``upto_ns`` (decoded, and
        their events durable); the number given back."""
        m = self.map
        if m is None or not self.held:
            return 0
        bs = self.block_size
        keep = []
        for idx, last_ns in self.held:
            if last_ns <= upto_ns:
                struct.pack_into("<I", m, idx * bs + _BLK_STATUS, TP_STATUS_KERNEL)
            else:
                keep.append((idx, last_ns))
        done = len(self.held) - len(keep)
        self.held = keep
        return done

    def read_stats(self) -> KernelStats:
        """Add the kernel's counters since the last call (reading resets them)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops, freeze = struct.unpack("<III", raw)
        self.stats.packets += packets  # the kernel already counts drops in tp_packets
        self.stats.drops += drops
        self.stats.freeze_q += freeze
        return self.stats

    def drain(self, sink: FrameSink, max_blocks: int = 0) -> int:
        """Hand every frame of the blocks the kernel has released to ``sink``, one by one.

        Returns the number of frames; stops after ``max_blocks`` blocks when > 0 so
        one busy ring cannot starve the others.
        """
        def frames(buf: bytes, recs: list[int]) -> None:
            for i in range(0, len(recs), 4):
                sink(recs[i], recs[i + 1], buf[recs[i + 2] : recs[i + 3]])

        return self.drain_batches(frames, max_blocks)

    def drain_batches(self, sink: BatchSink, max_blocks: int = 0) -> int:
        """Hand the released blocks to ``sink``, one copy per block: ``sink(buf, [ts_ns,
        linktype, start, end, ...])`` with the used part of the block and its frames' bounds
        in it, the batch shape of ``Tap.consume_batches`` (whose fast path then skips bulk
        packets without making an object per packet). Returns the number of frames; stops
        after ``max_blocks`` blocks when > 0."""
        m = self.map
        assert m is not None, "start() first"
        if not self.synced and not self._resync():
            return 0
        bs = self.block_size
        unpack_hdr = _HDR.unpack_from
        linktype = self.linktype
        skip_out = self.skip_outgoing
        n = nbytes = blocks = 0
        while True:
            base = self.next_block * bs
            status, num, off, used = _BLK_HDR.unpack_from(m, base + _BLK_STATUS)
            if not status & TP_STATUS_USER:
                break
            if not off <= used <= bs:  # blk_len is the used length from the block's start
                used = bs
            buf = m[base : base + used]  # the one copy: the block is given back below
            recs: list[int] = []
            add = recs.extend
            p = off
            last_ns = 0
            for _ in range(num):
                nxt, sec, nsec, snaplen, _wire, _st, mac, _net = unpack_hdr(buf, p)
                if not (skip_out and buf[p + _SLL_PKTTYPE] == PACKET_OUTGOING):
                    start = p + mac
                    lt = linktype if linktype == LINKTYPE_ETHERNET else raw_ip_linktype(buf[start : start + 1])
                    last_ns = sec * 1_000_000_000 + nsec
                    add((last_ns, lt, start, start + snaplen))
                    nbytes += snaplen
                p += nxt
            idx = self.next_block
            self.next_block = (idx + 1) % self.block_nr
            blocks += 1
            if recs:
                n += len(recs) >> 2
                sink(buf, recs)
            # given back after the sink: a crash while decoding leaves the block to be replayed
            if self.hold:
                self.held.append((idx, last_ns))
            else:
                struct.pack_into("<I", m, base + _BLK_STATUS, TP_STATUS_KERNEL)
            if max_blocks and blocks >= max_blocks:
                break
        self.frames += n
        self.bytes += nbytes
        return n

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        self.sock.close()


def poll_rings(rings: list[Ring], sink: FrameSink | None, timeout_ms: int,
               batch_sink: BatchSink | None = None) -> int:
    """Wait up to ``timeout_ms`` for any ring to have a ready block, then drain all: frame
    by frame to ``sink``, or block by block to ``batch_sink`` when it is given."""

    def drain_all() -> int:
        if batch_sink is not None:
            return sum(r.drain_batches(batch_sink, max_blocks=8) for r in rings)
        assert sink is not None
        return sum(r.drain(sink, max_blocks=8) for r in rings)

    n = drain_all()
    if n:
        return n
    p = select.poll()
    for r in rings:
        p.register(r.fileno(), select.POLLIN | select.POLLERR)
    try:
        p.poll(timeout_ms)
    except InterruptedError:  # PEP 475 retries, but a signal handler may raise through here
        return 0
    except OSError as e:
        if e.errno != errno.EINTR:
            raise
        return 0
    return drain_all()


def have_capture_privilege() -> bool:
    """True when this process may open AF_PACKET sockets (root or CAP_NET_RAW)."""
    if os.geteuid() == 0:
        return True
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
        return True
    except OSError:
        return False
