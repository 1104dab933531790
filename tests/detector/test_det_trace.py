"""The detector's trace context: every CloudEvent carries the Distributed Tracing extension, the
AppEvent's trace with the detector's own span (a child of the tap's); an AppEvent without one
starts a trace; its spans go to a real OTLP/HTTP receiver when one is configured."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from detlib import Sink, app_event, base_url, det_config, ndjson, post_events, rules_from, running

from mec_common.tracing import (
    DETECTOR_ACCEPT,
    child_span_id,
    parse_traceparent,
    tap_span_ids,
    trace_id_for,
)
from tests.support.otlp import otlp_receiver

RULES = """
sources: {create_on: [buy]}
rules:
  - name: buy
    match: {kind: http.request}
    emit: {type: mec.app.buy}
"""


def _trace_of(ce: Any) -> tuple[str, str, str, str | None]:
    attrs = ce.get_attributes()
    ctx = parse_traceparent(attrs.get("traceparent"))
    assert ctx is not None, attrs
    return ctx.trace_id, ctx.span_id, ctx.flags, attrs.get("tracestate")


async def test_cloudevents_carry_the_trace_as_a_child_of_the_taps(tmp_path: Path, sink: Sink) -> None:
    tapped = app_event(1, 1)
    bare = {k: v for k, v in app_event(2, 2).items() if k != "trace"}
    broken = {**app_event(3, 3), "trace": {"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}}
    stated = {**app_event(4, 4), "trace": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                                           "tracestate": "mec=upf1"}}
    async with running(det_config(tmp_path, sink.url), rules_from(RULES)) as srv:
        status, _ = await post_events(base_url(srv), ndjson([tapped, bare, broken, stated]))
        assert status == 202
        await sink.wait_for(lambda: len(sink.accepted) == 8)   # mec.source.created + mec.app.buy per UE
    got = {(r.ce.get_type(), r.ce.get_extension("supi")): r for r in sink.accepted}
    assert all("ce-traceparent" in r.headers for r in sink.accepted)
    # the tap's trace: same trace id, parent the tap's decode span, the detector's span one per CloudEvent
    tp = parse_traceparent(tapped["trace"]["traceparent"])
    assert tp is not None
    buy = got[("mec.app.buy", tapped["ue"]["supi"])].ce
    trace_id, span_id, flags, state = _trace_of(buy)
    assert (trace_id, flags, state) == (tapped["id"], "01", None)
    assert span_id == child_span_id(trace_id, tp.span_id, buy.get_id()) != tp.span_id
    created = got[("mec.source.created", tapped["ue"]["supi"])].ce
    assert _trace_of(created)[0] == trace_id and _trace_of(created)[1] not in (span_id, tp.span_id)
    # no trace, or an invalid one: a trace started at the detector (root span, from the AppEvent's id)
    for ev in (bare, broken):
        ce = got[("mec.app.buy", ev["ue"]["supi"])].ce
        tid, sid, _, _ = _trace_of(ce)
        assert tid == trace_id_for(ev["id"]) and sid == child_span_id(tid, None, ce.get_id())
    # tracestate and the flags (not sampled) go on as they came
    ce = got[("mec.app.buy", stated["ue"]["supi"])].ce
    assert _trace_of(ce)[0] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert _trace_of(ce)[2:] == ("00", "mec=upf1")


async def test_a_redelivery_carries_the_same_trace_context(tmp_path: Path, sink: Sink) -> None:
    sink.answer = lambda n, r: (503, {}) if n == 0 else (202, {})
    async with running(det_config(tmp_path, sink.url)) as srv:
        assert (await post_events(base_url(srv), ndjson([app_event(1, 1)])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 1)
    first, again = sink.received
    assert first.headers["ce-traceparent"] == again.headers["ce-traceparent"]


async def test_a_relayed_cloudevent_gets_the_detectors_span(tmp_path: Path, sink: Sink) -> None:
    import aiohttp

    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = {"ce-specversion": "1.0", "ce-id": "r-1", "ce-source": "/elsewhere", "ce-type": "x.y",
               "ce-supi": "imsi-999700000000001", "ce-traceparent": parent, "ce-tracestate": "a=b",
               "Authorization": "Bearer test-token-123"}
    async with running(det_config(tmp_path, sink.url)) as srv:
        async with aiohttp.ClientSession() as s, s.post(base_url(srv) + "/v1/cloudevents", headers=headers) as r:
            assert r.status == 202
        await sink.wait_for(lambda: len(sink.accepted) == 1)
    trace_id, span_id, _, state = _trace_of(sink.accepted[0].ce)
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and state == "a=b"
    assert span_id == child_span_id(trace_id, "00f067aa0ba902b7", "ce|/elsewhere|r-1")


# ---------------------------------------------------------------------- OTLP, for real
async def test_the_detectors_spans_reach_an_otlp_collector(tmp_path: Path, sink: Sink,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.sdk.trace", reason="the [trace] extra (OpenTelemetry SDK) is not installed")
    ev = app_event(1, 1)
    async with otlp_receiver() as (endpoint, spans):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        async with running(det_config(tmp_path, sink.url)) as srv:
            assert srv.det.events.spans is not None
            assert (await post_events(base_url(srv), ndjson([ev])))[0] == 202
            await sink.wait_for(lambda: len(sink.accepted) == 1)
            await asyncio.to_thread(srv.det.events.spans.flush)   # the receiver shares this loop
    (span,) = spans
    ce_trace, ce_span, _, _ = _trace_of(sink.accepted[0].ce)
    assert span["service"] == "detector" and span["name"] == DETECTOR_ACCEPT
    assert (span["trace_id"], span["span_id"]) == (ev["id"], ce_span) and ce_trace == ev["id"]
    assert span["parent_id"] == tap_span_ids(ev["id"])[1]          # the tap's decode span
    assert 0 < span["start"] <= span["end"]
