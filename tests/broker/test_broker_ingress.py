"""The broker end to end over real loopback HTTP: ingress answers, routing by every
filter dialect, retries, dead letters, replies and the TTL."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from brokerlib import Received, running_broker, subscriber, write_manifests

from testbed.broker.delivery import backoff
from testbed.broker.manifests import DeliverySpec

SUPI1 = "imsi-999700000000001"
BINARY = {"ce-specversion": "1.0", "ce-id": "b-1", "ce-source": "/detector/ue/1", "ce-type": "mec.app.buy"}


def routing_manifests(url: str) -> str:
    """One Broker; a Trigger per dialect, each to its own path on the subscriber."""
    def trig(name: str, spec: str, extra: str = "") -> str:
        return f"""\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: {name}, namespace: mec}}
spec:
  broker: default
  subscriber: {{uri: "{url}/{name}"}}
{spec}{extra}
---
"""
    return (
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: mec}\n"
        "spec: {delivery: {retry: 0}}\n---\n"
        + trig("exact", "  filters:\n    - exact: {type: mec.app.buy}\n")
        + trig("prefix", "  filters:\n    - prefix: {supi: imsi-99970}\n")
        + trig("suffix", "  filters:\n    - suffix: {subject: .mec.local}\n")
        + trig("all", "  filters:\n    - all:\n        - prefix: {type: mec.upf.}\n        - exact: {qfi: '9'}\n")
        + trig("any", "  filters:\n    - any:\n        - exact: {type: mec.app.buy}\n        - exact: {type: mec.upf.dns.query}\n")
        + trig("not", "  filters:\n    - not: {prefix: {type: mec.upf.}}\n")
        + trig("cesql", "  filters:\n    - cesql: \"type LIKE 'mec.upf.%' AND INT(qfi) >= 5\"\n")
        + trig("multi", "  filters:\n    - prefix: {type: mec.}\n    - exact: {supi: " + SUPI1 + "}\n"
                        "    - cesql: \"NOT EXISTS dnn\"\n")
        + trig("legacy", "  filter:\n    attributes: {type: mec.upf.dns.query, supi: ''}\n")
        + trig("legacyempty", "  filter: {attributes: {}}\n")
        + trig("wins", "  filter: {attributes: {type: never}}\n  filters:\n    - exact: {type: mec.app.buy}\n")
        + trig("everything", "")
    )


EVENTS = [
    # id, attributes (beyond id/source/specversion), the Triggers that must get it
    ("buy-1", {"type": "mec.app.buy", "supi": SUPI1},
     {"exact", "prefix", "any", "not", "multi", "legacyempty", "wins", "everything"}),
    ("dns-1", {"type": "mec.upf.dns.query", "subject": "video.mec.local", "supi": SUPI1, "qfi": "9"},
     {"prefix", "suffix", "all", "any", "cesql", "multi", "legacy", "legacyempty", "everything"}),
    ("dns-2", {"type": "mec.upf.dns.query", "subject": "example.org", "qfi": "1", "dnn": "internet"},
     {"any", "legacyempty", "everything"}),
    ("flow-1", {"type": "mec.upf.flow.start", "supi": "imsi-001010000000001", "qfi": "x"},
     {"legacyempty", "everything"}),
    ("order-1", {"type": "mec.order.created", "subject": "a.mec.local", "supi": SUPI1, "dnn": "ims"},
     {"prefix", "suffix", "not", "legacyempty", "everything"}),
]


async def test_routing_by_every_dialect(manifest_dir: Path, state_dir: Path) -> None:
    async with subscriber() as sub:
        write_manifests(manifest_dir, routing_manifests(sub.url))
        async with running_broker(manifest_dir, state_dir) as broker:
            for i, (event_id, attrs, _) in enumerate(EVENTS):
                ce = {"id": event_id, "source": "/detector/ue/1", "specversion": "1.0", **attrs}
                if i % 2:  # alternate binary and structured mode
                    body = json.dumps({**ce, "data": {"n": i}}).encode()
                    status = await broker.post("/mec/default", {"Content-Type": "application/cloudevents+json"}, body)
                else:
                    status = await broker.send(ce, {"n": i})
                assert status == 202
            await broker.settle()
    names = {n for _, _, want in EVENTS for n in want} | {"exact", "wins"}
    for name in sorted(names):
        expected = sorted(eid for eid, _, want in EVENTS if name in want)
        assert sorted(sub.ids(f"/{name}")) == expected, name
    assert len(sub.got) == sum(len(want) for _, _, want in EVENTS)
    # what subscribers see: the event, knativearrivaltime, no broker TTL, Prefer: reply
    rec = next(r for r in sub.at("/everything") if r.attrs["id"] == "dns-1")
    assert rec.attrs["subject"] == "video.mec.local" and rec.attrs["qfi"] == "9"
    assert "knativearrivaltime" in rec.attrs and "knativebrokerttl" not in rec.attrs
    assert "time" not in rec.attrs
    assert rec.data == {"n": 1}
    assert rec.headers.get("Prefer") == "reply"


async def test_ingress_status_codes(manifest_dir: Path, state_dir: Path) -> None:
    async with subscriber() as sub:
        write_manifests(manifest_dir, routing_manifests(sub.url))
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.post("/mec/default", BINARY) == 202
            assert await broker.post("/mec/default/", BINARY) == 202
            assert await broker.post("/mec/nope", BINARY) == 404
            assert await broker.post("/other/default", BINARY) == 404
            for missing in ("ce-id", "ce-source", "ce-type"):
                headers = {k: v for k, v in BINARY.items() if k != missing}
                assert await broker.post("/mec/default", headers) == 400, missing
            assert await broker.post("/mec/default", {**BINARY, "ce-specversion": "0.3"}) == 400
            assert await broker.post("/mec/default", {**BINARY, "ce-Bad_Name": "x"}) == 400
            assert await broker.post("/mec/default", {"Content-Type": "application/json"}, b"{}") == 400
            structured = {"Content-Type": "application/cloudevents+json"}
            assert await broker.post("/mec/default", structured, b"{not json") == 400
            assert await broker.post("/mec/default", structured, b'{"specversion":"1.0","source":"s","type":"t"}') == 400
            assert await broker.post("/mec/default", structured, b'{"specversion":"1.0","id":"","source":"s","type":"t"}') == 400
            assert await broker.post("/mec/default", {"Content-Type": "application/cloudevents-batch+json"}, b"[]") == 400
            assert await broker.post("/mec", BINARY) == 400
            assert await broker.post("/a/b/c", BINARY) == 400
            assert await broker.post("/", BINARY) == 404
            for method in ("GET", "PUT", "DELETE"):
                async with broker.session.request(method, broker.url + "/mec/default") as resp:
                    assert resp.status == 405 and resp.headers["Allow"] == "POST, OPTIONS"
            async with broker.session.options(broker.url + "/mec/default") as resp:
                assert resp.status == 200 and resp.headers["WebHook-Allowed-Origin"] == "*"
            stats = await broker.stats()
            await broker.settle()
    assert stats["broker"]["accepted"] == {"mec/default": 2}
    assert stats["broker"]["refused"]["unknown-broker"] == 2


def retry_manifests(url: str, policy: str, retry: int) -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: mec}}
spec:
  delivery:
    retry: {retry}
    backoffPolicy: {policy}
    backoffDelay: PT0.01S
    deadLetterSink: {{uri: "{url}/dls"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: flaky, namespace: mec}}
spec:
  broker: default
  subscriber: {{uri: "{url}/unavailable"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: refuses, namespace: mec}}
spec:
  broker: default
  subscriber: {{uri: "{url}/bad-request"}}
  delivery:
    retry: 5
    deadLetterSink: {{uri: "{url}/dls-trigger"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: down, namespace: mec}}
spec:
  broker: default
  subscriber: {{uri: "http://127.0.0.1:1/nobody-listens"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: recovers, namespace: mec}}
spec:
  broker: default
  subscriber: {{uri: "{url}/recovers"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: garbage, namespace: mec}}
spec:
  broker: default
  subscriber: {{uri: "{url}/garbage"}}
  delivery: {{retry: 1, deadLetterSink: {{uri: "{url}/dls-garbage"}}}}
"""


