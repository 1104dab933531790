"""ControlPlane: follows N4 (PFCP) and N2 (NGAP/NAS) and tells the user plane who a UE is.

The tap pipeline hands over PFCP datagrams (``on_pfcp``) and SCTP packets
(``on_sctp``), and asks ``ue_for_teid`` / ``ue_for_ip`` once per application event.
Two views of each PDU session are kept and joined on demand:

- N4: ``SessionTable`` (UE IP, UL F-TEID at the UPF, DL TEID at the gNB, Network
  Instance, QFIs, User ID);
- N2: per-UE NGAP contexts (SUPI from a null-scheme SUCI, an Identity Response or a
  5G-GUTI / 5G-S-TMSI seen assigned earlier) and their PDU sessions (UL TEID from
  the setup request, DL TEID from the response, S-NSSAI, QFIs; UE IP and DNN from an
  unciphered PDU Session Establishment Accept).

The join is by tunnel (UL or DL (address, TEID), which both sides carry) or by UE IP.
A static identity file fills what live learning did not; when both know a field and
disagree, live wins and the disagreement is logged once and counted.
See docs/identity.md.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from upf_tap.constants import NGAP_PPID, NGAP_SCTP_PORT
from upf_tap.control import identity, nas, ngap, pfcp
from upf_tap.control.sctp import SctpError, SctpReader
from upf_tap.control.sessions import PfcpSession, SessionTable
from upf_tap.events import make_event

log = logging.getLogger("upf_tap.control")
identity_log = logging.getLogger("upf_tap.identity")

Tunnel = tuple[str, int]
Assoc = tuple[tuple[str, int], tuple[str, int]]    # the SCTP association, endpoints sorted

MAX_CONTEXTS = 100_000      # NGAP UE contexts kept (oldest dropped first)
MAX_TMSI = 100_000          # 5G-TMSI -> SUPI bindings kept


@dataclass(slots=True, eq=False)
class N2Session:
    psi: int
    supi: str | None = None
    snssai: str | None = None
    dnn: str | None = None
    ue_ipv4: str | None = None
    ul: Tunnel | None = None          # UPF address and UL TEID (setup request transfer)
    dl: Tunnel | None = None          # gNB address and DL TEID (setup response transfer)
    qfis: list[int] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class UeContext:
    assoc: Assoc
    gnb_ip: str | None = None
    amf_ip: str | None = None
    ran_ue_id: int | None = None
    amf_ue_id: int | None = None
    supi: str | None = None
    tmsi_key: tuple[int, int, int] | None = None
    cipher_alg: int | None = None
    registering: bool = False
    sessions: dict[int, N2Session] = field(default_factory=dict)


class ControlPlane:
    def __init__(self, tap_id: str, emit: Callable[[dict], None], stats: collections.Counter[str],
                 identity_file: str | os.PathLike | None = None) -> None:
        self.tap_id = tap_id
        self.emit = emit
        self.stats = stats
        self.static = identity.load(identity_file) if identity_file is not None else None
        self.n4 = SessionTable(stats)
        self.sctp = SctpReader(stats)
        # N2 state
        self.ctx_by_ran: dict[tuple[Assoc, int], UeContext] = {}
        self.ctx_by_amf: dict[tuple[Assoc, int], UeContext] = {}
        self.tmsi_supi: dict[tuple[int, int, int], str] = {}
        self.cipher_by_supi: dict[str, int] = {}       # NAS ciphering algorithm, kept across contexts
        self.n2_by_tunnel: dict[Tunnel, N2Session] = {}
        self.n2_tunnel_ts: dict[Tunnel, int] = {}
        self.n2_by_teid: dict[int, N2Session] = {}
        self.n2_by_ueip: dict[str, N2Session] = {}
        self.n2_by_supi_psi: dict[tuple[str, int], N2Session] = {}
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
            for kind, sess, changed in changes:
                self._emit_session(kind, ts_ns, sess, changed)

    def _emit_session(self, kind: str, ts_ns: int, s: PfcpSession, changed: list[str]) -> None:
        app = s.view()
        ue = self._merge(s, None) or {}
        for k in ("supi", "dnn", "snssai", "pdu_session_id"):
            if k in ue:
                app[k] = ue[k]
        if kind == "down":
            app["reason"] = changed[0] if changed else "deletion"
        elif changed:
            app["changed"] = changed
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
        if dport == NGAP_SCTP_PORT:
            gnb, amf = src, dst
        elif sport == NGAP_SCTP_PORT:
            gnb, amf = dst, src
        else:
            gnb = amf = None
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
            try:
                self._on_ngap(ts_ns, assoc, gnb, amf, facts)
            except Exception:   # a bug in the state machine must not stop the tap
                log.debug("NGAP message failed", exc_info=True)
                self.stats["ngap.error"] += 1

    def _context(self, assoc: Assoc, facts: ngap.NgapFacts, gnb: str | None,
                 amf: str | None) -> UeContext | None:
        ctx = None
        if facts.amf_ue_id is not None:
            ctx = self.ctx_by_amf.get((assoc, facts.amf_ue_id))
        if ctx is None and facts.ran_ue_id is not None:
            ctx = self.ctx_by_ran.get((assoc, facts.ran_ue_id))
            if ctx is not None and facts.amf_ue_id is not None and ctx.amf_ue_id not in (None, facts.amf_ue_id):
                ctx = None      # a RAN id reused for another UE
        if ctx is None:
            if facts.ran_ue_id is None and facts.amf_ue_id is None:
                return None
            ctx = UeContext(assoc=assoc)
            if len(self.ctx_by_ran) > MAX_CONTEXTS:
                self._drop_context(next(iter(self.ctx_by_ran.values())))
        if facts.ran_ue_id is not None and ctx.ran_ue_id != facts.ran_ue_id:
            ctx.ran_ue_id = facts.ran_ue_id
        if facts.amf_ue_id is not None:
            ctx.amf_ue_id = facts.amf_ue_id
        if ctx.ran_ue_id is not None:
            self.ctx_by_ran[(assoc, ctx.ran_ue_id)] = ctx
        if ctx.amf_ue_id is not None:
            self.ctx_by_amf[(assoc, ctx.amf_ue_id)] = ctx
        ctx.gnb_ip = ctx.gnb_ip or gnb
        ctx.amf_ip = ctx.amf_ip or amf
        return ctx

    def _drop_context(self, ctx: UeContext) -> None:
        if ctx.ran_ue_id is not None and self.ctx_by_ran.get((ctx.assoc, ctx.ran_ue_id)) is ctx:
            del self.ctx_by_ran[(ctx.assoc, ctx.ran_ue_id)]
        if ctx.amf_ue_id is not None and self.ctx_by_amf.get((ctx.assoc, ctx.amf_ue_id)) is ctx:
            del self.ctx_by_amf[(ctx.assoc, ctx.amf_ue_id)]

    def _on_ngap(self, ts_ns: int, assoc: Assoc, gnb: str | None, amf: str | None,
                 f: ngap.NgapFacts) -> None:
        if f.message == "InitialUEMessage" and f.ran_ue_id is not None:
            old = self.ctx_by_ran.get((assoc, f.ran_ue_id))
            if old is not None:       # a new UE (or the same one again) on a reused RAN id
                self._drop_context(old)
        ctx = self._context(assoc, f, gnb, amf)
        if ctx is None:
            return
        if f.s_tmsi is not None:
            self._learn_supi(ts_ns, ctx, self.tmsi_supi.get(f.s_tmsi))
        for raw in f.nas_pdus:
            self._on_nas(ts_ns, ctx, raw)
        for item in f.setup_requests:
            s = self._n2_session(ctx, item.psi)
            if s.ul is not None and item.tunnel is not None and item.tunnel != s.ul:
                # same SUPI and PSI but a new UL tunnel: a new PDU session, not a re-activation
                self._forget_n2(s)
                del ctx.sessions[item.psi]
                s = self._n2_session(ctx, item.psi, fresh=True)
            self._unindex_n2(s)
            s.snssai = item.snssai or s.snssai
            s.ul = item.tunnel or s.ul
            s.qfis = item.qfis or s.qfis
            self._index_n2(s, ts_ns)
            if item.nas:
                self._on_nas(ts_ns, ctx, item.nas)
        if f.outcome == "successfulOutcome" and f.setup_responses:
            for item in f.setup_responses:
                s = self._n2_session(ctx, item.psi)
                self._unindex_n2(s)
                s.dl = item.tunnel or s.dl
                if item.qfis and not s.qfis:
                    s.qfis = item.qfis
                self._index_n2(s, ts_ns)
                self._emit_n2("pdu_session.setup", ts_ns, ctx, s)
        if f.message == "InitialContextSetupResponse" and ctx.registering:
            self._registered(ts_ns, ctx)
        if f.message == "PDUSessionResourceReleaseResponse":
            for psi in f.released:
                s = ctx.sessions.pop(psi, None)
                if s is not None:
                    self._forget_n2(s)
                    self._emit_n2("pdu_session.release", ts_ns, ctx, s)
        if f.message == "UEContextReleaseCommand":
            self._emit_n2("ue.context_release", ts_ns, ctx, None)
        elif f.message == "UEContextReleaseComplete":
            self._drop_context(ctx)

    def _on_nas(self, ts_ns: int, ctx: UeContext, raw: bytes) -> None:
        try:
            facts = nas.decode(raw, ctx.cipher_alg)
        except nas.NasError:
            self.stats["nas.malformed"] += 1
            return
        if facts.ciphered:
            self.stats["nas.ciphered"] += 1
            return
        for inner in [facts, *facts.inner]:
            self._apply_nas(ts_ns, ctx, inner)

    def _apply_nas(self, ts_ns: int, ctx: UeContext, f: nas.NasFacts) -> None:
        if f.suci_concealed:
            self.stats["nas.suci_concealed"] += 1
        if f.cipher_alg is not None:
            ctx.cipher_alg = f.cipher_alg
            if ctx.supi:
                self.cipher_by_supi[ctx.supi] = f.cipher_alg
        if f.mm_type == nas.MM_REGISTRATION_REQUEST:
            ctx.registering = True
        if f.supi:
            self._learn_supi(ts_ns, ctx, f.supi)
        if f.tmsi_key is not None:
            if f.guti_assigned:
                ctx.tmsi_key = f.tmsi_key
                if ctx.supi:
                    self._bind_tmsi(f.tmsi_key, ctx.supi)
            else:
                self._learn_supi(ts_ns, ctx, self.tmsi_supi.get(f.tmsi_key))
                ctx.tmsi_key = ctx.tmsi_key or f.tmsi_key
        if f.mm_type == nas.MM_REGISTRATION_ACCEPT:
            self._registered(ts_ns, ctx)
        if f.mm_type == nas.MM_DEREGISTRATION_REQUEST_UE_ORIG or f.mm_type == nas.MM_DEREGISTRATION_REQUEST_UE_TERM:
            self._emit_n2("ue.deregistered", ts_ns, ctx, None)
            for s in list(ctx.sessions.values()):
                self._forget_n2(s)
            ctx.sessions.clear()
        if f.pdu_session_id is not None and (f.sm_type is not None or f.dnn or f.snssai):
            s = self._n2_session(ctx, f.pdu_session_id)
            self._unindex_n2(s)
            if f.sm_type == nas.SM_ESTABLISHMENT_ACCEPT:
                s.ue_ipv4 = f.ue_ipv4 or s.ue_ipv4
                s.dnn = f.dnn or s.dnn        # the accepted DNN wins over the requested one
                s.snssai = f.snssai or s.snssai
            else:
                s.dnn = s.dnn or f.dnn
                s.snssai = s.snssai or f.snssai
            self._index_n2(s, ts_ns)

    def _learn_supi(self, ts_ns: int, ctx: UeContext, supi: str | None) -> None:
        if not supi or ctx.supi == supi:
            return
        ctx.supi = supi
        # a Service Request reuses the security context of the registration: same algorithm
        if ctx.cipher_alg is None:
            ctx.cipher_alg = self.cipher_by_supi.get(supi)
        elif supi not in self.cipher_by_supi:
            self.cipher_by_supi[supi] = ctx.cipher_alg
        if ctx.tmsi_key is not None:
            self._bind_tmsi(ctx.tmsi_key, supi)
        for s in ctx.sessions.values():
            s.supi = supi
            self.n2_by_supi_psi[(supi, s.psi)] = s

    def _bind_tmsi(self, key: tuple[int, int, int], supi: str) -> None:
        self.tmsi_supi[key] = supi
        if len(self.tmsi_supi) > MAX_TMSI:
            self.tmsi_supi.pop(next(iter(self.tmsi_supi)))

    def _registered(self, ts_ns: int, ctx: UeContext) -> None:
        if ctx.registering:
            ctx.registering = False
            self._emit_n2("ue.registered", ts_ns, ctx, None)

    def _n2_session(self, ctx: UeContext, psi: int, fresh: bool = False) -> N2Session:
        s = None if fresh else ctx.sessions.get(psi)
        if s is None and ctx.supi and not fresh:
            s = self.n2_by_supi_psi.get((ctx.supi, psi))   # re-activation after a service request
        if s is None:
            s = N2Session(psi=psi)
        s.supi = ctx.supi or s.supi
        ctx.sessions[psi] = s
        if s.supi:
            self.n2_by_supi_psi[(s.supi, psi)] = s
        return s

    def _index_n2(self, s: N2Session, ts_ns: int) -> None:
        for t in (s.ul, s.dl):
            if t is not None:
                if self.n2_by_tunnel.get(t) is not s or t not in self.n2_tunnel_ts:
                    self.n2_tunnel_ts[t] = ts_ns
                self.n2_by_tunnel[t] = s
                self.n2_by_teid[t[1]] = s
        if s.ue_ipv4:
            self.n2_by_ueip[s.ue_ipv4] = s

    def _unindex_n2(self, s: N2Session) -> None:
        for t in (s.ul, s.dl):
            if t is not None:
                if self.n2_by_tunnel.get(t) is s:
                    del self.n2_by_tunnel[t]
                if self.n2_by_teid.get(t[1]) is s:
                    del self.n2_by_teid[t[1]]
        if s.ue_ipv4 and self.n2_by_ueip.get(s.ue_ipv4) is s:
            del self.n2_by_ueip[s.ue_ipv4]

    def _forget_n2(self, s: N2Session) -> None:
        self._unindex_n2(s)
        if s.supi and self.n2_by_supi_psi.get((s.supi, s.psi)) is s:
            del self.n2_by_supi_psi[(s.supi, s.psi)]

    def _emit_n2(self, kind: str, ts_ns: int, ctx: UeContext, s: N2Session | None) -> None:
        app: dict[str, Any] = {"amf_ue_ngap_id": ctx.amf_ue_id, "ran_ue_ngap_id": ctx.ran_ue_id,
                               "gnb_n2": ctx.gnb_ip, "amf_n2": ctx.amf_ip, "supi": ctx.supi}
        ue: dict[str, Any] = {"supi": ctx.supi}
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
        app = {k: v for k, v in app.items() if v is not None}
        ue = {k: v for k, v in ue.items() if v is not None}
        self.emit(make_event(kind, ts_ns, "n2", self.tap_id, ue=ue, app=app))

    # ================================================================== joins
    @staticmethod
    def _consistent(s4: PfcpSession, s2: N2Session) -> bool:
        """Do the N4 and N2 views describe the same PDU session? (UL tunnel, else UE IP)"""
        ul = s4.ul_tunnels()
        if s2.ul is not None and ul:
            return s2.ul in ul
        ips = s4.ue_ips()
        if s2.ue_ipv4 and ips:
            return s2.ue_ipv4 in ips
        return True

    def _n4_for(self, s: N2Session) -> PfcpSession | None:
        cands = [self.n4.by_tunnel.get(t) for t in (s.ul, s.dl) if t is not None]
        if s.ue_ipv4:
            cands.append(self.n4.by_ue_ip.get(s.ue_ipv4))
        for hit in cands:
            if hit is not None and self._consistent(hit, s):
                return hit
        return None

    def _n2_for(self, s: PfcpSession) -> N2Session | None:
        cands = [self.n2_by_tunnel.get(t) for t in s.ul_tunnels() + s.dl_tunnels()]
        cands += [self.n2_by_ueip.get(ip) for ip in s.ue_ips()]
        for hit in cands:
            if hit is not None and self._consistent(s, hit):
                return hit
        return None

    def _merge(self, s4: PfcpSession | None, s2: N2Session | None) -> dict[str, Any] | None:
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
            key = (tunnel_dst, teid)
            s4 = self.n4.by_tunnel.get(key)
            s2 = self.n2_by_tunnel.get(key)
        if s4 is None and s2 is None:
            s4 = self.n4.by_teid.get(teid)
            s2 = self.n2_by_teid.get(teid)
            key = None          # found by TEID alone: no binding times to compare
        if ue_ip is not None:
            if s4 is not None and ue_ip not in s4.ue_ips():
                s4 = self.n4.by_ue_ip.get(ue_ip)
            if s2 is not None and s2.ue_ipv4 not in (None, ue_ip):
                s2 = self.n2_by_ueip.get(ue_ip)
        if s4 is None and s2 is None:
            return self._static_only(ue_ip) if ue_ip else None
        if s4 is not None and s2 is not None and not self._consistent(s4, s2):
            # a TEID reused by another UE, and N2 and N4 disagree on whose it is now: the
            # newer binding wins (the UPF forwards before it answers a Modification, so N2
            # often knows first)
            if key is not None and self.n2_tunnel_ts.get(key, -1) > self.n4.tunnel_ts.get(key, -1):
                s4 = None
            else:
                s2 = None
        return self._merge(s4, s2)

    def ue_for_ip(self, ip: str) -> dict | None:
        """UE fields for a UE address (N6 taps, or when the TEID is unknown)."""
        s4 = self.n4.by_ue_ip.get(ip)
        s2 = self.n2_by_ueip.get(ip)
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
