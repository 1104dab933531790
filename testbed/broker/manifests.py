"""Broker, Trigger, Channel, Subscription and Knative Service objects from the same YAML
files that kind applies.

`load_manifests(DIR)` reads every *.yaml / *.yml under DIR (multi-document files too),
keeps eventing.knative.dev/v1 Broker and Trigger, messaging.knative.dev/v1 Channel,
InMemoryChannel and Subscription, serving.knative.dev/v1 Service, and EventTypes of the
served versions (eventing.knative.dev/v1beta1, v1beta2, v1beta3), skips other kinds
(Namespace, ConfigMap, ...), and checks what Knative's admission webhooks check (broker
and subscriber present, one dialect per `filters` entry, attribute names, CESQL that
parses, delivery fields, ISO-8601 durations; a Subscription's channel in its own
namespace and at least one of subscriber and reply; a Channel's template with kind and
apiVersion and no user-written spec.subscribers; an EventType's type, its reference's kind,
name and apiVersion). Errors name the file and the object:
`triggers.yaml: Trigger mec/buy: filters[1] has two dialects`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.broker.cesql import CesqlParseError, compile_expression

EVENTING_V1 = "eventing.knative.dev/v1"
SERVING_V1 = "serving.knative.dev/v1"
MESSAGING_V1 = "messaging.knative.dev/v1"
CHANNEL_KINDS = ("Channel", "InMemoryChannel")
# what a default install's `default-ch-webhook` ConfigMap (clusterDefault) gives a Channel without one
DEFAULT_CHANNEL_TEMPLATE = {"apiVersion": MESSAGING_V1, "kind": "InMemoryChannel"}
# the EventType versions Eventing 1.22.2 serves (eventtype.yaml CRD; v1beta2 is the storage version)
EVENTTYPE_VERSIONS = ("eventing.knative.dev/v1beta1", "eventing.knative.dev/v1beta2", "eventing.knative.dev/v1beta3")
_WANTED = ((EVENTING_V1, "Broker"), (EVENTING_V1, "Trigger"), (SERVING_V1, "Service"),
           (MESSAGING_V1, "Channel"), (MESSAGING_V1, "InMemoryChannel"), (MESSAGING_V1, "Subscription"),
           *((api, "EventType") for api in EVENTTYPE_VERSIONS))
DEFAULT_NAMESPACE = "default"  # what `kubectl apply` uses when metadata.namespace is absent
DIALECTS = ("exact", "prefix", "suffix", "all", "any", "not", "cesql")
# Knative: trigger_validation.go validAttributeName
_ATTR_NAME = re.compile(r"[a-z][a-z0-9]*\Z")
_ISO_DURATION = re.compile(
    r"P(?:(?P<y>\d+(?:[.,]\d+)?)Y)?(?:(?P<mo>\d+(?:[.,]\d+)?)M)?(?:(?P<w>\d+(?:[.,]\d+)?)W)?"
    r"(?:(?P<d>\d+(?:[.,]\d+)?)D)?(?:T(?:(?P<h>\d+(?:[.,]\d+)?)H)?(?:(?P<mi>\d+(?:[.,]\d+)?)M)?"
    r"(?:(?P<s>\d+(?:[.,]\d+)?)S)?)?\Z"
)
_ISO_SECONDS = {"y": 365 * 86400, "mo": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "mi": 60, "s": 1}
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ManifestError(ValueError):
    """A manifest that Knative would refuse, or that the local broker cannot use."""


def parse_iso_duration(text: str) -> float:
    """ISO-8601 duration (PT0.2S, PT1M, P1DT2H) in seconds, as Knative's period.Parse reads it."""
    m = _ISO_DURATION.match(text.strip()) if isinstance(text, str) else None
    if not m or text.strip() in ("P", "PT") or text.strip().endswith("T"):
        raise ValueError(f"not an ISO-8601 duration: {text!r}")
    return sum(float(v.replace(",", ".")) * _ISO_SECONDS[k] for k, v in m.groupdict().items() if v)


def parse_go_duration(text: str) -> float:
    """Go duration (60s, 1m30s, 500ms) in seconds: the form of autoscaling annotations."""
    s = str(text).strip()
    if s in ("0", ""):
        return 0.0
    pos = 0
    total = 0.0
    for m in _GO_DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"not a duration (like 60s or 1m30s): {text!r}")
    return total


