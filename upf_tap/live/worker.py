"""One capture worker: its rings (one or two per interface), the decode pipeline, the loop.

With one worker, each interface gets one ring whose filter takes everything the tap
decodes, so the tap sees frames in the kernel's order. With N workers the user plane
is spread by PACKET_FANOUT, but PFCP and NGAP must reach *every* worker (each one
needs the sessions to name the subscriber), so each worker also opens its own
control-plane ring outside the fanout group; only worker 0 reports the control
plane's own events (session.*), so they are not repeated N times.
"""

from __future__ import annotations

import heapq
import select
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mec_common import fdstore
from upf_tap.capture import bpf, fanout
from upf_tap.capture.common import LINKTYPE_ETHERNET, CaptureError
from upf_tap.capture.netns import in_netns
from upf_tap.capture.ring import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_RETIRE_MS,
    DEFAULT_RING_MB,
    KEPT_BLOCK_SIZE,
    Ring,
    poll_rings,
)
from upf_tap.constants import PFCP_PORT

if TYPE_CHECKING:
    from upf_tap.pipeline import TapConfig

CONTROL_RING_MB = 4
DROP_ALL: list[bpf.Insn] = [(bpf.RET | bpf.K, 0, 0, 0)]
POLL_MS = 100
CONTROL_COUNTERS = ("pfcp.", "sctp.", "ngap.", "nas.", "identity.", "control.", "session")
HOLD_NS = 4 * DEFAULT_RETIRE_MS * 1_000_000  # frames wait this long for earlier ones on other rings
CLOCK_STEP_NS = 1_000_000_000


@dataclass(frozen=True)
class CaptureSpec:
    ifaces: tuple[str, ...]
    point: str = "n3"
    gtpu_ports: tuple[int, ...] = (2152,)
    control_plane: bool = True
    workers: int = 1
    group_id: int = 0
    ring_mb: int = DEFAULT_RING_MB
    promisc: bool = False
    netns: str | None = None  # open the sockets in this network namespace (ip netns name)


def capture_filter(spec: CaptureSpec, role: str, l2: int) -> list[bpf.Insn]:
    """The kernel filter for a ring: role 'all' (single worker), 'data' or 'control'."""
    if role == "control":
        return bpf.capture_program("n3", l2, (PFCP_PORT,), sctp=True, udp_fragments=False)
    if spec.point == "n6":
        return bpf.capture_program("n6", l2)
    if role == "data":
        return bpf.capture_program("n3", l2, spec.gtpu_ports, sctp=False)
    ports = spec.gtpu_ports + ((PFCP_PORT,) if spec.control_plane else ())
    return bpf.capture_program("n3", l2, ports, sctp=spec.control_plane)


_kept: dict[str, int] | None = None


def kept_sockets() -> dict[str, int]:
    """The ring sockets a supervisor passed back to this process (LISTEN_FDS), by name. Read
    once, in the process that was started (workers fork after it and inherit the fds)."""
    global _kept
    if _kept is None:
        _kept = {name: fd for name, fd in fdstore.listen_fds().items() if name.startswith("ring.")}
    return _kept


def ring_name(worker_id: int, role: str, iface: str, block_size: int, block_nr: int) -> str:
    return f"ring.w{worker_id}.{role}.{block_size}x{block_nr}.{iface}"


