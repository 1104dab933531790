"""N4 state: PFCP request/response pairing and ``N4Sessions``, the N4 view of PDU sessions.

A request changes nothing until its response says "Request accepted": the table
holds requests by (requester address, requester port, responder address, sequence
number), and a response from the responder to that port with that sequence number
completes it. Sessions are keyed by the SEID local to each side, as PFCP headers
carry them: the UP F-SEID at the UPF's address (requests from the SMF) and the CP
F-SEID at the SMF's address (responses and Session Report Requests).

``N4Sessions.on_message`` returns the changes to report, as ``N4Change`` records:
"up" (Session Establishment), "modify" (Session Modification; details: the fields
of the session's view that changed; ``before``: the view before it; ``end_marker``: the
SMF asked for End Markers on the old path, TS 29.244 §8.2.47 SNDEM) and "down" (details:
"deletion", or "association" when the peer restarted or released the PFCP association).
Indexes ``by_tunnel`` (UL and DL ``Tunnel``), ``by_teid``, ``by_ue_ip`` always reflect
live sessions only; ``tunnel_ts`` records when each tunnel was bound (for a tie with N2).
A tunnel a modification replaced (the DL tunnel of a handover: Update FAR, Update
Forwarding Parameters, Outer Header Creation) is remembered in ``moved`` while its session
lives (bounded), so an End Marker or a late packet on the old path still names the UE.

Drops, each counted: the oldest unanswered request past MAX_PENDING
(``pfcp.unanswered_dropped``), a message type not handled (``pfcp.unsupported_type``),
a response to no held request (``pfcp.duplicate_response`` if its request was just
answered, else ``pfcp.unmatched_response``), a response of the wrong type
(``pfcp.mismatched_response``), a rejection (``pfcp.rejected``), a deletion of an
unknown session (``pfcp.session_unknown``; a modification of one starts a partial
session). A retransmitted request replaces the held one (``pfcp.retransmission``);
an establishment on a SEID in use ends the old session (``pfcp.seid_reused``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from upf_tap.control import pfcp
from upf_tap.control.pfcp import Far, Pdr, SessionFacts
from upf_tap.control.tunnel import Tunnel

MAX_PENDING = 65_536      # unanswered requests kept (oldest dropped first)
MAX_ANSWERED = 4_096      # recently answered keys, to tell duplicates from strays
MAX_MOVED = 100_000       # tunnels replaced by a modification, remembered for late packets


@dataclass(slots=True)
class N4Session:
    cp_ip: str                       # SMF N4 address (request source)
    up_ip: str                       # UPF N4 address (request destination)
    cp_seid: int | None
    up_seid: int | None
    started_ns: int
    partial: bool = False            # first seen in a Modification (establishment not captured)
    pdrs: dict[int, Pdr] = field(default_factory=dict)
    fars: dict[int, Far] = field(default_factory=dict)
    qer_qfis: set[int] = field(default_factory=set)
    user_id: dict[str, str] | None = None
    cp_node: str | None = None
    up_node: str | None = None
    moved_from: list[Tunnel] = field(default_factory=list)   # its entries in N4Sessions.moved

    # ---- derived view (recomputed after each accepted message)
    def ul_tunnels(self) -> list[Tunnel]:
        """UPF-side F-TEIDs of access-side PDRs: what the gNB sends uplink to."""
        out: list[Tunnel] = []
        for pdr in self.pdrs.values():
            ft = pdr.f_teid
            if ft and "teid" in ft and pdr.source_iface in (pfcp.IFACE_ACCESS, None):
                addr = ft.get("ipv4") or ft.get("ipv6")
                if addr and (addr, ft["teid"]) not in out:
                    out.append(Tunnel(addr, ft["teid"]))
        return out

    def dl_tunnels(self) -> list[Tunnel]:
        """gNB-side TEIDs from Outer Header Creation in access-bound FARs: the downlink."""
        out: list[Tunnel] = []
        for far in self.fars.values():
            ohc = far.ohc
            if ohc and ohc.get("gtpu") and far.dest_iface in (pfcp.IFACE_ACCESS, None):
                addr = ohc.get("ipv4") or ohc.get("ipv6")
                if addr and (addr, ohc["teid"]) not in out:
                    out.append(Tunnel(addr, ohc["teid"]))
        return out

    def ue_ips(self) -> list[str]:
        out: list[str] = []
        for pdr in self.pdrs.values():
            for ip in (pdr.ue_ipv4, pdr.ue_ipv6):
                if ip and ip not in out:
                    out.append(ip)
        return out

    def network_instance(self) -> str | None:
        """The core-side Network Instance (closest to the DNN), else any."""
        for pdr in self.pdrs.values():
            if pdr.source_iface == pfcp.IFACE_CORE and pdr.network_instance:
                return pdr.network_instance
        for far in self.fars.values():
            if far.dest_iface == pfcp.IFACE_CORE and far.network_instance:
                return far.network_instance
        for pdr in self.pdrs.values():
            if pdr.network_instance:
                return pdr.network_instance
        return None

    def qfis(self) -> list[int]:
        q = set(self.qer_qfis)
        for pdr in self.pdrs.values():
            q.update(pdr.qfis)
        return sorted(q)

    def view(self) -> dict[str, Any]:
        """The session as the tap reports it (the fields of session.* events)."""
        v: dict[str, Any] = {"seid": self.up_seid, "cp_seid": self.cp_seid,
                             "upf_n4": self.up_ip, "smf_n4": self.cp_ip}
        ips = self.ue_ips()
        if ips:
            v["ue_ip"] = ips[0]
            if len(ips) > 1:
                v["ue_ips"] = ips
        ul = self.ul_tunnels()
        if ul:
            v["upf_ip"], v["ul_teid"] = ul[0]
        dl = self.dl_tunnels()
        if dl:
            v["gnb_ip"], v["dl_teid"] = dl[0]
        ni = self.network_instance()
        if ni:
            v["network_instance"] = ni
        q = self.qfis()
        if q:
            v["qfis"] = q
        if self.user_id:
            v["user_id"] = dict(self.user_id)
        if self.partial:
            v["partial"] = True
        return {k: val for k, val in v.items() if val is not None}


class N4Change(NamedTuple):
    kind: str                 # "up" | "modify" | "down"
    session: N4Session
    details: list[str]        # modify: the view's fields that changed; down: the reason
    before: dict[str, Any] | None = None   # modify: the view before
    end_marker: bool = False               # modify: the SMF asked for End Markers (SNDEM)


@dataclass(slots=True)
class _Pending:
    msg_type: int
    ts_ns: int
    seid: int | None
    facts: SessionFacts


def _upsert(table: dict[int, Any], items: list[Any], id_field: str, anon_base: int,
            merge: Callable[[Any, Any], None]) -> None:
    """Add rules to a session's table by id, merging into one already there; rules without an
    id get negative keys from ``anon_base`` down (so they never collide with real ids)."""
    for n, item in enumerate(items):
        key = getattr(item, id_field)
        if key is None:
            key = anon_base - n
        if key in table:
            merge(table[key], item)
        else:
            table[key] = item


def _merge_pdr(old: Pdr, new: Pdr) -> None:
    for name in ("source_iface", "f_teid", "ue_ipv4", "ue_ipv6", "network_instance", "far_id"):
        val = getattr(new, name)
        if val is not None:
            setattr(old, name, val)
    if new.qfis:
        old.qfis = list(new.qfis)


def _merge_far(old: Far, new: Far) -> None:
    for name in ("dest_iface", "ohc", "network_instance"):
        val = getattr(new, name)
        if val is not None:
            setattr(old, name, val)


class N4Sessions:
    """PFCP sessions and the pairing of requests with responses (see the module docstring)."""

    def __init__(self, stats: collections.Counter[str]) -> None:
        self.stats = stats
        self.pending: dict[tuple[str, int, str, int], _Pending] = {}
        self.answered: dict[tuple[str, int, str, int], None] = {}
        self.by_up: dict[tuple[str, int], N4Session] = {}
        self.by_cp: dict[tuple[str, int], N4Session] = {}
        self.by_tunnel: dict[Tunnel, N4Session] = {}
        self.by_teid: dict[int, N4Session] = {}      # TEID alone, for taps that see other addresses
        self.tunnel_ts: dict[Tunnel, int] = {}         # when each tunnel was bound to its session
        self.by_ue_ip: dict[str, N4Session] = {}
        self.moved: dict[Tunnel, N4Session] = {}       # tunnels a modification replaced, newest last
        self.nodes: dict[str, dict[str, Any]] = {}     # N4 address -> node id, recovery time

    # ------------------------------------------------------------------ input
    def on_message(self, ts_ns: int, src: str, sport: int, dst: str, dport: int,
                   msg: pfcp.PfcpMessage) -> list[N4Change]:
        mt = msg.msg_type
        if mt in pfcp.REQUEST_TYPES:
            key = (src, sport, dst, msg.seq)
            if key in self.pending:
                self.stats["pfcp.retransmission"] += 1
            self.pending[key] = _Pending(mt, ts_ns, msg.seid, pfcp.session_facts(msg))
            if len(self.pending) > MAX_PENDING:
                self.pending.pop(next(iter(self.pending)))
                self.stats["pfcp.unanswered_dropped"] += 1
            return []
        if mt not in pfcp.RESPONSE_TYPES:
            self.stats["pfcp.unsupported_type"] += 1
            return []
        key = (dst, dport, src, msg.seq)
        req = self.pending.pop(key, None)
        if req is None:
            self.stats["pfcp.duplicate_response" if key in self.answered else "pfcp.unmatched_response"] += 1
            return []
        self.answered[key] = None
        if len(self.answered) > MAX_ANSWERED:
            self.answered.pop(next(iter(self.answered)))
        if req.msg_type + 1 != mt:
            self.stats["pfcp.mismatched_response"] += 1
            return []
        resp = pfcp.session_facts(msg)
        if mt != pfcp.HEARTBEAT_RESP and resp.cause != pfcp.CAUSE_ACCEPTED:
            self.stats["pfcp.rejected"] += 1
            return []
        # the requester is dst, the responder src
        if mt == pfcp.SESS_EST_RESP:
            return self._established(ts_ns, req, resp, msg, requester=dst, responder=src)
        if mt == pfcp.SESS_MOD_RESP:
            return self._modified(ts_ns, req, resp, msg, requester=dst, responder=src)
        if mt == pfcp.SESS_DEL_RESP:
            return self._deleted(req, msg, requester=dst, responder=src)
        if mt == pfcp.SESS_REPORT_RESP:
            self.stats["pfcp.session_report"] += 1
            return []
        out: list[N4Change] = []
        if mt in (pfcp.ASSOC_SETUP_RESP, pfcp.ASSOC_UPDATE_RESP):
            self.stats["pfcp.association"] += 1
            for addr, facts in ((dst, req.facts), (src, resp)):
                out += self._node_seen(addr, facts, mt == pfcp.ASSOC_SETUP_RESP)
        elif mt == pfcp.HEARTBEAT_RESP:
            # heartbeats carry a Recovery Time Stamp too, but OAI's SMF puts the current
            # time there: restarts are only believed from Association Setup
            self.stats["pfcp.heartbeat"] += 1
        elif mt == pfcp.ASSOC_RELEASE_RESP:
            self.stats["pfcp.association_release"] += 1
            out += self._peer_gone(dst, src)
        return out

    def _node_seen(self, addr: str, facts: SessionFacts,
                   setup: bool) -> list[N4Change]:
        """Record a node's id; a new Recovery Time Stamp in an Association Setup: it restarted."""
        node = self.nodes.setdefault(addr, {})
        if facts.node_id:
            node["node_id"] = facts.node_id
        if facts.recovery_ts is None or not setup:
            return []
        old = node.get("recovery_ts")
        node["recovery_ts"] = facts.recovery_ts
        if old is None or old == facts.recovery_ts:
            return []
        # TS 29.244 §19A: a peer that restarted has lost its sessions
        self.stats["pfcp.peer_restart"] += 1
        return self._peer_gone(addr, None)

    def _peer_gone(self, a: str, b: str | None) -> list[N4Change]:
        """End the sessions of node a (with node b only, when given)."""
        out: list[N4Change] = []
        for s in self.sessions():
            ends = {s.cp_ip, s.up_ip}
            if a in ends and (b is None or b in ends):
                self._forget(s)
                out.append(N4Change("down", s, ["association"]))
        return out

    # ------------------------------------------------------------------ session life
    def _established(self, ts_ns: int, req: _Pending, resp: SessionFacts, msg: pfcp.PfcpMessage,
                     requester: str, responder: str) -> list[N4Change]:
        cp_seid = req.facts.f_seid[0] if req.facts.f_seid else msg.seid
        up_seid = resp.f_seid[0] if resp.f_seid else None
        s = N4Session(cp_ip=requester, up_ip=responder, cp_seid=cp_seid, up_seid=up_seid,
                        started_ns=req.ts_ns, cp_node=req.facts.node_id, up_node=resp.node_id)
        for key, table in (((responder, up_seid), self.by_up), ((requester, cp_seid), self.by_cp)):
            if key[1] is not None and key in table:
                self.stats["pfcp.seid_reused"] += 1
                self._forget(table[key])
        self._apply(s, req.facts, resp)
        if up_seid is not None:
            self.by_up[(responder, up_seid)] = s
        if cp_seid is not None:
            self.by_cp[(requester, cp_seid)] = s
        self._index(s, ts_ns)
        return [N4Change("up", s, [])]

    def _find(self, requester: str, responder: str, req_seid: int | None,
              resp_seid: int | None) -> N4Session | None:
        s = self.by_up.get((responder, req_seid)) if req_seid is not None else None
        if s is None and resp_seid is not None:
            s = self.by_cp.get((requester, resp_seid))
        return s

    def _modified(self, ts_ns: int, req: _Pending, resp: SessionFacts, msg: pfcp.PfcpMessage,
                  requester: str, responder: str) -> list[N4Change]:
        s = self._find(requester, responder, req.seid, msg.seid)
        if s is None:
            # the establishment happened before the capture: start from what this says
            self.stats["pfcp.session_unknown"] += 1
            s = N4Session(cp_ip=requester, up_ip=responder, cp_seid=msg.seid or None,
                            up_seid=req.seid or None, started_ns=ts_ns, partial=True)
            if s.up_seid is not None:
                self.by_up[(responder, s.up_seid)] = s
            if s.cp_seid is not None:
                self.by_cp[(requester, s.cp_seid)] = s
        before = s.view()
        old_tunnels = set(s.ul_tunnels() + s.dl_tunnels())
        self._unindex(s)
        self._apply(s, req.facts, resp)
        self._index(s, ts_ns, keep=old_tunnels)
        for t in old_tunnels - set(s.ul_tunnels() + s.dl_tunnels()):
            self.moved[t] = s
            s.moved_from = [*s.moved_from[-7:], t]    # the last few are enough for late packets
            if len(self.moved) > MAX_MOVED:
                self.moved.pop(next(iter(self.moved)))
        after = s.view()
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        sndem = any(f.send_end_marker for f in req.facts.fars)
        return [N4Change("modify", s, changed, before, sndem)]

    def _deleted(self, req: _Pending, msg: pfcp.PfcpMessage, requester: str,
                 responder: str) -> list[N4Change]:
        s = self._find(requester, responder, req.seid, msg.seid)
        if s is None:
            self.stats["pfcp.session_unknown"] += 1
            return []
        self._forget(s)
        return [N4Change("down", s, ["deletion"])]

    def _apply(self, s: N4Session, req: SessionFacts, resp: SessionFacts) -> None:
        for pid in req.removed_pdrs:
            s.pdrs.pop(pid, None)
        for fid in req.removed_fars:
            s.fars.pop(fid, None)
        _upsert(s.pdrs, req.pdrs, "pdr_id", -1, _merge_pdr)
        _upsert(s.fars, req.fars, "far_id", -1, _merge_far)
        _upsert(s.pdrs, resp.created_pdrs, "pdr_id", -1000, _merge_pdr)
        s.qer_qfis.update(req.qfis)
        if req.user_id:
            s.user_id = req.user_id

    # ------------------------------------------------------------------ indexes
    def _index(self, s: N4Session, ts_ns: int, keep: set[Tunnel] | frozenset[Tunnel] = frozenset()) -> None:
        for t in s.ul_tunnels() + s.dl_tunnels():
            if t not in keep or t not in self.tunnel_ts:
                self.tunnel_ts[t] = ts_ns
            self.by_tunnel[t] = s
            self.by_teid[t.teid] = s
            self.moved.pop(t, None)           # bound again: no longer a path left behind
        for ip in s.ue_ips():
            self.by_ue_ip[ip] = s

    def _unindex(self, s: N4Session) -> None:
        for t in s.ul_tunnels() + s.dl_tunnels():
            if self.by_tunnel.get(t) is s:
                del self.by_tunnel[t]
            if self.by_teid.get(t.teid) is s:
                del self.by_teid[t.teid]
        for ip in s.ue_ips():
            if self.by_ue_ip.get(ip) is s:
                del self.by_ue_ip[ip]

    def _forget(self, s: N4Session) -> None:
        self._unindex(s)
        for t in s.moved_from:
            if self.moved.get(t) is s:
                del self.moved[t]
        for t in s.ul_tunnels() + s.dl_tunnels():
            if t not in self.by_tunnel:
                self.tunnel_ts.pop(t, None)
        if s.up_seid is not None and self.by_up.get((s.up_ip, s.up_seid)) is s:
            del self.by_up[(s.up_ip, s.up_seid)]
        if s.cp_seid is not None and self.by_cp.get((s.cp_ip, s.cp_seid)) is s:
            del self.by_cp[(s.cp_ip, s.cp_seid)]

    def sessions(self) -> list[N4Session]:
        """Live sessions, each once."""
        seen: dict[int, N4Session] = {}
        for s in list(self.by_up.values()) + list(self.by_cp.values()):
            seen[id(s)] = s
        return list(seen.values())
