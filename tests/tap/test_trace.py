"""W3C trace context at the tap: every AppEvent carries `trace.traceparent` (version 00, the
trace id derived from the event's stable id, the tap's decode span as the parent, sampled), the
same capture always gives the same traces, and with OTEL_EXPORTER_OTLP_ENDPOINT set the tap's
spans (capture, decode) reach a real OTLP/HTTP receiver."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from mec_common.tracing import (
    CAPTURE,
    DECODE,
    child_span_id,
    parse_traceparent,
    tap_span_ids,
    tap_spans,
    tap_traceparent,
    trace_id_for,
)
from tests.support.otlp import otlp_receiver
from tests.tap.conftest import read_events
from upf_tap.events import make_event

W3C = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01")
TS = 1_795_000_000_123_456_789


def _event(seq: int = 0, path: str = "/api/v1/buy?item=3") -> dict[str, Any]:
    return make_event("http.request", TS, "n3", "upf1", direction="ul", ue={"ip": "10.45.0.2", "teid": 1},
                      flow={"proto": "tcp", "src": "10.45.0.2", "sport": 40000, "dst": "10.200.0.10", "dport": 80},
                      app={"method": "POST", "host": "shop.mec.local", "path": path}, seq=seq)


def test_every_event_carries_a_w3c_traceparent(captures: Path) -> None:
    events = read_events(captures / "synthetic-n3.pcap")
    assert events
    for ev in events:
        tp = ev["trace"]["traceparent"]
        assert W3C.fullmatch(tp), tp
        ctx = parse_traceparent(tp)
        assert ctx is not None and ctx.trace_id == ev["id"] == trace_id_for(ev["id"])
        assert ctx.span_id == tap_span_ids(ev["id"])[1] == ev["id"][16:]   # the tap's decode span
        assert set(ev["trace"]) == {"traceparent"}
    assert len({e["trace"]["traceparent"] for e in events}) == len(events)   # one trace per event


def test_the_same_capture_gives_the_same_traces(captures: Path) -> None:
    first = read_events(captures / "synthetic-n3.pcap")
    again = read_events(captures / "synthetic-n3.pcap")
    assert [e["trace"] for e in first] == [e["trace"] for e in again]
    assert _event()["trace"] == _event()["trace"] != _event(seq=1)["trace"] != _event(path="/other")["trace"]


def test_the_trace_does_not_change_the_event_id() -> None:
    ev = _event()
    assert ev["id"] == "".join(ev["trace"]["traceparent"].split("-")[1:2])
    assert list(ev)[-2:] == ["id", "trace"]     # added after the id, from it: ids are what they were


def test_the_taps_spans_start_at_the_capture_time() -> None:
    ev = _event()
    capture, decode = tap_spans(ev, TS, TS + 2_000)
    assert (capture.name, capture.parent_id, capture.start_ns, capture.end_ns) == (CAPTURE, None, TS, TS)
    assert (decode.name, decode.parent_id, decode.start_ns, decode.end_ns) == (DECODE, capture.span_id, TS, TS + 2_000)
    assert capture.trace_id == decode.trace_id == ev["id"] and capture.span_id == ev["id"][:16]
    assert f"00-{ev['id']}-{decode.span_id}-01" == ev["trace"]["traceparent"]


@pytest.mark.parametrize("value", [
    None, 7, "", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",            # too short
    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",                        # upper case
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",                        # zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",                        # zero span id
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",                        # version ff
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",                  # 00 has 4 fields
])
def test_invalid_traceparents_are_refused(value: Any) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_as_00_and_ids_are_stable() -> None:
    ctx = parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more", "k=v")
    assert ctx is not None and ctx.traceparent() == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert ctx.state == "k=v"
    assert trace_id_for("not hex at all") == trace_id_for("not hex at all") != trace_id_for("other")
    assert W3C.fullmatch(tap_traceparent("not hex at all"))
    a = child_span_id("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "x")
    assert a == child_span_id("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "x")
    assert a != child_span_id("0af7651916cd43dd8448eb211c80319c", None, "x") and len(a) == 16


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
async def test_the_taps_spans_reach_an_otlp_collector(captures: Path, workers: list[str]) -> None:
    """From one process, and from each `read --workers` child (which ends by os._exit)."""
    pytest.importorskip("opentelemetry.sdk.trace", reason="the [trace] extra (OpenTelemetry SDK) is not installed")
    async with otlp_receiver() as (endpoint, spans):
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "upf_tap", "read", *workers,
                                                    str(captures / "synthetic-n3.pcap"), env=env,
                                                    stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)   # spans flushed at exit
        assert proc.returncode == 0
    events = [json.loads(line) for line in out.decode().splitlines()]
    by_trace: dict[str, dict[str, dict[str, Any]]] = {}
    for s in spans:
        assert s["service"] == "upf-tap"
        by_trace.setdefault(s["trace_id"], {})[s["name"]] = s
    assert set(by_trace) == {e["id"] for e in events}
    for ev in events:
        got = by_trace[ev["id"]]
        assert set(got) == {CAPTURE, DECODE}
        capture, decode = got[CAPTURE], got[DECODE]
        assert capture["parent_id"] is None and decode["parent_id"] == capture["span_id"]
        assert ev["trace"]["traceparent"] == f"00-{ev['id']}-{decode['span_id']}-01"
        assert capture["start"] == decode["start"] <= decode["end"]


@pytest.mark.parametrize("state", ["a\nb", "x" * 513, "é=1", " lead", 5])
def test_a_tracestate_that_is_not_one_is_dropped(state: Any) -> None:
    ctx = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", state)
    assert ctx is not None and ctx.state is None
