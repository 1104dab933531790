"""AppEvents -> USER_DATA_USAGE_MEASURES measurements per subscription -> NotificationData.

What each AppEvent gives (a `Sample`, computed once per event, whatever the number of
subscriptions):

| AppEvent | measurement |
|---|---|
| `flow.end` (tap `--flows`) | VOLUME_MEASUREMENT: bytes and packets each way (the tap counts L4 header + payload); THROUGHPUT_MEASUREMENT: the same over the flow's duration |
| `dns.query` | APPLICATION_RELATED_INFO: domainInfoList entry (qname, DNS_QNAME) |
| `tls.client_hello`, `quic.initial` | domainInfoList entry (sni, TLS_SNI) |
| `http.request` | urls entry (`http://` host path) |

Without `--flows` the tap sends no `flow.end`, so volume and throughput stay empty (and
`Reporter.saw_flow_end` stays False: the service logs it). Granularity: PER_SESSION sums per UE;
PER_FLOW per 5-tuple (`flowInfo`); PER_APPLICATION per application, whose `appId` is the domain
name seen on the flow (TLS SNI, HTTP Host; a DNS query counts for the name it asks for), since no
PFDs map traffic to operator application ids here. Throughput of a group is its volume over the
sum of its flows' durations (the rate while its flows were active).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from detector.exposure import spec
from detector.exposure.models import EventPlan, Plan, UeIdentity, parse_snssai

FlowKey = tuple[str, str, int, str, int]     # proto, UE address, UE port, remote address, remote port
PROTO_NUMBERS = {"tcp": "6", "udp": "17", "icmp": "1", "icmpv6": "58", "sctp": "132"}
BIT_RATE_UNITS = ("bps", "Kbps", "Mbps", "Gbps", "Tbps")
PACKET_RATE_UNITS = ("pps", "kpps", "Mpps", "Gpps", "Tpps")
FLOW_APPS_CAP = 65536        # flows whose application (SNI / Host) is remembered until their flow.end
UES_CAP = 10000              # UEs accumulated per subscription and event between two reports
GROUPS_CAP = 1000            # flows or applications per UE
NAMES_CAP = 256              # domains, and URLs, per group


@dataclass(slots=True)
class Volume:
    bytes_ul: int
    bytes_dl: int
    pkts_ul: int
    pkts_dl: int
    duration: float


@dataclass(slots=True)
class Sample:
    """What one AppEvent tells about one UE."""

    ue: UeIdentity
    flow: FlowKey | None
    app_id: str | None
    volume: Volume | None = None
    domain: tuple[str, str] | None = None    # (name, DnProtocol)
    url: str | None = None


# ---- AppEvent -> Sample ----------------------------------------------------------------------
@functools.cache
def _fqdn() -> re.Pattern[str]:
    return re.compile(spec.subset()["Fqdn"]["pattern"])


def is_fqdn(name: str) -> bool:
    fq = spec.subset()["Fqdn"]
    return fq["minLength"] <= len(name) <= fq["maxLength"] and _fqdn().search(name) is not None


def _address(text: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(text, str):
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ue_identity(ev: dict[str, Any]) -> UeIdentity | None:
    ue = ev.get("ue") or {}
    flow = ev.get("flow") or {}
    ip = ue.get("ip") or (flow.get("src") if ev.get("direction") == "ul" else flow.get("dst")
                          if ev.get("direction") == "dl" else None)
    address = _address(ip)
    if address is None:
        return None
    dnn = ue.get("dnn")
    return UeIdentity(str(address), address, ue.get("supi"), dnn if isinstance(dnn, str) else None,
                      parse_snssai(ue.get("snssai")))


def _port(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _flow_key(ev: dict[str, Any], ue: UeIdentity) -> FlowKey | None:
    flow = ev.get("flow")
    if not flow:
        return None
    src, dst = _address(flow.get("src")), _address(flow.get("dst"))
    ue_is_src = src == ue.address if ue.address in (src, dst) else ev.get("direction") != "dl"
    remote = dst if ue_is_src else src
    if remote is None:
        return None
    ue_port, remote_port = (flow.get("sport"), flow.get("dport")) if ue_is_src else (flow.get("dport"), flow.get("sport"))
    return str(flow.get("proto")), ue.ip, _port(ue_port), str(remote), _port(remote_port)


def _count(app: dict[str, Any], key: str) -> int | None:
    v = app.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _volume(app: dict[str, Any]) -> Volume | None:
    counts = [_count(app, k) for k in ("bytes_ul", "bytes_dl", "packets_ul", "packets_dl")]
    duration = app.get("duration")
    if any(c is None for c in counts) or not isinstance(duration, int | float) or isinstance(duration, bool):
        return None
    bu, bd, pu, pd = (int(c or 0) for c in counts)
    return Volume(bu, bd, pu, pd, max(0.0, float(duration)))


def _host_name(host: str) -> str:
    """An HTTP Host without its port (IPv6 literals keep their brackets)."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _url(app: dict[str, Any]) -> str | None:
    host, path = app.get("host"), app.get("path")
    if not isinstance(host, str) or not isinstance(path, str) or not host:
        return None
    if path.startswith(("http://", "https://")):
        return path                       # absolute-form request target
    return f"http://{host}{path}" if path.startswith("/") else None


