"""EventTypes in the local broker: loaded from the manifests, listed in /_local/stats and
/_local/eventtypes, and a warning plus a count (still delivered) for events of undeclared types at a
Broker or Channel ingress."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from brokerlib import (
    REPO,
    assert_manifest_error,
    broker_with_trigger,
    running_broker,
    subscriber,
    wait_for,
    write_manifests,
)

from testbed.broker.eventtypes import EventTypeRegistry
from testbed.broker.manifests import EventType, Ref, load_manifests

KNATIVE_DIR = REPO / "k8s" / "knative"
EVENT = {"specversion": "1.0", "id": "e-1", "source": "/mec/detector/d/ue/imsi-1", "type": "mec.app.buy"}


def eventtype(name: str, type_: str, ref: str = "{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}",
              ns: str = "mec") -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1beta2
kind: EventType
metadata: {{name: {name}, namespace: {ns}}}
spec:
  type: {type_}
  source: /mec/detector/{{detector}}/ue/{{uekey}}
  reference: {ref}
  description: test type {type_}
---
"""


CHANNEL = """\
apiVersion: messaging.knative.dev/v1
kind: Channel
metadata: {name: events, namespace: mec}
---
"""


def warnings_about(caplog: pytest.LogCaptureFixture, type_: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and f"event type {type_!r}" in r.getMessage()]


# ------------------------------------------------------------------ loading

def test_the_project_eventtypes_load_and_name_the_broker() -> None:
    from detector.eventtypes import build_catalog

    m = load_manifests(KNATIVE_DIR)
    assert {et.type for et in m.eventtypes.values()} == set(build_catalog().types)
    for et in m.eventtypes.values():
        assert et.namespace == "mec" and et.api_version == "eventing.knative.dev/v1beta2"
        assert et.reference == Ref("Broker", "default", "mec", "eventing.knative.dev/v1")
        assert et.description and et.source
    assert not any("EventType" in s for s in m.skipped)


def test_every_served_version_loads(manifest_dir: Path) -> None:
    write_manifests(manifest_dir, """\
apiVersion: eventing.knative.dev/v1beta3
kind: EventType
metadata: {name: three, namespace: mec}
spec:
  reference: {apiVersion: messaging.knative.dev/v1, kind: Channel, name: events}
  attributes:
    - {name: type, value: mec.three, required: true}
    - {name: source, value: /three}
---
apiVersion: eventing.knative.dev/v1beta1
kind: EventType
metadata: {name: one}
spec: {type: mec.one, broker: default}
""")
    m = load_manifests(manifest_dir)
    three, one = m.eventtypes[("mec", "three")], m.eventtypes[("default", "one")]
    assert (three.type, three.source) == ("mec.three", "/three")
    assert three.reference == Ref("Channel", "events", "mec", "messaging.knative.dev/v1")
    assert one.type == "mec.one" and one.reference == Ref("Broker", "default", "default", "eventing.knative.dev/v1")


@pytest.mark.parametrize(("text", "message"), [
    ("apiVersion: eventing.knative.dev/v1beta2\nkind: EventType\nmetadata: {name: x, namespace: mec}\n"
     "spec: {source: /s}\n", "EventType mec/x: missing field spec.type"),
    ("apiVersion: eventing.knative.dev/v1beta3\nkind: EventType\nmetadata: {name: x, namespace: mec}\n"
     "spec: {attributes: [{name: source, value: /s}]}\n", "missing field spec.attributes[name=type].value"),
    ("apiVersion: eventing.knative.dev/v1beta2\nkind: EventType\nmetadata: {name: x, namespace: mec}\n"
     "spec: {type: t, reference: {kind: Broker, name: default}}\n", "missing field spec.reference.apiVersion"),
    (eventtype("x", "a") + eventtype("x", "b"), "EventType mec/x: defined twice"),
])
def test_bad_eventtypes_are_refused(manifest_dir: Path, text: str, message: str) -> None:
    assert_manifest_error(manifest_dir, text, message)


# ------------------------------------------------------------------ which types count where

def _et(name: str, type_: str, ref: Ref | None, ns: str = "mec") -> EventType:
    return EventType(ns, name, type_, None, ref)


def test_declared_sets_per_ingress() -> None:
    broker = Ref("Broker", "default", "mec")
    registry = EventTypeRegistry([
        _et("a", "mec.a", broker), _et("b", "mec.b", Ref("InMemoryChannel", "buys", "mec")),
        _et("free", "mec.free", None), _et("other", "mec.other", Ref("Broker", "default", "other")),
    ])
    assert registry.declared_for("mec", "Broker", "default") == {"mec.a", "mec.free"}
    assert registry.declared_for("mec", "Channel", "buys") == {"mec.b", "mec.free"}   # Channel = its IMC
    # nothing names this Channel: the namespace's catalogue counts
    assert registry.declared_for("mec", "Channel", "events") == {"mec.a", "mec.b", "mec.free"}
    assert registry.declared_for("other", "Broker", "default") == {"mec.other"}
    assert registry.declared_for("empty", "Broker", "default") is None           # nothing to check
    assert registry.check("empty", "Broker", "default", "anything")


