"""Checking Nupf_EventExposure requests and turning a subscription into what the reporter needs.

A request is checked in two steps: against the subset schemas (detector/openapi.yaml, see spec.py)
with jsonschema, then for what the schemas cannot say (supported features, targets, a reachable
notification URI, a period for PERIODIC). Every failure becomes an InvalidParam (TS 29.571: `param`
is the attribute's JSON Pointer in the body) of one ProblemDetails.

ProblemDetails `cause` values are the protocol error causes of TS 29.500 (table 5.2.7.2-1), which
is prose and not in the OpenAPI snapshot: MANDATORY_IE_MISSING, MANDATORY_IE_INCORRECT,
OPTIONAL_IE_INCORRECT, INVALID_MSG_FORMAT; 404 uses SUBSCRIPTION_NOT_FOUND as the other
*_EventExposure APIs do.
"""

from __future__ import annotations

import functools
import ipaddress
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from yarl import URL

from detector.exposure import spec
from detector.exposure.jsonpatch import parse_pointer

SUBSET_URI = "urn:mec:detector:nupf-ee-subset"
MAX_INVALID_PARAMS = 20
MISSING = "MANDATORY_IE_MISSING"
INCORRECT = "MANDATORY_IE_INCORRECT"
OPTIONAL_INCORRECT = "OPTIONAL_IE_INCORRECT"
BAD_FORMAT = "INVALID_MSG_FORMAT"
NOT_FOUND = "SUBSCRIPTION_NOT_FOUND"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class Problem(Exception):
    """A refused request, as TS 29.571 ProblemDetails (`body()`)."""

    status: int
    title: str
    detail: str
    cause: str | None = None
    invalid_params: list[dict[str, str]] = field(default_factory=list)
    retry_after: int | None = None

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"title": self.title, "status": self.status, "detail": self.detail}
        if self.cause:
            out["cause"] = self.cause
        if self.invalid_params:
            out["invalidParams"] = self.invalid_params[:MAX_INVALID_PARAMS]
        return out


def bad_request(detail: str, params: list[dict[str, str]], root: str, missing: bool = False) -> Problem:
    """A 400 whose cause says whether a mandatory IE (every step from `root` to it required) is wrong."""
    if missing:
        cause = MISSING
    elif any(is_mandatory(root, p["param"]) for p in params):
        cause = INCORRECT
    else:
        cause = OPTIONAL_INCORRECT
    return Problem(400, "Bad Request", detail, cause, params)


