"""Every CloudEvent type the detector and the sample functions emit, as Knative EventTypes.

`k8s/knative/eventtypes.yaml` is generated from here (`python -m detector eventtypes --write`;
`--check` says whether the committed file is current). The types come from:

- the default mapping: `mec.upf.<kind>` for every AppEvent kind the tap emits (`app_event_kinds`:
  the dissectors' `KIND*` constants, plus the kinds of the tap's flow table and control plane);
- the rules files the project ships (`SHIPPED_RULES`): what each rule's `emit.type` can render to
  (a template may refer to `{kind}` only, expanded over the kinds the rule's `match.kind` accepts);
- the detector's own lifecycle events (`mec.source.created`, `mec.source.expired`, detector/cloudevent.py)
  and its mobility event (`mec.ue.moved`, detector/mobility.py; warm-ups reuse the types above);
- the replies of the sample functions (`REPLY_TYPE` / `REPLY_SOURCE` of testbed/functions/buy.py and
  dns_edge.py), which come back into the Broker.

Relayed CloudEvents (`POST /v1/cloudevents`) keep whatever type their sender gave: they cannot be
listed. The API version is the pinned Eventing 1.22.2 CRD's storage version, v1beta2
(../shared/knative/eventing-v1.22.2/eventtype.yaml: v1beta3 and v1beta1 are served, not stored):
`spec.type`, `spec.source`, `spec.reference` (the Broker) and `spec.description`. `source` is a
pattern with `{}` for the parts that vary, as v1beta3 documents for its attribute values.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import yaml

from detector.config import ConfigError
from detector.mobility import MOVED_TYPE
from detector.rules import DEFAULT_RULE, Rule, load_rules

API_VERSION = "eventing.knative.dev/v1beta2"
KIND = "EventType"
NAMESPACE = "mec"                       # k8s/knative/broker.yaml
BROKER = "default"
BROKER_REF = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": BROKER}
LABELS = {"app.kubernetes.io/part-of": "mec-serverless-testbed"}
REPO = Path(__file__).resolve().parents[1]
OUTPUT = Path("k8s/knative/eventtypes.yaml")   # relative to REPO
SHIPPED_RULES = ("examples/rules/*.yaml", "bench/rules-e2e.yaml", "testbed/soak/rules.yaml")
UE_SOURCE = "/mec/detector/{detector}/ue/{uekey}"   # detector/cloudevent.py source_uri
SAMPLE_FUNCTIONS = (("fn-buy", "testbed.functions.buy"), ("fn-dns-edge", "testbed.functions.dns_edge"))
# AppEvent kinds that no dissector module declares: the flow table's (upf_tap/pipeline.py), N4's
# `session.<up|modify|down>` (upf_tap/control/n4.py, N4Change) and N2's (upf_tap/control/n2.py);
# tests/detector/test_det_eventtypes.py keeps this list equal to the tap's code
TAP_CORE_KINDS = ("flow.start", "flow.end", "session.up", "session.modify", "session.down",
                  "ue.registered", "ue.deregistered", "ue.context_release", "pdu_session.setup",
                  "pdu_session.release", "ngap.path_switch", "ngap.handover", "gtpu.end_marker")
KIND_TEXT = {
    "http.request": "an HTTP request from a UE",
    "dns.query": "a DNS query",
    "tls.client_hello": "a TLS ClientHello with its SNI and ALPN",
    "quic.initial": "a QUIC Initial, SNI and ALPN from its decrypted ClientHello",
    "mqtt.connect": "an MQTT CONNECT",
    "mqtt.publish": "an MQTT PUBLISH: its topic, never the payload",
    "coap.request": "a CoAP request",
    "icmp.echo_request": "an ICMP echo request",
    "flow.start": "the first packet of a flow",
    "flow.end": "the end of a flow, with its packets, bytes and duration",
    "session.up": "a PDU session established on N4 by PFCP",
    "session.modify": "a PDU session modified on N4 by PFCP",
    "session.down": "a PDU session deleted on N4 by PFCP",
    "ue.registered": "a UE registration on N2 by NGAP and NAS",
    "ue.deregistered": "a UE deregistration on N2 by NGAP and NAS",
    "ue.context_release": "a UE context release on N2 by NGAP",
    "pdu_session.setup": "a PDU session resource setup on N2 by NGAP",
    "pdu_session.release": "a PDU session resource release on N2 by NGAP",
    "ngap.path_switch": "an Xn handover on N2: NGAP Path Switch Request Acknowledge (the sessions' new gNB)",
    "ngap.handover": "an N2 handover on N2: NGAP Handover Notify (the UE arrived at the target gNB)",
    "gtpu.end_marker": "a GTP-U End Marker on N3: the UPF closed a UE's old downlink path after a path switch",
}
# what a type means, where more can be said than its AppEvent kind
TYPE_TEXT = {
    "mec.app.buy": 'A UE pressed "buy" in the main application (an uplink POST /api/v1/buy...); '
                   "subject: the SUPI, else the UE IP.",
    "mec.app.visit": "A UE reached the main application (any other HTTP request to shop.mec.local).",
    "mec.upf.dns.query": "A UE looked up a name (AppEvent kind dns.query); the shipped rules set the "
                         "subject to the queried name.",
    "mec.source.created": "The detector created the UE's source (its first match of a sources.create_on "
                          "rule); data: source, uekey, ue, rule, created, event.",
    "mec.source.expired": "The UE's source expired (data.reason: idle or session.down).",
    "mec.order.created": "fn-buy recorded an order (its reply to mec.app.buy); subject: the buyer.",
    MOVED_TYPE: "The UE's serving gNB changed (a handover, or a relocation to another MEC site's UPF); "
                "data: ue, from and to (gnb_ip, site, cell), procedure, at; extensions fromsite, tosite. "
                "Sent to the target site's broker; from is null when no other site's detector answered.",
    "mec.edge.warmed": "fn-dns-edge warmed the edge cache for a name, the first time it was looked up; "
                       "subject: the name.",
}
LIFECYCLE = ("mec.source.created", "mec.source.expired")
MOBILITY = (MOVED_TYPE,)
_NAME_BAD = re.compile(r"[^a-z0-9.-]+")


@dataclass
class Declared:
    """One CloudEvent type: where it comes from, as the EventType will say."""

    type: str
    source: str
    kinds: set[str] = field(default_factory=set)    # AppEvent kinds it is made from (empty: none)
    any_kind: bool = False                           # a rule emits it for any kind it matches
    emitters: dict[str, set[str]] = field(default_factory=dict)  # who emits it -> the files that say so

    def description(self) -> str:
        who = "; ".join(f"{name} ({', '.join(sorted(files))})" if files else name
                        for name, files in sorted(self.emitters.items()))
        return f"{self._summary()} Emitted by: {who}."

    def _summary(self) -> str:
        if self.type in TYPE_TEXT:
            return TYPE_TEXT[self.type]
        if self.any_kind or not self.kinds:
            return "What a detector rule emits for any AppEvent it matches."
        if len(self.kinds) == 1:
            (kind,) = self.kinds
            return f"The UPF tap saw {KIND_TEXT.get(kind, 'an AppEvent')} (AppEvent kind {kind})."
        return f"The UPF tap saw an AppEvent of kind {', '.join(sorted(self.kinds))}."


class Catalog:
    """The declared types by name; `add` merges what several emitters say about one type."""

    def __init__(self) -> None:
        self.types: dict[str, Declared] = {}

    def add(self, type_: str, source: str, emitter: str, where: str | None = None, *,
            kinds: Iterable[str] = (), any_kind: bool = False) -> None:
        d = self.types.setdefault(type_, Declared(type_, source))
        if d.source != source:
            raise ConfigError(f"event type {type_!r} has two sources ({d.source}, {source}): "
                              "an EventType declares one")
        d.kinds.update(kinds)
        d.any_kind = d.any_kind or any_kind
        files = d.emitters.setdefault(emitter, set())
        if where:
            files.add(where)

    def sorted(self) -> list[Declared]:
        return [self.types[t] for t in sorted(self.types)]


def dissector_kinds() -> list[str]:
    """The kinds the tap's dissectors declare (`KIND`, `KIND_*` in each module of upf_tap/dissect)."""
    dissect = import_module("upf_tap.dissect")
    kinds: list[str] = []
    for name in dissect.REGISTERED:
        mod = import_module(f"upf_tap.dissect.{name}")
        kinds += [v for k, v in sorted(vars(mod).items()) if (k == "KIND" or k.startswith("KIND_")) and isinstance(v, str)]
    return kinds