def test_warnings_are_rate_limited_per_type(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    registry = EventTypeRegistry([_et("a", "mec.a", Ref("Broker", "default", "mec"))], warn_every=10.0,
                                 clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="testbed.broker"):
        assert registry.check("mec", "Broker", "default", "mec.a")
        assert not registry.check("mec", "Broker", "default", "mec.x")
        now[0] += 5
        assert not registry.check("mec", "Broker", "default", "mec.x")
        assert not registry.check("mec", "Broker", "default", "mec.y")
        now[0] += 5
        assert not registry.check("mec", "Broker", "default", "mec.x")
    assert len(warnings_about(caplog, "mec.x")) == 2
    assert "(2 event(s) since the last warning)" in warnings_about(caplog, "mec.x")[1]
    assert len(warnings_about(caplog, "mec.y")) == 1 and not warnings_about(caplog, "mec.a")
    assert registry.snapshot()["undeclared_types"] == {"mec.x": 3, "mec.y": 1}


# ------------------------------------------------------------------ over HTTP

async def test_stats_and_endpoint_list_the_eventtypes(manifest_dir: Path, state_dir: Path) -> None:
    write_manifests(manifest_dir, broker_with_trigger("t", "mec.app.buy", "http://127.0.0.1:9/")
                    + eventtype("mec.app.buy", "mec.app.buy"))
    async with running_broker(manifest_dir, state_dir) as broker:
        stats = await broker.stats()
        assert stats["undeclared_types"] == {}
        (listed,) = stats["eventtypes"]
        assert listed == {"namespace": "mec", "name": "mec.app.buy", "apiVersion": "eventing.knative.dev/v1beta2",
                          "type": "mec.app.buy", "source": "/mec/detector/{detector}/ue/{uekey}",
                          "description": "test type mec.app.buy",
                          "reference": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                                        "namespace": "mec", "name": "default"}}
        async with broker.session.get(broker.url + "/_local/eventtypes") as resp:
            assert resp.status == 200
            assert await resp.json() == {"eventtypes": [listed], "undeclared_types": {}}
    async with running_broker(manifest_dir, state_dir, local_api=False) as broker, \
            broker.session.get(broker.url + "/_local/eventtypes") as resp:
        assert resp.status == 404


async def test_an_undeclared_type_is_delivered_counted_and_warned_once(
        manifest_dir: Path, state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with subscriber() as sub:
        write_manifests(manifest_dir, broker_with_trigger("all", "mec.app.buy", f"{sub.url}/buy")
                        + eventtype("mec.app.buy", "mec.app.visit"))   # mec.app.buy itself is not declared
        with caplog.at_level(logging.WARNING, logger="testbed.broker"):
            async with running_broker(manifest_dir, state_dir) as broker:
                for i in range(3):
                    assert await broker.send({**EVENT, "id": f"e-{i}"}) == 202
                assert await broker.send({**EVENT, "id": "v-1", "type": "mec.app.visit"}) == 202
                await wait_for(lambda: len(sub.at("/buy")) == 3, what="three deliveries")
                stats = await broker.stats()
    assert sorted(sub.ids("/buy")) == ["e-0", "e-1", "e-2"]         # delivered all the same
    assert stats["undeclared_types"] == {"mec.app.buy": 3}
    (line,) = warnings_about(caplog, "mec.app.buy")
    assert "Broker mec/default" in line and "delivered anyway" in line
    assert not warnings_about(caplog, "mec.app.visit")


async def test_channel_ingress_checks_too(manifest_dir: Path, state_dir: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    write_manifests(manifest_dir, CHANNEL + broker_with_trigger("t", "mec.app.buy", "http://127.0.0.1:9/")
                    + eventtype("mec.app.buy", "mec.app.buy"))
    with caplog.at_level(logging.WARNING, logger="testbed.broker"):
        async with running_broker(manifest_dir, state_dir) as broker:
            # no EventType names the Channel: the namespace's (declared for the Broker) count
            assert await broker.send(EVENT, path="/channels/mec/events") == 202
            assert await broker.send({**EVENT, "id": "x", "type": "mec.nobody"}, path="/channels/mec/events") == 202
            stats = await broker.stats()
    assert stats["undeclared_types"] == {"mec.nobody": 1}
    assert stats["channels"]["mec/events"]["accepted"] == 2
    (line,) = warnings_about(caplog, "mec.nobody")
    assert "Channel mec/events" in line
    assert not warnings_about(caplog, "mec.app.buy")


async def test_no_eventtypes_no_warnings(manifest_dir: Path, state_dir: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    write_manifests(manifest_dir, broker_with_trigger("t", "mec.app.buy", "http://127.0.0.1:9/"))
    with caplog.at_level(logging.WARNING, logger="testbed.broker"):
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.send({**EVENT, "type": "mec.anything"}) == 202
            stats = await broker.stats()
    assert stats["eventtypes"] == [] and stats["undeclared_types"] == {}
    assert not warnings_about(caplog, "mec.anything")


async def test_the_project_manifests_declare_what_the_functions_reply(state_dir: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The project's own manifests: a detector type and a reply type are declared, a stray one is not."""
    with caplog.at_level(logging.WARNING, logger="testbed.broker"):
        async with running_broker(KNATIVE_DIR, state_dir) as broker:
            eng = broker.engine
            for type_ in ("mec.upf.http.request", "mec.order.created", "mec.edge.warmed", "mec.source.created"):
                assert eng.eventtypes.check("mec", "Broker", "default", type_), type_
            assert not eng.eventtypes.check("mec", "Channel", "mec-events", "mec.stray")
            assert (await broker.stats())["undeclared_types"] == {"mec.stray": 1}
    assert len(warnings_about(caplog, "mec.stray")) == 1