def pointer(parts: Any) -> str:
    """RFC 6901 JSON Pointer of a path (a sequence of keys and indexes)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


# ---- schema checks -------------------------------------------------------------------------
@functools.cache
def _registry() -> Registry:  # type: ignore[type-arg]
    doc = {"components": {"schemas": spec.subset()}}
    return Registry().with_resource(SUBSET_URI, Resource.from_contents(doc, default_specification=DRAFT202012))


@functools.cache
def validator(schema_name: str) -> jsonschema.Draft202012Validator:
    """A validator for one schema of the subset (with its references)."""
    return jsonschema.Draft202012Validator({"$ref": f"{SUBSET_URI}#/components/schemas/{schema_name}"},
                                           registry=_registry())


def _schema_param(e: ValidationError, prefix: tuple[Any, ...]) -> tuple[dict[str, str], bool]:
    """One jsonschema error as an InvalidParam; True when it is a missing attribute."""
    path = (*prefix, *e.absolute_path)
    if e.validator == "required" and isinstance(e.instance, dict):
        missing = [n for n in e.validator_value if n not in e.instance]
        return {"param": pointer((*path, missing[0] if missing else "")), "reason": "missing"}, True
    if e.validator == "enum":
        return {"param": pointer(path),
                "reason": f"{e.instance!r} is not supported here; supported: {', '.join(e.validator_value)}"}, False
    return {"param": pointer(path), "reason": e.message[:300]}, False


def schema_problems(schema_name: str, body: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[dict[str, str], bool]]:
    errors = sorted(validator(schema_name).iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    return [_schema_param(e, prefix) for e in errors[:MAX_INVALID_PARAMS]]


def _deref(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = spec.subset()[node["$ref"].rsplit("/", 1)[-1]]
    return node


def is_mandatory(root: str, param: str) -> bool:
    """True when the attribute at JSON Pointer `param` of a `root` is mandatory all the way down."""
    try:
        parts = parse_pointer(param)
    except ValueError:
        return False
    node = spec.subset()[root]
    for part in parts:
        node = _deref(node)
        if node.get("type") == "array":
            node = node.get("items", {})
            continue
        if part not in node.get("required", ()):
            return False
        node = node.get("properties", {}).get(part, {})
    return True


def check_schema(schema_name: str, body: Any, prefix: tuple[Any, ...] = (), root: str | None = None) -> None:
    """Raise a 400 Problem if `body` does not follow the subset schema (pointers under `prefix`,
    mandatory-ness judged from `root`, by default the schema itself)."""
    params = schema_problems(schema_name, body, prefix)
    if params:
        raise bad_request(f"the {schema_name} does not follow TS 29.564", [p for p, _ in params],
                          root or schema_name, any(missing for _, missing in params))


# ---- what a subscription asks for ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EventPlan:
    """One UpfEvent of eventList."""

    event_type: str
    measurements: frozenset[str]
    granularity: str
    app_ids: frozenset[str] | None     # lower-case domain names; None: every application


@dataclass(frozen=True, slots=True)
class Target:
    """Which UEs: any, or the one with this SUPI and/or address; narrowed by DNN and S-NSSAI."""

    any_ue: bool
    supi: str | None = None
    address: IpAddress | None = None
    prefix: IpNetwork | None = None
    dnn: str | None = None                       # lower case (DNNs compare case-insensitively)
    snssai: tuple[int, str | None] | None = None  # (sst, sd lower case)

    def matches(self, ue: UeIdentity) -> bool:
        if self.supi is not None and ue.supi != self.supi:
            return False
        if self.address is not None and ue.address != self.address:
            return False
        if self.prefix is not None and (ue.address is None or ue.address not in self.prefix):
            return False
        if self.dnn is not None and (ue.dnn or "").lower() != self.dnn:
            return False
        return self.snssai is None or ue.snssai == self.snssai


@dataclass(frozen=True, slots=True)
class UeIdentity:
    """A UE as an AppEvent names it."""

    ip: str
    address: IpAddress | None
    supi: str | None = None
    dnn: str | None = None
    snssai: tuple[int, str | None] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked UpfEventSubscription, as the reporter uses it."""

    events: tuple[EventPlan, ...]
    target: Target
    trigger: str
    max_reports: int | None
    expiry: float | None          # Unix time
    rep_period: float | None      # seconds (PERIODIC)
    notify_uri: str
    correlation_id: str


def parse_snssai(text: str | None) -> tuple[int, str | None] | None:
    """An AppEvent's "1-000001" as (sst, sd)."""
    if not text:
        return None
    sst, _, sd = text.partition("-")
    try:
        return int(sst), (sd.lower() or None)
    except ValueError:
        return None


