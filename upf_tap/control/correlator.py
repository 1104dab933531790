"""ControlPlane: follows N4 (PFCP) and N2 (NGAP/NAS) and tells the user plane who a UE is.

The tap pipeline hands over PFCP datagrams (``on_pfcp``) and SCTP packets
(``on_sctp``), and asks ``ue_for_teid`` / ``ue_for_ip`` once per application event.
This module decodes the transport (PFCP messages; SCTP user messages, then NGAP),
feeds the two tables that keep the state, and turns the changes they report into
events; it keeps no session state of its own. The tables:

- N4: ``N4Sessions`` (n4.py): UE IP, UL F-TEID at the UPF, DL TEID at the gNB,
  Network Instance, QFIs, User ID;
- N2: ``N2Contexts`` (n2.py): per-UE NGAP contexts (SUPI) and their PDU sessions
  (UL and DL tunnels, S-NSSAI, QFIs, UE IP, DNN).

The two views of a PDU session are joined on demand, by tunnel (UL or DL
``Tunnel``, which both sides carry) or by UE IP. A static identity file fills what
live learning did not; when both know a field and disagree, live wins and the
disagreement is logged once and counted (``identity.conflict``). See docs/identity.md.

Mobility (docs/tap.md, "Mobility"): a ``session.modify`` that moves a tunnel carries the
fields before as ``prev_*``; NGAP path switches and handovers are ``ngap.path_switch`` /
``ngap.handover``; the UE fields of every event include the serving gNB's N3 address
(``gnb_ip``: the newer of the N2 and N4 DL tunnels) and, where N2 showed it, the cell.
A tunnel a move left behind still names its UE (both tables' ``moved``), for the End
Marker the UPF sends on the old path and for late packets.

Drops, each counted: a PFCP datagram that does not parse (``pfcp.malformed``), an
SCTP packet that does not (``sctp.malformed``), an SCTP user message that is not
NGAP (``sctp.not_ngap``), NGAP that does not decode (``ngap.malformed``); a bug in
a table's handling of one message is logged and counted (``pfcp.error``,
``ngap.error``) and the tap goes on. At flush, requests never answered are counted
(``pfcp.unanswered``).
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable
from typing import Any

from upf_tap.constants import NGAP_PPID, NGAP_SCTP_PORT
from upf_tap.control import identity, ngap, pfcp
from upf_tap.control.n2 import Assoc, N2Change, N2Contexts, N2Session
from upf_tap.control.n4 import N4Change, N4Session, N4Sessions
from upf_tap.control.sctp import SctpError, SctpReader
from upf_tap.control.tunnel import Tunnel
from upf_tap.events import make_event

log = logging.getLogger("upf_tap.control")

PREV_FIELDS = ("gnb_ip", "dl_teid", "upf_ip", "ul_teid")   # session.modify: prev_<field> when moved
identity_log = logging.getLogger("upf_tap.identity")


class ControlPlane:
    def __init__(self, tap_id: str, emit: Callable[[dict], None], stats: collections.Counter[str],
                 identity_file: str | os.PathLike | None = None) -> None:
        self.tap_id = tap_id
        self.emit = emit
        self.stats = stats
        self.static = identity.load(identity_file) if identity_file is not None else None
        self.n4 = N4Sessions(stats)
        self.n2 = N2Contexts(stats)
        self.sctp = SctpReader(stats)
        self._warned: set[tuple[str, str, Any, Any]] = set()

    # ================================================================== N4
    def on_pfcp(self, ts_ns: int, src: str, sport: int, dst: str, dport: int,
                payload: bytes | memoryview) -> None:
        try:
            msgs = pfcp.parse_messages(payload)
        except pfcp.PfcpError:
            self.stats["pfcp.malformed"] += 1
            return
        for msg in msgs:
            self.stats["pfcp.messages"] += 1
            try:
                changes = self.n4.on_message(ts_ns, src, sport, dst, dport, msg)
            except pfcp.PfcpError:
                self.stats["pfcp.malformed"] += 1
                continue
            except Exception:   # a decoder bug must not stop the tap: count it, keep going
                log.debug("PFCP message failed", exc_info=True)
                self.stats["pfcp.error"] += 1
                continue
            for change in changes:
                self._emit_n4(ts_ns, change)

    def _emit_n4(self, ts_ns: int, change: N4Change) -> None:
        kind, s, details = change.kind, change.session, change.details
        app = s.view()
        ue = self._merge(s, None) or {}
        for k in ("supi", "dnn", "snssai", "pdu_session_id"):
            if k in ue:
                app[k] = ue[k]
        if kind == "down":
            app["reason"] = details[0] if details else "deletion"
        elif details:
            app["changed"] = details
            before = change.before or {}
            for k in PREV_FIELDS:   # a handover: where the tunnels ended before (TS 23.502 §4.9.1)
                if k in details and before.get(k) is not None:
                    app[f"prev_{k}"] = before[k]
        if kind == "modify" and change.end_marker:
            app["end_marker"] = True
        self.emit(make_event(f"session.{kind}", ts_ns, "n4", self.tap_id, ue=ue, app=app))

    # ================================================================== N2
    def on_sctp(self, ts_ns: int, src: str, dst: str, packet: bytes | memoryview) -> None:
        try:
            messages = self.sctp.feed(src, dst, packet)
        except SctpError:
            self.stats["sctp.malformed"] += 1
            return
        if not messages:
            return
        sport = int.from_bytes(bytes(packet[0:2]), "big")
        dport = int.from_bytes(bytes(packet[2:4]), "big")
        assoc: Assoc = tuple(sorted(((src, sport), (dst, dport))))  # type: ignore[assignment]
        gnb: str | None
        amf: str | None
        if dport == NGAP_SCTP_PORT:
            gnb, amf = src, dst
        elif sport == NGAP_SCTP_PORT:
            gnb, amf = dst, src
        else:
            gnb = amf = None
        by_ports = (sport == NGAP_SCTP_PORT) != (dport == NGAP_SCTP_PORT)   # exactly one end on 38412
        for ppid, _sid, data in messages:
            if ppid != NGAP_PPID and not (ppid == 0 and NGAP_SCTP_PORT in (sport, dport)):
                self.stats["sctp.not_ngap"] += 1
                continue
            try:
                facts = ngap.decode(data)
            except ngap.NgapError:
                self.stats["ngap.malformed"] += 1
                continue
            self.stats["ngap.messages"] += 1
            if not by_ports and (from_ran := ngap.sent_by_ran(facts)) is not None:
                gnb, amf = (src, dst) if from_ran else (dst, src)   # the message's direction says
            try:
                for change in self.n2.on_ngap(ts_ns, assoc, gnb, amf, facts):
                    self._emit_n2(ts_ns, change)
            except Exception:   # a bug in the state machine must not stop the tap
                log.debug("NGAP message failed", exc_info=True)
                self.stats["ngap.error"] += 1

    def _emit_n2(self, ts_ns: int, change: N2Change) -> None:
        app: dict[str, Any] = {"amf_ue_ngap_id": change.amf_ue_id, "ran_ue_ngap_id": change.ran_ue_id,
                               "gnb_n2": change.gnb_ip, "amf_n2": change.amf_ip, "supi": change.supi}
        ue: dict[str, Any] = {"supi": change.supi}
        s = change.session
        if s is not None:
            merged = self._merge(None, s) or {}
            ue = merged
            app.update(pdu_session_id=s.psi, snssai=merged.get("snssai"), dnn=merged.get("dnn"),
                       ue_ip=merged.get("ip"), qfis=s.qfis or None)
            if s.ul:
                app["upf_ip"], app["ul_teid"] = s.ul
            if s.dl:
                app["gnb_ip"], app["dl_teid"] = s.dl
            s4 = self._n4_for(s)
            if s4 is not None and s4.up_seid is not None:
                app["seid"] = s4.up_seid
        if change.extra:
            app.update(change.extra)
        app = {k: v for k, v in app.items() if v is not None}
        ue = {k: v for k, v in ue.items() if v is not None}
        self.emit(make_event(change.kind, ts_ns, "n2", self.tap_id, ue=ue, app=app))

    # ================================================================== joins
    @staticmethod
    def _consistent(s4: N4Session, s2: N2Session) -> bool:
        """Do the N4 and N2 views describe the same PDU session? (UL tunnel, else UE IP)"""
        ul = s4.ul_tunnels()
        if s2.ul is not None and ul:
            return s2.ul in ul
        ips = s4.ue_ips()
        if s2.ue_ipv4 and ips:
            return s2.ue_ipv4 in ips
        return True

    def _n4_for(self, s: N2Session) -> N4Session | None:
        cands = [self.n4.by_tunnel.get(t) for t in (s.ul, s.dl) if t is not None]
        if s.ue_ipv4:
            cands.append(self.n4.by_ue_ip.get(s.ue_ipv4))
        for hit in cands:
            if hit is not None and self._consistent(hit, s):
                return hit
        return None

    def _n2_for(self, s: N4Session) -> N2Session | None:
        cands = [self.n2.by_tunnel.get(t) for t in s.ul_tunnels() + s.dl_tunnels()]
        cands += [self.n2.by_ue_ip.get(ip) for ip in s.ue_ips()]
        for hit in cands:
            if hit is not None and self._consistent(s, hit):
                return hit
        return None

    def _merge(self, s4: N4Session | None, s2: N2Session | None) -> dict[str, Any] | None:
        if s4 is not None and s2 is None:
            s2 = self._n2_for(s4)
        elif s2 is not None and s4 is None:
            s4 = self._n4_for(s2)
        out: dict[str, Any] = {}
        ips = s4.ue_ips() if s4 is not None else []
        ip = ips[0] if ips else (s2.ue_ipv4 if s2 is not None else None)
        if ip:
            out["ip"] = ip
        if s2 is not None:
            for k, v in (("supi", s2.supi), ("dnn", s2.dnn), ("snssai", s2.snssai),
                         ("pdu_session_id", s2.psi)):
                if v is not None:
                    out[k] = v
            if s2.qfis:
                out["qfi"] = s2.qfis[0]
            if s2.cell:
                out["cell"] = s2.cell
        gnb = self._serving_gnb(s4, s2)
        if gnb is not None:
            out["gnb_ip"] = gnb
        if s4 is not None:
            uid = s4.user_id or {}
            supi = uid.get("supi") or (f"imsi-{uid['imsi']}" if uid.get("imsi") else None)
            if supi and "supi" not in out:
                out["supi"] = supi
            q = s4.qfis()
            if q and "qfi" not in out:
                out["qfi"] = q[0]
        self._apply_static(ip, out)
        if s4 is not None and "dnn" not in out:
            ni = s4.network_instance()   # not always the DNN (OAI: "core.oai.org"): last resort
            if ni:
                out["dnn"] = ni
        return out or None

    def _serving_gnb(self, s4: N4Session | None, s2: N2Session | None) -> str | None:
        """The gNB end of the session's DL tunnel: N2's or N4's, whichever was bound last (in a
        handover N2 usually learns the new gNB first, N4 when the SMF switches the UPF)."""
        dl4 = s4.dl_tunnels() if s4 is not None else []
        t4 = dl4[0] if dl4 else None
        t2 = s2.dl if s2 is not None else None
        if t4 is None or t2 is None:
            t = t4 or t2
            return t.addr if t is not None else None
        if self.n2.tunnel_ts.get(t2, -1) > self.n4.tunnel_ts.get(t4, -1):
            return t2.addr
        return t4.addr

    def _apply_static(self, ip: str | None, out: dict[str, Any]) -> None:
        if self.static is None:
            return
        ident = self.static.lookup(ip)
        if ident is None:
            return
        for k, v in ident.fields().items():
            live = out.get(k)
            if live is None:
                out[k] = v
            elif live != v:
                key = (str(ip), k, live, v)
                self.stats["identity.conflict"] += 1
                if key not in self._warned:
                    self._warned.add(key)
                    identity_log.warning("UE %s: control plane says %s=%s, identity file says %s; using %s",
                                         ip, k, live, v, live)

    # ================================================================== lookups
    def ue_for_teid(self, teid: int, tunnel_dst: str | None = None,
                    ue_ip: str | None = None) -> dict | None:
        """UE fields for a GTP-U packet's TEID (and tunnel destination address).

        ``ue_ip`` (the inner UE address), when given, breaks ties: if the tunnel leads to
        a session of another UE (TEIDs are reused), the UE IP's session is used instead.
        """
        s4 = s2 = None
        key: Tunnel | None = None
        if tunnel_dst is not None:
            key = Tunnel(tunnel_dst, teid)
            s4 = self.n4.by_tunnel.get(key)
            s2 = self.n2.by_tunnel.get(key)
            if s4 is None and s2 is None:
                # a path a handover left: the End Marker on it, a late packet (not the TEID
                # alone below: another UE may hold that TEID at another address by now)
                s4 = self.n4.moved.get(key)
                s2 = self.n2.moved.get(key)
        if s4 is None and s2 is None:
            s4 = self.n4.by_teid.get(teid)
            s2 = self.n2.by_teid.get(teid)
            key = None          # found by TEID alone: no binding times to compare
        if ue_ip is not None:
            if s4 is not None and ue_ip not in s4.ue_ips():
                s4 = self.n4.by_ue_ip.get(ue_ip)
            if s2 is not None and s2.ue_ipv4 not in (None, ue_ip):
                s2 = self.n2.by_ue_ip.get(ue_ip)
        if s4 is None and s2 is None:
            return self._static_only(ue_ip) if ue_ip else None
        if s4 is not None and s2 is not None and not self._consistent(s4, s2):
            # a TEID reused by another UE, and N2 and N4 disagree on whose it is now: the
            # newer binding wins (the UPF forwards before it answers a Modification, so N2
            # often knows first)
            if key is not None and self.n2.tunnel_ts.get(key, -1) > self.n4.tunnel_ts.get(key, -1):
                s4 = None
            else:
                s2 = None
        return self._merge(s4, s2)

    def ue_for_ip(self, ip: str) -> dict | None:
        """UE fields for a UE address (N6 taps, or when the TEID is unknown)."""
        s4 = self.n4.by_ue_ip.get(ip)
        s2 = self.n2.by_ue_ip.get(ip)
        if s4 is None and s2 is None:
            return self._static_only(ip)
        return self._merge(s4, s2)

    def _static_only(self, ip: str) -> dict | None:
        if self.static is None:
            return None
        ident = self.static.lookup(ip)
        if ident is None:
            return None
        return {"ip": ip, **ident.fields()}

    def flush(self, ts_ns: int) -> None:
        """End of input: nothing is held back for emission; record what stayed unanswered."""
        if self.n4.pending:
            self.stats["pfcp.unanswered"] += len(self.n4.pending)