@dataclass(frozen=True)
class Ref:
    kind: str
    name: str
    namespace: str
    api_version: str = ""


@dataclass(frozen=True)
class Destination:
    """A Knative duckv1.Destination: `ref`, `uri`, or both (uri is then a path on the ref)."""

    ref: Ref | None = None
    uri: str | None = None


@dataclass(frozen=True)
class DeliverySpec:
    retry: int | None = None
    backoff_policy: str | None = None       # "linear" | "exponential"
    backoff_delay: float | None = None      # seconds
    dead_letter_sink: Destination | None = None
    timeout: float | None = None            # seconds, per request
    format: str | None = None               # "binary" | "json" (structured)


@dataclass(frozen=True)
class Broker:
    namespace: str
    name: str
    delivery: DeliverySpec | None
    origin: str = ""


@dataclass(frozen=True)
class Trigger:
    namespace: str
    name: str
    broker: str
    subscriber: Destination
    filter_attributes: dict[str, str] | None = None   # legacy spec.filter.attributes
    filters: list[dict[str, Any]] | None = None       # spec.filters (wins when non-empty)
    delivery: DeliverySpec | None = None
    origin: str = ""


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    image: str
    annotations: dict[str, str] = field(default_factory=dict)  # spec.template.metadata.annotations
    env: dict[str, str] = field(default_factory=dict)
    container_port: int | None = None
    origin: str = ""


@dataclass(frozen=True)
class Channel:
    """A messaging.knative.dev/v1 Channel (or an InMemoryChannel written directly)."""

    namespace: str
    name: str
    kind: str                                 # Channel | InMemoryChannel
    delivery: DeliverySpec | None             # the default of its Subscriptions that have none
    template: dict[str, Any] | None = None    # spec.channelTemplate as written (Channel only)
    origin: str = ""

    @property
    def backing_kind(self) -> str:
        """The kind of the channel that carries the events: a Channel's template (the cluster
        default when it names none), or the InMemoryChannel itself."""
        if self.kind != "Channel":
            return self.kind
        return str((self.template or DEFAULT_CHANNEL_TEMPLATE).get("kind"))


@dataclass(frozen=True)
class Subscription:
    namespace: str
    name: str
    channel: str                              # a Channel in the same namespace
    channel_kind: str                         # the kind spec.channel names
    subscriber: Destination | None            # at least one of subscriber and reply
    reply: Destination | None
    delivery: DeliverySpec | None = None
    origin: str = ""


@dataclass(frozen=True)
class EventType:
    """An eventing.knative.dev EventType: a CloudEvent type declared for a Broker or a Channel."""

    namespace: str
    name: str
    type: str
    source: str | None
    reference: Ref | None       # spec.reference (or v1beta1/v1beta2 spec.broker); None: names nothing
    description: str = ""
    api_version: str = ""
    origin: str = ""


@dataclass
class Manifests:
    brokers: dict[tuple[str, str], Broker] = field(default_factory=dict)
    triggers: list[Trigger] = field(default_factory=list)
    services: dict[tuple[str, str], Service] = field(default_factory=dict)
    channels: dict[tuple[str, str], Channel] = field(default_factory=dict)
    subscriptions: list[Subscription] = field(default_factory=list)
    eventtypes: dict[tuple[str, str], EventType] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "file: Kind name" of objects not used here


def _yaml_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    yield from sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_manifests(root: str | Path) -> Manifests:
    """Read and check every manifest under `root` (a directory or one file)."""
    base = Path(root)
    if not base.exists():
        raise ManifestError(f"{base}: no such file or directory")
    out = Manifests()
    for path in _yaml_files(base):
        label = str(path.relative_to(base)) if base.is_dir() else path.name
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{label}: not valid YAML: {' '.join(str(exc).split())}") from exc
        for index, doc in enumerate(docs):
            if doc is None:
                continue
            where = f"{label}" if len(docs) == 1 else f"{label} (document {index + 1})"
            if not isinstance(doc, dict):
                raise ManifestError(f"{where}: a manifest must be a mapping, not {type(doc).__name__}")
            _add(out, doc, where)
    _check_references(out)
    return out


