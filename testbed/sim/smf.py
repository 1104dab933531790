"""Minimal SMF: the N4 side of session management, in real PFCP over UDP 8805.

At start it sets up a PFCP association with the UPF (retrying until the UPF
answers). Then, driven by the lab over a Unix socket, it establishes, modifies and
deletes one PDU session per UE. The UE's address and SUPI come from
testbed/constants.py (UE n gets ue_ipv4(n)); CP SEIDs count from 1; the UPF picks the
uplink F-TEID (CH=1) and reports it in Created PDR.

Control (JSON lines):
  {"op": "establish", "ue": n, "gnb_ip": IP, "gnb_teid": T, "qfi": Q}  -> session
  {"op": "modify", "ue": n, "gnb_ip"?: IP, "gnb_teid"?: T, "qfi"?: Q}   -> session
  {"op": "delete", "ue": n}   {"op": "delete_all"}   {"op": "status"}
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from testbed.constants import DNN, SST, supi, ue_ipv4
from testbed.sim import ctl, pfcp
from testbed.sim.pfcp import sp  # scapy, an extra: one clear error where it is missing
from testbed.sim.topology import SMF_N4_IP, UPF_N4_IP
from upf_tap.constants import PFCP_PORT

log = logging.getLogger("smf")
NTP_EPOCH_OFFSET = 2_208_988_800
T1 = 1.0          # PFCP request retransmission timer (TS 29.244 §6.4: operator choice)
N1 = 3            # retransmissions


class PfcpFailure(RuntimeError):
    pass


class Smf(asyncio.DatagramProtocol):
    def __init__(self, n4_ip: str, upf_ip: str, dnn: str) -> None:
        self.n4_ip, self.upf_ip, self.dnn = n4_ip, upf_ip, dnn
        self.recovery_ts = int(time.time()) + NTP_EPOCH_OFFSET
        self.seq = 0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.sessions: dict[int, dict[str, Any]] = {}   # by UE number
        self.next_seid = 1
        self.associated = False
        self.transport: asyncio.DatagramTransport | None = None
        self.bad = 0

    # --- PFCP transport ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport   # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            pkt = pfcp.parse(data)
            mt, seq = int(pkt.message_type), int(pkt.seq)
        except Exception as e:   # PfcpError or an odd scapy decode: a counted drop
            self.bad += 1
            log.warning("PFCP from %s dropped: %s", addr[0], e)
            return
        if mt == pfcp.HEARTBEAT_REQUEST and self.transport:
            self.transport.sendto(pfcp.heartbeat_response(seq, self.recovery_ts), addr)
            return
        fut = self.pending.pop(seq, None)
        if fut is not None and not fut.done():
            fut.set_result(pkt)

    async def request(self, build: Any, expect: int, tries: int = N1 + 1) -> Any:
        """Send a request built by build(seq), retransmit on timeout, return the parsed response."""
        assert self.transport is not None
        self.seq = self.seq % 0xFFFFFF + 1
        seq = self.seq
        data = build(seq)
        for _ in range(tries):
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.pending[seq] = fut
            self.transport.sendto(data, (self.upf_ip, PFCP_PORT))
            try:
                pkt = await asyncio.wait_for(fut, T1)
            except TimeoutError:
                continue
            finally:
                self.pending.pop(seq, None)
            if int(pkt.message_type) != expect:
                raise PfcpFailure(f"expected PFCP type {expect}, got {int(pkt.message_type)}")
            return pkt
        raise PfcpFailure(f"no PFCP answer from {self.upf_ip} after {tries} tries")

    @staticmethod
    def _check(pkt: Any, what: str) -> None:
        cause = pfcp.cause_of(pkt)
        if cause != pfcp.CAUSE_ACCEPTED:
            raise PfcpFailure(f"{what} rejected by the UPF, cause {cause}")

    # --- procedures ---

    async def associate(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                pkt = await self.request(
                    lambda seq: pfcp.association_setup_request(seq, self.n4_ip, self.recovery_ts),
                    pfcp.ASSOCIATION_SETUP_RESPONSE, tries=1)   # the loop below retries until the deadline
                self._check(pkt, "association setup")
                self.associated = True
                log.info("PFCP association with %s set up", self.upf_ip)
                return
            except PfcpFailure as e:
                if time.monotonic() > deadline:
                    raise PfcpFailure(f"no PFCP association with {self.upf_ip} within {timeout:g} s") from e
                await asyncio.sleep(0.2)

    async def establish(self, ue: int, gnb_ip: str, gnb_teid: int, qfi: int) -> dict[str, Any]:
        if ue in self.sessions:
            raise ValueError(f"UE {ue} already has a session")
        if not self.associated:
            raise PfcpFailure("no PFCP association")
        cp_seid = self.next_seid
        self.next_seid += 1
        ue_ip = ue_ipv4(ue)
        pkt = await self.request(
            lambda seq: pfcp.session_establishment_request(
                seq, cp_seid=cp_seid, smf_ip=self.n4_ip, ue_ip=ue_ip, gnb_ip=gnb_ip, gnb_teid=gnb_teid,
                qfi=qfi, dnn=self.dnn, imsi=supi(ue).removeprefix("imsi-")),
            pfcp.SESSION_ESTABLISHMENT_RESPONSE)
        self._check(pkt, f"session establishment for UE {ue}")
        ies = pfcp.ies_of(pkt)
        fseid = pfcp.first(ies, sp.IE_FSEID)
        created = pfcp.first(ies, sp.IE_CreatedPDR)
        fteid = pfcp.first(created.IE_list, sp.IE_FTEID) if created is not None else None
        if fseid is None or fteid is None:
            raise PfcpFailure("session establishment response without UP F-SEID or Created PDR F-TEID")
        session = {
            "ue": ue, "supi": supi(ue), "ue_ip": ue_ip, "dnn": self.dnn, "snssai": f"{SST}",
            "pdu_session_id": 1, "cp_seid": cp_seid, "up_seid": int(fseid.seid),
            "ul_teid": int(fteid.TEID), "upf_ip": str(fteid.ipv4),
            "dl_teid": gnb_teid, "gnb_ip": gnb_ip, "qfi": qfi,
        }
        self.sessions[ue] = session
        log.info("UE %d session up: %s", ue, session)
        return session

    async def modify(self, ue: int, gnb_ip: str | None, gnb_teid: int | None, qfi: int | None) -> dict[str, Any]:
        s = self._session(ue)
        if gnb_teid is not None and gnb_ip is None:
            gnb_ip = s["gnb_ip"]
        pkt = await self.request(
            lambda seq: pfcp.session_modification_request(
                seq, up_seid=s["up_seid"], gnb_ip=gnb_ip, gnb_teid=gnb_teid, qfi=qfi),
            pfcp.SESSION_MODIFICATION_RESPONSE)
        self._check(pkt, f"session modification for UE {ue}")
        if gnb_teid is not None:
            s["dl_teid"], s["gnb_ip"] = gnb_teid, gnb_ip
        if qfi is not None:
            s["qfi"] = qfi
        log.info("UE %d session modified: %s", ue, s)
        return s

    async def delete(self, ue: int) -> dict[str, Any]:
        s = self._session(ue)
        pkt = await self.request(lambda seq: pfcp.session_deletion_request(seq, up_seid=s["up_seid"]),
                                 pfcp.SESSION_DELETION_RESPONSE)
        del self.sessions[ue]
        self._check(pkt, f"session deletion for UE {ue}")
        log.info("UE %d session deleted", ue)
        return s

    def _session(self, ue: int) -> dict[str, Any]:
        s = self.sessions.get(ue)
        if s is None:
            raise ValueError(f"UE {ue} has no session")
        return s

    async def on_ctl(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")

        def opt(name: str) -> int | None:
            return None if req.get(name) is None else int(req[name])

        if op == "establish":
            return await self.establish(int(req["ue"]), str(req["gnb_ip"]), int(req["gnb_teid"]),
                                        int(req.get("qfi", 1)))
        if op == "modify":
            gnb_ip = req.get("gnb_ip")
            return await self.modify(int(req["ue"]), None if gnb_ip is None else str(gnb_ip),
                                     opt("gnb_teid"), opt("qfi"))
        if op == "delete":
            return await self.delete(int(req["ue"]))
        if op == "delete_all":
            done, failed = [], []
            for ue in list(self.sessions):
                try:
                    await self.delete(ue)
                    done.append(ue)
                except (PfcpFailure, ValueError) as e:
                    failed.append(f"UE {ue}: {e}")
            return {"deleted": done, "failed": failed}
        if op == "status":
            return {"associated": self.associated, "upf": self.upf_ip, "bad": self.bad,
                    "sessions": list(self.sessions.values())}
        raise ValueError(f"unknown op {op!r}")

    async def run(self, ctl_path: Path, assoc_timeout: float) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.n4_ip, PFCP_PORT))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await ctl.serve(ctl_path, self.on_ctl)
        try:
            await self.associate(assoc_timeout)
        except PfcpFailure as e:
            log.error("association failed: %s", e)
            raise
        await stop.wait()
        server.close()
        transport.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.sim.smf",
                                 description="Minimal SMF for the sim lab: PFCP sessions towards the UPF.")
    ap.add_argument("--n4", default=SMF_N4_IP, help="own N4 address (default %(default)s)")
    ap.add_argument("--upf", default=UPF_N4_IP, help="UPF's N4 address (default %(default)s)")
    ap.add_argument("--dnn", default=DNN, help="DNN, sent as network instance (default %(default)s)")
    ap.add_argument("--ctl", type=Path, required=True, help="Unix socket the lab drives the SMF through")
    ap.add_argument("--assoc-timeout", type=float, default=10.0, help="seconds to wait for the UPF")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(Smf(args.n4, args.upf, args.dnn).run(args.ctl, args.assoc_timeout))
    except PfcpFailure as e:
        print(f"smf: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"smf: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
