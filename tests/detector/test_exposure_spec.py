"""The Nupf_EventExposure subset (detector/openapi.yaml, `x-3gpp-source` schemas) against 3GPP.

Offline (always): the subset is self-consistent, the constants of detector/exposure/spec.py are its
enum values, and sample requests, our 201 answers, ProblemDetails and the notifications the
reporter builds from real AppEvents validate against the subset.

Upstream (when the snapshot of open6gc/open6gc-api-specs is present under $MEC_UPSTREAM, default
/work/.mirror, as tests/lab/labfacts.py lays snapshots out; skipped with the reason otherwise): every
schema, field name, type, required-ness, pattern and enum value of the subset exists in
TS29564_Nupf_EventExposure.yaml (V18.4.0) / TS29571_CommonData.yaml / TS29512_Npcf_SMPolicyControl.yaml,
the attributes refused or ignored exist there too, and the same documents validate against the real
schemas (jsonschema, $refs resolved across the 3GPP files).
"""

from __future__ import annotations

import copy
import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from detlib import Sink, base_url, ndjson, post_events, schema_refs
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from test_exposure_api import (
    NF_ID,
    OAI_CAPTURE,
    SUPI1,
    Receiver,
    call,
    create,
    delete,
    demo_events,
    detector,
    subscription,
    tap_events,
)

from detector.exposure import spec
from detector.exposure.models import check_create, validator
from detector.exposure.reporter import Reporter
from detector.exposure.spec import COLLECTION, SOURCE_KEY

UPSTREAM = Path(os.environ.get("MEC_UPSTREAM", "/work/.mirror"))
UPSTREAM_COMMIT = "5fea19e36e32eb110713f6f176a64e0ffd360df3"   # the snapshot the subset was written from
URI = "http://af.example:8080/notify"
KEYWORDS = ("type", "pattern", "format", "minimum", "maximum", "minLength", "maxLength", "minItems", "default")


# ---- documents to check ----------------------------------------------------------------------
def sample_requests() -> list[dict[str, Any]]:
    """CreateEventSubscription bodies this UPF accepts (all fields of the subset used somewhere)."""
    every = ["VOLUME_MEASUREMENT", "THROUGHPUT_MEASUREMENT", "APPLICATION_RELATED_INFO"]
    return [
        subscription(URI),
        {**subscription(URI, anyUe=None, supi=SUPI1, dnn="internet", snssai={"sst": 1, "sd": "000001"},
                        eventReportingMode={"trigger": "PERIODIC", "repPeriod": 10, "maxReports": 3,
                                            "expiry": "2999-01-01T00:00:00Z"},
                        eventList=[{"type": "USER_DATA_USAGE_MEASURES", "measurementTypes": every,
                                    "granularityOfMeasurement": "PER_FLOW", "immediateFlag": False},
                                   {"type": "USER_DATA_USAGE_MEASURES", "granularityOfMeasurement": "PER_APPLICATION",
                                    "appIds": ["shop.mec.local"]}]),
         "supportedFeatures": "0"},
        subscription(URI, anyUe=None, ueIpAddress={"ipv4Addr": "10.45.0.2"}),
        subscription(URI, anyUe=None, ueIpAddress={"ipv6Addr": "2001:db8:cafe::2"}),
        subscription(URI, anyUe=None, ueIpAddress={"ipv6Prefix": "2001:db8:cafe::/48"}, nfId=NF_ID),
    ]


def sample_patch() -> list[dict[str, Any]]:
    return [{"op": "test", "path": "/eventReportingMode/trigger", "value": "ONE_TIME"},
            {"op": "replace", "path": "/eventReportingMode", "value": {"trigger": "PERIODIC", "repPeriod": 5}},
            {"op": "remove", "path": "/dnn"}, {"op": "add", "path": "/dnn", "value": "internet"},
            {"op": "copy", "from": "/dnn", "path": "/x"}, {"op": "move", "from": "/x", "path": "/y"}]


def notifications() -> list[dict[str, Any]]:
    """NotificationData the reporter builds from the demo and OAI captures, for each granularity."""
    events = demo_events() + list(tap_events(OAI_CAPTURE))
    out = []
    for gran in ("PER_SESSION", "PER_FLOW", "PER_APPLICATION"):
        _, plan = check_create(subscription(URI, eventReportingMode={"trigger": "PERIODIC", "repPeriod": 1},
                                            eventList=[{"type": "USER_DATA_USAGE_MEASURES",
                                                        "granularityOfMeasurement": gran}]))
        r = Reporter()
        r.watch("s", plan, 1.0e9)
        assert r.offer(events, 1.0e9 + 1) == []
        data = r.take("s", 1.0e9 + 2)
        assert data is not None
        out.append(data)
    return out


