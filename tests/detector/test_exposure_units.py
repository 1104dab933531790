"""Nupf_EventExposure pieces on their own: JSON Patch (RFC 6902), the request checks (any JSON gives a
Plan or a ProblemDetails, never another exception), targets, the measurements' text formats."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_exposure_api import NF_ID, SUPI1, demo_events, subscription

from detector.exposure import jsonpatch, spec
from detector.exposure.models import (
    Problem,
    Target,
    UeIdentity,
    check_create,
    check_subscription,
    is_mandatory,
)
from detector.exposure.reporter import BIT_RATE_UNITS, PACKET_RATE_UNITS, Reporter, flow_info, is_fqdn, rate

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=12)
URI = "http://127.0.0.1:9/notify"


# ---- JSON Patch ------------------------------------------------------------------------------
@pytest.mark.parametrize(("doc", "ops", "want"), [
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"foo": "bar", "baz": "qux"}),   # RFC 6902 A.1
    ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}], {"foo": ["bar", "qux", "baz"]}),
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": "x"}], {"foo": ["bar", "x"]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ({"baz": "qux"}, [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo"}),
    ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ({"a/b": 1, "m~n": 2}, [{"op": "copy", "from": "/a~1b", "path": "/m~0n"}], {"a/b": 1, "m~n": 1}),
    ({"a": [1, 2]}, [{"op": "test", "path": "/a", "value": [1.0, 2]}], {"a": [1, 2]}),
    ({"a": 1}, [{"op": "replace", "path": "", "value": {"b": 2}}], {"b": 2}),
])
def test_patch_applies(doc: Any, ops: list[Any], want: Any) -> None:
    before = copy.deepcopy(doc)
    assert jsonpatch.apply(doc, ops) == want
    assert doc == before                                 # the original is never changed


@pytest.mark.parametrize(("ops", "index"), [
    ([{"op": "add", "path": "/a/b/c", "value": 1}], 0),                     # no parent
    ([{"op": "remove", "path": "/nope"}], 0),
    ([{"op": "add", "path": "/x", "value": 1}, {"op": "test", "path": "/flag", "value": 1}], 1),  # true is not 1
    ([{"op": "add", "path": "/list/01", "value": 1}], 0),                  # leading zero
    ([{"op": "add", "path": "/list/5", "value": 1}], 0),                   # out of range
    ([{"op": "move", "from": "/obj", "path": "/obj/inner"}], 0),            # into its own child
    ([{"op": "add", "path": "x", "value": 1}], 0),                         # not a pointer
    ([{"op": "add", "path": "/a~2", "value": 1}], 0),                      # bad escape
    ([{"op": "copy", "path": "/x"}], 0),                                   # no from
    ([{"op": "replace", "path": "/flag"}], 0),                             # no value
    ([{"op": "remove", "path": ""}], 0),
])
def test_patch_failures_name_the_operation(ops: list[Any], index: int) -> None:
    doc = {"flag": True, "list": [1], "obj": {"a": 1}}
    with pytest.raises(jsonpatch.PatchError) as e:
        jsonpatch.apply(doc, ops)
    assert e.value.index == index and f"(failed operation index= {index})" in str(e.value)


def test_json_equality_keeps_booleans_apart() -> None:
    assert jsonpatch.json_equal(1, 1.0) and not jsonpatch.json_equal(True, 1) and not jsonpatch.json_equal(0, False)
    assert jsonpatch.json_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not jsonpatch.json_equal("1", 1) and not jsonpatch.json_equal([1], [1, 2])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.fixed_dictionaries({"op": st.sampled_from([*jsonpatch.OPS, "bad"]) | JSON,
                                           "path": st.sampled_from(["", "/a", "/a/0", "/a/-", "/b/c", "/~1"]) | JSON},
                                          optional={"value": JSON, "from": st.sampled_from(["/a", "/b"]) | JSON}),
                    min_size=1, max_size=4) | JSON)
def test_any_patch_applies_or_fails_cleanly(ops: Any) -> None:
    doc = {"a": [1, {"x": 2}], "b": {"c": None}}
    try:
        jsonpatch.apply(doc, ops if isinstance(ops, list) else [ops])
    except jsonpatch.PatchError:
        pass
    assert doc == {"a": [1, {"x": 2}], "b": {"c": None}}


# ---- request checks --------------------------------------------------------------------------
SPOTS = (("subscription",), ("subscription", "eventList", 0), ("subscription", "eventReportingMode"),
         ("subscription", "ueIpAddress"), ("subscription", "snssai"), ())
KEYS = ("eventList", "eventNotifyUri", "notifyCorrelationId", "eventReportingMode", "nfId", "ueIpAddress", "supi",
        "anyUe", "dnn", "snssai", "gpsi", "type", "measurementTypes", "appIds", "granularityOfMeasurement",
        "trigger", "repPeriod", "maxReports", "expiry", "ipv4Addr", "ipv6Addr", "ipv6Prefix", "sst", "sd",
        "subscription", "trafficFilters")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spot=st.sampled_from(SPOTS), key=st.sampled_from(KEYS), value=JSON | st.sampled_from(
    ["PERIODIC", "ONE_TIME", "2999-01-01T00:00:00Z", "2001:db8::1", "2001:db8::/64", "10.45.0.2", "000001"]))
def test_any_create_body_gives_a_plan_or_a_problem(spot: tuple[Any, ...], key: str, value: Any) -> None:
    body = subscription(URI, ueIpAddress={"ipv4Addr": "10.45.0.2"}, anyUe=None, snssai={"sst": 1},
                        eventReportingMode={"trigger": "PERIODIC", "repPeriod": 5})
    node: Any = body
    for step in spot:
        node = node[step]
    node[key] = value
    try:
        _, plan = check_create(body)
    except Problem as p:
        assert p.status == 400 and p.invalid_params and all(ip["param"] is not None for ip in p.invalid_params)
        return
    assert plan.notify_uri == body["subscription"]["eventNotifyUri"]


@settings(max_examples=200, deadline=None)
@given(body=JSON)
def test_any_json_gives_a_problem(body: Any) -> None:
    with pytest.raises(Problem):
        check_create(body)
    with pytest.raises(Problem):
        check_subscription(body)


def test_what_is_mandatory() -> None:
    assert is_mandatory("CreateEventSubscription", "/subscription/eventList/0/type")
    assert is_mandatory("CreateEventSubscription", "")
    assert not is_mandatory("CreateEventSubscription", "/subscription/snssai/sst")
    assert is_mandatory("UpfEventSubscription", "/eventReportingMode/trigger")
    assert not is_mandatory("UpfEventSubscription", "/eventReportingMode/repPeriod")


def test_a_plan_has_defaults() -> None:
    _, plan = check_create(subscription(URI, eventList=[{"type": "USER_DATA_USAGE_MEASURES"}]))
    (ev,) = plan.events
    assert ev.granularity == spec.PER_SESSION and ev.measurements == {spec.VOLUME, spec.THROUGHPUT, spec.APP_INFO}
    assert plan.trigger == spec.ONE_TIME and plan.target.any_ue and plan.correlation_id == "corr-1"


# ---- targets ---------------------------------------------------------------------------------
def _ue(ip: str, supi: str | None = None, dnn: str | None = None, snssai: tuple[int, str | None] | None = None
        ) -> UeIdentity:
    return UeIdentity(ip, ipaddress.ip_address(ip), supi, dnn, snssai)


def test_targets_match() -> None:
    ue = _ue("2001:db8:cafe::2", SUPI1, "Internet", (1, "000001"))
    assert Target(any_ue=True).matches(ue)
    assert Target(False, supi=SUPI1).matches(ue) and not Target(False, supi="imsi-1").matches(ue)
    assert Target(False, prefix=ipaddress.ip_network("2001:db8:cafe::/48")).matches(ue)
    assert Target(False, address=ipaddress.ip_address("2001:db8:cafe:0::2")).matches(ue)
    assert Target(True, dnn="internet").matches(ue) and not Target(True, dnn="ims").matches(ue)
    assert Target(True, snssai=(1, "000001")).matches(ue) and not Target(True, snssai=(1, None)).matches(ue)
    assert not Target(True, dnn="internet").matches(_ue("10.45.0.9"))


# ---- what the reporter writes ------------------------------------------------------------------
def test_rates_and_flow_descriptions() -> None:
    assert rate(0, BIT_RATE_UNITS) == "0 bps" and rate(999.9999, BIT_RATE_UNITS) == "1000 bps"
    assert rate(344613.4, BIT_RATE_UNITS) == "344.613 Kbps" and rate(2.5e15, BIT_RATE_UNITS) == "2500 Tbps"
    assert rate(12.5, PACKET_RATE_UNITS) == "12.5 pps" and rate(1500, PACKET_RATE_UNITS) == "1.5 kpps"
    assert flow_info(("udp", "10.45.0.2", 40000, "10.200.0.53", 53)) == {
        "flowDescription": "permit out 17 from 10.200.0.53 53 to 10.45.0.2 40000", "flowDirection": "BIDIRECTIONAL"}
    assert flow_info(("icmp", "10.45.0.2", 0, "10.200.0.1", 0))["flowDescription"] == \
        "permit out 1 from 10.200.0.1 to 10.45.0.2"
    assert is_fqdn("shop.mec.local") and not is_fqdn("localhost") and not is_fqdn("a..b")


def test_the_reporter_reads_tap_events() -> None:
    r = Reporter()
    samples = [s for ev in demo_events() if (s := r.sample(ev)) is not None]
    assert r.saw_flow_end
    kinds = {(s.domain[1] if s.domain else None, s.url is not None, s.volume is not None) for s in samples}
    assert kinds == {("DNS_QNAME", False, False), (None, True, False), (None, False, True)}
    http = next(s for s in samples if s.url)
    assert http.app_id == "shop.mec.local" and http.flow == ("tcp", "10.45.0.2", 44680, "10.200.0.10", 80)
    end = next(s for s in samples if s.volume and s.flow == http.flow)
    assert end.app_id == "shop.mec.local"          # the flow's Host names its application


def test_odd_app_events_measure_nothing() -> None:
    r = Reporter()
    base = {"id": "x" * 8, "time": "2026-01-01T00:00:00Z", "point": "n3", "tap": "t", "direction": "ul"}
    odd = [{**base, "kind": "flow.end", "ue": {"ip": "not-an-ip"}, "app": {}},
           {**base, "kind": "dns.query", "ue": {"ip": "10.45.0.2"}, "app": {"qname": "localhost", "qtype": 1},
            "flow": {"proto": "udp", "src": "10.45.0.2", "dst": "10.0.0.1"}},
           {**base, "kind": "http.request", "app": {"method": "GET", "host": "h.example", "path": "*"},
            "flow": {"proto": "tcp", "src": "10.45.0.2", "dst": "10.0.0.1"}},
           {**base, "kind": "flow.end", "ue": {"ip": "10.45.0.2"}, "app": {"bytes_ul": True}}]
    samples = [r.sample(e) for e in odd]
    assert samples[0] is None
    assert samples[1] is not None and samples[1].domain is None
    assert samples[2] is not None and samples[2].url is None
    assert samples[3] is not None and samples[3].volume is None
    _, plan = check_create(subscription(URI, nfId=NF_ID))
    r.watch("s", plan, 0.0)
    assert r.offer(odd, 1.0) == []
