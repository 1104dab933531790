"""N2 state: UE contexts and their PDU sessions, as NGAP (TS 38.413) and NAS (TS 24.501) tell them.

``N2Contexts.on_ngap`` takes one decoded NGAP message (``ngap.NgapFacts``) of an SCTP
association and returns the changes to report, as ``N2Change`` records in the order
they happened, each a copy of the UE's ids and the session as they were then (later
NAS PDUs of the same message may still move them). The kinds are the event names:

- ``ue.registered``: a readable Registration Accept, or the Initial Context Setup
  Response after a Registration Request;
- ``ue.deregistered``: a Deregistration Request (either direction); the UE's PDU
  sessions are forgotten;
- ``ue.context_release``: UE Context Release Command;
- ``pdu_session.setup``: each item of a successful PDU Session Resource Setup (or
  Initial Context Setup) Response;
- ``pdu_session.release``: each known item of a PDU Session Resource Release Response;
- ``ngap.path_switch``: a Path Switch Request Acknowledge (Xn handover: the UE's sessions now
  end at the new gNB; a Path Switch Request Failure puts the old DL tunnels back, counted as
  ``ngap.path_switch_failed``, no event);
- ``ngap.handover``: a Handover Notify (N2 handover: the UE arrived at the target gNB).

Mobility. A Path Switch Request comes from the target gNB, on its own association, with
the Source AMF-UE-NGAP-ID: the UE's context is found by that id at the same AMF (any
association) and moves to the new association, gNB and RAN-UE-NGAP-ID; each listed
session's DL tunnel is replaced by the new one at once (the SMF switches the UPF before
the AMF acknowledges, so user packets to the new gNB may come first). An N2 handover keeps
the source context (the source gNB goes on to a Handover Command and a UE Context
Release): the Handover Request makes a context at the target, which takes the source's
identity and PDU sessions, found by the sessions' UL tunnels (else the one handover
pending at that AMF); the Acknowledge gives the target gNB's DL tunnels, applied at the
Handover Notify. Either way the N2Session objects are kept, so the UE's binding (SUPI,
DNN, UE IP) carries across. A tunnel left behind is remembered in ``moved`` (bounded),
so a late packet or an End Marker on the old path still names the UE. The User Location
Information of any message gives the UE's cell (``ctx.location``, and each session's
``cell`` text).

A UE context is found by AMF-UE-NGAP-ID, else RAN-UE-NGAP-ID, within its
association; an Initial UE Message on a RAN id in use starts a new one; UE Context
Release Complete ends it (its PDU sessions stay: a UE in CM-IDLE keeps them, and a
Service Request re-activates them by (SUPI, PDU session id)). The SUPI comes from a
null-scheme SUCI or an Identity Response, or from a 5G-GUTI / 5G-S-TMSI seen
assigned to a SUPI earlier; the NAS ciphering algorithm of a Security Mode Command
is kept per SUPI, since a Service Request reuses that security context. A PDU
session gets its UL tunnel from the setup request transfer (a new UL tunnel for a
known (SUPI, PDU session id) is a new session, not a re-activation), its DL tunnel
from the response transfer, S-NSSAI and QFIs from either, UE IP and DNN from a
readable PDU Session Establishment Accept.

Indexes ``by_tunnel`` (UL and DL ``Tunnel``), ``by_teid`` and ``by_ue_ip`` reflect
the PDU sessions set up and not released; ``tunnel_ts`` records when each tunnel was
bound (for a tie with N4).

Drops, each counted: NAS that does not decode (``nas.malformed``), ciphered NAS
(``nas.ciphered``); a concealed SUCI gives no SUPI (``nas.suci_concealed``). NGAP
messages without a UE NGAP id (NG Setup and other non-UE procedures) carry no UE
state and are ignored. The tables are bounded: past MAX_CONTEXTS the oldest context
is forgotten, past MAX_TMSI the oldest 5G-TMSI binding (neither is counted).

To follow another procedure: have ngap.py / nas.py decode what it carries into
``NgapFacts`` / ``NasFacts``; apply it here (``on_ngap`` for NGAP, ``_apply_nas`` for
NAS), changing a session only between ``_unindex(s)`` and ``_index(s, ts_ns)`` (or
ending it with ``_forget``) so the indexes stay true; to report it, append ``_change(kind, ctx, session)`` to ``out``. ControlPlane turns every
change into an event of that kind, joined with N4 (correlator.py ``_emit_n2``).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from upf_tap.control import nas, ngap
from upf_tap.control.tunnel import Tunnel

Assoc = tuple[tuple[str, int], tuple[str, int]]    # the SCTP association, endpoints sorted

MAX_CONTEXTS = 100_000      # NGAP UE contexts kept (oldest dropped first)
MAX_TMSI = 100_000          # 5G-TMSI -> SUPI bindings kept
MAX_MOVED = 100_000         # tunnels left by a switch or handover, remembered for late packets
MAX_HANDOVERS = 10_000      # N2 handovers prepared and not yet notified


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
    cell: str | None = None           # the UE's NR CGI as text, where N2 showed it
    moved_from: list[Tunnel] = field(default_factory=list)   # its entries in N2Contexts.moved


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
    location: ngap.Location | None = None
    # an Xn path switch between its request and its answer: PSI -> the DL tunnel before
    switch: dict[int, Tunnel | None] | None = None
    switch_from: str | None = None    # the N2 address of the gNB before the path switch
    # an N2 handover: at the source, Handover Required's target; at the target, the source
    # context, the UL tunnels of the Handover Request (if new) and the admitted DL tunnels
    ho_target: dict[str, Any] | None = None
    ho_type: str | None = None
    ho_source: UeContext | None = None
    ho_ul: dict[int, Tunnel] = field(default_factory=dict)
    ho_admitted: dict[int, Tunnel] = field(default_factory=dict)


class N2Change(NamedTuple):
    kind: str                         # the event kind: ue.* or pdu_session.*
    supi: str | None                  # the UE context as it was at the change
    amf_ue_id: int | None
    ran_ue_id: int | None
    gnb_ip: str | None                # N2 addresses of the association
    amf_ip: str | None
    session: N2Session | None         # pdu_session.*: a copy of the session at the change
    extra: dict[str, Any] | None = None   # ngap.*: the event's mobility fields


def _change(kind: str, ctx: UeContext, s: N2Session | None = None,
            extra: dict[str, Any] | None = None) -> N2Change:
    return N2Change(kind, ctx.supi, ctx.amf_ue_id, ctx.ran_ue_id, ctx.gnb_ip, ctx.amf_ip,
                    None if s is None else replace(s, qfis=list(s.qfis)), extra)


MOBILITY_PROCEDURES = frozenset({ngap.PROC_PATH_SWITCH_REQUEST, ngap.PROC_HANDOVER_PREPARATION,
                                 ngap.PROC_HANDOVER_RESOURCE_ALLOCATION, ngap.PROC_HANDOVER_NOTIFICATION,
                                 ngap.PROC_HANDOVER_CANCEL})


class N2Contexts:
    """NGAP UE contexts, their N2 PDU sessions and the identities learnt (see the module docstring)."""

    def __init__(self, stats: collections.Counter[str]) -> None:
        self.stats = stats
        self.ctx_by_ran: dict[tuple[Assoc, int], UeContext] = {}
        self.ctx_by_amf: dict[tuple[Assoc, int], UeContext] = {}
        # AMF-UE-NGAP-ID at an AMF address, any association: what a Path Switch Request names
        self.ctx_by_amf_node: dict[tuple[str | None, int], UeContext] = {}
        self.handovers: dict[int, UeContext] = {}      # id(ctx) -> source context of an N2 handover
        self.moved: dict[Tunnel, N2Session] = {}       # tunnels left behind, newest last
        self.tmsi_supi: dict[tuple[int, int, int], str] = {}
        self.cipher_by_supi: dict[str, int] = {}       # NAS ciphering algorithm, kept across contexts
        self.by_tunnel: dict[Tunnel, N2Session] = {}
        self.tunnel_ts: dict[Tunnel, int] = {}         # when each tunnel was bound to its session
        self.by_teid: dict[int, N2Session] = {}        # TEID alone, for taps that see other addresses
        self.by_ue_ip: dict[str, N2Session] = {}
        self.by_supi_psi: dict[tuple[str, int], N2Session] = {}

    # ------------------------------------------------------------------ input
    def on_ngap(self, ts_ns: int, assoc: Assoc, gnb: str | None, amf: str | None,
                f: ngap.NgapFacts) -> list[N2Change]:
        """Apply one NGAP message (``gnb`` / ``amf``: the association's N2 addresses, if known)."""
        out: list[N2Change] = []
        if f.message == "InitialUEMessage" and f.ran_ue_id is not None:
            old = self.ctx_by_ran.get((assoc, f.ran_ue_id))
            if old is not None:       # a new UE (or the same one again) on a reused RAN id
                self._drop_context(old)
        if f.message == "PathSwitchRequest":
            ctx = self._switching_context(assoc, f, gnb, amf)
        elif f.message in ("PathSwitchRequestAcknowledge", "PathSwitchRequestFailure"):
            ctx = self._switched_context(assoc, f, gnb, amf)
        else:
            ctx = self._context(assoc, f, gnb, amf)
        if ctx is None:
            return out
        if f.location is not None:
            self._learn_location(ctx, f.location)
        if f.s_tmsi is not None:
            self._learn_supi(ctx, self.tmsi_supi.get(f.s_tmsi))
        for raw in f.nas_pdus:
            self._on_nas(ts_ns, ctx, raw, out)
        for item in f.setup_requests:
            s = self._session(ctx, item.psi)
            if s.ul is not None and item.tunnel is not None and item.tunnel != s.ul:
                # same SUPI and PSI but a new UL tunnel: a new PDU session, not a re-activation
                self._forget(s)
                del ctx.sessions[item.psi]
                s = self._session(ctx, item.psi, fresh=True)
            self._unindex(s)
            s.snssai = item.snssai or s.snssai
            s.ul = item.tunnel or s.ul
            s.qfis = item.qfis or s.qfis
            self._index(s, ts_ns)
            if item.nas:
                self._on_nas(ts_ns, ctx, item.nas, out)
        if f.outcome == "successfulOutcome" and f.setup_responses:
            for item in f.setup_responses:
                s = self._session(ctx, item.psi)
                self._unindex(s)
                s.dl = item.tunnel or s.dl
                if item.qfis and not s.qfis:
                    s.qfis = item.qfis
                self._index(s, ts_ns)
                out.append(_change("pdu_session.setup", ctx, s))
        if f.message == "InitialContextSetupResponse" and ctx.registering:
            self._registered(ctx, out)
        if f.message == "PDUSessionResourceReleaseResponse":
            for psi in f.released:
                if psi in ctx.sessions:
                    s = ctx.sessions.pop(psi)
                    self._forget(s)
                    out.append(_change("pdu_session.release", ctx, s))
        if f.procedure in MOBILITY_PROCEDURES:
            self._mobility(ts_ns, ctx, f, out)
        if f.message == "UEContextReleaseCommand":
            out.append(_change("ue.context_release", ctx))
        elif f.message == "UEContextReleaseComplete":
            self._drop_context(ctx)
        return out

    # ------------------------------------------------------------------ mobility
    def _mobility(self, ts_ns: int, ctx: UeContext, f: ngap.NgapFacts, out: list[N2Change]) -> None:
        m = f.message
        if m == "PathSwitchRequest":
            prev: dict[int, Tunnel | None] = {}
            for item in f.switch_dl:
                s = self._session(ctx, item.psi)
                prev[item.psi] = s.dl
                self._move(s, item.tunnel, None, ts_ns)
            ctx.switch = prev
        elif m == "PathSwitchRequestAcknowledge":
            prev = ctx.switch or {}
            ctx.switch = None
            for item in f.switched:
                sw = ctx.sessions.get(item.psi)
                if sw is not None and item.tunnel is not None:
                    self._move(sw, None, item.tunnel, ts_ns)   # the SMF gave a new UL tunnel
            psis = [item.psi for item in f.switched] or list(prev)
            out.append(self._moved_change("ngap.path_switch", ctx, psis, prev, ctx.switch_from))
        elif m == "PathSwitchRequestFailure":
            self.stats["ngap.path_switch_failed"] += 1
            for psi, old in (ctx.switch or {}).items():
                back = ctx.sessions.get(psi)
                if back is not None and old is not None:
                    self._move(back, old, None, ts_ns)
            ctx.switch = None
        elif m == "HandoverRequired":
            ctx.ho_target, ctx.ho_type = f.target, f.ho_type
            self.handovers[id(ctx)] = ctx
            if len(self.handovers) > MAX_HANDOVERS:
                self._end_handover(next(iter(self.handovers.values())))
        elif m in ("HandoverPreparationFailure", "HandoverCancel", "HandoverFailure"):
            self._end_handover(ctx)
        elif m == "HandoverRequest":
            self._handover_request(ts_ns, ctx, f)
        elif m == "HandoverRequestAcknowledge":
            ctx.ho_admitted = {it.psi: it.tunnel for it in f.ho_admitted if it.tunnel is not None}
        elif m == "HandoverNotify":
            src = ctx.ho_source
            prev = {}
            for psi, dl in ctx.ho_admitted.items():
                s = self._session(ctx, psi)
                prev[psi] = s.dl
                self._move(s, dl, ctx.ho_ul.get(psi), ts_ns)
            extra: dict[str, Any] = {}
            target = src.ho_target if src is not None else None
            if target:
                extra["target"] = target
            ho_type = (src.ho_type if src is not None else None) or ctx.ho_type
            if ho_type:
                extra["handover_type"] = ho_type
            out.append(self._moved_change("ngap.handover", ctx, list(ctx.ho_admitted), prev,
                                          src.gnb_ip if src is not None else None, extra))
            self._end_handover(ctx)
            if src is not None:
                self._end_handover(src)

    def _switching_context(self, assoc: Assoc, f: ngap.NgapFacts, gnb: str | None,
                           amf: str | None) -> UeContext | None:
        """A Path Switch Request: the UE's context (by its Source AMF-UE-NGAP-ID at this AMF),
        moved to the new gNB's association; a new one if the capture never showed it."""
        src_id = f.source_amf_ue_id
        ctx = self.ctx_by_amf_node.get((amf, src_id)) if src_id is not None else None
        if ctx is None:
            return self._context(assoc, replace(f, amf_ue_id=src_id), gnb, amf)
        self._unregister(ctx)
        ctx.switch_from = ctx.gnb_ip
        ctx.assoc, ctx.gnb_ip = assoc, gnb
        if f.ran_ue_id is not None:
            ctx.ran_ue_id = f.ran_ue_id
        ctx.amf_ip = ctx.amf_ip or amf
        self._register(ctx)
        return ctx

    def _switched_context(self, assoc: Assoc, f: ngap.NgapFacts, gnb: str | None,
                          amf: str | None) -> UeContext | None:
        """The answer to a Path Switch Request: the AMF may give the UE a new AMF-UE-NGAP-ID, so
        the context switching on this RAN id is the one, whatever the AMF id says."""
        ctx = self.ctx_by_ran.get((assoc, f.ran_ue_id)) if f.ran_ue_id is not None else None
        if ctx is None or ctx.switch is None:
            return self._context(assoc, f, gnb, amf)
        if f.amf_ue_id is not None and f.amf_ue_id != ctx.amf_ue_id:
            self._unregister(ctx)
            ctx.amf_ue_id = f.amf_ue_id
            self._register(ctx)
        return ctx

    def _handover_request(self, ts_ns: int, ctx: UeContext, f: ngap.NgapFacts) -> None:
        """At the target: take the source's identity and sessions (found by UL tunnel, else the
        one handover pending at this AMF); a session never seen starts from the request."""
        src = None
        for item in f.ho_setup:
            known = self.by_tunnel.get(item.tunnel) if item.tunnel is not None else None
            src = next((c for c in self.handovers.values()
                        if c is not ctx and any(s is known for s in c.sessions.values())), None)
            if src is not None:
                break
        if src is None:
            pending = [c for c in self.handovers.values() if c is not ctx and c.amf_ip == ctx.amf_ip]
            src = pending[0] if len(pending) == 1 else None
        if src is not None:
            ctx.ho_source = src
            ctx.tmsi_key = ctx.tmsi_key or src.tmsi_key
            if ctx.cipher_alg is None:
                ctx.cipher_alg = src.cipher_alg
            for psi, shared in src.sessions.items():
                ctx.sessions.setdefault(psi, shared)
            self._learn_supi(ctx, src.supi)
        for item in f.ho_setup:
            s: N2Session | None = ctx.sessions.get(item.psi)
            if s is None and item.tunnel is not None:
                s = self.by_tunnel.get(item.tunnel)    # a session whose UE's Handover Required was missed
                if s is not None:
                    ctx.sessions[item.psi] = s
                    self._learn_supi(ctx, s.supi)
            if s is None:
                s = self._session(ctx, item.psi)
                self._unindex(s)
                s.ul, s.snssai = item.tunnel, item.snssai or s.snssai
                s.qfis = item.qfis or s.qfis
                self._index(s, ts_ns)
            elif item.tunnel is not None and item.tunnel != s.ul:
                ctx.ho_ul[item.psi] = item.tunnel       # a new UL tunnel: from the Handover Notify on
        ctx.ho_type = f.ho_type or ctx.ho_type

    def _end_handover(self, ctx: UeContext) -> None:
        self.handovers.pop(id(ctx), None)
        ctx.ho_target = ctx.ho_type = ctx.ho_source = None
        ctx.ho_ul, ctx.ho_admitted = {}, {}

    def _move(self, s: N2Session, dl: Tunnel | None, ul: Tunnel | None, ts_ns: int) -> None:
        """New tunnels for a session (None: unchanged); the ones it leaves go to ``moved``."""
        before = (s.ul, s.dl)
        self._unindex(s)
        s.dl = dl or s.dl
        s.ul = ul or s.ul
        self._index(s, ts_ns)
        for t in before:
            if t is not None and t != s.ul and t != s.dl:
                self.moved[t] = s
                s.moved_from = [*s.moved_from[-7:], t]    # the last few are enough for late packets
                if len(self.moved) > MAX_MOVED:
                    self.moved.pop(next(iter(self.moved)))

    def _moved_change(self, kind: str, ctx: UeContext, psis: list[int], prev: dict[int, Tunnel | None],
                      prev_gnb_n2: str | None, extra: dict[str, Any] | None = None) -> N2Change:
        """The event of a finished move: each session's new DL tunnel (and the one before), the
        UE's cell and TAI, the gNB before on N2."""
        sessions: list[dict[str, Any]] = []
        first: N2Session | None = None
        first_prev: Tunnel | None = None
        for psi in psis:
            s = ctx.sessions.get(psi)
            if s is None:
                continue
            item: dict[str, Any] = {"id": psi}
            if s.dl is not None:
                item["gnb_ip"], item["dl_teid"] = s.dl
            old = prev.get(psi)
            if old is not None and old != s.dl:
                item["prev_gnb_ip"], item["prev_dl_teid"] = old
            sessions.append(item)
            if first is None:
                first, first_prev = s, (old if old != s.dl else None)
        app: dict[str, Any] = {"pdu_sessions": sessions}
        if first_prev is not None:
            app["prev_gnb_ip"], app["prev_dl_teid"] = first_prev
        if ctx.location is not None:
            app["cell"], app["tai"] = ctx.location.cell(), ctx.location.tai()
        if prev_gnb_n2 and prev_gnb_n2 != ctx.gnb_ip:
            app["prev_gnb_n2"] = prev_gnb_n2
        app.update(extra or {})
        return _change(kind, ctx, first, app)

    def _learn_location(self, ctx: UeContext, loc: ngap.Location) -> None:
        ctx.location = loc
        text = loc.cell_text()
        for s in ctx.sessions.values():
            s.cell = text

    def _on_nas(self, ts_ns: int, ctx: UeContext, raw: bytes, out: list[N2Change]) -> None:
        try:
            facts = nas.decode(raw, ctx.cipher_alg)
        except nas.NasError:
            self.stats["nas.malformed"] += 1
            return
        if facts.ciphered:
            self.stats["nas.ciphered"] += 1
            return
        for inner in [facts, *facts.inner]:
            self._apply_nas(ts_ns, ctx, inner, out)

    def _apply_nas(self, ts_ns: int, ctx: UeContext, f: nas.NasFacts, out: list[N2Change]) -> None:
        if f.suci_concealed:
            self.stats["nas.suci_concealed"] += 1
        if f.cipher_alg is not None:
            ctx.cipher_alg = f.cipher_alg
            if ctx.supi:
                self.cipher_by_supi[ctx.supi] = f.cipher_alg
        if f.mm_type == nas.MM_REGISTRATION_REQUEST:
            ctx.registering = True
        if f.supi:
            self._learn_supi(ctx, f.supi)
        if f.tmsi_key is not None:
            if f.guti_assigned:
                ctx.tmsi_key = f.tmsi_key
                if ctx.supi:
                    self._bind_tmsi(f.tmsi_key, ctx.supi)
            else:
                self._learn_supi(ctx, self.tmsi_supi.get(f.tmsi_key))
                ctx.tmsi_key = ctx.tmsi_key or f.tmsi_key
        if f.mm_type == nas.MM_REGISTRATION_ACCEPT:
            self._registered(ctx, out)
        if f.mm_type == nas.MM_DEREGISTRATION_REQUEST_UE_ORIG or f.mm_type == nas.MM_DEREGISTRATION_REQUEST_UE_TERM:
            out.append(_change("ue.deregistered", ctx))
            for s in list(ctx.sessions.values()):
                self._forget(s)
            ctx.sessions.clear()
        if f.pdu_session_id is not None and (f.sm_type is not None or f.dnn or f.snssai):
            s = self._session(ctx, f.pdu_session_id)
            self._unindex(s)
            if f.sm_type == nas.SM_ESTABLISHMENT_ACCEPT:
                s.ue_ipv4 = f.ue_ipv4 or s.ue_ipv4
                s.dnn = f.dnn or s.dnn        # the accepted DNN wins over the requested one
                s.snssai = f.snssai or s.snssai
            else:
                s.dnn = s.dnn or f.dnn
                s.snssai = s.snssai or f.snssai
            self._index(s, ts_ns)

    # ------------------------------------------------------------------ UE contexts
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
        ctx.gnb_ip = ctx.gnb_ip or gnb
        ctx.amf_ip = ctx.amf_ip or amf
        self._register(ctx)
        return ctx

    def _register(self, ctx: UeContext) -> None:
        if ctx.ran_ue_id is not None:
            self.ctx_by_ran[(ctx.assoc, ctx.ran_ue_id)] = ctx
        if ctx.amf_ue_id is not None:
            self.ctx_by_amf[(ctx.assoc, ctx.amf_ue_id)] = ctx
            self.ctx_by_amf_node[(ctx.amf_ip, ctx.amf_ue_id)] = ctx

    def _unregister(self, ctx: UeContext) -> None:
        if ctx.ran_ue_id is not None and self.ctx_by_ran.get((ctx.assoc, ctx.ran_ue_id)) is ctx:
            del self.ctx_by_ran[(ctx.assoc, ctx.ran_ue_id)]
        if ctx.amf_ue_id is not None:
            if self.ctx_by_amf.get((ctx.assoc, ctx.amf_ue_id)) is ctx:
                del self.ctx_by_amf[(ctx.assoc, ctx.amf_ue_id)]
            if self.ctx_by_amf_node.get((ctx.amf_ip, ctx.amf_ue_id)) is ctx:
                del self.ctx_by_amf_node[(ctx.amf_ip, ctx.amf_ue_id)]

    def _drop_context(self, ctx: UeContext) -> None:
        self._unregister(ctx)
        self.handovers.pop(id(ctx), None)
        if ctx.ho_source is not None:
            ctx.ho_source = None      # nothing keeps a released source context alive

    def _learn_supi(self, ctx: UeContext, supi: str | None) -> None:
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
            self.by_supi_psi[(supi, s.psi)] = s

    def _bind_tmsi(self, key: tuple[int, int, int], supi: str) -> None:
        self.tmsi_supi[key] = supi
        if len(self.tmsi_supi) > MAX_TMSI:
            self.tmsi_supi.pop(next(iter(self.tmsi_supi)))

    def _registered(self, ctx: UeContext, out: list[N2Change]) -> None:
        if ctx.registering:
            ctx.registering = False
            out.append(_change("ue.registered", ctx))

    # ------------------------------------------------------------------ PDU sessions and indexes
    def _session(self, ctx: UeContext, psi: int, fresh: bool = False) -> N2Session:
        s = None if fresh else ctx.sessions.get(psi)
        if s is None and ctx.supi and not fresh:
            s = self.by_supi_psi.get((ctx.supi, psi))   # re-activation after a service request
        if s is None:
            s = N2Session(psi=psi)
        s.supi = ctx.supi or s.supi
        if ctx.location is not None:
            s.cell = ctx.location.cell_text()
        ctx.sessions[psi] = s
        if s.supi:
            self.by_supi_psi[(s.supi, psi)] = s
        return s

    def _index(self, s: N2Session, ts_ns: int) -> None:
        for t in (s.ul, s.dl):
            if t is not None:
                if self.by_tunnel.get(t) is not s or t not in self.tunnel_ts:
                    self.tunnel_ts[t] = ts_ns
                self.by_tunnel[t] = s
                self.by_teid[t.teid] = s
                self.moved.pop(t, None)       # bound again: no longer a path left behind
        if s.ue_ipv4:
            self.by_ue_ip[s.ue_ipv4] = s

    def _unindex(self, s: N2Session) -> None:
        for t in (s.ul, s.dl):
            if t is not None:
                if self.by_tunnel.get(t) is s:
                    del self.by_tunnel[t]
                if self.by_teid.get(t.teid) is s:
                    del self.by_teid[t.teid]
        if s.ue_ipv4 and self.by_ue_ip.get(s.ue_ipv4) is s:
            del self.by_ue_ip[s.ue_ipv4]

    def _forget(self, s: N2Session) -> None:
        self._unindex(s)
        for t in s.moved_from:
            if self.moved.get(t) is s:
                del self.moved[t]
        if s.supi and self.by_supi_psi.get((s.supi, s.psi)) is s:
            del self.by_supi_psi[(s.supi, s.psi)]