async def served_answers(tmp_path: Path, sink: Sink) -> dict[str, list[Any]]:
    """What a running detector answers and sends: 201 bodies, ProblemDetails, a notification."""
    receiver = Receiver()
    await receiver.start()
    got: dict[str, list[Any]] = {"created": [], "problems": [], "notifications": []}
    try:
        async with detector(tmp_path, sink) as srv:
            base = base_url(srv)
            for body in sample_requests():
                a = await create(base, {**body, "subscription": {**body["subscription"],
                                                                 "eventNotifyUri": receiver.url}})
                assert a.status == 201, a.body
                got["created"].append(a.body)
            for bad in ({}, subscription(URI, eventList=[{"type": "QOS_MONITORING"}]), [1]):
                got["problems"].append((await create(base, bad)).body)
            got["problems"].append((await call("POST", base + COLLECTION, raw=b"{", ctype="application/json")).body)
            got["problems"].append((await delete(base, "nope")).body)
            await post_events(base, ndjson(demo_events()))
            await receiver.wait_for(1)
            got["notifications"] = receiver.delivered
    finally:
        await receiver.stop()
    return got


# ---- offline: the subset itself --------------------------------------------------------------
def test_every_subset_schema_names_its_3gpp_source() -> None:
    sub = spec.subset()
    assert {"UpfEventSubscription", "NotificationData", "ProblemDetails", "PatchItem"} <= set(sub)
    for name, schema in sub.items():
        file, source = spec.source_of(name)
        assert file in (spec.EE_FILE, spec.CD_FILE, spec.SM_FILE), name
        assert schema[SOURCE_KEY] == f"{file}#/components/schemas/{source}" and source == name
        jsonschema.Draft202012Validator.check_schema(schema)
        for ref in schema_refs(schema):
            assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in sub, (name, ref)


def test_the_constants_are_the_subset_enums() -> None:
    assert spec.enum_of("EventType") == [spec.USER_DATA_USAGE_MEASURES]
    assert spec.enum_of("UpfEventTrigger") == [spec.ONE_TIME, spec.PERIODIC]
    assert spec.enum_of("MeasurementType") == [spec.VOLUME, spec.THROUGHPUT, spec.APP_INFO]
    assert spec.enum_of("GranularityOfMeasurement") == [spec.PER_APPLICATION, spec.PER_SESSION, spec.PER_FLOW]
    assert spec.enum_of("DnProtocol") == [spec.DNS_QNAME, spec.TLS_SNI]
    assert spec.enum_of("FlowDirection") == [spec.BIDIRECTIONAL]


def test_refused_attributes_are_not_in_the_subset() -> None:
    for schema, attr in spec.NOT_IMPLEMENTED:
        assert attr not in spec.subset()[schema]["properties"], (schema, attr)
    for event_type in spec.EVENT_TYPES_LEFT_OUT:
        assert event_type not in spec.enum_of("EventType")


def test_samples_and_notifications_follow_the_subset() -> None:
    for body in sample_requests():
        validator("CreateEventSubscription").validate(body)
        check_create(body)
    for item in sample_patch():
        validator("PatchItem").validate(item)
    for data in notifications():
        validator("NotificationData").validate(data)


async def test_served_answers_follow_the_subset(tmp_path: Path, sink: Sink) -> None:
    got = await served_answers(tmp_path, sink)
    for body in got["created"]:
        validator("CreatedEventSubscription").validate(body)
    for body in got["problems"]:
        validator("ProblemDetails").validate(body)
    for body in got["notifications"]:
        validator("NotificationData").validate(body)


# ---- upstream: the real 3GPP files -----------------------------------------------------------
def _git_dir() -> Path:
    d = UPSTREAM / spec.UPSTREAM_REPO.replace("/", "+") / "repo"
    if not ((d / "HEAD").exists() or (d / "objects").is_dir()):
        pytest.skip(f"upstream snapshot of {spec.UPSTREAM_REPO} not present under {UPSTREAM} (set MEC_UPSTREAM)")
    rc = subprocess.run(["git", "--git-dir", str(d), "rev-parse", "--verify", "-q", f"{UPSTREAM_COMMIT}^{{commit}}"],
                        capture_output=True).returncode
    if rc != 0:
        pytest.skip(f"{spec.UPSTREAM_REPO} snapshot under {UPSTREAM} has no commit {UPSTREAM_COMMIT[:12]}")
    return d