def parse_time(text: str) -> float | None:
    """RFC 3339 with a zone -> Unix time, or None."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t.timestamp() if t.tzinfo is not None else None


def _param(path: tuple[Any, ...], reason: str) -> dict[str, str]:
    return {"param": pointer(path), "reason": reason}


def _unsupported(doc: dict[str, Any], schema: str, path: tuple[Any, ...]) -> list[dict[str, str]]:
    return [_param((*path, attr), f"not supported by this UPF: {why}")
            for (s, attr), why in spec.NOT_IMPLEMENTED.items() if s == schema and attr in doc]


def _notify_uri_problems(uri: str, path: tuple[Any, ...]) -> list[dict[str, str]]:
    try:
        url = URL(uri)
        ok = url.absolute and url.scheme in ("http", "https") and bool(url.host) and url.port is not None
        ok = ok and not any(c.isspace() or ord(c) < 0x20 for c in uri)
    except (ValueError, TypeError):
        ok = False
    return [] if ok else [_param((*path, "eventNotifyUri"), "must be an absolute http:// or https:// URI")]


def _event_plan(ev: dict[str, Any]) -> EventPlan:
    kinds = ev.get("measurementTypes") or spec.enum_of("MeasurementType")
    apps = ev.get("appIds")
    return EventPlan(ev["type"], frozenset(kinds), ev.get("granularityOfMeasurement", spec.PER_SESSION),
                     frozenset(a.lower().rstrip(".") for a in apps) if apps else None)


def _events(doc: dict[str, Any], path: tuple[Any, ...], bad: list[dict[str, str]]) -> tuple[EventPlan, ...]:
    for i, ev in enumerate(doc["eventList"]):
        bad += _unsupported(ev, "UpfEvent", (*path, "eventList", i))
    return tuple(_event_plan(ev) for ev in doc["eventList"])


def _target(doc: dict[str, Any], path: tuple[Any, ...], bad: list[dict[str, str]]) -> Target:
    any_ue = doc.get("anyUe", False)
    ip = doc.get("ueIpAddress") or {}
    address: IpAddress | None = None
    prefix: IpNetwork | None = None
    try:
        if "ipv4Addr" in ip or "ipv6Addr" in ip:
            address = ipaddress.ip_address(ip.get("ipv4Addr") or ip["ipv6Addr"])
        elif "ipv6Prefix" in ip:
            prefix = ipaddress.ip_network(ip["ipv6Prefix"], strict=False)
    except ValueError as e:
        bad.append(_param((*path, "ueIpAddress"), f"not an IP address or prefix: {e}"))
    named = "supi" in doc or "ueIpAddress" in doc
    if any_ue and named:
        bad.append(_param((*path, "anyUe"), "anyUe true excludes supi and ueIpAddress"))
    elif not any_ue and not named:
        bad.append(_param((*path, "anyUe"), "name the UE (supi or ueIpAddress) or set anyUe to true"))
    snssai = doc.get("snssai")
    return Target(any_ue, doc.get("supi"), address, prefix, doc["dnn"].lower() if "dnn" in doc else None,
                  (snssai["sst"], snssai["sd"].lower() if "sd" in snssai else None) if snssai else None)


def _mode(doc: dict[str, Any], path: tuple[Any, ...], bad: list[dict[str, str]],
          now: float) -> tuple[str, int | None, float | None, float | None]:
    mode = doc["eventReportingMode"]
    where = (*path, "eventReportingMode")
    bad += _unsupported(mode, "UpfEventMode", where)
    trigger = mode["trigger"]
    period = mode.get("repPeriod")
    if trigger == spec.PERIODIC and (period is None or period < 1):
        bad.append(_param((*where, "repPeriod"), "PERIODIC needs repPeriod, a number of seconds >= 1"))
    max_reports = mode.get("maxReports")
    if max_reports is not None and max_reports < 1:
        bad.append(_param((*where, "maxReports"), "must be at least 1"))
    expiry = None
    if "expiry" in mode:
        expiry = parse_time(mode["expiry"])
        if expiry is None:
            bad.append(_param((*where, "expiry"), "not an RFC 3339 date-time with a time zone"))
        elif expiry <= now:
            bad.append(_param((*where, "expiry"), "is in the past"))
    return (trigger, int(max_reports) if max_reports is not None else None, expiry,
            float(period) if trigger == spec.PERIODIC and period is not None else None)


def check_subscription(doc: Any, path: tuple[Any, ...] = (), now: float | None = None,
                       root: str = "UpfEventSubscription") -> Plan:
    """A UpfEventSubscription -> its Plan, or raise a 400 Problem (params under `path` in a `root`)."""
    check_schema("UpfEventSubscription", doc, path, root)
    bad: list[dict[str, str]] = _unsupported(doc, "UpfEventSubscription", path)
    try:
        uuid.UUID(doc["nfId"])
    except ValueError:
        bad.append(_param((*path, "nfId"), "not a UUID (NfInstanceId)"))
    bad += _notify_uri_problems(doc["eventNotifyUri"], path)
    events = _events(doc, path, bad)
    target = _target(doc, path, bad)
    trigger, max_reports, expiry, period = _mode(doc, path, bad, time.time() if now is None else now)
    if bad:
        raise bad_request("the subscription asks for what this UPF cannot do, or is inconsistent", bad, root)
    return Plan(events, target, trigger, max_reports, expiry, period, doc["eventNotifyUri"],
                doc["notifyCorrelationId"])


def check_create(body: Any, now: float | None = None) -> tuple[dict[str, Any], Plan]:
    """A CreateEventSubscription -> (the UpfEventSubscription, its Plan), or raise a 400 Problem."""
    check_schema("CreateEventSubscription", body)
    return body["subscription"], check_subscription(body["subscription"], ("subscription",), now,
                                                    "CreateEventSubscription")