def app_event_kinds() -> list[str]:
    """Every AppEvent kind the tap emits, sorted."""
    return sorted(set(dissector_kinds()) | set(TAP_CORE_KINDS))


def shipped_rules(root: Path = REPO) -> list[Path]:
    """The rules files the project ships, sorted."""
    found: set[Path] = set()
    for pattern in SHIPPED_RULES:
        found.update(Path(p) for p in glob.glob(str(root / pattern)))
    return sorted(found)


def rule_types(rule: Rule, kinds: Sequence[str]) -> dict[str, set[str] | None]:
    """What `rule` can emit: type -> the AppEvent kinds that give it (None: any kind it matches)."""
    assert rule.emit is not None
    tpl = rule.emit.type
    kind_tests = [t for path, t in rule.tests if path == ("kind",)]
    accepted = [k for k in kinds if all(t(k) for t in kind_tests)]
    refs = {path for part in tpl.parts if isinstance(part, tuple) for path in part}
    if not refs:
        return {tpl.text: set(accepted) if kind_tests else None}
    if refs != {("kind",)}:
        other = sorted(".".join(p) for p in refs - {("kind",)})
        raise ConfigError(f"rule {rule.name!r}: type {tpl.text!r} refers to {{{other[0]}}}: only {{kind}} "
                          "can be listed as EventTypes")
    out: dict[str, set[str] | None] = {}
    for kind in accepted:
        s = out.setdefault(str(tpl.render({"kind": kind})), set())
        assert s is not None
        s.add(kind)
    return out


