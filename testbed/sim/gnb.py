"""gNB user plane: each UE's TUN ↔ GTP-U on N3, as UERANSIM's gNB does.

For every attached UE the gNB holds the fd of that UE's `uesimtun` device (opened
inside the UE's namespace). Packets the UE sends become G-PDUs towards the UPF's
N3 address with the UPF's uplink TEID and a PDU Session Container (PDU type UL,
QFI); G-PDUs from the UPF are matched by the gNB's downlink TEID and written back
into the UE's TUN. GTP-U echo requests are answered.

A UE may hold two PDU sessions at once (an SSC mode 3 move, make-before-break): both ride
the one TUN, the uplink picks the session by the packet's source address, the downlink by
the DL TEID. GTP-U End Markers (TS 29.281 §7.3.2) on a tunnel this gNB handed over are
counted and end that tunnel, as a source gNB releases the UE after the path switch.

Control (Unix socket, JSON lines) — the lab plays the AMF/N2 part:
  {"op": "attach", "ue": n, "netns": NS, "tun": NAME, "psi"?: P}  -> {"dl_teid": T}
  {"op": "session", "ue": n, "ul_teid": T, "upf_ip": IP, "qfi": Q, "psi"?: P, "ue_ip"?: IP}
  {"op": "release", "ue": n}
  {"op": "impair", "loss": 0.05, "delay_ms": 20, "jitter_ms": 5, "reorder": 0.1}
  {"op": "status"}
Mobility (issue 18; docs/sim-sites.md):
  {"op": "add_session", "ue": n, "psi": P}  -> {"dl_teid": T}   a second PDU session on the attached UE
  {"op": "drop_session", "ue": n, "psi": P}                      forget one PDU session's tunnel
  {"op": "context", "ue": n}  -> {"ue", "netns", "tun", "primary", "sessions": [...]}
        the UE context a source gNB hands the target (Xn Handover Request: UL tunnels, QFIs)
  {"op": "handover_in", "ue": n, "netns": NS, "tun": NAME, "primary": P,
   "sessions": [{"psi", "ue_ip", "ul_teid", "upf_ip", "qfi"}]}  -> {"sessions": [{"psi", "dl_teid"}]}
        target side: attach the UE's TUN (another queue), a new DL TEID per session, uplink at once
  {"op": "handover_out", "ue": n}  -> {"sessions": [...]}
        source side: let go of the TUN; the old DL TEIDs wait for their End Marker

``impair`` degrades N3 in both directions, as ``tc qdisc … netem`` would on the gNB's veth
(loss, delay with jitter, reordering: a packet held back by an extra delay so the next ones
overtake it). It lives here because netem is a kernel module a machine may lack (this
project's CI kernel has none); ``{"op": "impair"}`` with no settings clears it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.sim import ctl, gtpu
from testbed.sim.topology import GNB_N3_IP, SITE_GNB_FIRST_DL_TEID
from testbed.sim.tun import in_netns, open_tun
from upf_tap.constants import GTPU_END_MARKER, GTPU_PORT

log = logging.getLogger("gnb")
MAX_PACKET = gtpu.MAX_DATAGRAM  # TUN reads: the largest IP packet
# gNB TEIDs are distinct from the UPF's (which start at 1): easier to read in captures
FIRST_DL_TEID = SITE_GNB_FIRST_DL_TEID[1]


@dataclass
class Impairment:
    """N3 degradation applied by the gNB to each G-PDU it sends and receives."""

    loss: float = 0.0        # probability a packet is dropped
    delay_ms: float = 0.0    # added one-way delay
    jitter_ms: float = 0.0   # uniform ± around the delay
    reorder: float = 0.0     # probability a packet is held back by 2 × delay (+ 5 ms) and so overtaken
    dropped: int = 0
    delayed: int = 0
    reordered: int = 0

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> Impairment:
        imp = cls(float(req.get("loss", 0.0)), float(req.get("delay_ms", 0.0)), float(req.get("jitter_ms", 0.0)),
                  float(req.get("reorder", 0.0)))
        if not (0 <= imp.loss <= 1 and 0 <= imp.reorder <= 1 and imp.delay_ms >= 0 and imp.jitter_ms >= 0):
            raise ValueError("impair: loss and reorder are probabilities (0..1), delays are ≥ 0 ms")
        return imp

    @property
    def active(self) -> bool:
        return bool(self.loss or self.delay_ms or self.jitter_ms or self.reorder)

    def verdict(self, rng: random.Random) -> float | None:
        """None to drop the packet, else the seconds to hold it (0: send now)."""
        if self.loss and rng.random() < self.loss:
            self.dropped += 1
            return None
        delay = self.delay_ms + (rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0)
        if self.reorder and rng.random() < self.reorder:
            delay = 2 * self.delay_ms + 5.0
            self.reordered += 1
        if delay > 0:
            self.delayed += 1
        return max(delay, 0.0) / 1000.0

    def summary(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in ("loss", "delay_ms", "jitter_ms", "reorder", "dropped", "delayed",
                                              "reordered")}


@dataclass
class PduCtx:
    """One PDU session's N3 tunnel pair at this gNB."""

    psi: int
    dl_teid: int
    ue_ip: str | None = None
    ul_teid: int | None = None
    upf_ip: str | None = None
    qfi: int = 1

    def summary(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("psi", "dl_teid", "ue_ip", "ul_teid", "upf_ip", "qfi")}