def _add(out: Manifests, doc: dict[str, Any], where: str) -> None:
    api = doc.get("apiVersion")
    kind = doc.get("kind")
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ManifestError(f"{where}: metadata must be a mapping")
    name = meta.get("name")
    ns = meta.get("namespace") or DEFAULT_NAMESPACE
    if (api, kind) not in _WANTED:
        out.skipped.append(f"{where}: {kind} {name}")
        return
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: {kind} without metadata.name")
    who = f"{where}: {kind} {ns}/{name}"
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise ManifestError(f"{who}: spec must be a mapping")
    if kind == "Broker":
        if (ns, name) in out.brokers:
            raise ManifestError(f"{who}: defined twice")
        out.brokers[(ns, name)] = Broker(ns, name, _delivery(spec.get("delivery"), who, ns), where)
    elif kind == "Trigger":
        out.triggers.append(_trigger(spec, ns, name, who, where))
    elif kind in CHANNEL_KINDS:
        if (ns, name) in out.channels:
            raise ManifestError(f"{who}: defined twice (a Channel and an InMemoryChannel share one address)")
        out.channels[(ns, name)] = _channel(spec, str(kind), ns, name, who, where)
    elif kind == "Subscription":
        if any((s.namespace, s.name) == (ns, name) for s in out.subscriptions):
            raise ManifestError(f"{who}: defined twice")
        out.subscriptions.append(_subscription(spec, ns, name, who, where))
    elif kind == "EventType":
        if (ns, name) in out.eventtypes:
            raise ManifestError(f"{who}: defined twice")
        out.eventtypes[(ns, name)] = _eventtype(spec, str(api), ns, name, who, where)
    else:
        if (ns, name) in out.services:
            raise ManifestError(f"{who}: defined twice")
        out.services[(ns, name)] = _service(spec, ns, name, who, where)


def _trigger(spec: dict[str, Any], ns: str, name: str, who: str, where: str) -> Trigger:
    broker = spec.get("broker")
    if spec.get("brokerRef"):
        raise ManifestError(f"{who}: spec.brokerRef (cross-namespace brokers) is not supported locally; use spec.broker")
    if not isinstance(broker, str) or not broker:
        raise ManifestError(f"{who}: missing field spec.broker")
    if "subscriber" not in spec:
        raise ManifestError(f"{who}: missing field spec.subscriber")
    subscriber = _destination(spec["subscriber"], f"{who}: spec.subscriber", ns)
    attrs = None
    if spec.get("filter") is not None:
        flt = spec["filter"]
        if not isinstance(flt, dict):
            raise ManifestError(f"{who}: spec.filter must be a mapping")
        raw = flt.get("attributes") or {}
        if not isinstance(raw, dict):
            raise ManifestError(f"{who}: spec.filter.attributes must be a mapping")
        attrs = {str(k): "" if v is None else str(v) for k, v in raw.items()}
        _check_names(attrs, f"{who}: spec.filter.attributes")
    filters = spec.get("filters")
    if filters is not None:
        if not isinstance(filters, list):
            raise ManifestError(f"{who}: spec.filters must be a list")
        for i, entry in enumerate(filters):
            check_filter(entry, f"{who}: spec.filters[{i}]")
    return Trigger(ns, name, broker, subscriber, attrs, filters or None, _delivery(spec.get("delivery"), who, ns), where)


def _channel(spec: dict[str, Any], kind: str, ns: str, name: str, who: str, where: str) -> Channel:
    """What channel_validation.go checks: a template with kind and apiVersion (the defaulter fills
    it when absent), no spec.subscribers written by a user (the Subscription controller owns them)."""
    if spec.get("subscribers"):
        raise ManifestError(f"{who}: spec.subscribers is managed by Knative from the Subscriptions; "
                            "write Subscription objects instead")
    template = spec.get("channelTemplate")
    if template is not None:
        if kind != "Channel":
            raise ManifestError(f"{who}: spec.channelTemplate is a field of Channel, not of {kind}")
        if not isinstance(template, dict):
            raise ManifestError(f"{who}: spec.channelTemplate must be a mapping")
        for key in ("apiVersion", "kind"):
            if not isinstance(template.get(key), str) or not template[key]:
                raise ManifestError(f"{who}: missing field spec.channelTemplate.{key}")
    return Channel(ns, name, kind, _delivery(spec.get("delivery"), who, ns), template, where)