def _label(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def add_rules_file(catalog: Catalog, path: Path, kinds: Sequence[str], root: Path) -> None:
    where = _label(path, root)
    for rule in load_rules(str(path)).rules:
        if rule.emit is None:
            continue
        for type_, from_kinds in rule_types(rule, kinds).items():
            catalog.add(type_, UE_SOURCE, f"rule {rule.name}", where, kinds=from_kinds or (),
                        any_kind=from_kinds is None)


def build_catalog(rules_files: Sequence[Path] | None = None, root: Path = REPO) -> Catalog:
    """Every type: the default mapping, `rules_files` (default: the shipped ones), the lifecycle
    events and the sample functions' replies."""
    kinds = app_event_kinds()
    catalog = Catalog()
    for kind in kinds:
        for type_ in rule_types(DEFAULT_RULE, [kind]):
            catalog.add(type_, UE_SOURCE, "the default mapping (rule default)", kinds=[kind])
    for path in shipped_rules(root) if rules_files is None else rules_files:
        add_rules_file(catalog, path, kinds, root)
    for type_ in LIFECYCLE:
        catalog.add(type_, UE_SOURCE, "the detector's sources", "detector/cloudevent.py")
    for type_ in MOBILITY:
        catalog.add(type_, UE_SOURCE, "the detector's mobility (config `mobility`)", "detector/mobility.py")
    for service, module in SAMPLE_FUNCTIONS:
        mod = import_module(module)
        catalog.add(mod.REPLY_TYPE, mod.REPLY_SOURCE, f"{service}'s reply", module.replace(".", "/") + ".py")
    return catalog


def object_name(type_: str, taken: set[str]) -> str:
    """A DNS-1123 subdomain for the EventType of `type_` (`_` becomes `-`), unique among `taken`."""
    name = _NAME_BAD.sub("-", type_.lower()).strip(".-")[:240] or "type"
    if name in taken:
        name = f"{name}-{hashlib.blake2b(type_.encode(), digest_size=4).hexdigest()}"
    taken.add(name)
    return name


def manifest(d: Declared, name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": dict(LABELS)},
        "spec": {"type": d.type, "source": d.source, "reference": dict(BROKER_REF),
                 "description": d.description()},
    }


def manifests(catalog: Catalog) -> list[dict[str, Any]]:
    taken: set[str] = set()
    return [manifest(d, object_name(d.type, taken)) for d in catalog.sorted()]


HEADER = """\
# Generated by `python -m detector eventtypes --write` from detector/eventtypes.py: do not edit.
# One Knative EventType per CloudEvent type that reaches the Broker mec/default: the detector's
# default mapping (mec.upf.<kind> for every AppEvent kind), the shipped rules files, the detector's
# source lifecycle events, its mobility event and the sample functions' replies. `source` is a
# pattern: {detector} is the detector id, {uekey} the UE key (SUPI, else IP). Lab: kubectl apply -f
# k8s/knative/; the local broker (testbed broker --manifests k8s/knative) lists them and warns about
# other types.
"""


def render(catalog: Catalog) -> str:
    docs = [yaml.safe_dump(m, sort_keys=False, width=10_000, allow_unicode=True) for m in manifests(catalog)]
    return HEADER + "---\n".join(docs)


def generate(rules_files: Sequence[Path] | None = None, root: Path = REPO) -> str:
    """The text of k8s/knative/eventtypes.yaml."""
    return render(build_catalog(rules_files, root))


# ------------------------------------------------------------------ `detector eventtypes`

SUMMARY = "print the Knative EventTypes of every CloudEvent type (k8s/knative/eventtypes.yaml)"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "eventtypes", help=SUMMARY,
        description="Print a Knative EventType (eventing.knative.dev/v1beta2) for every CloudEvent type the "
                    "detector's default mapping, the shipped rules files, its source lifecycle and the sample "
                    f"functions emit. --write updates {OUTPUT}; --check exits 1 when it is not current.")
    p.add_argument("--rules", nargs="+", metavar="FILE", type=Path,
                   help="rules files to read instead of the shipped ones (" + ", ".join(SHIPPED_RULES) + ")")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", nargs="?", const=REPO / OUTPUT, type=Path, metavar="PATH",
                      help=f"write the file (default {OUTPUT} in the repository) instead of printing it")
    mode.add_argument("--check", nargs="?", const=REPO / OUTPUT, type=Path, metavar="PATH",
                      help=f"exit 1 if the file (default {OUTPUT}) differs from what would be generated")
    return p


def run(args: argparse.Namespace) -> int:
    text = generate(args.rules)
    if args.write is not None:
        args.write.write_text(text, encoding="utf-8")
        print(f"{args.write}: {text.count('kind: EventType')} EventTypes", file=sys.stderr)
        return 0
    if args.check is not None:
        current = args.check.read_text(encoding="utf-8") if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is not current: run `python -m detector eventtypes --write`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0
