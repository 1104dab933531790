"""W3C trace context from the packet to the function: ids, the stages' spans, OTLP export.

One UE action is one trace. The tap starts it (upf_tap/events.py): the trace id *is* the
AppEvent's id (32 hex digits, stable), the root span `capture` has the first half of it as
its span id and its child `decode` the second half, so a re-decode of the same packet gives
the same trace and the tap's hot path costs one string format. Every later span id is a hash
of its parent's and of what makes the span distinct (`child_span_id`), so a redelivery or a
re-ingest carries byte-identical trace context and anyone holding the time stamps (the demo's
report) rebuilds exactly the spans that were exported.

    capture (upf-tap, root) ─ decode (upf-tap) ─ detector.accept (detector)
        ─ delivery ─ broker.accept ─ function (function server, per subscriber)

Spans go to an OTLP/HTTP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and the OpenTelemetry SDK is installed (the
`[trace]` extra); otherwise nothing is exported and nothing is imported. This module stays
light on purpose: the tap imports it, and the SDK is loaded only by `otlp_from_env`.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

try:  # what hashlib.blake2b is, without hashlib loading OpenSSL at start
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import blake2b

VERSION = "00"
SAMPLED = "01"
ZERO_SPAN = "0" * 16
ZERO_TRACE = "0" * 32

# stage span names, in the order a UE action passes them
CAPTURE = "capture"
DECODE = "decode"
DETECTOR_ACCEPT = "detector.accept"
DELIVERY = "delivery"
BROKER_ACCEPT = "broker.accept"
FUNCTION = "function"
STAGES = (CAPTURE, DECODE, DETECTOR_ACCEPT, DELIVERY, BROKER_ACCEPT, FUNCTION)

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_TRACESTATE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,510}[\x21-\x7e])?")   # printable ASCII, ≤ 512


class TraceContext(NamedTuple):
    """A parsed `traceparent` (and the `tracestate` that came with it)."""

    trace_id: str    # 32 lower-case hex digits
    span_id: str     # 16: the parent span of whoever receives this context
    flags: str = SAMPLED
    state: str | None = None

    def traceparent(self) -> str:
        return f"{VERSION}-{self.trace_id}-{self.span_id}-{self.flags}"


class SpanRecord(NamedTuple):
    """One finished span, as exported and as the demo's report shows it (times: ns since the epoch)."""

    name: str
    service: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]


def parse_traceparent(value: Any, state: Any = None) -> TraceContext | None:
    """A W3C `traceparent` (version 00, or a later version read as 00 allows), else None: a
    receiver of an invalid one starts a new trace (W3C Trace Context §3.2.2.6)."""
    if not isinstance(value, str):
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == VERSION and rest) or trace_id == ZERO_TRACE or span_id == ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, flags, state if isinstance(state, str) and _TRACESTATE.fullmatch(state)
                        else None)   # a tracestate that is not one is dropped, never put on the wire


def trace_id_for(key: str) -> str:
    """The trace id of a trace started for `key`: the key itself when it is already a valid trace id
    (an AppEvent id from the tap), else blake2b-128 of it."""
    if len(key) == 32 and key != ZERO_TRACE and _HEX32.fullmatch(key):
        return key
    return _nonzero(blake2b(key.encode(), digest_size=16).hexdigest(), ZERO_TRACE)


def child_span_id(trace_id: str, parent_id: str | None, label: str) -> str:
    """A span id for the child `label` of `parent_id` (None: a root span) in `trace_id`: stable, so
    the same event through the same stage always gets the same span."""
    h = blake2b(f"{trace_id}|{parent_id or ''}|{label}".encode(), digest_size=8)
    return _nonzero(h.hexdigest(), ZERO_SPAN)


def _nonzero(hexid: str, zero: str) -> str:
    return hexid if hexid != zero else zero[:-1] + "1"   # all-zero ids are invalid (2^-64 odds)


# ---------------------------------------------------------------------- the tap
def tap_span_ids(trace_id: str) -> tuple[str, str]:
    """(capture, decode) span ids of a trace the tap started: the halves of its id."""
    return _nonzero(trace_id[:16], ZERO_SPAN), _nonzero(trace_id[16:], ZERO_SPAN)


def tap_traceparent(event_id: str) -> str:
    """The AppEvent's `trace.traceparent`: its trace, with the tap's decode span as the parent."""
    trace_id = trace_id_for(event_id)
    return f"{VERSION}-{trace_id}-{tap_span_ids(trace_id)[1]}-{SAMPLED}"


def tap_spans(ev: dict[str, Any], ts_ns: int, made_ns: int) -> list[SpanRecord]:
    """`capture` (an instant: the packet's time stamp) and `decode` (until the AppEvent was made)."""
    ctx = parse_traceparent((ev.get("trace") or {}).get("traceparent"))
    trace_id = ctx.trace_id if ctx else trace_id_for(ev["id"])
    capture, decode = tap_span_ids(trace_id)
    attrs = {"mec.appevent.id": ev["id"], "mec.appevent.kind": ev["kind"], "mec.point": ev["point"],
             "mec.tap": ev["tap"]}
    return [SpanRecord(CAPTURE, "upf-tap", trace_id, capture, None, ts_ns, ts_ns, attrs),
            SpanRecord(DECODE, "upf-tap", trace_id, decode, capture, ts_ns, max(ts_ns, made_ns), attrs)]