async def test_retries_then_dead_letter(manifest_dir: Path, state_dir: Path) -> None:
    async with subscriber() as sub:
        sub.behaviours["/unavailable"] = lambda r: (503, {"Content-Type": "text/plain"}, b"busy, try later")
        sub.behaviours["/bad-request"] = lambda r: (400, {}, b"no thanks")
        sub.behaviours["/recovers"] = lambda r: (429, {}, b"") if len(sub.at("/recovers")) < 3 else (200, {}, b"")
        sub.behaviours["/garbage"] = lambda r: (200, {"Content-Type": "text/html"}, b"<html>not an event</html>")
        write_manifests(manifest_dir, retry_manifests(sub.url, "exponential", 3))
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.send({"id": "r-1", "source": "/t", "specversion": "1.0", "type": "t.retry"},
                                     {"k": "v"}) == 202
            await broker.settle()
    # 503: the first try and 3 retries (Broker delivery), then the dead-letter sink
    assert sub.ids("/unavailable") == ["r-1"] * 4
    dl = {r.attrs["knativeerrordest"]: r for r in sub.at("/dls")}
    assert set(dl) == {f"{sub.url}/unavailable", "http://127.0.0.1:1/nobody-listens"}
    first = dl[f"{sub.url}/unavailable"]
    assert first.attrs["id"] == "r-1" and first.attrs["type"] == "t.retry" and first.data == {"k": "v"}
    assert first.attrs["knativeerrorcode"] == "503"
    assert base64.b64decode(first.attrs["knativeerrordata"]) == b"busy, try later"
    assert dl["http://127.0.0.1:1/nobody-listens"].attrs["knativeerrorcode"] == "-1"
    # 400 is not retried; the Trigger's own delivery (and dead-letter sink) replaces the Broker's
    assert sub.ids("/bad-request") == ["r-1"]
    [trig_dl] = sub.at("/dls-trigger")
    assert trig_dl.attrs["knativeerrorcode"] == "400"
    assert base64.b64decode(trig_dl.attrs["knativeerrordata"]) == b"no thanks"
    # 429 twice, then accepted: no dead letter
    assert sub.ids("/recovers") == ["r-1"] * 3
    # a 200 whose body is not a CloudEvent is a failure (502), retried, then dead-lettered
    assert sub.ids("/garbage") == ["r-1"] * 2
    [garbage_dl] = sub.at("/dls-garbage")
    assert garbage_dl.attrs["knativeerrorcode"] == "502"
    assert len(sub.at("/dls")) == 2