def _subscription(spec: dict[str, Any], ns: str, name: str, who: str, where: str) -> Subscription:
    """What subscription_validation.go checks: a channel (always), at least one of subscriber and
    reply; the specs add that the channel is in the Subscription's own namespace."""
    ref = spec.get("channel")
    if not isinstance(ref, dict) or not ref:
        raise ManifestError(f"{who}: missing field spec.channel (the Subscription must reference a channel)")
    for key in ("apiVersion", "kind", "name"):
        if not isinstance(ref.get(key), str) or not ref[key]:
            raise ManifestError(f"{who}: missing field spec.channel.{key}")
    if ref["apiVersion"] != MESSAGING_V1 or ref["kind"] not in CHANNEL_KINDS:
        raise ManifestError(f"{who}: spec.channel: {ref['apiVersion']} {ref['kind']} is not a channel served "
                            f"locally ({MESSAGING_V1} {' or '.join(CHANNEL_KINDS)})")
    if ref.get("namespace") not in (None, "", ns):
        raise ManifestError(f"{who}: spec.channel.namespace: a Subscription's channel must be in its own "
                            f"namespace ({ns})")
    subscriber = _optional_destination(spec.get("subscriber"), f"{who}: spec.subscriber", ns)
    reply = _optional_destination(spec.get("reply"), f"{who}: spec.reply", ns)
    if subscriber is None and reply is None:
        raise ManifestError(f"{who}: expected at least one of spec.subscriber, spec.reply")
    return Subscription(ns, name, ref["name"], ref["kind"], subscriber, reply,
                        _delivery(spec.get("delivery"), who, ns), where)


