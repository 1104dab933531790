"""Two MEC sites and mobility: where each UE is served, `mec.ue.moved`, per-site routing, pre-warm.

Each MEC site has its own tap, detector and broker. A detector with a `mobility` section keeps a
UE location table (by SUPI, else UE IP): the serving gNB's N3 address, its site (from the `sites`
map), since when. It learns it from the tap's control events (`session.up`, `session.modify`,
`session.down`, `ngap.path_switch` / `ngap.handover`, `gtpu.end_marker`) and from the user
events' `ue.gnb_ip` (else the tunnel's gNB end). A change of serving gNB is one `mec.ue.moved`:

- intra-UPF handover: this detector sees the new gNB (session.modify, NGAP, or the user plane of a
  UE whose control plane it does not see);
- inter-site relocation: the target site's detector sees `session.up` for a UE it does not serve,
  asks its peers (`GET /v1/mobility/ues/{ue}`) where the UE was, and emits the move. The old
  site's `session.down` only releases the UE there: a release is never a move, so one move gives
  one event.

The UE's later CloudEvents go to its serving site's sink (each sink its own delivery queue, see
`detector.delivery.SiteDelivery`); with pre-warm, a move to a new site sends that site's broker one
warm-up CloudEvent (extension `mecwarmup: "true"`) per type the UE caused in the last `window`.

Times are capture times (the AppEvents' `time`), as for the rules: a replay moves UEs as the live
run did. docs/detector.md, "Mobility", is the user's description.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from detector.cloudevent import rfc3339
from detector.config import ConfigError, parse_duration

log = logging.getLogger("detector.mobility")

# ---- constants (one place) ----
MOVED_TYPE = "mec.ue.moved"
MOVED_RULE = "mobility"              # the `rule` extension of mec.ue.moved, and its id salt
WARMUP_EXTENSION = "mecwarmup"       # testbed/functions/warmup.py names the same (a test checks)
WARMUP_VALUE = "true"
PEER_ROUTE = "/v1/mobility/ues/{ue}"
PEER_PREFIX = "/v1/mobility/ues/"
PROCEDURES = ("handover", "relocation")
DEFAULT_PREWARM_WINDOW = 300.0       # seconds of a UE's recent CloudEvent types a move warms up
DEFAULT_PEER_TIMEOUT = 1.0           # one peer lookup; ingest of a session.up waits at most this long
RELEASED_RETENTION = 600.0           # a released UE is remembered (for peers, for a return) at least this long
IDLE_FORGET = 3600.0                 # a UE not heard of for this long is forgotten
KEY_LIMIT = 256                      # longest UE key a peer may ask about
HANDOVER_KINDS = frozenset({"session.modify", "ngap.path_switch", "ngap.handover"})
END_MARKER = "gtpu.end_marker"
# CloudEvent types that are not "functions the UE used": never warmed up
NOT_WARMED = frozenset({MOVED_TYPE, "mec.source.created", "mec.source.expired"})
# attributes a warm-up does not copy from the UE's last CloudEvent of a type (it has its own)
_NOT_COPIED = frozenset({"id", "source", "type", "specversion", "time", "subject", "datacontenttype",
                         "dataschema", "traceparent", "tracestate", "mecingesttime", WARMUP_EXTENSION})
_SECTION_KEYS = frozenset({"site", "sites", "peers", "prewarm", "peer_timeout"})
_SITE_KEYS = frozenset({"gnbs", "upfs", "sink"})
_PREWARM_KEYS = frozenset({"enabled", "window"})


# ------------------------------------------------------------------ configuration

@dataclass(frozen=True)
class Site:
    name: str
    gnbs: tuple[str, ...]
    upfs: tuple[str, ...]
    sink: str | None            # None: only for this detector's own site (then the default sink)


@dataclass
class Prewarm:
    enabled: bool = False
    window: float = DEFAULT_PREWARM_WINDOW


@dataclass
class MobilityConfig:
    site: str
    sites: dict[str, Site]
    peers: tuple[str, ...] = ()
    prewarm: Prewarm = field(default_factory=Prewarm)
    peer_timeout: float = DEFAULT_PEER_TIMEOUT

    def __post_init__(self) -> None:
        self._by_gnb = {ip: s.name for s in self.sites.values() for ip in s.gnbs}
        self._by_upf = {ip: s.name for s in self.sites.values() for ip in s.upfs}

    def site_of(self, gnb: str | None, upf: str | None = None) -> str | None:
        """The site of a serving gNB (else of the UPF the session is anchored at), None if unknown."""
        return (self._by_gnb.get(gnb) if gnb else None) or (self._by_upf.get(upf) if upf else None)

    def sinks(self, default: str) -> dict[str, str]:
        """Site name -> its sink URL (this detector's site: its own `sink`, else the default one)."""
        return {name: s.sink or default for name, s in self.sites.items()}


def _url(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: expected an http:// or https:// URL, got {v!r}")
    return v


def _ips(v: Any, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise ConfigError(f"{where}: expected a list of IP addresses")
    out = []
    for i, ip in enumerate(v):
        try:
            out.append(str(ipaddress.ip_address(str(ip))))
        except ValueError:
            raise ConfigError(f"{where}[{i}]: {ip!r} is not an IP address") from None
    return tuple(out)


def parse_prewarm(v: Any, where: str) -> Prewarm:
    if isinstance(v, bool):
        return Prewarm(enabled=v)
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: expected {{enabled: true|false, window: 5m}}")
    extra = set(v) - _PREWARM_KEYS
    if extra:
        raise ConfigError(f"{where}: unknown key {sorted(extra)[0]!r} (use enabled, window)")
    enabled = v.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled: expected true or false")
    window = parse_duration(v.get("window", DEFAULT_PREWARM_WINDOW), f"{where}.window")
    if window <= 0:
        raise ConfigError(f"{where}.window: must be positive")
    return Prewarm(enabled, window)


def parse_mobility(data: Any, where: str = "mobility") -> MobilityConfig:
    """The `mobility` section of a detector's config; ConfigError (one line) when it is not usable."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with site, sites, peers, prewarm")
    extra = set(data) - _SECTION_KEYS
    if extra:
        raise ConfigError(f"{where}: unknown key {sorted(extra)[0]!r} (use {', '.join(sorted(_SECTION_KEYS))})")
    raw_sites = data.get("sites")
    if not isinstance(raw_sites, dict) or not raw_sites:
        raise ConfigError(f"{where}.sites: expected a mapping of site name -> {{gnbs, upfs, sink}}")
    site = data.get("site")
    if not isinstance(site, str) or not site:
        raise ConfigError(f"{where}.site: name this detector's own site (one of {', '.join(map(str, raw_sites))})")
    if site not in raw_sites:
        raise ConfigError(f"{where}.site: {site!r} is not in sites ({', '.join(map(str, raw_sites))})")
    sites: dict[str, Site] = {}
    owner: dict[str, str] = {}
    for name, spec in raw_sites.items():
        w = f"{where}.sites.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{w}: expected a mapping with gnbs, upfs, sink")
        extra = set(spec) - _SITE_KEYS
        if extra:
            raise ConfigError(f"{w}: unknown key {sorted(extra)[0]!r} (use gnbs, upfs, sink)")
        gnbs, upfs = _ips(spec.get("gnbs"), f"{w}.gnbs"), _ips(spec.get("upfs"), f"{w}.upfs")
        for ip in gnbs:
            if ip in owner:
                raise ConfigError(f"{w}.gnbs: {ip} is already a gNB of site {owner[ip]!r}")
            owner[ip] = str(name)
        sink = spec.get("sink")
        if sink is None and name != site:
            raise ConfigError(f"{w}.sink: another site needs its broker's URL")
        sites[str(name)] = Site(str(name), gnbs, upfs, None if sink is None else _url(sink, f"{w}.sink"))
    peers = data.get("peers") or []
    if isinstance(peers, str):
        peers = [p for p in peers.replace(",", " ").split() if p]
    if not isinstance(peers, list):
        raise ConfigError(f"{where}.peers: expected a list of detector URLs")
    peer_urls = tuple(_url(p, f"{where}.peers[{i}]").rstrip("/") for i, p in enumerate(peers))
    prewarm = parse_prewarm(data.get("prewarm", {}), f"{where}.prewarm")
    timeout = parse_duration(data.get("peer_timeout", DEFAULT_PEER_TIMEOUT), f"{where}.peer_timeout")
    if timeout <= 0:
        raise ConfigError(f"{where}.peer_timeout: must be positive")
    return MobilityConfig(site, sites, peer_urls, prewarm, timeout)


# ------------------------------------------------------------------ the table

@dataclass(slots=True)
class Recent:
    """The UE's last CloudEvent of one type: what a warm-up of that type repeats (for the Triggers)."""
    at: float
    subject: str | None
    extensions: dict[str, Any]


@dataclass(slots=True)
class UeState:
    key: str
    supi: str | None = None
    ip: str | None = None
    gnb_ip: str | None = None      # the serving gNB's N3 address
    site: str | None = None
    cell: Any = None
    since: float = 0.0             # capture time the serving gNB was learnt
    cp_at: float | None = None     # last control-plane word on the location (None: never seen)
    seen: float = 0.0              # last event of this UE
    released: float | None = None  # when its last session went down here
    sessions: list[int] = field(default_factory=list)   # SEIDs up here
    left: list[str] = field(default_factory=list)       # gNBs whose path an End Marker closed
    recent: dict[str, Recent] = field(default_factory=dict)

    def copy(self) -> UeState:
        # Recent values are replaced, never changed in place: a shallow copy of the dict is enough
        return UeState(self.key, self.supi, self.ip, self.gnb_ip, self.site, self.cell, self.since, self.cp_at,
                       self.seen, self.released, list(self.sessions), list(self.left), dict(self.recent))

    def location(self) -> dict[str, Any] | None:
        if not self.gnb_ip:
            return None
        loc: dict[str, Any] = {"gnb_ip": self.gnb_ip, "site": self.site}
        if self.cell is not None:
            loc["cell"] = self.cell
        return loc

    def ue(self) -> dict[str, Any]:
        return {k: v for k, v in (("supi", self.supi), ("ip", self.ip)) if v}

    def dump(self) -> str:
        return json.dumps({"supi": self.supi, "ip": self.ip, "gnb_ip": self.gnb_ip, "site": self.site,
                           "cell": self.cell, "since": self.since, "cp_at": self.cp_at, "seen": self.seen,
                           "released": self.released, "sessions": self.sessions, "left": self.left,
                           "recent": {t: [r.at, r.subject, r.extensions] for t, r in self.recent.items()}},
                          separators=(",", ":"))

    @classmethod
    def load(cls, key: str, text: str) -> UeState:
        d = json.loads(text)
        return cls(key, d["supi"], d["ip"], d["gnb_ip"], d["site"], d["cell"], d["since"], d["cp_at"], d["seen"],
                   d["released"], list(d["sessions"]), list(d["left"]),
                   {t: Recent(a, s, e) for t, (a, s, e) in d["recent"].items()})


@dataclass
class PeerHint:
    """What the peers said about a UE before its session.up was processed."""
    views: list[UeState] = field(default_factory=list)   # the peers that knew it
    unanswered: int = 0                                   # peers that gave no usable answer


@dataclass
class Move:
    key: str
    ue: dict[str, Any]
    frm: dict[str, Any] | None     # None: the previous site could not be asked
    to: dict[str, Any]
    procedure: str
    at: float
    recent: dict[str, Recent]      # the UE's recent CloudEvent types (for pre-warm)

    @property
    def new_site(self) -> bool:
        return self.to.get("site") is not None and (self.frm is None or self.frm.get("site") != self.to["site"])

    def data(self) -> dict[str, Any]:
        return {"ue": self.ue, "from": self.frm, "to": self.to, "procedure": self.procedure, "at": rfc3339(self.at)}


Journal = list[tuple[str, "UeState | None"]]   # (key, its state before the event; None: absent)


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _first_gnb(app: dict[str, Any]) -> str | None:
    """The new gNB of an NGAP path switch / handover: its PDU sessions' DL tunnel ends."""
    for s in app.get("pdu_sessions") or ():
        if isinstance(s, dict) and _str(s.get("gnb_ip")):
            return str(s["gnb_ip"])
    return _str(app.get("gnb_ip"))


def user_plane_gnb(ev: dict[str, Any]) -> str | None:
    """The serving gNB a user event shows: `ue.gnb_ip`, else the gNB end of its N3 tunnel."""
    gnb = _str((ev.get("ue") or {}).get("gnb_ip"))
    if gnb:
        return gnb
    tun = ev.get("tunnel")
    if ev.get("point") != "n3" or not isinstance(tun, dict):
        return None
    d = ev.get("direction")
    return _str(tun.get("src")) if d == "ul" else _str(tun.get("dst")) if d == "dl" else None


def _time(v: Any) -> float | None:
    if not isinstance(v, str):
        return None
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        return None
    return t.timestamp() if t.tzinfo is not None else None


def state_from_view(key: str, view: Any) -> UeState | None:
    """A peer's answer (GET /v1/mobility/ues/{ue}) as a UeState; None if it is not one."""
    if not isinstance(view, dict):
        return None
    loc = view.get("location")
    ue = _obj(view.get("ue"))
    st = UeState(key, _str(ue.get("supi")), _str(ue.get("ip")))
    if isinstance(loc, dict) and _str(loc.get("gnb_ip")):
        st.gnb_ip, st.site, st.cell = str(loc["gnb_ip"]), _str(loc.get("site")), loc.get("cell")
        st.since = _time(loc.get("since")) or 0.0
    st.released = _time(view.get("released"))
    for r in view.get("recent") or ():
        at = _time(r.get("at")) if isinstance(r, dict) else None
        if at is not None and _str(r.get("type")):
            st.recent[str(r["type"])] = Recent(at, _str(r.get("subject")), dict(_obj(r.get("extensions"))))
    return st


class Mobility:
    """The UE location table and the decisions made from it. Every change is journalled per event
    (`begin`), so the detector can take it back when the event's CloudEvents are not stored."""

    def __init__(self, cfg: MobilityConfig, prewarm: Prewarm) -> None:
        self.cfg = cfg
        self.prewarm = prewarm
        self.ues: dict[str, UeState] = {}
        self.alias: dict[str, str] = {}      # UE IP -> SUPI (events that carry only the IP)
        self.retention = max(RELEASED_RETENTION, prewarm.window)

    # ---- keys and routing ----
    def key(self, ev: dict[str, Any], key: str) -> str:
        """The table's key for an event whose detector key is `key`: the SUPI when known."""
        ue = ev.get("ue") or {}
        supi, ip = _str(ue.get("supi")), _str(ue.get("ip"))
        if supi and ip:
            self.alias[ip] = supi
            return supi
        return self.alias.get(key, key)

    def state(self, key: str) -> UeState | None:
        return self.ues.get(key) or self.ues.get(self.alias.get(key, ""))

    def dest(self, key: str) -> str:
        """The site whose sink gets the CloudEvents of UE `key`: its serving site, else our own."""
        st = self.state(key) if key else None
        site = st.site if st is not None else None
        return site if site in self.cfg.sites else self.cfg.site

    def site_dest(self, site: str | None) -> str:
        return site if site in self.cfg.sites else self.cfg.site

    # ---- journal ----
    def begin(self, key: str, journal: Journal) -> None:
        st = self.ues.get(key)
        journal.append((key, None if st is None else st.copy()))

    def undo(self, journal: Journal, start: int = 0) -> None:
        for key, old in reversed(journal[start:]):
            if old is None:
                self.ues.pop(key, None)
            else:
                self.ues[key] = old
        del journal[start:]

    # ---- what the peers are asked ----
    def needs_lookup(self, ev: Any) -> str | None:
        """The key to ask the peers about, for a session.up of a UE this detector does not serve."""
        if not isinstance(ev, dict) or ev.get("kind") != "session.up" or not self.cfg.peers:
            return None
        ue, app = _obj(ev.get("ue")), _obj(ev.get("app"))
        key = _str(ue.get("supi")) or _str(ue.get("ip")) or _str(app.get("ue_ip"))
        if not key:
            return None
        st = self.state(key)
        return None if st is not None and st.released is None and st.gnb_ip else key

    # ---- AppEvents ----
    def observe(self, ev: dict[str, Any], key: str, ts: float, hints: dict[str, PeerHint]) -> Move | None:
        """Update the table from one AppEvent; the move it reveals, if any (after `begin`)."""
        st = self.ues.get(key)
        if st is None:
            st = self.ues[key] = UeState(key)
        ue = ev.get("ue") or {}
        st.supi = _str(ue.get("supi")) or st.supi
        st.ip = _str(ue.get("ip")) or st.ip
        st.seen = max(st.seen, ts)
        kind = ev["kind"]
        app = _obj(ev.get("app"))
        if kind == "session.up":
            st.ip = st.ip or _str(app.get("ue_ip"))
            return self._session_up(st, ev, app, ts, hints.get(key) or hints.get(st.ip or ""))
        if kind in HANDOVER_KINDS:
            gnb = _str(app.get("gnb_ip")) if kind == "session.modify" else _first_gnb(app)
            return self._control(st, gnb, app.get("cell"), _str(app.get("upf_ip")), ts,
                                 _str(app.get("prev_gnb_ip")), "handover")
        if kind == END_MARKER:
            tun = ev.get("tunnel") or {}
            old = _str(tun.get("dst")) or _str(app.get("gnb_ip"))
            if old and old not in st.left:
                st.left.append(old)
            # the tap names the serving gNB beside the closed path: the move, if the modification
            # that made it was not seen here
            new = _str(ue.get("gnb_ip"))
            return self._user(st, new, True, ts) if new and new != old else None
        if kind == "session.down":
            seid = app.get("seid")
            if seid in st.sessions:
                st.sessions.remove(seid)
            if not st.sessions:
                st.released = ts
            return None
        tagged = _str(ue.get("gnb_ip"))
        return self._user(st, tagged or user_plane_gnb(ev), tagged is not None, ts)

    def _set(self, st: UeState, gnb: str, cell: Any, upf: str | None, ts: float) -> None:
        # a new gNB: the old cell means nothing there (NGAP names the new one when it is captured)
        st.gnb_ip, st.site, st.since, st.cell = gnb, self.cfg.site_of(gnb, upf), ts, cell
        if gnb in st.left:
            st.left.remove(gnb)

    def _move(self, st: UeState, frm: dict[str, Any] | None, procedure: str, ts: float) -> Move:
        to = st.location()
        assert to is not None
        return Move(st.key, st.ue(), frm, to, procedure, ts, dict(st.recent))

    def _control(self, st: UeState, gnb: str | None, cell: Any, upf: str | None, ts: float, prev: str | None,
                 procedure: str) -> Move | None:
        if not gnb:
            return None
        st.cp_at = ts
        st.released = None   # a modified session is up
        if gnb == st.gnb_ip:
            if cell is not None:
                st.cell = cell   # a new cell of the same gNB: not a change of serving gNB
            return None
        frm = st.location()
        if frm is None and prev and prev != gnb:   # learnt mid-session (a restart): the tap names the old gNB
            frm = {"gnb_ip": prev, "site": self.cfg.site_of(prev)}
        self._set(st, gnb, cell, upf, ts)
        return None if frm is None else self._move(st, frm, procedure, ts)

    def _session_up(self, st: UeState, ev: dict[str, Any], app: dict[str, Any], ts: float,
                    hint: PeerHint | None) -> Move | None:
        gnb = _str(app.get("gnb_ip")) or _str((ev.get("ue") or {}).get("gnb_ip"))
        upf = _str(app.get("upf_ip"))
        seid = app.get("seid")
        live = st.released is None and st.gnb_ip is not None
        if isinstance(seid, int) and seid not in st.sessions:
            st.sessions.append(seid)
        if live:   # one more session of a UE served here (another DNN): a move only if its gNB differs
            return self._control(st, gnb, None, upf, ts, None, "relocation")
        # a UE this detector does not serve: where was it last, here (released) or at a peer?
        before = [s for s in [st if st.gnb_ip else None, *(hint.views if hint else [])] if s is not None]
        prev = max(before, key=lambda s: s.since) if before else None
        for s in before:
            if s is not st:
                for t, r in s.recent.items():
                    mine = st.recent.get(t)
                    if mine is None or r.at > mine.at:
                        st.recent[t] = r
        frm = prev.location() if prev is not None else None
        st.released, st.cp_at = None, ts
        if not gnb:
            return None
        self._set(st, gnb, None, upf, ts)
        if frm is not None:
            if frm["gnb_ip"] == gnb and frm.get("site") == st.site:
                return None   # the peer already had it at this gNB (an earlier handover moved it)
            return self._move(st, frm, "relocation", ts)
        if hint is not None and hint.unanswered:
            return self._move(st, None, "relocation", ts)   # from: null, counted by the detector
        return None   # a first attach: nobody knew the UE

    def _user(self, st: UeState, gnb: str | None, tagged: bool, ts: float) -> Move | None:
        """A user event through `gnb`: `tagged` when the tap named it (`ue.gnb_ip`, the serving gNB
        by the control plane it follows), else read off the packet's tunnel."""
        if not gnb or gnb == st.gnb_ip:
            return None
        if st.gnb_ip is None:   # first sight: the UE is here, nothing moved
            self._set(st, gnb, None, None, ts)
            return None
        if st.released is not None or gnb in st.left:
            return None   # a late packet of a released session, or on a path an End Marker closed
        # The tunnel of a packet is where it went, not where the UE is served: packets still in
        # flight on the old path, or an early uplink on the new one, must not move a UE whose
        # control plane this detector sees (that alone moves it then).
        if not tagged and st.cp_at is not None:
            return None
        frm = st.location()
        self._set(st, gnb, None, None, ts)
        return self._move(st, frm, "handover", ts)

    def record(self, key: str, ce: Any, ts: float) -> None:
        """The UE caused a CloudEvent (after `begin`): remembered for pre-warm."""
        type_ = ce.get_type()
        st = self.ues.get(key)
        if st is None or type_ in NOT_WARMED:
            return
        attrs = ce.get_attributes()
        st.recent[type_] = Recent(ts, attrs.get("subject"),
                                  {k: v for k, v in attrs.items() if k not in _NOT_COPIED})

    def warmups(self, move: Move) -> list[tuple[str, Recent]]:
        """The CloudEvent types to warm up at the move's target site (none unless pre-warm is on)."""
        if not self.prewarm.enabled or not move.new_site:
            return []
        horizon = move.at - self.prewarm.window
        return sorted((t, r) for t, r in move.recent.items() if r.at >= horizon)

    # ---- upkeep ----
    def prune(self, now_ts: float, journal: Journal) -> list[str]:
        """Forget released UEs past retention and silent ones, and recent types past the window
        (capture-time seconds); returns the keys forgotten."""
        gone = []
        for key, st in list(self.ues.items()):
            if ((st.released is not None and now_ts - st.released > self.retention)
                    or now_ts - st.seen > IDLE_FORGET):
                journal.append((key, st))
                del self.ues[key]
                gone.append(key)
            elif any(now_ts - r.at > self.prewarm.window for r in st.recent.values()):
                journal.append((key, st.copy()))
                st.recent = {t: r for t, r in st.recent.items() if now_ts - r.at <= self.prewarm.window}
        if gone:
            dropped = set(gone)
            self.alias = {ip: s for ip, s in self.alias.items() if s not in dropped}
        return gone

    def view(self, key: str) -> dict[str, Any] | None:
        """What GET /v1/mobility/ues/{ue} answers a peer."""
        st = self.state(key)
        if st is None:
            return None
        loc = st.location()
        if loc is not None:
            loc["since"] = rfc3339(st.since)
        return {"ue": st.ue(), "site": self.cfg.site, "location": loc,
                "released": None if st.released is None else rfc3339(st.released),
                "recent": [{"type": t, "at": rfc3339(r.at), "subject": r.subject, "extensions": r.extensions}
                           for t, r in sorted(st.recent.items())]}

    def rows(self, keys: set[str]) -> list[tuple[str, str | None]]:
        """(key, state JSON) to store, (key, None) to delete."""
        return [(k, self.ues[k].dump() if k in self.ues else None) for k in sorted(keys)]

    def load(self, rows: list[tuple[str, str]]) -> None:
        for key, text in rows:
            st = self.ues[key] = UeState.load(key, text)
            if st.supi and st.ip:
                self.alias[st.ip] = st.supi


# ------------------------------------------------------------------ the peers

class Peers:
    """Asks the other sites' detectors where a UE was (GET /v1/mobility/ues/{ue}, the ingest token)."""

    def __init__(self, urls: tuple[str, ...], token: str | None, timeout: float) -> None:
        self.urls = urls
        self.token = token
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self.errors: dict[str, int] = {}       # peer -> lookups it did not answer (for /metrics)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def lookup(self, key: str) -> PeerHint:
        hint = PeerHint()
        if not self.urls:
            return hint
        answers = await asyncio.gather(*(self._ask(url, key) for url in self.urls))
        for url, (ok, st) in zip(self.urls, answers, strict=True):
            if not ok:
                hint.unanswered += 1
                self.errors[url] = self.errors.get(url, 0) + 1
            elif st is not None:
                hint.views.append(st)
        return hint

    async def _ask(self, url: str, key: str) -> tuple[bool, UeState | None]:
        """(answered, what it knows): a 404 is an answer (it does not know the UE)."""
        if self._session is None:
            return False, None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with self._session.get(url + PEER_PREFIX + quote(key, safe=""), headers=headers) as r:
                if r.status == 404:
                    return True, None
                if r.status != 200:
                    log.warning("peer %s answered %d for UE %s", url, r.status, key)
                    return False, None
                st = state_from_view(key, await r.json(content_type=None))
                return st is not None, st
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            log.warning("peer %s did not answer for UE %s: %s", url, key, type(e).__name__ if not str(e) else e)
            return False, None