def _name(value: Any) -> str | None:
    return value.rstrip(".").lower() if isinstance(value, str) and value.strip(".") else None


def _domain(kind: str, app: dict[str, Any]) -> tuple[str, str] | None:
    if kind == "dns.query":
        name, proto = _name(app.get("qname")), spec.DNS_QNAME
    elif kind in ("tls.client_hello", "quic.initial"):
        name, proto = _name(app.get("sni")), spec.TLS_SNI
    else:
        return None
    return (name, proto) if name and is_fqdn(name) else None


# ---- accumulation per subscription -------------------------------------------------------------
@dataclass(slots=True)
class Group:
    """Usage of one UE within one group (the session, a flow or an application)."""

    flow: FlowKey | None = None
    app_id: str | None = None
    bytes_ul: int = 0
    bytes_dl: int = 0
    pkts_ul: int = 0
    pkts_dl: int = 0
    duration: float = 0.0
    flows: int = 0
    domains: dict[tuple[str, str], None] = field(default_factory=dict)
    urls: dict[str, None] = field(default_factory=dict)

    def add(self, s: Sample, wants: frozenset[str]) -> bool:
        """Add what `wants` asks for; True if it added something reportable."""
        added = False
        v = s.volume
        if v is not None and (spec.VOLUME in wants or spec.THROUGHPUT in wants):
            self.bytes_ul += v.bytes_ul
            self.bytes_dl += v.bytes_dl
            self.pkts_ul += v.pkts_ul
            self.pkts_dl += v.pkts_dl
            self.duration += v.duration
            self.flows += 1
            added = spec.VOLUME in wants or self.duration > 0
        if spec.APP_INFO in wants:
            if s.domain is not None and s.domain not in self.domains and len(self.domains) < NAMES_CAP:
                self.domains[s.domain] = None
                added = True
            if s.url is not None and s.url not in self.urls and len(self.urls) < NAMES_CAP:
                self.urls[s.url] = None
                added = True
        return added

    def measurement(self, wants: frozenset[str]) -> dict[str, Any] | None:
        """UserDataUsageMeasurements, or None if nothing asked for was measured."""
        out: dict[str, Any] = {}
        if spec.VOLUME in wants and self.flows:
            out["volumeMeasurement"] = self._volume()
        if spec.THROUGHPUT in wants and self.duration > 0:
            out["throughputMeasurement"] = self._throughput()
        if spec.APP_INFO in wants and (self.domains or self.urls):
            info: dict[str, Any] = {}
            if self.urls:
                info["urls"] = list(self.urls)
            if self.domains:
                info["domainInfoList"] = [{"domainName": n, "domainNameProtocol": p} for n, p in self.domains]
            out["applicationRelatedInformation"] = info
        if not out:
            return None
        if self.app_id is not None:
            out = {"appId": self.app_id, **out}
        if self.flow is not None:
            out = {"flowInfo": flow_info(self.flow), **out}
        return out

    def _volume(self) -> dict[str, Any]:
        return {"totalVolume": f"{self.bytes_ul + self.bytes_dl} B", "ulVolume": f"{self.bytes_ul} B",
                "dlVolume": f"{self.bytes_dl} B", "totalNbOfPackets": self.pkts_ul + self.pkts_dl,
                "ulNbOfPackets": self.pkts_ul, "dlNbOfPackets": self.pkts_dl}

    def _throughput(self) -> dict[str, Any]:
        d = self.duration
        return {"ulThroughput": rate(self.bytes_ul * 8 / d, BIT_RATE_UNITS),
                "dlThroughput": rate(self.bytes_dl * 8 / d, BIT_RATE_UNITS),
                "ulPacketThroughput": rate(self.pkts_ul / d, PACKET_RATE_UNITS),
                "dlPacketThroughput": rate(self.pkts_dl / d, PACKET_RATE_UNITS)}


