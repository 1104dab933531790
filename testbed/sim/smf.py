"""Minimal SMF: the N4 side of session management, in real PFCP over UDP 8805.

At start it sets up a PFCP association with each UPF (retrying until the UPF
answers); with two MEC sites it controls both UPFs, one association each, from its one N4
address (`--upf` once per site, site 1 first). Then, driven by the lab over a Unix socket,
it establishes, modifies and deletes one PDU session per UE. The UE's address and SUPI
come from testbed/constants.py (UE n gets site_ue_ipv4(n, site): ue_ipv4(n) at site 1);
CP SEIDs count from 1; the UPF picks the uplink F-TEID (CH=1) and reports it in Created PDR.

Control (JSON lines):
  {"op": "establish", "ue": n, "gnb_ip": IP, "gnb_teid": T, "qfi": Q, "site"?: K}  -> session
  {"op": "modify", "ue": n, "gnb_ip"?: IP, "gnb_teid"?: T, "qfi"?: Q, "end_marker"?: bool}   -> session
        with end_marker (a handover's path switch) the Update FAR carries PFCPSMReq-Flags SNDEM
  {"op": "delete", "ue": n}   {"op": "delete_all"}   {"op": "status"}
Mobility (issue 18; docs/sim-sites.md):
  {"op": "relocate", "ue": n, "site": K, "gnb_ip": IP, "gnb_teid": T, "qfi"?: Q}
        -> {"session": new, "old": old}   SSC mode 3: a new PDU session (the other PDU session
        id, an address from site K's pool) at site K's UPF; the old one is kept, releasing
  {"op": "release_old", "ue": n}  -> old session   PFCP Session Deletion of the releasing one
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

from testbed.constants import DNN, SST, site_ue_ipv4, supi
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
    def __init__(self, n4_ip: str, upf_ip: str | list[str], dnn: str) -> None:
        self.upfs = [upf_ip] if isinstance(upf_ip, str) else list(upf_ip)   # N4 address of site k's UPF at k-1
        self.n4_ip, self.upf_ip, self.dnn = n4_ip, self.upfs[0], dnn
        self.recovery_ts = int(time.time()) + NTP_EPOCH_OFFSET
        self.seq = 0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.sessions: dict[int, dict[str, Any]] = {}    # the serving session, by UE number
        self.releasing: dict[int, dict[str, Any]] = {}   # the old session of an SSC mode 3 move
        self.next_seid = 1
        self.associated_with: set[str] = set()
        self.transport: asyncio.DatagramTransport | None = None
        self.bad = 0

    @property
    def associated(self) -> bool:
        return self.associated_with.issuperset(self.upfs)

    def _upf(self, site: int) -> str:
        if not 1 <= site <= len(self.upfs):
            raise ValueError(f"no site {site} (this SMF controls {len(self.upfs)} UPF(s))")
        return self.upfs[site - 1]

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

    async def request(self, build: Any, expect: int, tries: int = N1 + 1, upf: str | None = None) -> Any:
        """Send a request built by build(seq) to a UPF (default site 1's), retransmit on timeout, return the response."""
        upf = upf or self.upf_ip
        assert self.transport is not None
        self.seq = self.seq % 0xFFFFFF + 1
        seq = self.seq
        data = build(seq)
        for _ in range(tries):
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.pending[seq] = fut
            self.transport.sendto(data, (upf, PFCP_PORT))
            try:
                pkt = await asyncio.wait_for(fut, T1)
            except TimeoutError:
                continue
            finally:
                self.pending.pop(seq, None)
            if int(pkt.message_type) != expect:
                raise PfcpFailure(f"expected PFCP type {expect}, got {int(pkt.message_type)}")
            return pkt
        raise PfcpFailure(f"no PFCP answer from {upf} after {tries} tries")

    @staticmethod
    def _check(pkt: Any, what: str) -> None:
        cause = pfcp.cause_of(pkt)
        if cause != pfcp.CAUSE_ACCEPTED:
            raise PfcpFailure(f"{what} rejected by the UPF, cause {cause}")

    # --- procedures ---

    async def associate(self, timeout: float) -> None:
        await asyncio.gather(*(self._associate(upf, timeout) for upf in self.upfs))

    async def _associate(self, upf: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                pkt = await self.request(
                    lambda seq: pfcp.association_setup_request(seq, self.n4_ip, self.recovery_ts),
                    pfcp.ASSOCIATION_SETUP_RESPONSE, tries=1, upf=upf)   # the loop below retries until the deadline
                self._check(pkt, "association setup")
                self.associated_with.add(upf)
                log.info("PFCP association with %s set up", upf)
                return
            except PfcpFailure as e:
                if time.monotonic() > deadline:
                    raise PfcpFailure(f"no PFCP association with {upf} within {timeout:g} s") from e
                await asyncio.sleep(0.2)

    async def _establish(self, ue: int, gnb_ip: str, gnb_teid: int, qfi: int, site: int, psi: int
                         ) -> dict[str, Any]:
        upf = self._upf(site)
        if upf not in self.associated_with:
            raise PfcpFailure(f"no PFCP association with {upf}")
        cp_seid = self.next_seid
        self.next_seid += 1
        ue_ip = site_ue_ipv4(ue, site)
        pkt = await self.request(
            lambda seq: pfcp.session_establishment_request(
                seq, cp_seid=cp_seid, smf_ip=self.n4_ip, ue_ip=ue_ip, gnb_ip=gnb_ip, gnb_teid=gnb_teid,
                qfi=qfi, dnn=self.dnn, imsi=supi(ue).removeprefix("imsi-")),
            pfcp.SESSION_ESTABLISHMENT_RESPONSE, upf=upf)
        self._check(pkt, f"session establishment for UE {ue}")
        ies = pfcp.ies_of(pkt)
        fseid = pfcp.first(ies, sp.IE_FSEID)
        created = pfcp.first(ies, sp.IE_CreatedPDR)
        fteid = pfcp.first(created.IE_list, sp.IE_FTEID) if created is not None else None
        if fseid is None or fteid is None:
            raise PfcpFailure("session establishment response without UP F-SEID or Created PDR F-TEID")
        session = {
            "ue": ue, "supi": supi(ue), "ue_ip": ue_ip, "dnn": self.dnn, "snssai": f"{SST}",
            "pdu_session_id": psi, "cp_seid": cp_seid, "up_seid": int(fseid.seid),
            "ul_teid": int(fteid.TEID), "upf_ip": str(fteid.ipv4),
            "dl_teid": gnb_teid, "gnb_ip": gnb_ip, "qfi": qfi, "site": site, "upf_n4": upf,
        }
        log.info("UE %d session up: %s", ue, session)
        return session

    async def establish(self, ue: int, gnb_ip: str, gnb_teid: int, qfi: int, site: int = 1) -> dict[str, Any]:
        if ue in self.sessions:
            raise ValueError(f"UE {ue} already has a session")
        if not self.associated:
            raise PfcpFailure("no PFCP association")
        session = await self._establish(ue, gnb_ip, gnb_teid, qfi, site, 1)
        self.sessions[ue] = session
        return session

    async def relocate(self, ue: int, site: int, gnb_ip: str, gnb_teid: int, qfi: int | None) -> dict[str, Any]:
        """SSC mode 3 (TS 23.502 §4.3.5.2): a new PDU session at the target site's UPF, the old one kept."""
        old = self._session(ue)
        if ue in self.releasing:
            raise ValueError(f"UE {ue} is still releasing session {self.releasing[ue]['pdu_session_id']}")
        if old["site"] == site:
            raise ValueError(f"UE {ue} is anchored at site {site} already")
        psi = 2 if old["pdu_session_id"] == 1 else 1   # a new PDU session has its own id
        new = await self._establish(ue, gnb_ip, gnb_teid, old["qfi"] if qfi is None else qfi, site, psi)
        self.releasing[ue], self.sessions[ue] = old, new
        return {"session": new, "old": old}

    async def modify(self, ue: int, gnb_ip: str | None, gnb_teid: int | None, qfi: int | None,
                     end_marker: bool = False) -> dict[str, Any]:
        s = self._session(ue)
        if gnb_teid is not None and gnb_ip is None:
            gnb_ip = s["gnb_ip"]
        pkt = await self.request(
            lambda seq: pfcp.session_modification_request(
                seq, up_seid=s["up_seid"], gnb_ip=gnb_ip, gnb_teid=gnb_teid, qfi=qfi, end_marker=end_marker),
            pfcp.SESSION_MODIFICATION_RESPONSE, upf=s.get("upf_n4"))
        self._check(pkt, f"session modification for UE {ue}")
        if gnb_teid is not None:
            s["dl_teid"], s["gnb_ip"] = gnb_teid, gnb_ip
        if qfi is not None:
            s["qfi"] = qfi
        log.info("UE %d session modified: %s", ue, s)
        return s

    async def _delete(self, s: dict[str, Any]) -> dict[str, Any]:
        pkt = await self.request(lambda seq: pfcp.session_deletion_request(seq, up_seid=s["up_seid"]),
                                 pfcp.SESSION_DELETION_RESPONSE, upf=s.get("upf_n4"))
        self._check(pkt, f"session deletion for UE {s['ue']}")
        log.info("UE %d session %d deleted at %s", s["ue"], s["pdu_session_id"], s.get("upf_n4"))
        return s

    async def delete(self, ue: int) -> dict[str, Any]:
        s = self._session(ue)
        del self.sessions[ue]
        if ue in self.releasing:
            await self.release_old(ue)
        return await self._delete(s)

    async def release_old(self, ue: int) -> dict[str, Any]:
        old = self.releasing.pop(ue, None)
        if old is None:
            raise ValueError(f"UE {ue} has no session being released")
        return await self._delete(old)

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
                                        int(req.get("qfi", 1)), int(req.get("site", 1)))
        if op == "modify":
            gnb_ip = req.get("gnb_ip")
            return await self.modify(int(req["ue"]), None if gnb_ip is None else str(gnb_ip),
                                     opt("gnb_teid"), opt("qfi"), bool(req.get("end_marker", False)))
        if op == "relocate":
            return await self.relocate(int(req["ue"]), int(req["site"]), str(req["gnb_ip"]),
                                       int(req["gnb_teid"]), opt("qfi"))
        if op == "release_old":
            return await self.release_old(int(req["ue"]))
        if op == "delete":
            return await self.delete(int(req["ue"]))
        if op == "delete_all":
            done, failed = [], []
            for ue in sorted(set(self.sessions) | set(self.releasing)):
                try:
                    await self.delete(ue)
                    done.append(ue)
                except (PfcpFailure, ValueError) as e:
                    failed.append(f"UE {ue}: {e}")
            return {"deleted": done, "failed": failed}
        if op == "status":
            return {"associated": self.associated, "upf": self.upf_ip, "upfs": self.upfs,
                    "associated_with": sorted(self.associated_with), "bad": self.bad,
                    "sessions": list(self.sessions.values()), "releasing": list(self.releasing.values())}
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
    ap.add_argument("--upf", action="append", help=f"a UPF's N4 address, once per site, site 1 first "
                                                    f"(default {UPF_N4_IP})")
    ap.add_argument("--dnn", default=DNN, help="DNN, sent as network instance (default %(default)s)")
    ap.add_argument("--ctl", type=Path, required=True, help="Unix socket the lab drives the SMF through")
    ap.add_argument("--assoc-timeout", type=float, default=10.0, help="seconds to wait for the UPF")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(Smf(args.n4, args.upf or [UPF_N4_IP], args.dnn).run(args.ctl, args.assoc_timeout))
    except PfcpFailure as e:
        print(f"smf: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"smf: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