def _open(spec: CaptureSpec, iface: str, role: str, group: int | None, worker_id: int = 0) -> Ring:
    try:
        with in_netns(spec.netns):
            mb = CONTROL_RING_MB if role == "control" else spec.ring_mb
            kept = kept_sockets()
            block = KEPT_BLOCK_SIZE if kept or fdstore.supervised() else DEFAULT_BLOCK_SIZE
            name = ring_name(worker_id, role, iface, block, max(2, (mb << 20) // block))
            fd = kept.pop(name, None)
            if fd is not None:  # kept for us while we were down: the ring has gone on filling
                ring = Ring(iface, mb, block, promisc=spec.promisc,
                            sock=socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0, fileno=fd))
                try:
                    ring.start()
                except BaseException:
                    ring.close()
                    raise
                print(f"upf-tap live: {iface}: resuming the kept ring ({ring.replayed_blocks} blocks waiting)",
                      file=sys.stderr, flush=True)
                return ring
            ring = _open_here(spec, iface, role, group, block)
            fdstore.store(ring.fileno(), name)  # no supervisor: nothing to do
            return ring
    except OSError as e:
        raise CaptureError(f"{iface}: {e}") from e


def _open_here(spec: CaptureSpec, iface: str, role: str, group: int | None,
               block_size: int = DEFAULT_BLOCK_SIZE) -> Ring:
    ring = Ring(iface, CONTROL_RING_MB if role == "control" else spec.ring_mb, block_size, promisc=spec.promisc)
    try:
        l2 = 14 if ring.linktype == LINKTYPE_ETHERNET else 0
        program = capture_filter(spec, role, l2)
        if group is None:
            bpf.attach(ring.sock, program)
            ring.start()
        else:
            # A fanout group can only be joined once bound, so bind behind a drop-all
            # filter, join, then swap in the real filter: no frame escapes the fanout.
            bpf.attach(ring.sock, DROP_ALL)
            ring.start()
            if spec.point == "n3":
                fanout.join(ring.sock, group, "cbpf", bpf.fanout_n3_program())
            else:
                fanout.join(ring.sock, group, "hash")
            bpf.attach(ring.sock, program)
    except (OSError, fanout.FanoutError, bpf.BpfError) as e:
        ring.close()
        raise CaptureError(f"{iface}: {e}") from e
    except BaseException:
        ring.close()
        raise
    return ring


def ring_roles(spec: CaptureSpec) -> list[str]:
    """The role of each ring a worker opens, in order: per interface, 'all' or 'data' (+'control')."""
    roles: list[str] = []
    for _iface in spec.ifaces:
        if spec.workers == 1:
            roles.append("all")
        else:
            roles.append("data")
            if spec.point == "n3" and spec.control_plane:
                roles.append("control")
    return roles


def open_rings(spec: CaptureSpec, worker_id: int) -> list[Ring]:
    rings: list[Ring] = []
    roles = iter(ring_roles(spec))
    try:
        for i, iface in enumerate(spec.ifaces):
            role = next(roles)
            # a fanout group belongs to one device: one group id per interface
            rings.append(_open(spec, iface, role, None if role == "all" else (spec.group_id + i) & 0xFFFF,
                               worker_id))
            if role == "data" and spec.point == "n3" and spec.control_plane:
                rings.append(_open(spec, iface, next(roles), None, worker_id))
    except BaseException:
        for r in rings:
            r.close()
        raise
    return rings


class Worker:
    """Rings + Tap. ``run`` loops until ``stop()`` is true, then drains and finishes."""

    def __init__(self, spec: CaptureSpec, worker_id: int, tap_config: TapConfig,
                 emit: Callable[[dict[str, Any]], None]) -> None:
        from upf_tap.pipeline import Tap  # the decode pipeline (same as `upf-tap read`)

        self.spec = spec
        self.worker_id = worker_id
        self._emit = emit
        self.emitted: Counter[str] = Counter()  # events passed on, by kind
        self.tap = Tap(tap_config, self._filter_emit if worker_id else self._count_emit)
        self._pending: list[tuple[int, int, int, bytes]] = []  # merge heap (several rings)
        self._seq = 0
        self._fed_upto = 0  # every frame up to this capture time has been decoded
        self._commit: Callable[[], bool] | None = None
        self.rings = open_rings(spec, worker_id)
        self.roles = ring_roles(spec)

    def hold_until_durable(self, commit: Callable[[], bool]) -> None:
        """Give ring blocks back only after ``commit()`` has made the events of their frames
        durable (the sender's spool; False: not yet, keep them held): a crash then replays
        them from a kept ring."""
        self._commit = commit
        for r in self.rings:
            r.hold = True

    def _give_back(self, upto_ns: int) -> None:
        if self._commit is None or not any(r.held for r in self.rings) or not self._commit():
            return
        for r in self.rings:
            r.release_held(upto_ns)

    def _count_emit(self, ev: dict[str, Any]) -> None:
        self.emitted[ev["kind"]] += 1
        self._emit(ev)

    def _filter_emit(self, ev: dict[str, Any]) -> None:
        # workers > 0 see the control plane only for identity: worker 0 reports it
        if ev.get("point") == self.spec.point:
            self.emitted[ev["kind"]] += 1
            self._emit(ev)

    def _round(self, timeout_ms: int) -> int:
        if len(self.rings) == 1:  # whole blocks to the tap's fast path
            n = poll_rings(self.rings, None, timeout_ms, batch_sink=self._consume_block)
            self._give_back(1 << 63)
            return n
        # Several rings (control + data, or several interfaces): the kernel hands each
        # ring's frames over in blocks, at most a retire period late, so a frame from one
        # ring may show up after later frames from another. Hold every frame for a few
        # retire periods in a heap and feed them in capture-time order: the decoder then
        # sees a session's PFCP/NGAP before the user-plane packets that follow them.
        pending = self._pending
        push = heapq.heappush
        seq = self._seq

        def add(ts: int, lt: int, f: bytes) -> None:
            nonlocal seq
            seq += 1
            push(pending, (ts, seq, lt, f))

        n = 0
        for r in self.rings:
            n += r.drain(add, max_blocks=8)
        if not n and not pending:
            poller = select.poll()
            for r in self.rings:
                poller.register(r.fileno(), select.POLLIN | select.POLLERR)
            try:
                poller.poll(timeout_ms)
            except OSError:  # EINTR from a signal: the caller re-checks stop()
                return 0
            for r in self.rings:
                n += r.drain(add, max_blocks=8)
        elif not n:
            time.sleep(HOLD_NS / 4e9)
        self._seq = seq
        now = time.time_ns()
        if pending and pending[0][0] > now + CLOCK_STEP_NS:
            now = 1 << 63  # the clock stepped back: holding on would stall; release all
        self._release(now - HOLD_NS)
        self._give_back(self._fed_upto)
        return n

    def _consume_block(self, buf: bytes, recs: list[int]) -> None:
        self.tap.consume_batches(((buf, recs),))

    def _release(self, upto_ns: int) -> None:
        pending = self._pending
        pop = heapq.heappop
        feed = self.tap.feed
        while pending and pending[0][0] <= upto_ns:
            ts, _seq, lt, f = pop(pending)
            feed(ts, lt, f)
        self._fed_upto = upto_ns if not pending else min(upto_ns, pending[0][0] - 1)

    def run(self, stop: Callable[[], bool], tick: Callable[[], None] | None = None,
            tick_every: float = 1.0, after_round: Callable[[], None] | None = None) -> None:
        next_tick = time.monotonic() + tick_every
        while not stop():
            self._round(POLL_MS)
            if after_round is not None:
                after_round()
            if tick is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + tick_every
                tick()
        # Drain: decode the backlog still in the ring, and wait out the retire timeout
        # after which the kernel hands over its partly filled block.
        end = time.monotonic() + 3 * DEFAULT_RETIRE_MS / 1000
        while True:
            n = self._round(DEFAULT_RETIRE_MS)
            if after_round is not None:
                after_round()
            if not n and time.monotonic() >= end:
                break
        self._release(1 << 63)
        self.tap.finish()
        if after_round is not None:
            after_round()
        self._give_back(1 << 63)  # a clean stop: nothing for the next process to replay

    def counters(self) -> dict[str, Any]:
        """Tap counters and per-interface ring counters (reads PACKET_STATISTICS)."""
        ifaces: dict[str, list[int]] = {}
        for r, role in zip(self.rings, self.roles, strict=True):
            k = r.read_stats()
            row = ifaces.setdefault(r.iface, [0, 0, 0, 0])
            if not (role == "control" and self.worker_id):  # the same control packets reach every worker
                row[0] += r.frames
                row[1] += r.bytes
                row[2] += k.packets
            row[3] += k.drops
        tap = {k: v for k, v in self.tap.counters().items() if not k.startswith("events.")}
        if self.worker_id:
            # every worker decodes the whole control plane; worker 0 speaks for it
            tap = {k: v for k, v in tap.items() if not k.startswith(CONTROL_COUNTERS)}
        tap.update((f"events.{k}", v) for k, v in self.emitted.items())
        return {"tap": tap, "ifaces": ifaces}

    def close(self) -> None:
        for r in self.rings:
            r.close()
        self.rings = []
