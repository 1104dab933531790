"""Trace context through the local broker and the function server: the Distributed Tracing
extension (`traceparent`, `tracestate`) reaches a subscriber unchanged, in both content modes;
the function server journals and logs it, and its reply continues the trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from brokerlib import broker_with_trigger, running_broker, subscriber, wait_for, write_manifests

from mec_common.tracing import FUNCTION, downstream_spans, parse_traceparent
from testbed.functions.serve import invocation_spans

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "mec=upf1,congo=t61rcWkgMzE"
BUY = {"specversion": "1.0", "id": "buy-1", "source": "/mec/detector/demo/ue/imsi-999700000000001",
       "type": "mec.app.buy", "supi": "imsi-999700000000001", "traceparent": TRACEPARENT, "tracestate": TRACESTATE}


async def test_the_broker_passes_the_trace_context_to_a_subscriber(manifest_dir: Path, state_dir: Path) -> None:
    async with subscriber() as sub:
        write_manifests(manifest_dir, broker_with_trigger("buys", "mec.app.buy", f"{sub.url}/buy"))
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.send(BUY, {"item": "3"}) == 202
            structured = {**BUY, "id": "buy-2", "datacontenttype": "application/json", "data": {"item": "4"}}
            assert await broker.post("/mec/default", {"Content-Type": "application/cloudevents+json"},
                                     json.dumps(structured).encode()) == 202
            await wait_for(lambda: len(sub.at("/buy")) == 2, what="both events delivered")
    for got in sub.at("/buy"):
        assert got.attrs["traceparent"] == TRACEPARENT and got.attrs["tracestate"] == TRACESTATE
    assert sub.at("/buy")[0].headers["ce-traceparent"] == TRACEPARENT   # binary mode: an extension header


FUNCTIONS = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: mec}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: buys, namespace: mec}
spec:
  broker: default
  filters: [{exact: {type: mec.app.buy}}]
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn-buy}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: audit, namespace: mec}
spec:
  broker: default
  filters: [{exact: {type: mec.order.created}}]
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn-logger}}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: fn-buy, namespace: mec}
spec:
  template:
    spec:
      containers: [{image: "ghcr.io/mec-testbed/fn-buy:0.1.0"}]
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: fn-logger, namespace: mec}
spec:
  template:
    spec:
      containers: [{image: "ghcr.io/mec-testbed/fn-logger:0.1.0"}]
"""


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")] if path.exists() else []


@pytest.mark.timeout(120)
async def test_the_function_journals_logs_and_continues_the_trace(manifest_dir: Path, state_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FN_JOURNAL", "1")
    write_manifests(manifest_dir, FUNCTIONS)
    buy_dir, logger_dir = state_dir / "mec" / "fn-buy", state_dir / "mec" / "fn-logger"
    async with running_broker(manifest_dir, state_dir) as broker:
        event = {**BUY, "mecingesttime": "2026-12-03T10:00:00.000100Z"}
        assert await broker.send(event, {"app": {"path": "/api/v1/buy?item=3"}}) == 202
        await wait_for(lambda: _lines(logger_dir / "events.jsonl"), timeout=60, what="the order reached fn-logger")
    (inv,) = _lines(buy_dir / "invocations.jsonl")
    assert inv["id"] == "buy-1" and inv["traceparent"] == TRACEPARENT
    access = [x for x in _lines(buy_dir / "process.log") if x.get("msg") == "invocation"]
    assert [(x["id"], x["traceparent"], x["status"]) for x in access] == [("buy-1", TRACEPARENT, 200)]
    # the reply (mec.order.created) continues the trace: its parent is fn-buy's `function` span
    (order,) = _lines(logger_dir / "events.jsonl")
    reply = parse_traceparent(order["attributes"]["traceparent"])
    sent = parse_traceparent(TRACEPARENT)
    assert reply is not None and sent is not None and reply.trace_id == sent.trace_id
    spans = downstream_spans(sent, "fn-buy", ingest_ns=0, arrival_ns=0, start_ns=0, end_ns=0)
    assert reply.span_id == spans[-1].span_id and spans[-1].name == FUNCTION


def test_invocation_spans_follow_the_event_stamps() -> None:
    attrs = {**BUY, "mecingesttime": "2026-12-03T10:00:00.000100Z",
             "knativearrivaltime": "2026-12-03T10:00:00.002100Z"}
    started = 1_796_292_000.0045  # seconds (the journal's clock)
    spans = invocation_spans("fn-buy", attrs, started, started + 0.001)
    assert [s.name for s in spans] == ["delivery", "broker.accept", "function"]
    assert [s.service for s in spans] == ["detector", "broker", "fn-buy"]
    assert spans[0].parent_id == "b7ad6b7169203331"            # the detector's span, from the traceparent
    assert spans[1].parent_id == spans[0].span_id and spans[2].parent_id == spans[1].span_id
    assert all(s.trace_id == "0af7651916cd43dd8448eb211c80319c" for s in spans)
    assert spans[0].end_ns - spans[0].start_ns == 2_000_000    # mecingesttime → knativearrivaltime
    assert spans[1].end_ns == spans[2].start_ns
    assert invocation_spans("fn-buy", {**BUY, "traceparent": "not-a-traceparent"}, started, started) == []
    # without the stamps, only what is known: the function's span, a child of the detector's
    (only,) = invocation_spans("fn-buy", BUY, started, started + 0.001)
    assert only.name == "function" and only.parent_id == "b7ad6b7169203331"