@functools.cache
def upstream(file: str) -> dict[str, Any]:
    """A 3GPP OpenAPI file of the snapshot, parsed (skips when the snapshot is absent)."""
    p = subprocess.run(["git", "--git-dir", str(_git_dir()), "show", f"{UPSTREAM_COMMIT}:{file}"],
                       capture_output=True, check=True)
    doc: dict[str, Any] = yaml.safe_load(p.stdout)
    return doc


def upstream_schema(file: str, name: str) -> dict[str, Any]:
    schemas = upstream(file)["components"]["schemas"]
    assert name in schemas, f"{file} has no schema {name}"
    return dict(schemas[name])


def _target(file: str, ref: str) -> tuple[str, str]:
    """(file, schema name) of an upstream $ref seen in `file`."""
    other, _, pointer = ref.partition("#")
    return other or file, pointer.rsplit("/", 1)[-1]


def _our_target(ref: str) -> tuple[str, str]:
    return spec.source_of(ref.rsplit("/", 1)[-1])


def _up_enum(up: dict[str, Any]) -> list[Any] | None:
    if "enum" in up:
        return list(up["enum"])
    for branch in up.get("anyOf", []):
        if "enum" in branch:
            return list(branch["enum"])
    return None


def _up_type(up: dict[str, Any]) -> Any:
    if "type" in up:
        return up["type"]
    types = {b.get("type") for b in up.get("anyOf", []) if "type" in b}
    return types.pop() if len(types) == 1 else None


def compare(ours: dict[str, Any], up: dict[str, Any], file: str, where: str) -> list[str]:
    """Where our schema node says something the upstream node does not."""
    if "$ref" in ours:
        up_refs = [up["$ref"]] if "$ref" in up else [b["$ref"] for b in up.get("allOf", []) if "$ref" in b]
        want = _our_target(ours["$ref"])
        return [] if [_target(file, r) for r in up_refs] == [want] else [f"{where}: refers to {want}, upstream {up_refs}"]
    problems: list[str] = []
    if "enum" in ours:
        up_values = _up_enum(up) or []
        problems += [f"{where}: enum value {v!r} not upstream" for v in ours["enum"] if v not in up_values]
    for kw in KEYWORDS:
        if kw in ours:
            got = _up_type(up) if kw == "type" else up.get(kw)
            if got != ours[kw]:
                problems.append(f"{where}: {kw} {ours[kw]!r}, upstream {got!r}")
    if "properties" in ours:
        up_props = up.get("properties", {})
        for name, node in ours["properties"].items():
            if name not in up_props:
                problems.append(f"{where}.{name}: no such attribute upstream")
            else:
                problems += compare(node, up_props[name], file, f"{where}.{name}")
        up_req, our_req = set(up.get("required", [])), set(ours.get("required", []))
        if our_req != up_req & set(ours["properties"]) or not up_req <= set(ours["properties"]):
            problems.append(f"{where}: required {sorted(our_req)}, upstream {sorted(up_req)}")
    elif set(ours.get("required", [])) != set(up.get("required", [])):      # a branch such as {required: [x]}
        problems.append(f"{where}: required {ours.get('required')}, upstream {up.get('required')}")
    if "items" in ours:
        problems += compare(ours["items"], up.get("items", {}), file, f"{where}[]")
    for combinator in ("allOf", "anyOf", "oneOf"):
        for i, branch in enumerate(ours.get(combinator, [])):
            candidates = up.get(combinator, [])
            if not any(not compare(branch, c, file, "") for c in candidates):
                problems.append(f"{where}: {combinator}[{i}] {branch} matches no upstream branch")
    return problems


def test_the_snapshot_is_ts_29564_v18_4() -> None:
    assert "V18.4.0" in upstream(spec.EE_FILE)["externalDocs"]["description"]
    assert spec.SPEC_VERSION.endswith("V18.4.0")
    assert "/ee-subscriptions" in upstream(spec.EE_FILE)["paths"]
    assert upstream(spec.EE_FILE)["servers"][0]["url"] == "{apiRoot}/nupf-ee/v1"


def test_the_subset_matches_the_3gpp_schemas() -> None:
    problems = []
    for name, ours in spec.subset().items():
        file, source = spec.source_of(name)
        problems += compare({k: v for k, v in ours.items() if k != SOURCE_KEY}, upstream_schema(file, source),
                            file, f"{file}#{source}")
    assert not problems, "\n".join(problems)