@dataclass
class UeCtx:
    ue: int
    netns: str
    tun: str
    fd: int
    sessions: dict[int, PduCtx] = field(default_factory=dict)   # by PDU session id
    primary: int = 1   # the session new traffic uses: the last one set up
    ul_packets: int = 0
    dl_packets: int = 0
    ul_dropped: int = 0

    @property
    def main(self) -> PduCtx:
        return self.sessions[self.primary]

    def uplink(self, pkt: bytes) -> PduCtx | None:
        """The session an uplink packet belongs to: the only one, else the one owning its source address."""
        if len(self.sessions) == 1:
            return self.main
        src = socket.inet_ntoa(pkt[12:16])
        return next((s for s in self.sessions.values() if s.ue_ip == src), None)

    def summary(self) -> dict[str, Any]:
        main = self.main.summary() if self.primary in self.sessions else {}
        out = {k: getattr(self, k) for k in ("ue", "netns", "tun")}
        out.update({k: main.get(k) for k in ("dl_teid", "ul_teid", "upf_ip", "qfi")})
        out.update({k: getattr(self, k) for k in ("ul_packets", "dl_packets", "ul_dropped", "primary")})
        out["sessions"] = [s.summary() for s in self.sessions.values()]
        return out


class Gnb:
    def __init__(self, n3_ip: str, first_teid: int = FIRST_DL_TEID) -> None:
        self.n3_ip = n3_ip
        self.ues: dict[int, UeCtx] = {}
        self.by_teid: dict[int, tuple[UeCtx, PduCtx]] = {}
        self.next_teid = first_teid
        self.counters: dict[str, int] = dict.fromkeys(
            ("gtpu_bad", "dl_unknown_teid", "echo", "end_marker", "dl_after_handover"), 0)
        self.handed_over: dict[int, dict[str, Any]] = {}   # old DL TEID -> whose, until its End Marker
        self.end_markers: deque[dict[str, Any]] = deque(maxlen=gtpu.END_MARKER_LOG)   # the last ones received
        self.gtp: socket.socket | None = None
        self.impairment = Impairment()
        self._rng = random.Random(0x6E6)  # seeded: a run's faults can be replayed

    def _impaired(self, send: Any, *args: Any) -> None:
        """Call ``send(*args)`` now, later, or never, as the N3 impairment says."""
        hold = self.impairment.verdict(self._rng)
        if hold is None:
            return
        if hold:
            asyncio.get_running_loop().call_later(hold, self._guarded, send, *args)
        else:
            send(*args)

    @staticmethod
    def _guarded(send: Any, *args: Any) -> None:
        try:
            send(*args)
        except OSError as e:  # a UE released, or N3 down, while the packet was held
            log.debug("held packet: %s", e)

    def _alloc_teid(self) -> int:
        while self.next_teid in self.by_teid or self.next_teid in self.handed_over or self.next_teid == 0:
            self.next_teid = (self.next_teid + 1) & 0xFFFFFFFF
        teid = self.next_teid
        self.next_teid = (self.next_teid + 1) & 0xFFFFFFFF
        return teid

    def _open(self, ue: int, netns: str, tun: str) -> UeCtx:
        if ue in self.ues:
            raise ValueError(f"UE {ue} already attached")
        with in_netns(netns):
            fd = open_tun(tun)
        ctx = UeCtx(ue, netns, tun, fd)
        self.ues[ue] = ctx
        asyncio.get_running_loop().add_reader(fd, self.on_tun, ctx)
        return ctx

    def add_session(self, ctx: UeCtx, psi: int) -> PduCtx:
        if psi in ctx.sessions:
            raise ValueError(f"UE {ctx.ue} has PDU session {psi} already")
        pdu = PduCtx(psi, self._alloc_teid())
        ctx.sessions[psi] = pdu
        ctx.primary = psi
        self.by_teid[pdu.dl_teid] = (ctx, pdu)
        return pdu

    def drop_session(self, ctx: UeCtx, psi: int) -> None:
        pdu = ctx.sessions.pop(psi, None)
        if pdu is None:
            raise ValueError(f"UE {ctx.ue} has no PDU session {psi}")
        self.by_teid.pop(pdu.dl_teid, None)
        if ctx.primary == psi and ctx.sessions:
            ctx.primary = max(ctx.sessions)
        log.info("UE %d PDU session %d dropped (DL TEID 0x%x)", ctx.ue, psi, pdu.dl_teid)

    def attach(self, ue: int, netns: str, tun: str, psi: int = 1) -> UeCtx:
        ctx = self._open(ue, netns, tun)
        pdu = self.add_session(ctx, psi)
        log.info("UE %d attached on %s/%s, DL TEID 0x%x", ue, netns, tun, pdu.dl_teid)
        return ctx

    def _close(self, ue: int) -> UeCtx:
        ctx = self.ues.pop(ue, None)
        if ctx is None:
            raise ValueError(f"UE {ue} not attached")
        for pdu in ctx.sessions.values():
            self.by_teid.pop(pdu.dl_teid, None)
        asyncio.get_running_loop().remove_reader(ctx.fd)
        os.close(ctx.fd)
        return ctx

    def release(self, ue: int) -> None:
        self._close(ue)
        log.info("UE %d released", ue)

    def handover_in(self, ue: int, netns: str, tun: str, primary: int, sessions: list[dict[str, Any]]) -> UeCtx:
        """Target gNB: take the UE's radio (its TUN, another queue) and its PDU sessions' UL tunnels."""
        ctx = self._open(ue, netns, tun)
        for s in sessions:
            pdu = self.add_session(ctx, int(s["psi"]))
            pdu.ue_ip = None if s.get("ue_ip") is None else str(s["ue_ip"])
            pdu.ul_teid = None if s.get("ul_teid") is None else int(s["ul_teid"])
            pdu.upf_ip = None if s.get("upf_ip") is None else str(s["upf_ip"])
            pdu.qfi = int(s.get("qfi", 1))
        if primary in ctx.sessions:
            ctx.primary = primary
        log.info("UE %d handed in: %s", ue, [p.summary() for p in ctx.sessions.values()])
        return ctx

    def handover_out(self, ue: int) -> UeCtx:
        """Source gNB: let go of the UE's radio; its DL tunnels now only wait for the End Marker."""
        ctx = self._close(ue)
        now = time.time()
        for pdu in ctx.sessions.values():
            self.handed_over[pdu.dl_teid] = {"ue": ue, "psi": pdu.psi, "since": now}
        log.info("UE %d handed out (DL TEIDs %s)", ue, [hex(p.dl_teid) for p in ctx.sessions.values()])
        return ctx

    def on_end_marker(self, teid: int) -> None:
        self.counters["end_marker"] += 1
        gone = self.handed_over.pop(teid, None)
        rec: dict[str, Any] = {"teid": teid, "time": time.time(), "handed_over": gone is not None}
        if gone is not None:
            # the last packet on the old path: the source releases the tunnel (no Xn forwarding
            # to flush in the sim, see docs/sim-sites.md)
            rec.update(ue=gone["ue"], psi=gone["psi"], after_s=rec["time"] - gone["since"])
        elif teid in self.by_teid:
            rec.update(ue=self.by_teid[teid][0].ue, psi=self.by_teid[teid][1].psi)
        self.end_markers.append(rec)
        log.info("End Marker on TEID 0x%x: %s", teid, rec)

    def on_tun(self, ctx: UeCtx) -> None:
        assert self.gtp is not None
        while True:
            try:
                pkt = os.read(ctx.fd, MAX_PACKET)
            except BlockingIOError:
                return
            except OSError:
                return
            if len(pkt) < 20 or pkt[0] >> 4 != 4:
                ctx.ul_dropped += 1   # not IPv4: nowhere to send it
                continue
            pdu = ctx.uplink(pkt)
            if pdu is None or pdu.ul_teid is None or pdu.upf_ip is None:
                ctx.ul_dropped += 1   # no session (yet) for this source address
                continue
            gpdu = gtpu.encode_gpdu(pdu.ul_teid, pkt, pdu.qfi, gtpu.PDU_TYPE_UL)
            try:
                if self.impairment.active:
                    self._impaired(self.gtp.sendto, gpdu, (pdu.upf_ip, GTPU_PORT))
                else:
                    self.gtp.sendto(gpdu, (pdu.upf_ip, GTPU_PORT))
                ctx.ul_packets += 1
            except OSError as e:
                ctx.ul_dropped += 1
                log.debug("N3 send: %s", e)

    def on_gtpu(self) -> None:
        assert self.gtp is not None
        for msg in gtpu.receive(self.gtp, self.counters, log):
            if msg.msg_type == GTPU_END_MARKER:
                self.on_end_marker(msg.teid)
                continue
            hit = self.by_teid.get(msg.teid)
            if hit is None:
                # after a handover, until the End Marker: a real source gNB forwards these to
                # the target over Xn; the sim has no Xn user plane, so they are counted and lost
                self.counters["dl_after_handover" if msg.teid in self.handed_over else "dl_unknown_teid"] += 1
                continue
            ctx = hit[0]
            try:
                if self.impairment.active:
                    self._impaired(os.write, ctx.fd, msg.payload)
                else:
                    os.write(ctx.fd, msg.payload)
                ctx.dl_packets += 1
            except OSError as e:
                log.debug("%s write: %s", ctx.tun, e)

    def _ue(self, req: dict[str, Any]) -> UeCtx:
        ctx = self.ues.get(int(req["ue"]))
        if ctx is None:
            raise ValueError(f"UE {req['ue']} not attached")
        return ctx

    async def on_ctl(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "attach":
            ctx = self.attach(int(req["ue"]), str(req["netns"]), str(req["tun"]), int(req.get("psi", 1)))
            return {"dl_teid": ctx.main.dl_teid}
        if op == "session":
            known = self._ue(req)
            psi = int(req.get("psi", known.primary))
            pdu = known.sessions.get(psi)
            if pdu is None:
                raise ValueError(f"UE {known.ue} has no PDU session {psi}")
            pdu.ul_teid, pdu.upf_ip = int(req["ul_teid"]), str(req["upf_ip"])
            pdu.qfi = int(req.get("qfi", pdu.qfi))
            if req.get("ue_ip") is not None:
                pdu.ue_ip = str(req["ue_ip"])
            log.info("UE %d session %d: UL TEID 0x%x to %s, QFI %d", known.ue, psi, pdu.ul_teid, pdu.upf_ip,
                     pdu.qfi)
            return {"ok": True}
        if op == "release":
            self.release(int(req["ue"]))
            return {"ok": True}
        if op == "add_session":
            pdu = self.add_session(self._ue(req), int(req["psi"]))
            return {"dl_teid": pdu.dl_teid}
        if op == "drop_session":
            self.drop_session(self._ue(req), int(req["psi"]))
            return {"ok": True}
        if op == "context":
            ctx = self._ue(req)
            return {"ue": ctx.ue, "netns": ctx.netns, "tun": ctx.tun, "primary": ctx.primary,
                    "sessions": [s.summary() for s in ctx.sessions.values()]}
        if op == "handover_in":
            ctx = self.handover_in(int(req["ue"]), str(req["netns"]), str(req["tun"]),
                                   int(req.get("primary", 1)), list(req["sessions"]))
            return {"sessions": [{"psi": s.psi, "dl_teid": s.dl_teid} for s in ctx.sessions.values()]}
        if op == "handover_out":
            ctx = self.handover_out(int(req["ue"]))
            return {"sessions": [s.summary() for s in ctx.sessions.values()]}
        if op == "impair":
            self.impairment = Impairment.from_request(req)
            log.info("N3 impairment: %s", self.impairment.summary())
            return {"ok": True, "impairment": self.impairment.summary()}
        if op == "status":
            return {"n3": self.n3_ip, "counters": self.counters, "ues": [c.summary() for c in self.ues.values()],
                    "impairment": self.impairment.summary(), "end_markers": list(self.end_markers),
                    "handed_over": [{"teid": k, **v} for k, v in self.handed_over.items()]}
        raise ValueError(f"unknown op {op!r}")

    async def run(self, ctl_path: Path) -> None:
        loop = asyncio.get_running_loop()
        self.gtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.gtp.bind((self.n3_ip, GTPU_PORT))
        self.gtp.setblocking(False)
        loop.add_reader(self.gtp.fileno(), self.on_gtpu)
        server = await ctl.serve(ctl_path, self.on_ctl)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("gNB up: N3 %s", self.n3_ip)
        await stop.wait()
        server.close()
        for ue in list(self.ues):
            self.release(ue)
        loop.remove_reader(self.gtp.fileno())
        self.gtp.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.sim.gnb",
                                 description="gNB user plane for the sim lab: UE TUNs <-> GTP-U on N3.")
    ap.add_argument("--n3", default=GNB_N3_IP, help="N3 address for GTP-U (default %(default)s)")
    ap.add_argument("--ctl", type=Path, required=True, help="Unix socket the lab drives the gNB through")
    ap.add_argument("--first-teid", type=lambda s: int(s, 0), default=FIRST_DL_TEID,
                    help="first DL TEID this gNB allocates (default %(default)s)")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(Gnb(args.n3, args.first_teid).run(args.ctl))
    except OSError as e:
        print(f"gnb: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