@dataclass(slots=True)
class UeUsage:
    ue: UeIdentity
    groups: dict[Any, Group] = field(default_factory=dict)


def rate(value: float, units: tuple[str, ...]) -> str:
    """BitRate / PacketRate text (TS 29.571): the largest unit keeping the value >= 1, 3 decimals."""
    unit = units[0]
    for unit in units:
        if value < 1000 or unit == units[-1]:
            break
        value /= 1000
    return f"{f'{value:.3f}'.rstrip('0').rstrip('.')} {unit}"


def flow_info(key: FlowKey) -> dict[str, str]:
    """FlowInformation (TS 29.512) of a flow: an IPFilterRule "permit out" from the remote end to the
    UE, as TS 29.212 clause 5.4.2 writes flow descriptions; both directions are measured."""
    proto, ue_ip, ue_port, remote, remote_port = key
    src = f"{remote} {remote_port}" if remote_port else remote
    dst = f"{ue_ip} {ue_port}" if ue_port else ue_ip
    return {"flowDescription": f"permit out {PROTO_NUMBERS.get(proto, 'ip')} from {src} to {dst}",
            "flowDirection": spec.BIDIRECTIONAL}


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _group_key(s: Sample, granularity: str) -> Any:
    if granularity == spec.PER_FLOW:
        return s.flow
    if granularity == spec.PER_APPLICATION:
        return s.app_id
    return None


@dataclass(slots=True)
class Watch:
    """A subscription as the reporter follows it: what it asks, and what was measured since the last report."""

    plan: Plan
    start: float                                   # the measurement period's start (Unix time)
    usage: dict[tuple[int, str, str | None], UeUsage] = field(default_factory=dict)
    has_content: bool = False

    def add(self, s: Sample) -> None:
        for i, ev in enumerate(self.plan.events):
            if ev.app_ids is not None and s.app_id not in ev.app_ids:
                continue
            gkey = _group_key(s, ev.granularity)
            if ev.granularity == spec.PER_FLOW and gkey is None:
                continue
            usage = self._usage(i, s.ue)
            if usage is None:
                continue
            group = usage.groups.get(gkey)
            if group is None:
                if len(usage.groups) >= GROUPS_CAP:
                    continue
                group = usage.groups[gkey] = Group(
                    flow=gkey if ev.granularity == spec.PER_FLOW else None,
                    app_id=s.app_id if ev.granularity == spec.PER_APPLICATION else None)
            if group.add(s, ev.measurements):
                self.has_content = True

    def _usage(self, i: int, ue: UeIdentity) -> UeUsage | None:
        key = (i, ue.ip, ue.supi)
        usage = self.usage.get(key)
        if usage is None:
            if len(self.usage) >= UES_CAP:
                return None
            usage = self.usage[key] = UeUsage(ue)
        return usage

    def take(self, now: float) -> dict[str, Any] | None:
        """The NotificationData of what was measured since `start` (None if nothing); starts a new period."""
        items = [item for (i, _, _), usage in self.usage.items()
                 if (item := notification_item(self.plan.events[i], usage, self.start, now)) is not None]
        self.usage = {}
        self.has_content = False
        self.start = now
        if not items:
            return None
        return {"notificationItems": items, "correlationId": self.plan.correlation_id}