def test_refused_and_ignored_attributes_and_event_types_exist_upstream() -> None:
    for schema, attr in [*spec.NOT_IMPLEMENTED, *spec.IGNORED]:
        file, source = spec.source_of(schema)
        assert attr in upstream_schema(file, source).get("properties", {}), (schema, attr)
    all_types = _up_enum(upstream_schema(spec.EE_FILE, "EventType")) or []
    assert set(spec.EVENT_TYPES_LEFT_OUT) | set(spec.enum_of("EventType")) == set(all_types)


@functools.cache
def _registry() -> Registry:  # type: ignore[type-arg]
    def retrieve(uri: str) -> Resource:  # type: ignore[type-arg]
        return Resource.from_contents(upstream(uri), default_specification=DRAFT4)
    return Registry(retrieve=retrieve)   # type: ignore[call-arg]


def real(file: str, name: str) -> jsonschema.Draft4Validator:
    """A validator for a 3GPP schema (OpenAPI 3.0 Schema Objects read as JSON Schema draft 4: `$ref`
    siblings ignored; `nullable` and `format` are not enforced)."""
    upstream(file)                                     # skips when the snapshot is absent
    return jsonschema.Draft4Validator({"$ref": f"{file}#/components/schemas/{name}"}, registry=_registry())


def test_samples_and_notifications_follow_the_3gpp_schemas() -> None:
    for body in sample_requests():
        real(spec.EE_FILE, "CreateEventSubscription").validate(body)
    for item in sample_patch():
        real(spec.CD_FILE, "PatchItem").validate(item)
    for data in notifications():
        real(spec.EE_FILE, "NotificationData").validate(data)


async def test_served_answers_follow_the_3gpp_schemas(tmp_path: Path, sink: Sink) -> None:
    upstream(spec.EE_FILE)
    got = await served_answers(tmp_path, sink)
    for body in got["created"]:
        real(spec.EE_FILE, "CreatedEventSubscription").validate(body)
    for body in got["problems"]:
        real(spec.CD_FILE, "ProblemDetails").validate(body)
    for body in got["notifications"]:
        real(spec.EE_FILE, "NotificationData").validate(body)


def test_the_3gpp_schemas_refuse_what_the_subset_refuses() -> None:
    """The upstream validator is not vacuous: it refuses bodies broken in the subset's terms."""
    bad = [{"subscription": {"eventList": []}},
           {"notificationItems": []},
           {"notificationItems": [{"eventType": "USER_DATA_USAGE_MEASURES", "timeStamp": "x"}]}]
    assert not real(spec.EE_FILE, "CreateEventSubscription").is_valid(bad[0])
    assert not real(spec.EE_FILE, "NotificationData").is_valid(bad[1])
    assert not real(spec.EE_FILE, "NotificationData").is_valid(bad[2])    # no UE address
    item = {"eventType": "USER_DATA_USAGE_MEASURES", "timeStamp": "t", "ueIpv4Addr": "10.45.0.2",
            "userDataUsageMeasurements": [{"volumeMeasurement": {"ulVolume": "12 bytes"}}]}
    assert not real(spec.EE_FILE, "NotificationItem").is_valid(item)      # TrafficVolume's pattern


def test_the_comparison_catches_drift() -> None:
    """compare() is not vacuous: a renamed field, a changed pattern, type, requirement, enum value or
    reference are all reported."""
    def drift(name: str, change: Any) -> list[str]:
        ours = copy.deepcopy({k: v for k, v in spec.subset()[name].items() if k != SOURCE_KEY})
        change(ours)
        file, source = spec.source_of(name)
        return compare(ours, upstream_schema(file, source), file, name)

    assert drift("UpfEventSubscription", lambda s: s["properties"].update(anyUE={"type": "boolean"}))
    assert drift("UpfEventSubscription", lambda s: s["required"].remove("nfId"))
    assert drift("UpfEventMode", lambda s: s["required"].append("repPeriod"))
    assert drift("UpfEventMode", lambda s: s["properties"]["maxReports"].update(type="string"))
    assert drift("TrafficVolume", lambda s: s.update(pattern="^\\d+ B$"))
    assert drift("MeasurementType", lambda s: s["enum"].append("DELAY_MEASUREMENT"))
    assert drift("NotificationItem", lambda s: s["properties"]["supi"].update({"$ref": "#/components/schemas/Dnn"}))
    assert drift("IpAddr", lambda s: s["oneOf"].append({"required": ["ipv4Prefix"]}))
    assert drift("UpfEvent", lambda s: s["properties"]["measurementTypes"].update(minItems=2))
