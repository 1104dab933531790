"""CloudEvents the detector emits (Contract 2), built with the cloudevents SDK 2.x.

`EventBuilder` makes every CloudEvent the detector sends: a rule's emission for an AppEvent,
the source lifecycle events (mec.source.created / mec.source.expired), the mobility ones
(mec.ue.moved and the warm-ups of detector/mobility.py) and relayed CloudEvents;
K_CE_OVERRIDES are applied here. `to_http` encodes one for the outbox (binary or structured).

`id` is blake2b(AppEvent id, rule) so a redelivery or a replay carries the same id; `time` is
the capture time; `source` follows the scheme in docs/detector.md:
/mec/detector/<detector-id>/ue/<supi-or-ip> (or /mec/detector/<detector-id> without a UE).

Every CloudEvent carries the Distributed Tracing extension (`traceparent`, `tracestate` when the
AppEvent had one): the AppEvent's trace, with the detector's own span (`detector.accept`, one per
CloudEvent, its id a hash of the parent's and the CloudEvent's id) as the parent; an AppEvent
without a valid `trace.traceparent` starts a trace here (mec_common/tracing.py). With
OTEL_EXPORTER_OTLP_ENDPOINT set, those spans are exported.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from detector.templates import render_tree, to_text
from mec_common.tracing import (
    DETECTOR_ACCEPT,
    SpanRecord,
    TraceContext,
    detector_context,
    otlp_from_env,
    parse_traceparent,
)

if TYPE_CHECKING:
    from detector.mobility import Move, Recent
    from detector.rules import Rule
    from detector.sources import Source

DATACONTENTTYPE = "application/json"


def ce_id(app_event_id: str, rule: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(app_event_id.encode())
    h.update(b"\x00")
    h.update(rule.encode())
    return h.hexdigest()


def source_uri(detector_id: str, ue_key: str) -> str:
    base = "/mec/detector/" + quote(detector_id, safe="")
    return f"{base}/ue/{quote(ue_key, safe=':@')}" if ue_key else base


def ue_key(ev: dict[str, Any]) -> str:
    """Whom the event belongs to: the SUPI, else the UE's IP, else "" (no UE known)."""
    ue = ev.get("ue")
    if ue:
        if ue.get("supi"):
            return ue["supi"]
        if ue.get("ip"):
            return ue["ip"]
    flow = ev.get("flow")
    if flow and ev.get("point") in ("n3", "n6"):
        d = ev.get("direction")
        if d == "ul":
            return flow.get("src") or ""
        if d == "dl":
            return flow.get("dst") or ""
    return ""


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def standard_extensions(ev: dict[str, Any]) -> dict[str, Any]:
    """supi, ueip, dnn, snssai, qfi, teid, tapid: the ones Triggers filter on, when known."""
    ue = ev.get("ue") or {}
    tun = ev.get("tunnel") or {}
    ext: dict[str, Any] = {}
    for name, v in (("supi", ue.get("supi")), ("ueip", ue.get("ip")), ("dnn", ue.get("dnn")),
                    ("snssai", ue.get("snssai"))):
        if isinstance(v, str) and v:
            ext[name] = v
    for name, v in (("qfi", ue.get("qfi", tun.get("qfi"))), ("teid", ue.get("teid", tun.get("teid")))):
        iv = _int(v)
        if iv is not None:
            ext[name] = iv
    if ev.get("tap"):
        ext["tapid"] = ev["tap"]
    return ext


def ext_value(v: Any) -> Any:
    """Extension values as the spec types them: string, integer or boolean."""
    if isinstance(v, bool | str):
        return v
    iv = _int(v)
    if iv is not None:
        return iv
    return to_text(v)


def app_event_trace(ev: dict[str, Any]) -> TraceContext | None:
    """The AppEvent's `trace` (its `traceparent` and `tracestate`), None when absent or invalid."""
    trace = ev.get("trace")
    if not isinstance(trace, dict):
        return None
    return parse_traceparent(trace.get("traceparent"), trace.get("tracestate"))