# ---------------------------------------------------------------------- the detector
def detector_context(parent: TraceContext | None, trace_key: str, ce_id: str) -> TraceContext:
    """The trace context a CloudEvent carries: the detector's own span (`detector.accept`, one per
    CloudEvent), a child of `parent` (the AppEvent's), or the root of a trace started for `trace_key`."""
    if parent is None:
        trace_id = trace_id_for(trace_key)
        return TraceContext(trace_id, child_span_id(trace_id, None, ce_id))
    return TraceContext(parent.trace_id, child_span_id(parent.trace_id, parent.span_id, ce_id), parent.flags,
                        parent.state)


# ---------------------------------------------------------------------- after the detector
def downstream_spans(ce: TraceContext, service: str, *, ingest_ns: int | None, arrival_ns: int | None,
                     start_ns: int, end_ns: int, attributes: dict[str, Any] | None = None) -> list[SpanRecord]:
    """What became of a CloudEvent on its way to one subscriber `service`, from its own time stamps:
    `delivery` (`mecingesttime` → `knativearrivaltime`), `broker.accept` (→ the function's start; the
    Trigger's filter, queue, activator and any cold start) and `function` (start → done). Spans
    whose start is not known are left out (the next one is then the child of what is known)."""
    attrs = dict(attributes or {}, **{"mec.subscriber": service})
    spans: list[SpanRecord] = []
    parent = ce.span_id
    points = ((DELIVERY, "detector", ingest_ns, arrival_ns), (BROKER_ACCEPT, "broker", arrival_ns, start_ns),
              (FUNCTION, service, start_ns, end_ns))
    for name, who, a, b in points:
        if a is None or b is None:
            continue
        span_id = child_span_id(ce.trace_id, parent, f"{name}|{service}")
        derived = {} if who == service else {"mec.reported_by": service}   # from the event's time stamps
        spans.append(SpanRecord(name, who, ce.trace_id, span_id, parent, a, max(a, b), {**attrs, **derived}))
        parent = span_id
    return spans


def epoch_ns(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1e9)


def rfc3339_ns(value: Any) -> int | None:
    """An RFC 3339 time stamp (`mecingesttime`, `knativearrivaltime`) as exact ns since the epoch."""
    if not isinstance(value, str) or not value:
        return None
    from datetime import UTC, datetime, timedelta

    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        return None
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


# ---------------------------------------------------------------------- OTLP export
def otlp_configured(env: dict[str, str] | None = None) -> bool:
    """True when the standard OpenTelemetry variables ask for OTLP trace export."""
    e = os.environ if env is None else env
    if e.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if e.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    return bool(e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or e.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


class _Ids(threading.local):
    trace_id: int = 0
    span_id: int = 0


class OtlpSpans:
    """Exports SpanRecords over OTLP/HTTP with the OpenTelemetry SDK (batched, on the SDK's thread).

    The ids are ours (the SDK asks its id generator; ours hands back the span's own), the
    exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables, `service.name` is the stage's
    process. Built lazily, at the first span, so that a tap that forks workers builds it in
    each worker."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._providers: dict[str, Any] = {}
        self._tracers: dict[str, Any] = {}
        self._ids = _Ids()

    def _tracer(self, service: str) -> Any:
        tracer = self._tracers.get(service)
        if tracer is None:
            with self._lock:
                if service not in self._tracers:
                    provider = self._providers[service] = self._provider(service)
                    self._tracers[service] = provider.get_tracer("mec-testbed")
                tracer = self._tracers[service]
        return tracer

    def _provider(self, service: str) -> Any:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import IdGenerator

        ids = self._ids

        class _OwnIds(IdGenerator):
            def generate_span_id(self) -> int:
                return ids.span_id

            def generate_trace_id(self) -> int:
                return ids.trace_id

        provider = TracerProvider(resource=Resource.create({"service.name": service}), id_generator=_OwnIds())
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return provider

    def emit(self, spans: Iterable[SpanRecord]) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

        for s in spans:
            tracer = self._tracer(self.service if s.service in ("", self.service) else s.service)
            trace_id = int(s.trace_id, 16)
            ctx = None
            if s.parent_id:
                parent = SpanContext(trace_id, int(s.parent_id, 16), is_remote=True,
                                     trace_flags=TraceFlags(TraceFlags.SAMPLED))
                ctx = trace.set_span_in_context(NonRecordingSpan(parent))
            self._ids.trace_id, self._ids.span_id = trace_id, int(s.span_id, 16)
            span = tracer.start_span(s.name, context=ctx, attributes=s.attributes, start_time=s.start_ns)
            span.end(end_time=s.end_ns)

    def flush(self, timeout_ms: int = 5000) -> None:
        with self._lock:
            providers = list(self._providers.values())
        for p in providers:
            p.force_flush(timeout_ms)


def otlp_from_env(service: str) -> OtlpSpans | None:
    """An exporter when OTLP is configured and the SDK is installed; None otherwise (one warning
    when it is configured but the SDK is missing)."""
    if not otlp_configured():
        return None
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        print(f"{service}: OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed "
              "(pip install 'mec-serverless-testbed[trace]'): no spans exported", file=sys.stderr)
        return None
    return OtlpSpans(service)