def notification_item(ev: EventPlan, usage: UeUsage, start: float, now: float) -> dict[str, Any] | None:
    measurements = [m for g in usage.groups.values() if (m := g.measurement(ev.measurements)) is not None]
    if not measurements:
        return None
    ue = usage.ue
    item: dict[str, Any] = {"eventType": ev.event_type}
    if isinstance(ue.address, ipaddress.IPv4Address):
        item["ueIpv4Addr"] = ue.ip
    else:
        item["ueIpv6Prefix"] = f"{ue.ip}/128"
    if ue.supi:
        item["supi"] = ue.supi
    if ue.dnn:
        item["dnn"] = ue.dnn
    if ue.snssai is not None:
        sst, sd = ue.snssai
        item["snssai"] = {"sst": sst, "sd": sd} if sd else {"sst": sst}
    item.update(timeStamp=iso_time(now), startTime=iso_time(start), userDataUsageMeasurements=measurements)
    return item


class Reporter:
    """The subscriptions being measured. `offer` takes accepted AppEvents; ONE_TIME subscriptions
    that measured something come back from it with their notification (and are no longer watched)."""

    def __init__(self) -> None:
        self.watches: dict[str, Watch] = {}
        self._flow_apps: OrderedDict[FlowKey, str] = OrderedDict()
        self.saw_flow_end = False

    def watch(self, sub_id: str, plan: Plan, start: float) -> None:
        self.watches[sub_id] = Watch(plan, start)

    def replan(self, sub_id: str, plan: Plan, keep_usage: bool, now: float) -> None:
        old = self.watches.get(sub_id)
        if old is not None and keep_usage:
            old.plan = plan
        else:
            self.watch(sub_id, plan, now)

    def unwatch(self, sub_id: str) -> None:
        self.watches.pop(sub_id, None)
        if not self.watches:
            self._flow_apps.clear()

    def take(self, sub_id: str, now: float) -> dict[str, Any] | None:
        w = self.watches.get(sub_id)
        return None if w is None else w.take(now)

    def sample(self, ev: dict[str, Any]) -> Sample | None:
        """What an AppEvent measures (None: nothing)."""
        kind = ev.get("kind")
        app = ev.get("app") or {}
        if kind not in ("flow.end", "dns.query", "tls.client_hello", "quic.initial", "http.request"):
            return None
        ue = _ue_identity(ev)
        if ue is None:
            return None
        flow = _flow_key(ev, ue)
        if kind == "flow.end":
            self.saw_flow_end = True
            app_id = self._flow_apps.pop(flow, None) if flow is not None else None
            return Sample(ue, flow, app_id, volume=_volume(app))
        domain = _domain(str(kind), app)
        url = _url(app) if kind == "http.request" else None
        app_id = domain[0] if domain else (_name(_host_name(app["host"])) if url else None)
        if app_id is not None and flow is not None and kind != "dns.query":
            self._remember_app(flow, app_id)
        return Sample(ue, flow, app_id, domain=domain, url=url)

    def _remember_app(self, flow: FlowKey, app_id: str) -> None:
        if flow in self._flow_apps:
            return                                 # the first name seen on a flow names it
        self._flow_apps[flow] = app_id
        if len(self._flow_apps) > FLOW_APPS_CAP:
            self._flow_apps.popitem(last=False)

    def offer(self, events: list[dict[str, Any]], now: float) -> list[tuple[str, dict[str, Any]]]:
        """Measure `events` for every subscription whose target they match; returns the ONE_TIME
        subscriptions completed by them, with their NotificationData."""
        done: list[tuple[str, dict[str, Any]]] = []
        for ev in events:
            s = self.sample(ev)
            if s is None:
                continue
            for sub_id, w in list(self.watches.items()):
                if not w.plan.target.matches(s.ue):
                    continue
                w.add(s)
                if w.has_content and w.plan.trigger == spec.ONE_TIME:
                    data = w.take(now)
                    self.unwatch(sub_id)
                    if data is not None:
                        done.append((sub_id, data))
        return done