def trace_extensions(ctx: TraceContext) -> dict[str, str]:
    """The Distributed Tracing extension attributes for `ctx`."""
    ext = {"traceparent": ctx.traceparent()}
    if ctx.state:
        ext["tracestate"] = ctx.state
    return ext


def build(*, id: str, source: str, type: str, time: datetime | None, subject: str | None, data: Any,
          extensions: dict[str, Any]) -> CloudEvent:
    attrs: dict[str, Any] = {"specversion": "1.0", "id": id, "source": source, "type": type,
                             "datacontenttype": DATACONTENTTYPE}
    if time is not None:
        attrs["time"] = time
    if subject:
        attrs["subject"] = subject
    for k, v in extensions.items():
        if v is not None and v != "":
            attrs[k] = v
    return CloudEvent(attrs, data)


def to_http(event: CloudEvent, structured: bool) -> tuple[dict[str, str], bytes]:
    msg = to_structured_event(event) if structured else to_binary_event(event)
    return msg.headers, msg.body


def rfc3339(ts: float) -> str:
    """Wall-clock seconds as an RFC 3339 UTC time with microseconds."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ordering_key(ce: BaseCloudEvent) -> str:
    """The UE a relayed CloudEvent belongs to (its delivery order key): supi, else ueip, else ""."""
    attrs = ce.get_attributes()
    return str(attrs.get("supi") or attrs.get("ueip") or "")


class EventBuilder:
    """Builds the detector's CloudEvents; `overrides` (K_CE_OVERRIDES) go on every one of them."""

    def __init__(self, overrides: dict[str, Any] | None = None, *, ingest_time: bool = False) -> None:
        self.overrides = dict(overrides or {})
        self.ingest_time = ingest_time     # add `mecingesttime`: when the detector took the event
        self.spans = otlp_from_env("detector")   # None unless OTLP export is configured

    def _traced(self, ext: dict[str, Any], parent: TraceContext | None, trace_key: str, ce_id: str,
                started_ns: int) -> None:
        """Put the CloudEvent's trace context into `ext` (before the overrides); export its span."""
        ctx = detector_context(parent, trace_key, ce_id)
        ext.update(trace_extensions(ctx))
        if self.spans is not None:
            self.spans.emit([SpanRecord(DETECTOR_ACCEPT, "detector", ctx.trace_id, ctx.span_id,
                                        parent.span_id if parent else None, started_ns, time.time_ns(),
                                        {"cloudevents.event_id": ce_id})])

    def for_rule(self, ev: dict[str, Any], rule: Rule, ctx: dict[str, Any], t: datetime, source: str) -> CloudEvent:
        """What `rule` emits for the AppEvent `ev` (templates rendered against `ctx`)."""
        started_ns = time.time_ns()
        em = rule.emit
        assert em is not None
        ctx["rule"] = rule.name
        ext = standard_extensions(ev)
        ext["rule"] = rule.name
        for name, tpl in em.extensions.items():
            v = tpl.render(ctx)
            if v is not None and v != "":
                ext[name] = ext_value(v)
        if self.ingest_time:
            ext["mecingesttime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        cid = ce_id(ev["id"], rule.name)
        self._traced(ext, app_event_trace(ev), ev["id"], cid, started_ns)
        ext.update(self.overrides)
        ctype = em.type.render(ctx)
        subject = em.subject.render(ctx)
        return build(id=cid, source=source,
                     type=str(ctype) if ctype not in (None, "") else f"mec.upf.{ev['kind']}",
                     time=t, subject=None if subject is None else str(subject),
                     data=render_tree(em.data, ctx), extensions=ext)

    def _lifecycle_ext(self, ue: dict[str, Any], rule: str, parent: TraceContext | None, trace_key: str,
                       cid: str) -> dict[str, Any]:
        started_ns = time.time_ns()
        ext = standard_extensions({"ue": ue})
        ext["rule"] = rule
        self._traced(ext, parent, trace_key, cid, started_ns)
        ext.update(self.overrides)
        return ext

    def source_created(self, src: Source, event_id: str, t: datetime,
                       trace: TraceContext | None = None) -> CloudEvent:
        """mec.source.created: the AppEvent `event_id` (captured at `t`, in the trace `trace`) made `src`."""
        data = {"source": src.source, "uekey": src.key, "ue": src.ue, "rule": src.rule,
                "created": rfc3339(src.created), "event": event_id}
        cid = ce_id(event_id, "source.created")
        return build(id=cid, source=src.source, type="mec.source.created", time=t, subject=src.key, data=data,
                     extensions=self._lifecycle_ext(src.ue, src.rule, trace, event_id, cid))

    def source_expired(self, src: Source, reason: str, now: float) -> CloudEvent:
        """mec.source.expired: `src` ended at `now` (reason: idle or session.down); a trace of its own."""
        data = {"source": src.source, "uekey": src.key, "ue": src.ue, "created": rfc3339(src.created),
                "last_seen": rfc3339(src.last_seen), "reason": reason}
        cid = ce_id(f"{src.source}|{src.created!r}", "source.expired")
        return build(id=cid, source=src.source, type="mec.source.expired", time=datetime.fromtimestamp(now, UTC),
                     subject=src.key, data=data, extensions=self._lifecycle_ext(src.ue, src.rule, None, cid, cid))

    def ue_moved(self, move: Move, ev: dict[str, Any], t: datetime, source: str) -> CloudEvent:
        """mec.ue.moved: the AppEvent `ev` (captured at `t`) showed the UE at a new serving gNB.
        The id comes from the AppEvent, so a re-sent or replayed one gives the same move."""
        from detector.mobility import MOVED_RULE, MOVED_TYPE

        cid = ce_id(ev["id"], MOVED_RULE)
        ext = self._lifecycle_ext({**(ev.get("ue") or {}), **move.ue}, MOVED_RULE, app_event_trace(ev),
                                  ev["id"], cid)
        for name, end in (("fromsite", move.frm), ("tosite", move.to)):   # for Trigger filters
            if end is not None and end.get("site"):
                ext[name] = end["site"]
        return build(id=cid, source=source, type=MOVED_TYPE, time=t, subject=move.key, data=move.data(),
                     extensions=ext)

    def warmup(self, move: Move, type_: str, recent: Recent, ev: dict[str, Any], t: datetime,
               source: str) -> CloudEvent:
        """A warm-up of `type_` for the move's target site: the UE's last CloudEvent of that type's
        subject and extensions (so the same Triggers pass it), `mecwarmup: "true"`, no payload."""
        from detector.mobility import WARMUP_EXTENSION, WARMUP_VALUE

        started_ns = time.time_ns()
        cid = ce_id(ev["id"], f"warmup|{type_}")
        ext = dict(recent.extensions)
        ext[WARMUP_EXTENSION] = WARMUP_VALUE
        self._traced(ext, app_event_trace(ev), ev["id"], cid, started_ns)
        ext.update(self.overrides)
        return build(id=cid, source=source, type=type_, time=t, subject=recent.subject,
                     data={"warmup": True, "ue": move.ue}, extensions=ext)

    def relay(self, ce: BaseCloudEvent) -> CloudEvent:
        """A CloudEvent from another source, as it came plus the overrides; its trace context (or a new
        trace) gets the detector's span as the parent."""
        started_ns = time.time_ns()
        attrs = dict(ce.get_attributes())
        parent = parse_traceparent(attrs.get("traceparent"), attrs.get("tracestate"))
        key = f"ce|{attrs.get('source')}|{attrs.get('id')}"
        self._traced(attrs, parent, key, key, started_ns)
        attrs.update(self.overrides)
        return CloudEvent(attrs, ce.get_data())
