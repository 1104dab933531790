"""Minimal UPF: a PFCP server on N4 that installs PDR/FAR/QER rules, and a GTP-U ↔ IP forwarder.

Uplink: a G-PDU on N3 whose TEID matches an uplink PDR's F-TEID loses its outer
header and goes into the `ogstun` TUN, from where the kernel routes it to N6.
Downlink: a packet the kernel routes into `ogstun` (destination in the UE pool) is
matched by UE IP to a downlink PDR and sent to the gNB with the FAR's outer header
creation (gNB TEID and address) and the QER's QFI in a PDU Session Container.
Path switch: a Session Modification that moves the DL FAR to another gNB tunnel with
PFCPSMReq-Flags SNDEM makes the UPF send a GTP-U End Marker (TS 29.281 §7.3.2) on the old
tunnel, before any packet goes on the new one (TS 23.502 §4.9.1.2.2).

Run inside the UPF namespace: ``ip netns exec mec<id>-upf python -m testbed.sim.upf``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.sim import ctl, gtpu, pfcp
from testbed.sim.pfcp import sp  # scapy, an extra: one clear error where it is missing
from testbed.sim.topology import UPF_N3_IP, UPF_N4_IP, UPF_TUN
from testbed.sim.tun import open_tun
from upf_tap.constants import GTPU_PORT, PFCP_PORT

log = logging.getLogger("upf")
NTP_EPOCH_OFFSET = 2_208_988_800   # seconds from 1900 (PFCP time stamps) to 1970
MAX_PACKET = gtpu.MAX_DATAGRAM  # TUN reads: the largest IP packet


@dataclass
class Pdr:
    pdr_id: int
    source: int                 # pfcp.IFACE_ACCESS or IFACE_CORE
    far_id: int
    qer_id: int | None
    ue_ip: str | None
    teid: int | None = None     # allocated F-TEID (uplink PDRs)


@dataclass
class Far:
    far_id: int
    forward: bool
    dest: int | None
    ohc_teid: int | None = None
    ohc_ip: str | None = None


@dataclass
class Session:
    cp_seid: int
    up_seid: int
    peer: tuple[str, int]
    pdrs: dict[int, Pdr] = field(default_factory=dict)
    fars: dict[int, Far] = field(default_factory=dict)
    qers: dict[int, int] = field(default_factory=dict)   # QER id -> QFI

    def summary(self) -> dict[str, Any]:
        ul = next((p for p in self.pdrs.values() if p.source == pfcp.IFACE_ACCESS), None)
        dl = next((p for p in self.pdrs.values() if p.source == pfcp.IFACE_CORE), None)
        far = self.fars.get(dl.far_id) if dl else None
        return {
            "cp_seid": self.cp_seid, "up_seid": self.up_seid,
            "ue_ip": pdr.ue_ip if (pdr := dl or ul) else None,
            "ul_teid": ul.teid if ul else None,
            "dl_teid": far.ohc_teid if far else None, "gnb_ip": far.ohc_ip if far else None,
            "qfi": self.qers.get(dl.qer_id) if dl and dl.qer_id else None,
        }


class RuleError(ValueError):
    def __init__(self, cause: int, text: str) -> None:
        super().__init__(text)
        self.cause = cause


def _int(ie: Any, name: str = "id") -> int:
    return int(getattr(ie, name))


def parse_pdr(ie: Any) -> Pdr:
    ies = ie.IE_list
    pdr_id, pdi, far_id = pfcp.first(ies, sp.IE_PDR_Id), pfcp.first(ies, sp.IE_PDI), pfcp.first(ies, sp.IE_FAR_Id)
    if pdr_id is None or pdi is None:
        raise RuleError(pfcp.CAUSE_MANDATORY_IE_MISSING, "Create PDR without PDR ID or PDI")
    src = pfcp.first(pdi.IE_list, sp.IE_SourceInterface)
    if src is None:
        raise RuleError(pfcp.CAUSE_MANDATORY_IE_MISSING, "PDI without Source Interface")
    if far_id is None:
        raise RuleError(pfcp.CAUSE_MANDATORY_IE_MISSING, "Create PDR without FAR ID")
    qer_id = pfcp.first(ies, sp.IE_QER_Id)
    ue = pfcp.first(pdi.IE_list, sp.IE_UE_IP_Address)
    fteid = pfcp.first(pdi.IE_list, sp.IE_FTEID)
    pdr = Pdr(_int(pdr_id), int(src.interface), _int(far_id), _int(qer_id) if qer_id else None,
              str(ue.ipv4) if ue is not None and ue.V4 else None)
    if fteid is not None and not fteid.CH:
        pdr.teid = int(fteid.TEID)   # the SMF chose the TEID itself
    elif fteid is None and pdr.source == pfcp.IFACE_ACCESS:
        raise RuleError(pfcp.CAUSE_MANDATORY_IE_INCORRECT, "uplink PDR without F-TEID")
    return pdr


def wants_end_marker(update_far: Any) -> bool:
    """Update FAR whose Update Forwarding Parameters carry PFCPSMReq-Flags with SNDEM set."""
    params = pfcp.first(update_far.IE_list, sp.IE_UpdateForwardingParameters)
    flags = pfcp.first(params.IE_list, sp.IE_PFCPSMReqFlags) if params is not None else None
    return bool(flags is not None and flags.SNDEM)


def _apply_forwarding(far: Far, params: Any) -> None:
    if params is None:
        return
    dest = pfcp.first(params.IE_list, sp.IE_DestinationInterface)
    if dest is not None:
        far.dest = int(dest.interface)
    ohc = pfcp.first(params.IE_list, sp.IE_OuterHeaderCreation)
    if ohc is not None:
        if not ohc.GTPUUDPIPV4:
            raise RuleError(pfcp.CAUSE_MANDATORY_IE_INCORRECT, "only GTP-U/UDP/IPv4 outer header creation")
        far.ohc_teid, far.ohc_ip = int(ohc.TEID), str(ohc.ipv4)


def parse_far(ie: Any, far: Far | None = None) -> Far:
    ies = ie.IE_list
    far_id = pfcp.first(ies, sp.IE_FAR_Id)
    if far_id is None:
        raise RuleError(pfcp.CAUSE_MANDATORY_IE_MISSING, "FAR without FAR ID")
    action = pfcp.first(ies, sp.IE_ApplyAction)
    if far is None:
        if action is None:
            raise RuleError(pfcp.CAUSE_MANDATORY_IE_MISSING, "Create FAR without Apply Action")
        far = Far(_int(far_id), bool(action.FORW), None)
    elif action is not None:
        far.forward = bool(action.FORW)
    _apply_forwarding(far, pfcp.first(ies, sp.IE_ForwardingParameters)
                      or pfcp.first(ies, sp.IE_UpdateForwardingParameters))
    return far


def parse_qer(ie: Any) -> tuple[int, int]:
    qer_id, qfi = pfcp.first(ie.IE_list, sp.IE_QER_Id), pfcp.first(ie.IE_list, sp.IE_QFI)
    if qer_id is None:
        raise RuleError(pfcp.CAUSE_MANDATORY_IE_MISSING, "QER without QER ID")
    return _int(qer_id), int(qfi.QFI) if qfi is not None else 0


class Upf:
    def __init__(self, n3_ip: str, n4_ip: str, tun_name: str, first_teid: int = 1) -> None:
        self.n3_ip, self.n4_ip, self.tun_name = n3_ip, n4_ip, tun_name
        self.recovery_ts = int(time.time()) + NTP_EPOCH_OFFSET
        self.peers: set[str] = set()                 # associated CP node addresses
        self.sessions: dict[int, Session] = {}       # by UP SEID
        self.by_teid: dict[int, tuple[Session, Pdr]] = {}
        self.by_ue_ip: dict[bytes, tuple[Session, Pdr]] = {}
        self.next_seid = 1
        self.next_teid = first_teid
        self.counters: dict[str, int] = dict.fromkeys(
            ("pfcp_rx", "pfcp_bad", "ul_packets", "ul_bytes", "dl_packets", "dl_bytes",
             "gtpu_bad", "ul_no_session", "ul_bad_source", "dl_no_session", "echo", "end_marker_tx"), 0)
        self.end_markers: deque[dict[str, Any]] = deque(maxlen=gtpu.END_MARKER_LOG)   # the last ones sent
        self.tun_fd = -1
        self.gtp: socket.socket | None = None
        self.pfcp_transport: asyncio.DatagramTransport | None = None

    # --- PFCP ---

    def handle_pfcp(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        """Answer one N4 datagram; malformed input is a counted drop, never an exception."""
        self.counters["pfcp_rx"] += 1
        try:
            return self._handle_pfcp(pfcp.parse(data), addr)
        except Exception as e:   # PfcpError, or IEs scapy decoded into odd shapes
            self.counters["pfcp_bad"] += 1
            log.warning("PFCP from %s dropped: %s: %s", addr[0], type(e).__name__, e)
            return None

    def _handle_pfcp(self, pkt: Any, addr: tuple[str, int]) -> bytes | None:
        mt, seq = int(pkt.message_type), int(pkt.seq)
        ies = pfcp.ies_of(pkt)
        log.info("PFCP rx type %d seq %d from %s", mt, seq, addr[0])
        if mt == pfcp.HEARTBEAT_REQUEST:
            return pfcp.heartbeat_response(seq, self.recovery_ts)
        if mt == pfcp.ASSOCIATION_SETUP_REQUEST:
            node = pfcp.first(ies, sp.IE_NodeId)
            if node is None:
                return pfcp.association_setup_response(seq, self.n4_ip, pfcp.CAUSE_MANDATORY_IE_MISSING,
                                                       self.recovery_ts)
            self.peers.add(addr[0])
            return pfcp.association_setup_response(seq, self.n4_ip, pfcp.CAUSE_ACCEPTED, self.recovery_ts)
        if mt == pfcp.ASSOCIATION_RELEASE_REQUEST:
            for s in [s for s in self.sessions.values() if s.peer[0] == addr[0]]:
                self._remove(s)
            self.peers.discard(addr[0])
            return pfcp.association_release_response(seq, self.n4_ip, pfcp.CAUSE_ACCEPTED)
        if mt == pfcp.SESSION_ESTABLISHMENT_REQUEST:
            return self._establish(seq, ies, addr)
        if mt == pfcp.SESSION_MODIFICATION_REQUEST:
            return self._modify(seq, int(pkt.seid), ies)
        if mt == pfcp.SESSION_DELETION_REQUEST:
            gone = self.sessions.get(int(pkt.seid))
            if gone is None:
                return pfcp.session_deletion_response(seq, cp_seid=0, cause=pfcp.CAUSE_SESSION_NOT_FOUND)
            self._remove(gone)
            log.info("session %d deleted", gone.up_seid)
            return pfcp.session_deletion_response(seq, cp_seid=gone.cp_seid, cause=pfcp.CAUSE_ACCEPTED)
        self.counters["pfcp_bad"] += 1
        log.warning("PFCP message type %d not handled", mt)
        return None

    def _establish(self, seq: int, ies: list[Any], addr: tuple[str, int]) -> bytes:
        fseid = pfcp.first(ies, sp.IE_FSEID)
        cp_seid = int(fseid.seid) if fseid is not None else 0

        def reject(cause: int, why: str) -> bytes:
            log.warning("session establishment rejected: %s", why)
            return pfcp.session_establishment_response(seq, cp_seid=cp_seid, upf_ip=self.n4_ip, cause=cause)

        if addr[0] not in self.peers:
            return reject(pfcp.CAUSE_NO_ASSOCIATION, f"no association with {addr[0]}")
        if fseid is None or pfcp.first(ies, sp.IE_NodeId) is None:
            return reject(pfcp.CAUSE_MANDATORY_IE_MISSING, "no CP F-SEID or Node ID")
        s = Session(cp_seid, self.next_seid, (fseid.ipv4 if fseid.v4 else addr[0], addr[1]))
        try:
            for ie in ies:
                if isinstance(ie, sp.IE_CreatePDR):
                    pdr = parse_pdr(ie)
                    s.pdrs[pdr.pdr_id] = pdr
                elif isinstance(ie, sp.IE_CreateFAR):
                    far = parse_far(ie)
                    s.fars[far.far_id] = far
                elif isinstance(ie, sp.IE_CreateQER):
                    qer_id, qfi = parse_qer(ie)
                    s.qers[qer_id] = qfi
            if not s.pdrs:
                raise RuleError(pfcp.CAUSE_MANDATORY_IE_MISSING, "no Create PDR")
            for pdr in s.pdrs.values():
                if pdr.far_id not in s.fars:
                    raise RuleError(pfcp.CAUSE_MANDATORY_IE_INCORRECT, f"PDR {pdr.pdr_id} names unknown FAR")
                if pdr.source == pfcp.IFACE_CORE and (pdr.ue_ip is None or
                                                      socket.inet_aton(pdr.ue_ip) in self.by_ue_ip):
                    raise RuleError(pfcp.CAUSE_MANDATORY_IE_INCORRECT, "downlink PDR without a free UE IP")
        except RuleError as e:
            return reject(e.cause, str(e))
        created = []
        for pdr in s.pdrs.values():
            if pdr.source == pfcp.IFACE_ACCESS:
                if pdr.teid is None:   # CH=1: we choose
                    pdr.teid = self._alloc_teid()
                    created.append((pdr.pdr_id, pdr.teid, self.n3_ip))
                self.by_teid[pdr.teid] = (s, pdr)
            elif pdr.ue_ip is not None:
                self.by_ue_ip[socket.inet_aton(pdr.ue_ip)] = (s, pdr)
        self.next_seid += 1
        self.sessions[s.up_seid] = s
        log.info("session %d established: %s", s.up_seid, s.summary())
        return pfcp.session_establishment_response(
            seq, cp_seid=cp_seid, upf_ip=self.n4_ip, cause=pfcp.CAUSE_ACCEPTED, up_seid=s.up_seid, created=created)

    def _alloc_teid(self) -> int:
        while self.next_teid in self.by_teid or self.next_teid == 0:
            self.next_teid = (self.next_teid + 1) & 0xFFFFFFFF
        teid = self.next_teid
        self.next_teid = (self.next_teid + 1) & 0xFFFFFFFF
        return teid

    def _modify(self, seq: int, up_seid: int, ies: list[Any]) -> bytes:
        s = self.sessions.get(up_seid)
        if s is None:
            return pfcp.session_modification_response(seq, cp_seid=0, cause=pfcp.CAUSE_SESSION_NOT_FOUND)
        try:
            for ie in ies:
                if isinstance(ie, sp.IE_UpdateFAR):
                    far_id = pfcp.first(ie.IE_list, sp.IE_FAR_Id)
                    far = s.fars.get(_int(far_id)) if far_id is not None else None
                    if far is None:
                        raise RuleError(pfcp.CAUSE_MANDATORY_IE_INCORRECT, "Update FAR of unknown FAR")
                    old = (far.ohc_teid, far.ohc_ip)
                    parse_far(ie, far)
                    if wants_end_marker(ie) and old[0] is not None and old[1] is not None \
                            and old != (far.ohc_teid, far.ohc_ip):
                        self._send_end_marker(s, old[0], old[1])
                elif isinstance(ie, sp.IE_UpdateQER | sp.IE_CreateQER):
                    qer_id, qfi = parse_qer(ie)
                    s.qers[qer_id] = qfi
        except RuleError as e:
            log.warning("session %d modification rejected: %s", up_seid, e)
            return pfcp.session_modification_response(seq, cp_seid=s.cp_seid, cause=e.cause)
        log.info("session %d modified: %s", s.up_seid, s.summary())
        return pfcp.session_modification_response(seq, cp_seid=s.cp_seid, cause=pfcp.CAUSE_ACCEPTED)

    def _send_end_marker(self, s: Session, teid: int, gnb_ip: str) -> None:
        """End Marker to the old gNB tunnel, now: the next DL packet of this session goes the new way."""
        self.end_markers.append({"up_seid": s.up_seid, "teid": teid, "gnb_ip": gnb_ip, "time": time.time()})
        if self.gtp is None:   # not running (unit tests drive handle_pfcp alone)
            return
        try:
            self.gtp.sendto(gtpu.encode_end_marker(teid), (gnb_ip, GTPU_PORT))
            self.counters["end_marker_tx"] += 1
        except OSError as e:
            log.warning("End Marker to %s: %s", gnb_ip, e)
        log.info("session %d: End Marker on TEID 0x%x to %s", s.up_seid, teid, gnb_ip)

    def _remove(self, s: Session) -> None:
        self.sessions.pop(s.up_seid, None)
        for pdr in s.pdrs.values():
            if pdr.teid is not None and self.by_teid.get(pdr.teid, (None,))[0] is s:
                del self.by_teid[pdr.teid]
            if pdr.ue_ip is not None:
                key = socket.inet_aton(pdr.ue_ip)
                if self.by_ue_ip.get(key, (None,))[0] is s:
                    del self.by_ue_ip[key]

    # --- user plane ---

    def on_gtpu(self) -> None:
        assert self.gtp is not None
        for msg in gtpu.receive_gpdus(self.gtp, self.counters, log):
            hit = self.by_teid.get(msg.teid)
            if hit is None:
                self.counters["ul_no_session"] += 1
                continue
            s, pdr = hit
            far = s.fars.get(pdr.far_id)
            inner = msg.payload
            if len(inner) < 20 or inner[0] >> 4 != 4:
                self.counters["gtpu_bad"] += 1
                continue
            if pdr.ue_ip is not None and inner[12:16] != socket.inet_aton(pdr.ue_ip):
                self.counters["ul_bad_source"] += 1   # PDI says: only the UE's own address
                continue
            if far is None or not far.forward:
                continue
            try:
                os.write(self.tun_fd, inner)
            except OSError as e:
                log.debug("ogstun write: %s", e)
                continue
            self.counters["ul_packets"] += 1
            self.counters["ul_bytes"] += len(inner)

    def on_tun(self) -> None:
        assert self.gtp is not None
        while True:
            try:
                pkt = os.read(self.tun_fd, MAX_PACKET)
            except BlockingIOError:
                return
            if len(pkt) < 20 or pkt[0] >> 4 != 4:
                continue
            hit = self.by_ue_ip.get(pkt[16:20])
            if hit is None:
                self.counters["dl_no_session"] += 1
                continue
            s, pdr = hit
            far = s.fars.get(pdr.far_id)
            if far is None or not far.forward or far.ohc_teid is None or far.ohc_ip is None:
                self.counters["dl_no_session"] += 1
                continue
            qfi = s.qers.get(pdr.qer_id, 0) if pdr.qer_id is not None else 0
            try:
                self.gtp.sendto(gtpu.encode_gpdu(far.ohc_teid, pkt, qfi, gtpu.PDU_TYPE_DL),
                                (far.ohc_ip, GTPU_PORT))
            except OSError as e:
                log.debug("N3 send: %s", e)
                continue
            self.counters["dl_packets"] += 1
            self.counters["dl_bytes"] += len(pkt)

    async def on_ctl(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("op") != "status":
            raise ValueError(f"unknown op {req.get('op')!r}")
        return {"peers": sorted(self.peers), "counters": self.counters,
                "sessions": [s.summary() for s in self.sessions.values()], "end_markers": list(self.end_markers)}

    async def run(self, ctl_path: Path | None) -> None:
        loop = asyncio.get_running_loop()
        self.tun_fd = open_tun(self.tun_name)
        self.gtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.gtp.bind((self.n3_ip, GTPU_PORT))
        self.gtp.setblocking(False)
        upf = self

        class N4(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                answer = upf.handle_pfcp(data, addr)
                if answer is not None:
                    self.transport.sendto(answer, addr)   # type: ignore[attr-defined]

        transport, _ = await loop.create_datagram_endpoint(N4, local_addr=(self.n4_ip, PFCP_PORT))
        loop.add_reader(self.gtp.fileno(), self.on_gtpu)
        loop.add_reader(self.tun_fd, self.on_tun)
        server = await ctl.serve(ctl_path, self.on_ctl) if ctl_path else None
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("UPF up: N3 %s, N4 %s, %s", self.n3_ip, self.n4_ip, self.tun_name)
        await stop.wait()
        log.info("UPF stopping; counters %s", self.counters)
        loop.remove_reader(self.gtp.fileno())
        loop.remove_reader(self.tun_fd)
        transport.close()
        if server:
            server.close()
        self.gtp.close()
        os.close(self.tun_fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.sim.upf",
                                 description="Minimal UPF for the sim lab: PFCP on N4, GTP-U on N3, TUN towards N6.")
    ap.add_argument("--n3", default=UPF_N3_IP, help="N3 address for GTP-U (default %(default)s)")
    ap.add_argument("--n4", default=UPF_N4_IP, help="N4 address for PFCP (default %(default)s)")
    ap.add_argument("--tun", default=UPF_TUN, help="existing TUN device towards N6 (default %(default)s)")
    ap.add_argument("--ctl", type=Path, help="Unix socket for status queries")
    ap.add_argument("--first-teid", type=lambda s: int(s, 0), default=1,
                    help="first uplink F-TEID this UPF allocates (default %(default)s)")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(Upf(args.n3, args.n4, args.tun, args.first_teid).run(args.ctl))
    except OSError as e:
        print(f"upf: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