def _eventtype(spec: dict[str, Any], api: str, ns: str, name: str, who: str, where: str) -> EventType:
    """What the webhook needs of an EventType: its type (v1beta3: the `type` attribute) and, when it
    names one, a reference with kind, name and apiVersion (KReference; my reading of eventing)."""
    if api.endswith("/v1beta3"):
        attrs = {a.get("name"): a.get("value") for a in spec.get("attributes") or [] if isinstance(a, dict)}
        type_, source, field_name = attrs.get("type"), attrs.get("source"), "spec.attributes[name=type].value"
    else:
        type_, source, field_name = spec.get("type"), spec.get("source"), "spec.type"
    if not isinstance(type_, str) or not type_:
        raise ManifestError(f"{who}: missing field {field_name}")
    ref = None
    raw = spec.get("reference")
    if raw is not None:
        if not isinstance(raw, dict):
            raise ManifestError(f"{who}: spec.reference must be a mapping")
        for key in ("apiVersion", "kind", "name"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise ManifestError(f"{who}: missing field spec.reference.{key}")
        ref = Ref(raw["kind"], raw["name"], str(raw.get("namespace") or ns), raw["apiVersion"])
    elif isinstance(spec.get("broker"), str) and spec["broker"]:  # deprecated, v1beta1/v1beta2 only
        ref = Ref("Broker", spec["broker"], ns, EVENTING_V1)
    description = spec.get("description")
    return EventType(ns, name, type_, source if isinstance(source, str) else None, ref,
                     description if isinstance(description, str) else "", api, where)


def _optional_destination(raw: Any, who: str, ns: str) -> Destination | None:
    # Knative's isDestinationNilOrEmpty: an empty mapping is no destination
    if raw is None or raw == {}:
        return None
    return _destination(raw, who, ns)


def check_filter(entry: Any, who: str) -> None:
    """One `filters` entry: exactly one dialect, valid attribute names, CESQL that parses."""
    if not isinstance(entry, dict):
        raise ManifestError(f"{who}: a filter must be a mapping with one dialect ({', '.join(DIALECTS)})")
    present = [k for k in entry if k in DIALECTS and entry[k] is not None]
    unknown = [k for k in entry if k not in DIALECTS]
    if unknown:
        raise ManifestError(f"{who}: unknown filter dialect {unknown[0]!r} (known: {', '.join(DIALECTS)})")
    if len(present) > 1:
        raise ManifestError(f"{who}: multiple dialects found ({', '.join(present)}), a filter can have only one")
    if not present:
        return
    dialect = present[0]
    value = entry[dialect]
    if dialect in ("exact", "prefix", "suffix"):
        if not isinstance(value, dict):
            raise ManifestError(f"{who}.{dialect}: must map attribute names to strings")
        _check_names({str(k): str(v) for k, v in value.items()}, f"{who}.{dialect}")
    elif dialect in ("all", "any"):
        if not isinstance(value, list):
            raise ManifestError(f"{who}.{dialect}: must be a list of filters")
        for i, sub in enumerate(value):
            check_filter(sub, f"{who}.{dialect}[{i}]")
    elif dialect == "not":
        check_filter(value, f"{who}.not")
    else:
        if not isinstance(value, str):
            raise ManifestError(f"{who}.cesql: must be a string")
        if value:
            try:
                compile_expression(value)
            except CesqlParseError as exc:
                raise ManifestError(f"{who}.cesql: invalid expression {value!r}: {exc}") from exc


def _check_names(attrs: dict[str, str], who: str) -> None:
    for key in attrs:
        if not _ATTR_NAME.match(key):
            raise ManifestError(
                f"{who}: invalid attribute name {key!r} (must start with a letter and be lower-case alphanumeric)"
            )


def _destination(raw: Any, who: str, ns: str) -> Destination:
    if not isinstance(raw, dict):
        raise ManifestError(f"{who}: must be a mapping with ref and/or uri")
    uri = raw.get("uri")
    ref_raw = raw.get("ref")
    if uri is None and ref_raw is None:
        raise ManifestError(f"{who}: expected at least one of ref, uri")
    ref = None
    if ref_raw is not None:
        if not isinstance(ref_raw, dict) or not ref_raw.get("name") or not ref_raw.get("kind"):
            raise ManifestError(f"{who}.ref: needs kind and name")
        ref = Ref(str(ref_raw["kind"]), str(ref_raw["name"]), str(ref_raw.get("namespace") or ns),
                  str(ref_raw.get("apiVersion") or ""))
    if uri is not None:
        if not isinstance(uri, str) or not uri:
            raise ManifestError(f"{who}.uri: must be a non-empty string")
        if ref is None and not re.match(r"https?://[^/]+", uri):
            raise ManifestError(f"{who}.uri: {uri!r} is not an absolute http(s) URL")
    return Destination(ref, uri)


def _delivery(raw: Any, who: str, ns: str) -> DeliverySpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ManifestError(f"{who}: spec.delivery must be a mapping")
    w = f"{who}: spec.delivery"
    retry = raw.get("retry")
    if retry is not None and (not isinstance(retry, int) or isinstance(retry, bool) or retry < 0):
        raise ManifestError(f"{w}.retry: invalid value {retry!r} (a non-negative integer)")
    policy = raw.get("backoffPolicy")
    if policy is not None and policy not in ("linear", "exponential"):
        raise ManifestError(f"{w}.backoffPolicy: invalid value {policy!r} (linear or exponential)")
    delay = _iso(raw.get("backoffDelay"), f"{w}.backoffDelay")
    timeout = _iso(raw.get("timeout"), f"{w}.timeout")
    if timeout is not None and timeout <= 0:
        raise ManifestError(f"{w}.timeout: invalid value {raw.get('timeout')!r} (must be above zero)")
    fmt = raw.get("format")
    if fmt is not None and fmt not in ("binary", "json"):
        raise ManifestError(f"{w}.format: invalid value {fmt!r} (binary or json)")
    dls = None
    if raw.get("deadLetterSink") is not None:
        dls = _destination(raw["deadLetterSink"], f"{w}.deadLetterSink", ns)
    return DeliverySpec(retry, policy, delay, dls, timeout, fmt)


def _iso(value: Any, who: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_iso_duration(str(value))
    except ValueError as exc:
        raise ManifestError(f"{who}: {exc}") from exc


def _service(spec: dict[str, Any], ns: str, name: str, who: str, where: str) -> Service:
    template = spec.get("template") or {}
    tspec = template.get("spec") or {} if isinstance(template, dict) else {}
    containers = tspec.get("containers") if isinstance(tspec, dict) else None
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        raise ManifestError(f"{who}: spec.template.spec.containers must list one container")
    if len(containers) > 1:
        raise ManifestError(f"{who}: only single-container Services can run locally")
    container = containers[0]
    image = container.get("image")
    if not isinstance(image, str) or not image:
        raise ManifestError(f"{who}: the container has no image")
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if isinstance(item, dict) and "name" in item and "value" in item:
            env[str(item["name"])] = str(item["value"])
    port = None
    ports = container.get("ports") or []
    if ports and isinstance(ports[0], dict) and "containerPort" in ports[0]:
        port = int(ports[0]["containerPort"])
    meta = template.get("metadata") or {}
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    return Service(ns, name, image, annotations, env, port, where)


def _check_references(m: Manifests) -> None:
    """Triggers name a known Broker; `ref`s to Knative Services name a Service in the manifests."""
    for t in m.triggers:
        who = f"{t.origin}: Trigger {t.namespace}/{t.name}"
        if (t.namespace, t.broker) not in m.brokers:
            raise ManifestError(f"{who}: Broker {t.namespace}/{t.broker} is not defined in the manifests")
        dests = [("spec.subscriber", t.subscriber)]
        if t.delivery and t.delivery.dead_letter_sink:
            dests.append(("spec.delivery.deadLetterSink", t.delivery.dead_letter_sink))
        for label, dest in dests:
            check_ref(m, dest, f"{who}: {label}")
    for b in m.brokers.values():
        if b.delivery and b.delivery.dead_letter_sink:
            check_ref(m, b.delivery.dead_letter_sink, f"{b.origin}: Broker {b.namespace}/{b.name}: spec.delivery.deadLetterSink")
    _check_channel_references(m)


def _check_channel_references(m: Manifests) -> None:
    """Subscriptions name a Channel of the manifests; their destinations and the Channels' dead-letter
    sinks resolve locally."""
    for c in m.channels.values():
        if c.delivery and c.delivery.dead_letter_sink:
            check_addressable(m, c.delivery.dead_letter_sink,
                              f"{c.origin}: {c.kind} {c.namespace}/{c.name}: spec.delivery.deadLetterSink")
    for s in m.subscriptions:
        who = f"{s.origin}: Subscription {s.namespace}/{s.name}"
        channel = m.channels.get((s.namespace, s.channel))
        if channel is None or s.channel_kind not in (channel.kind, channel.backing_kind):
            raise ManifestError(f"{who}: spec.channel: {s.channel_kind} {s.namespace}/{s.channel} is not defined "
                                "in the manifests")
        for label, dest in subscription_destinations(s):
            check_addressable(m, dest, f"{who}: {label}")


def subscription_destinations(s: Subscription) -> list[tuple[str, Destination]]:
    """(field, destination) of every destination a Subscription names."""
    dests = [("spec.subscriber", s.subscriber), ("spec.reply", s.reply),
             ("spec.delivery.deadLetterSink", s.delivery.dead_letter_sink if s.delivery else None)]
    return [(label, d) for label, d in dests if d is not None]


def check_addressable(m: Manifests, dest: Destination, who: str) -> None:
    """A destination of a Subscription or a Channel: a uri, a Knative Service, or the address of a
    Broker or a Channel served by this broker (all in the manifests)."""
    ref = dest.ref
    if ref is None or ref.kind == "Service":
        check_ref(m, dest, who)
        return
    api = EVENTING_V1 if ref.kind == "Broker" else MESSAGING_V1
    objects: set[tuple[str, str]] = set(m.brokers if ref.kind == "Broker" else m.channels)
    if (ref.kind != "Broker" and ref.kind not in CHANNEL_KINDS) or (ref.api_version and ref.api_version != api):
        raise ManifestError(f"{who}.ref: {ref.api_version or '?'} {ref.kind} cannot be resolved locally "
                            f"(only {SERVING_V1} Service, {EVENTING_V1} Broker, {MESSAGING_V1} Channel or "
                            "InMemoryChannel, or a uri)")
    if (ref.namespace, ref.name) not in objects:
        raise ManifestError(f"{who}.ref: {ref.kind} {ref.namespace}/{ref.name} is not defined in the manifests")
    if dest.uri:
        raise ManifestError(f"{who}.uri: a path relative to a {ref.kind}'s address is not served locally")


def check_ref(m: Manifests, dest: Destination, who: str) -> None:
    ref = dest.ref
    if ref is None:
        return
    if ref.kind != "Service" or (ref.api_version and ref.api_version != SERVING_V1):
        raise ManifestError(
            f"{who}.ref: {ref.api_version or '?'} {ref.kind} cannot be resolved locally "
            f"(only {SERVING_V1} Service, or a uri)"
        )
    if (ref.namespace, ref.name) not in m.services:
        raise ManifestError(f"{who}.ref: Service {ref.namespace}/{ref.name} is not defined in the manifests")