def test_backoff_schedule() -> None:
    exp = DeliverySpec(retry=4, backoff_policy="exponential", backoff_delay=0.2)
    lin = DeliverySpec(retry=4, backoff_policy="linear", backoff_delay=0.5)
    assert [backoff(exp, i) for i in range(4)] == [0.2, 0.4, 0.8, 1.6]
    assert [backoff(lin, i) for i in range(4)] == [0.0, 0.5, 1.0, 1.5]
    assert backoff(DeliverySpec(retry=3), 2) == 0.0
    assert backoff(None, 1) == 0.0


def reply_manifests(url: str) -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: mec}}
spec:
  delivery: {{retry: 0, deadLetterSink: {{uri: "{url}/dls"}}}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: shop, namespace: mec}}
spec:
  broker: default
  filters: [{{exact: {{type: mec.app.buy}}}}]
  subscriber: {{uri: "{url}/shop"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: audit, namespace: mec}}
spec:
  broker: default
  filter: {{attributes: {{type: mec.order.created}}}}
  subscriber: {{uri: "{url}/audit"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: echo, namespace: mec}}
spec:
  broker: default
  filters: [{{exact: {{type: mec.loop}}}}]
  subscriber: {{uri: "{url}/echo"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: accepted, namespace: mec}}
spec:
  broker: default
  filters: [{{exact: {{type: mec.app.buy}}}}]
  subscriber: {{uri: "{url}/accepted-with-event"}}
"""


def _reply(rec: Received, type_: str, id_: str, structured: bool = False) -> tuple[int, dict[str, str], bytes]:
    if structured:
        body = {"specversion": "1.0", "id": id_, "source": "/shop", "type": type_, "data": {"for": rec.attrs["id"]}}
        return 200, {"Content-Type": "application/cloudevents+json"}, json.dumps(body).encode()
    return 200, {"ce-specversion": "1.0", "ce-id": id_, "ce-source": "/shop", "ce-type": type_,
                 "Content-Type": "application/json"}, json.dumps({"for": rec.attrs["id"]}).encode()


async def test_reply_is_routed_and_ttl_stops_loops(manifest_dir: Path, state_dir: Path) -> None:
    async with subscriber() as sub:
        sub.behaviours["/shop"] = lambda r: _reply(r, "mec.order.created", f"order-{r.attrs['id']}", structured=True)
        sub.behaviours["/echo"] = lambda r: _reply(r, "mec.loop", f"{r.attrs['id']}+")
        # a 202 answer is never a reply, whatever it carries
        sub.behaviours["/accepted-with-event"] = lambda r: (202, _reply(r, "mec.order.created", "x")[1], b"{}")
        write_manifests(manifest_dir, reply_manifests(sub.url))
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.send({"id": "buy-7", "source": "/ue/1", "specversion": "1.0",
                                      "type": "mec.app.buy"}, {"item": 7}) == 202
            assert await broker.send({"id": "L", "source": "/ue/1", "specversion": "1.0", "type": "mec.loop",
                                      "knativebrokerttl": "5"}) == 202
            assert await broker.send({"id": "dead", "source": "/ue/1", "specversion": "1.0", "type": "mec.loop",
                                      "knativebrokerttl": "1"}) == 400
            await broker.settle()
    [order] = sub.at("/audit")
    assert order.attrs["id"] == "order-buy-7" and order.attrs["source"] == "/shop"
    assert order.data == {"for": "buy-7"} and "knativebrokerttl" not in order.attrs
    # TTL 5 -> 4 at the ingress; each reply comes back with one less: 4 deliveries, then refused
    assert sub.ids("/echo") == ["L", "L+", "L++", "L+++"]
    [dl] = sub.at("/dls")
    assert dl.attrs["id"] == "L+++" and dl.attrs["knativeerrorcode"] == "400"
    assert dl.attrs["knativeerrordest"].endswith("/mec/default")
