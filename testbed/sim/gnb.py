"""gNB user plane: each UE's TUN ↔ GTP-U on N3, as UERANSIM's gNB does.

For every attached UE the gNB holds the fd of that UE's `uesimtun` device (opened
inside the UE's namespace). Packets the UE sends become G-PDUs towards the UPF's
N3 address with the UPF's uplink TEID and a PDU Session Container (PDU type UL,
QFI); G-PDUs from the UPF are matched by the gNB's downlink TEID and written back
into the UE's TUN. GTP-U echo requests are answered.

Control (Unix socket, JSON lines) — the lab plays the AMF/N2 part:
  {"op": "attach", "ue": n, "netns": NS, "tun": NAME}  -> {"dl_teid": T}
  {"op": "session", "ue": n, "ul_teid": T, "upf_ip": IP, "qfi": Q}
  {"op": "release", "ue": n}
  {"op": "impair", "loss": 0.05, "delay_ms": 20, "jitter_ms": 5, "reorder": 0.1}
  {"op": "status"}

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.sim import ctl, gtpu
from testbed.sim.topology import GNB_N3_IP
from testbed.sim.tun import in_netns, open_tun
from upf_tap.constants import GTPU_PORT

log = logging.getLogger("gnb")
MAX_PACKET = gtpu.MAX_DATAGRAM  # TUN reads: the largest IP packet
FIRST_DL_TEID = 0x100   # gNB TEIDs are distinct from the UPF's (which start at 1): easier to read in captures


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
class UeCtx:
    ue: int
    netns: str
    tun: str
    fd: int
    dl_teid: int
    ul_teid: int | None = None
    upf_ip: str | None = None
    qfi: int = 1
    ul_packets: int = 0
    dl_packets: int = 0
    ul_dropped: int = 0

    def summary(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in
                ("ue", "netns", "tun", "dl_teid", "ul_teid", "upf_ip", "qfi", "ul_packets", "dl_packets",
                 "ul_dropped")}


class Gnb:
    def __init__(self, n3_ip: str) -> None:
        self.n3_ip = n3_ip
        self.ues: dict[int, UeCtx] = {}
        self.by_teid: dict[int, UeCtx] = {}
        self.next_teid = FIRST_DL_TEID
        self.counters: dict[str, int] = dict.fromkeys(("gtpu_bad", "dl_unknown_teid", "echo"), 0)
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

    def attach(self, ue: int, netns: str, tun: str) -> UeCtx:
        if ue in self.ues:
            raise ValueError(f"UE {ue} already attached")
        with in_netns(netns):
            fd = open_tun(tun)
        while self.next_teid in self.by_teid:
            self.next_teid += 1
        ctx = UeCtx(ue, netns, tun, fd, self.next_teid)
        self.next_teid += 1
        self.ues[ue] = ctx
        self.by_teid[ctx.dl_teid] = ctx
        asyncio.get_running_loop().add_reader(fd, self.on_tun, ctx)
        log.info("UE %d attached on %s/%s, DL TEID 0x%x", ue, netns, tun, ctx.dl_teid)
        return ctx

    def release(self, ue: int) -> None:
        ctx = self.ues.pop(ue, None)
        if ctx is None:
            raise ValueError(f"UE {ue} not attached")
        self.by_teid.pop(ctx.dl_teid, None)
        asyncio.get_running_loop().remove_reader(ctx.fd)
        os.close(ctx.fd)
        log.info("UE %d released", ue)

    def on_tun(self, ctx: UeCtx) -> None:
        assert self.gtp is not None
        while True:
            try:
                pkt = os.read(ctx.fd, MAX_PACKET)
            except BlockingIOError:
                return
            except OSError:
                return
            if ctx.ul_teid is None or ctx.upf_ip is None or len(pkt) < 20 or pkt[0] >> 4 != 4:
                ctx.ul_dropped += 1   # no session yet (or not IPv4): nowhere to send it
                continue
            gpdu = gtpu.encode_gpdu(ctx.ul_teid, pkt, ctx.qfi, gtpu.PDU_TYPE_UL)
            try:
                if self.impairment.active:
                    self._impaired(self.gtp.sendto, gpdu, (ctx.upf_ip, GTPU_PORT))
                else:
                    self.gtp.sendto(gpdu, (ctx.upf_ip, GTPU_PORT))
                ctx.ul_packets += 1
            except OSError as e:
                ctx.ul_dropped += 1
                log.debug("N3 send: %s", e)

    def on_gtpu(self) -> None:
        assert self.gtp is not None
        for msg in gtpu.receive_gpdus(self.gtp, self.counters, log):
            ctx = self.by_teid.get(msg.teid)
            if ctx is None:
                self.counters["dl_unknown_teid"] += 1
                continue
            try:
                if self.impairment.active:
                    self._impaired(os.write, ctx.fd, msg.payload)
                else:
                    os.write(ctx.fd, msg.payload)
                ctx.dl_packets += 1
            except OSError as e:
                log.debug("%s write: %s", ctx.tun, e)

    async def on_ctl(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "attach":
            ctx = self.attach(int(req["ue"]), str(req["netns"]), str(req["tun"]))
            return {"dl_teid": ctx.dl_teid}
        if op == "session":
            known = self.ues.get(int(req["ue"]))
            if known is None:
                raise ValueError(f"UE {req['ue']} not attached")
            known.ul_teid, known.upf_ip = int(req["ul_teid"]), str(req["upf_ip"])
            known.qfi = int(req.get("qfi", known.qfi))
            log.info("UE %d session: UL TEID 0x%x to %s, QFI %d", known.ue, known.ul_teid, known.upf_ip, known.qfi)
            return {"ok": True}
        if op == "release":
            self.release(int(req["ue"]))
            return {"ok": True}
        if op == "impair":
            self.impairment = Impairment.from_request(req)
            log.info("N3 impairment: %s", self.impairment.summary())
            return {"ok": True, "impairment": self.impairment.summary()}
        if op == "status":
            return {"counters": self.counters, "ues": [c.summary() for c in self.ues.values()],
                    "impairment": self.impairment.summary()}
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
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(Gnb(args.n3).run(args.ctl))
    except OSError as e:
        print(f"gnb: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
