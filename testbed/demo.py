"""`testbed demo`: the embedded default, end to end, with a latency report.

As root: the sim lab (namespaces, real GTP-U and PFCP), `upf-tap live` on the UPF's N3 and
N4, the detector, the local Knative broker and the sample functions; UEs press "buy" in the
main application, look up MEC services and publish MQTT readings; every action is followed
to the CloudEvent it became and the function it ran. Without root: the replay mode, a
capture through tap → detector → broker → functions.

The report gives each stage's latency (UE send → tap capture → detector → broker accept →
function start → function done), cold (first use, functions scaled from zero) and warm,
p50/p95/p99, and is written as JSON, HTML and a PNG plot. It also shows one action's whole trace
(`--trace N`, default the first warm buy): its spans from the packet to the function, rebuilt
from the time stamps with the ids the stages export over OTLP (mec_common/tracing.py).

With `--sites 2` (sim mode) the lab has two MEC sites, each with its gNB, UPF, tap, detector and
broker (docs/sim-sites.md). After the usual actions UE 1 clicks "buy" while the testbed moves it
to site 2 and back, twice, with both procedures (testbed/mobility.py's TOUR: relocate, handover,
handover, relocate); the report's Mobility section gives each move's interruption and first
function start at the target site (cold or pre-warmed), the clicks lost or duplicated, the
detectors' mec.ue.moved events and warm-ups, and a plot of the site that served each click.
Its detectors' rules are bench/rules-e2e.yaml (unless --rules): every click is an event.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mec_common.tracing import (
    BROKER_ACCEPT,
    CAPTURE,
    DECODE,
    DELIVERY,
    DETECTOR_ACCEPT,
    FUNCTION,
    SpanRecord,
    child_span_id,
    downstream_spans,
    epoch_ns,
    parse_traceparent,
    tap_span_ids,
)
from testbed.constants import supi

REPO = Path(__file__).resolve().parent.parent
DEMO_CAPTURE = REPO / "testbed" / "data" / "demo-n3-n4.pcapng"
SHOP_URL = "http://shop.mec.local/api/v1/buy"
MOBILITY_STAY = 3.0    # --sites 2: seconds UE 1 stays at a site between moves
MOBILITY_RATE = 5.0    # --sites 2: UE 1's clicks per second while it moves
MOBILITY_HOLD = 1.0    # --sites 2: relocate keeps the old PDU session this long for its connections
MOBILITY_SETTLE = 2.0  # --sites 2: seconds after the last click before the sites' journals are read
STAGES = (
    ("ue_to_tap", "UE send → tap capture", "t_send", "t_capture"),
    ("tap_to_detector", "tap capture → detector", "t_capture", "t_detector"),
    ("detector_to_broker", "detector → broker/channel accept", "t_detector", "t_broker"),
    ("broker_to_function", "broker/channel accept → function start", "t_broker", "t_fn_start"),
    ("detector_to_function", "detector → function start (eventing)", "t_detector", "t_fn_start"),
    ("function_run", "function start → done", "t_fn_start", "t_fn_end"),
    ("ue_to_function", "UE send → function start (total)", "t_send", "t_fn_start"),
)


def _epoch(rfc3339: str | None) -> float | None:
    if not rfc3339:
        return None
    try:
        return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


@dataclass
class Trace:
    """One UE action followed through every stage (times are epoch seconds)."""

    ue: int
    kind: str
    phase: str                     # cold | warm: did the function start for this event
    key: str                       # what ties the action to its CloudEvent (e.g. n=17)
    round: str = ""                # the workload's round: cold (first uses), warm (paced buys), replay
    t_send: float | None = None
    t_capture: float | None = None
    t_detector: float | None = None
    t_broker: float | None = None
    t_fn_start: float | None = None
    t_fn_end: float | None = None
    event_type: str = ""
    event_id: str = ""
    function: str = ""
    ok: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    traceparent: str = ""              # the CloudEvent's (Distributed Tracing extension)
    capture_time: float | None = None  # the CloudEvent's time, in replay too (the capture's own clock)

    def stage_ms(self, a: str, b: str) -> float | None:
        x, y = getattr(self, a), getattr(self, b)
        return None if x is None or y is None else (y - x) * 1000.0


# ---------------------------------------------------------------------- the UE workload
def demo_actions(ues: int, rounds: int, rate: float) -> list[Any]:
    """A cold round (every function starts from zero), then `rounds` warm buys per UE at `rate`/s."""
    from testbed.scenario import Action

    acts: list[Action] = []
    n = 0
    t = 0.2
    for ue in range(1, ues + 1):   # cold: first buy, first DNS lookup, first MQTT publish
        n += 1
        acts.append(Action(ue, t, "http", {"method": "POST", "url": f"{SHOP_URL}?item={1 + ue % 4}&n={n}"},
                           f"cold:n={n}"))
        acts.append(Action(ue, t + 0.05, "dns", {"qname": f"edge{ue}.mec.local"}, f"cold:dns={ue}"))
        acts.append(Action(ue, t + 0.1, "mqtt", {"topic": f"sensors/ue{ue}/temp", "message": "21.5"},
                           f"cold:mqtt={ue}"))
        t += 0.02
    t += 3.0  # let the cold starts finish before the warm runs
    gap = 1.0 / rate
    for _ in range(rounds):
        for ue in range(1, ues + 1):
            n += 1
            acts.append(Action(ue, t, "http", {"method": "POST", "url": f"{SHOP_URL}?item={1 + n % 4}&n={n}"},
                               f"warm:n={n}"))
            t += gap
    return acts


def _key_of_event(ev: dict[str, Any]) -> str | None:
    attrs = ev["attributes"]
    try:
        data = json.loads(ev.get("data") or "null")
    except ValueError:
        data = None
    if attrs.get("type") == "mec.app.buy" and isinstance(data, dict):
        values = parse_qs(urlsplit(str(data.get("path", ""))).query).get("n")
        return f"n={values[0]}" if values else None
    if attrs.get("type") == "mec.upf.dns.query":
        sub = str(attrs.get("subject", ""))
        if sub.startswith("edge") and sub.endswith(".mec.local"):
            return f"dns={sub[4:].split('.')[0]}"
    if attrs.get("type") == "mec.upf.mqtt.publish" and isinstance(data, dict):
        topic = str((data.get("app") or {}).get("topic", ""))
        if topic.startswith("sensors/ue"):
            return f"mqtt={topic.split('/')[1][2:]}"
    return None


def build_traces(actions: list[dict[str, Any]], events: list[dict[str, Any]],
                 invocations: list[dict[str, Any]]) -> list[Trace]:
    by_key: dict[str, dict[str, Any]] = {}
    for ev in sorted(events, key=lambda e: e.get("accepted") or 0):
        # the first acceptance of an event: on the channel path the Channel's, before its
        # Subscription hands it on to the Broker (both are listed)
        by_key.setdefault(f"id={ev['attributes'].get('id')}", ev)
        k = _key_of_event(ev)
        if k and k not in by_key:
            by_key[k] = ev
    inv_by_id: dict[str, dict[str, Any]] = {}
    for inv in sorted(invocations, key=lambda i: i["start"]):
        # the first run of the event, preferring the function it is meant for over the audit logger
        seen = inv_by_id.get(str(inv.get("id")))
        if seen is None or (seen.get("service") == "fn-logger" and inv.get("service") != "fn-logger"):
            inv_by_id[inv["id"]] = inv
    # per site (--sites 2: each site's functions start from zero on their own)
    first_start = {(i.get("site"), i["service"]): i["start"] for i in invocations if i.get("first")}
    traces = []
    for a in actions:
        phase, _, key = str(a.get("tag", "")).partition(":")
        tr = Trace(a["ue"], a["kind"], phase, key, round=phase, t_send=a.get("t_send"))
        found = by_key.get(key)
        if found is not None:
            ev = found
            attrs = ev["attributes"]
            tr.event_type, tr.event_id = attrs.get("type", ""), attrs.get("id", "")
            tr.capture_time = _epoch(attrs.get("time"))
            tr.t_capture = tr.capture_time if phase != "replay" else None
            tr.traceparent = str(attrs.get("traceparent") or "")
            tr.t_detector = _epoch(attrs.get("mecingesttime"))
            # broker accept: its knativearrivaltime; a Channel stamps nothing, so its commit time
            tr.t_broker = _epoch(attrs.get("knativearrivaltime")) or ev.get("accepted")
            tr.extras = {k: attrs[k] for k in ("supi", "ueip", "teid", "qfi", "dnn") if k in attrs}
            hit = inv_by_id.get(tr.event_id)
            if hit is not None:
                inv = hit
                tr.function, tr.t_fn_start, tr.t_fn_end = inv["service"], inv["start"], inv["end"]
                # cold: the function process was started for this event, or the event waited in
                # the activator while it started (accepted before the first request began)
                first = first_start.get((inv.get("site"), inv["service"]))
                waited = first is not None and tr.t_broker is not None and tr.t_broker <= first
                tr.phase = "cold" if inv.get("first") or waited else "warm"
                if phase == "replay":
                    tr.extras["replay"] = True
        tr.ok = bool(a.get("ok")) and tr.t_fn_end is not None
        traces.append(tr)
    return traces


def summarize(traces: list[Trace]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for phase in ("cold", "warm"):
        rows = [t for t in traces if t.phase == phase and t.ok]
        out[phase] = {}
        for name, _label, a, b in STAGES:
            vals = [v for t in rows if (v := t.stage_ms(a, b)) is not None]
            if vals:
                out[phase][name] = {"n": len(vals), "p50": percentile(vals, 50), "p95": percentile(vals, 95),
                                    "p99": percentile(vals, 99), "mean": statistics.fmean(vals)}
    return out


# ---------------------------------------------------------------------- one action's trace
TRACE_NOTES = {
    CAPTURE: "the packet's kernel time stamp (the AppEvent's time)",
    DECODE: "ends at the detector's accept: the tap's own send time is not recorded",
    DETECTOR_ACCEPT: "mecingesttime",
    DELIVERY: "mecingesttime → knativearrivaltime",
    BROKER_ACCEPT: "knativearrivaltime → function start: filters, queue, activator, cold start",
    FUNCTION: "the function's journal: start → done",
}


def trace_spans(tr: Trace) -> list[SpanRecord]:
    """The spans of one action, rebuilt from its time stamps: the same ids as the stages export."""
    ce = parse_traceparent(tr.traceparent)
    det = epoch_ns(tr.t_detector)
    if ce is None or det is None:
        return []
    spans: list[SpanRecord] = []
    capture, decode = tap_span_ids(ce.trace_id)
    from_tap = ce.span_id == child_span_id(ce.trace_id, decode, tr.event_id)
    cap = epoch_ns(tr.capture_time)
    if from_tap and cap is not None:
        spans += [SpanRecord(CAPTURE, "upf-tap", ce.trace_id, capture, None, cap, cap, {}),
                  SpanRecord(DECODE, "upf-tap", ce.trace_id, decode, capture, cap, max(cap, det), {})]
    parent = decode if from_tap else None
    spans.append(SpanRecord(DETECTOR_ACCEPT, "detector", ce.trace_id, ce.span_id, parent, det, det, {}))
    start, end = epoch_ns(tr.t_fn_start), epoch_ns(tr.t_fn_end)
    if start is not None and end is not None and tr.function:
        spans += downstream_spans(ce, tr.function, ingest_ns=det, arrival_ns=epoch_ns(tr.t_broker),
                                  start_ns=start, end_ns=end)
    return spans


def pick_trace(traces: list[Trace], number: int | None) -> int | None:
    """The action whose trace the report shows: number N (from 1), else the first warm buy that ran,
    else the first action that ran."""
    if number is not None and 1 <= number <= len(traces):
        return number - 1
    for want in ("warm", None):
        for i, t in enumerate(traces):
            if t.ok and t.kind == "http" and (want is None or t.round == want):
                return i
    return next((i for i, t in enumerate(traces) if t.ok), None)


def trace_report(traces: list[Trace], number: int | None) -> dict[str, Any] | None:
    """One action's trace for report.json: its spans (a chain, parent first), with start offsets
    and durations in ms from the first span (in replay, from the detector: the capture's clock is
    the recording's)."""
    i = pick_trace(traces, number)
    if i is None:
        return None
    tr = traces[i]
    spans = trace_spans(tr)
    if not spans:
        return None
    replay = tr.round == "replay"
    base = next(s.start_ns for s in spans if s.name == DETECTOR_ACCEPT) if replay else spans[0].start_ns
    depth: dict[str | None, int] = {None: -1}
    rows = []
    for s in spans:
        depth[s.span_id] = depth.get(s.parent_id, -1) + 1
        rows.append({"name": s.name, "service": s.service, "span_id": s.span_id, "parent_id": s.parent_id,
                     "depth": depth[s.span_id], "start": s.start_ns / 1e9, "offset_ms": (s.start_ns - base) / 1e6,
                     "duration_ms": (s.end_ns - s.start_ns) / 1e6, "note": TRACE_NOTES.get(s.name, "")})
    return {"action": i + 1, "ue": tr.ue, "kind": tr.kind, "round": tr.round, "key": tr.key,
            "event_id": tr.event_id, "trace_id": spans[0].trace_id, "traceparent": tr.traceparent,
            "clock": "replay: the tap's spans are at the capture's recorded time" if replay else "one clock",
            "spans": rows}


def _bar(row: dict[str, Any], total: float, width: int = 32) -> str:
    if total <= 0:
        return ""
    a = max(0.0, row["offset_ms"]) / total * width
    b = max(0.0, row["offset_ms"] + row["duration_ms"]) / total * width
    lo = min(width - 1, int(a))
    return " " * lo + "█" * max(1, min(width, round(b)) - lo)


def _ms(value: float) -> str:
    """Milliseconds for the waterfall's columns; days-long replay offsets in seconds."""
    return f"{value:.2f}" if abs(value) < 1e5 else f"{value / 1000:.0f} s"


def print_trace(trace: dict[str, Any] | None, out: Any = sys.stdout) -> None:
    if not trace:
        print("\nTrace: none (no action reached a function with a traceparent)", file=out)
        return
    rows = trace["spans"]
    total = max(r["offset_ms"] + r["duration_ms"] for r in rows)
    print(f"\nTrace of action {trace['action']} (UE {trace['ue']} {trace['kind']} {trace['round']} {trace['key']}): "
          f"trace id {trace['trace_id']}, {trace['clock']}", file=out)
    print(f"  {'span':<22}{'service':<12}{'span id':<18}{'start ms':>12}{'dur ms':>12}  waterfall", file=out)
    for r in rows:
        name = "  " * r["depth"] + r["name"]
        print(f"  {name:<22}{r['service']:<12}{r['span_id']:<18}{_ms(r['offset_ms']):>12}{_ms(r['duration_ms']):>12}"
              f"  |{_bar(r, total):<32}|", file=out)


def trace_html(trace: dict[str, Any] | None) -> str:
    if not trace:
        return ""
    rows = trace["spans"]
    total = max(r["offset_ms"] + r["duration_ms"] for r in rows) or 1.0
    out = []
    for r in rows:
        left = max(0.0, r["offset_ms"]) / total * 100
        width = max(0.3, r["duration_ms"] / total * 100)
        out.append(f"<tr><td>{'&nbsp;' * 3 * r['depth']}{html.escape(r['name'])}</td><td>{html.escape(r['service'])}</td>"
                   f"<td><code>{r['span_id']}</code></td><td>{_ms(r['offset_ms'])}</td><td>{_ms(r['duration_ms'])}</td>"
                   f"<td style=\"width:320px;text-align:left\"><div style=\"margin-left:{left:.1f}%;width:{width:.1f}%;"
                   f"background:#4c72b0;height:10px\"></div></td><td>{html.escape(r['note'])}</td></tr>")
    return (f"<h2>Trace of action {trace['action']} ({html.escape(str(trace['kind']))} {html.escape(trace['round'])} "
            f"{html.escape(trace['key'])})</h2><p>trace id <code>{trace['trace_id']}</code>; "
            f"{html.escape(trace['clock'])}</p><table><tr><th>span</th><th>service</th><th>span id</th>"
            f"<th>start (ms)</th><th>duration (ms)</th><th>waterfall</th><th>from</th></tr>{''.join(out)}</table>")


# ---------------------------------------------------------------------- report
def print_report(traces: list[Trace], summary: dict[str, Any], out: Any = sys.stdout) -> None:
    print("\nUE actions (cold: the function started for this event; warm: it was running):", file=out)
    print(f"  {'UE':<4}{'action':<7}{'phase':<6}{'CloudEvent':<22}{'function':<13}{'UE→fn start':>12}"
          f"{'fn run':>9}  SUPI", file=out)
    shown = 0
    for t in traces:
        if t.kind == "http" and t.phase == "warm" and shown >= 9:
            continue
        shown += t.kind == "http" and t.phase == "warm"
        total = t.stage_ms("t_send", "t_fn_start")
        run = t.stage_ms("t_fn_start", "t_fn_end")
        print(f"  {t.ue:<4}{t.kind:<7}{t.phase:<6}{t.event_type or '-':<22}{t.function or '-':<13}"
              f"{(f'{total:.1f} ms' if total is not None else '-'):>12}{(f'{run:.1f} ms' if run is not None else '-'):>9}"
              f"  {t.extras.get('supi', '-')}", file=out)
    for phase in ("cold", "warm"):
        print(f"\nStage latency, {phase} (ms):", file=out)
        print(f"  {'stage':<40}{'n':>5}{'p50':>9}{'p95':>9}{'p99':>9}", file=out)
        for name, label, _a, _b in STAGES:
            s = summary[phase].get(name)
            if s:
                print(f"  {label:<40}{s['n']:>5}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['p99']:>9.2f}", file=out)


def write_plot(summary: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [label for name, label, _a, _b in STAGES]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), sharey=True)
    for ax, phase in zip(axes, ("cold", "warm"), strict=True):
        ys = range(len(STAGES))
        for q, color in (("p50", "#4c72b0"), ("p95", "#dd8452"), ("p99", "#c44e52")):
            vals = [summary[phase].get(name, {}).get(q, 0.0) for name, *_ in STAGES]
            ax.barh([y + {"p50": -0.25, "p95": 0, "p99": 0.25}[q] for y in ys], vals, height=0.25,
                    label=q, color=color)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_title(f"{phase} (functions {'scaled from zero' if phase == 'cold' else 'running'})")
        ax.set_xlabel("milliseconds (log scale)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(STAGES)), labels)
    axes[0].invert_yaxis()
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("MEC serverless testbed: UE action → serverless function, per stage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_html(traces: list[Trace], summary: dict[str, Any], meta: dict[str, Any], path: Path,
               plot: str | None, trace: dict[str, Any] | None = None,
               mobility: dict[str, Any] | None = None) -> None:
    rows = []
    for phase in ("cold", "warm"):
        for name, label, _a, _b in STAGES:
            s = summary[phase].get(name)
            if s:
                rows.append(f"<tr><td>{phase}</td><td>{html.escape(label)}</td><td>{s['n']}</td>"
                            f"<td>{s['p50']:.2f}</td><td>{s['p95']:.2f}</td><td>{s['p99']:.2f}</td></tr>")
    acts = []
    for t in traces:
        total = t.stage_ms("t_send", "t_fn_start")
        acts.append(f"<tr><td>{t.ue}</td><td>{t.kind}</td><td>{t.phase}</td><td>{html.escape(t.event_type)}</td>"
                    f"<td>{html.escape(t.function)}</td><td>{'' if total is None else f'{total:.1f}'}</td>"
                    f"<td>{html.escape(str(t.extras.get('supi', '')))}</td><td>{'yes' if t.ok else 'NO'}</td></tr>")
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>MEC testbed demo</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:nth-child(2){{text-align:left}}</style></head>
<body><h1>MEC serverless testbed: demo report</h1>
<p>{html.escape(meta['summary_line'])}</p>
{f'<img src="{plot}" alt="stage latencies">' if plot else ''}
<h2>Stage latency (ms)</h2><table><tr><th>phase</th><th>stage</th><th>n</th><th>p50</th><th>p95</th><th>p99</th></tr>
{''.join(rows)}</table>
{trace_html(trace)}{mobility_html(mobility)}
<h2>UE actions</h2><table><tr><th>UE</th><th>action</th><th>phase</th><th>CloudEvent</th><th>function</th>
<th>UE→function start (ms)</th><th>SUPI</th><th>ran</th></tr>{''.join(acts)}</table>
<h2>Run</h2><pre>{html.escape(json.dumps(meta, indent=1))}</pre></body></html>
"""
    path.write_text(doc)


# ---------------------------------------------------------------------- mobility (--sites 2)
def mobility_report(results: list[dict[str, Any]], events: list[dict[str, Any]], invocations: list[dict[str, Any]],
                    prewarm: bool, rules: Path | None = None) -> dict[str, Any]:
    """report.json's `mobility`: testbed.mobility.analyse() of UE 1's clicks and moves, plus the
    detectors' mec.ue.moved events and warm-ups, and the plan that was run."""
    from testbed import mobility

    accepted = mobility.broker_accepted(events)
    out = mobility.analyse(results, accepted, invocations)
    moved = mobility.moved_events(accepted, supi(1))
    out.update(
        sites=2, prewarm=prewarm, ue=1, rules=str(rules or mobility.RULES),
        plan={"procedures": list(mobility.TOUR), "stay_s": MOBILITY_STAY, "rate": MOBILITY_RATE,
              "hold_s": MOBILITY_HOLD},
        moved_events=len(moved),
        moved=[{"site": e["site"], "from": e["attributes"].get("fromsite"), "to": e["attributes"].get("tosite"),
                "time": e["attributes"].get("time")} for e in sorted(moved, key=lambda e: e.get("accepted") or 0)],
        warmups=sum(1 for e in accepted if mobility.is_warmup(e)),
        plot=None, plot_note="")
    return out


def _move_target(m: dict[str, Any]) -> str:
    to = m.get("to_site")
    return f"gNB {to} (site {to})" if m.get("kind") == "handover" else f"site {to}"


def _ms_or_dash(seconds: Any) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def mobility_failures(mob: dict[str, Any]) -> list[str]:
    """What makes a --sites 2 run fail: a move that failed, a click lost, duplicated or not
    answered, a move the detectors did not report."""
    bad = []
    if mob["moves_failed"]:
        bad.append(f"{mob['moves_failed']} moves failed")
    if mob["lost"]:
        bad.append(f"{mob['lost']} clicks lost {mob['lost_items']}")
    if mob["duplicated"]:
        bad.append(f"{mob['duplicated']} clicks duplicated")
    if mob["failed_clicks"]:
        bad.append(f"{mob['failed_clicks']} clicks not answered {mob['click_errors']}")
    if mob["moved_events"] != mob["moves"]:
        bad.append(f"{mob['moved_events']} mec.ue.moved for {mob['moves']} moves")
    return bad


def mobility_line(mob: dict[str, Any]) -> str:
    """The Mobility section's one paragraph (the terminal's and the HTML's)."""
    moves = ", ".join(f"{m.get('kind', '?')} → {_move_target(m)}" for m in mob["per_move"])
    inter, first = mob["interruption_s"], mob["first_start_s"]
    inter_txt = (f"interruption of its event stream p50 {_ms_or_dash(inter['p50'])} ms (max {_ms_or_dash(inter['max'])} ms)"
                 if inter["n"] else "no interruption measured")
    first_txt = (f"first fn-buy start at the target site p50 {_ms_or_dash(first['p50'])} ms "
                 f"(max {_ms_or_dash(first['max'])} ms), {mob['first_cold']}/{mob['first_seen']} of them cold starts"
                 if first["n"] else "no first start at a target site seen")
    return (f"Mobility (2 MEC sites, pre-warm {'on' if mob['prewarm'] else 'off'}): UE 1 made "
            f"{mob['moves'] - mob['moves_failed']}/{mob['moves']} moves ({moves}) while it pressed \"buy\" "
            f"{mob['plan']['rate']:g} times a second: {mob['answered']}/{mob['clicks']} clicks answered, "
            f"{mob['lost']} lost, {mob['duplicated']} duplicated; the detectors reported {mob['moved_events']} "
            f"mec.ue.moved and sent {mob['warmups']} warm-ups; {inter_txt}; {first_txt}.")


def print_mobility(mob: dict[str, Any], out: Any = sys.stdout) -> None:
    print("\nMobility: UE 1's moves (interruption: its last CloudEvent before the move to its first after; "
          "first start: UE send → fn-buy start, first click served at the target site):", file=out)
    print(f"  {'move':<8}{'procedure':<11}{'to':<20}{'took ms':>9}{'interr. ms':>12}{'1st start ms':>14}  cold",
          file=out)
    for m in mob["per_move"]:
        if not m.get("ok"):
            print(f"  {m['move']:<8}FAILED: {m.get('error')}", file=out)
            continue
        cold = "-" if "first_cold" not in m else ("yes" if m["first_cold"] else "no")
        print(f"  {m['move']:<8}{m['kind']:<11}{_move_target(m):<20}{_ms_or_dash(m.get('took_s')):>9}"
              f"{_ms_or_dash(m.get('interruption_s')):>12}{_ms_or_dash(m.get('first_start_s')):>14}  {cold}", file=out)
    print(f"\n{mobility_line(mob)}", file=out)


def mobility_html(mob: dict[str, Any] | None) -> str:
    """The HTML report's Mobility section: the moves, the totals, the plot (the per-click list is
    in report.json only)."""
    if not mob:
        return ""
    rows = []
    for m in mob["per_move"]:
        if not m.get("ok"):
            rows.append(f"<tr><td>{html.escape(m['move'])}</td><td colspan=\"6\">failed: "
                        f"{html.escape(str(m.get('error')))}</td><td>NO</td></tr>")
            continue
        cold = "-" if "first_cold" not in m else ("yes" if m["first_cold"] else "no")
        rows.append(f"<tr><td>{html.escape(m['move'])}</td><td>{html.escape(m['kind'])}</td>"
                    f"<td>{html.escape(_move_target(m))}</td><td>{_ms_or_dash(m.get('took_s'))}</td>"
                    f"<td>{_ms_or_dash(m.get('interruption_s'))}</td><td>{_ms_or_dash(m.get('first_start_s'))}</td>"
                    f"<td>{cold}</td><td>yes</td></tr>")

    def pct(p: dict[str, Any]) -> str:
        return " / ".join(_ms_or_dash(p[k]) for k in ("p50", "p95", "p99", "max")) if p["n"] else "-"

    totals = [("clicks answered", f"{mob['answered']}/{mob['clicks']}"), ("clicks lost", mob["lost"]),
              ("clicks duplicated", mob["duplicated"]), ("moves", f"{mob['moves'] - mob['moves_failed']}/{mob['moves']}"),
              ("mec.ue.moved events", mob["moved_events"]), ("warm-ups sent", mob["warmups"]),
              ("interruption p50 / p95 / p99 / max (ms)", pct(mob["interruption_s"])),
              ("first start at the target p50 / p95 / p99 / max (ms)", pct(mob["first_start_s"])),
              ("first starts that were cold", f"{mob['first_cold']}/{mob['first_seen']}")]
    total_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in totals)
    img = (f'<img src="{html.escape(mob["plot"])}" alt="UE 1\'s clicks by serving site">' if mob.get("plot")
           else f"<p><em>{html.escape(mob.get('plot_note') or 'no plot')}</em></p>")
    return (f"<h2>Mobility</h2><p>{html.escape(mobility_line(mob))}</p>"
            "<table><tr><th>move</th><th>procedure</th><th>to</th><th>took (ms)</th><th>interruption (ms)</th>"
            f"<th>first function start (ms)</th><th>cold?</th><th>ok</th></tr>{''.join(rows)}</table>"
            f"<h3>Totals</h3><table>{total_rows}</table>{img}"
            "<p>Every click, with the site that served it: report.json, <code>mobility.served</code>.</p>")


def write_mobility_plot(mob: dict[str, Any], path: Path) -> None:
    """testbed.mobility.plot of UE 1's clicks; sets mob's plot (the file's name) or plot_note."""
    from testbed import mobility

    try:
        import matplotlib  # noqa: F401  (the `report` extra)
    except ImportError:
        mob["plot_note"] = "no plot: matplotlib is not installed (pip install '.[report]')"
        return
    label = f"UE 1, pre-warm {'on' if mob['prewarm'] else 'off'}: each click at the site whose fn-buy served it " \
            "(dotted: a move)"
    mobility.plot([{**mob, "label": label}], path)
    mob["plot"] = path.name


# ---------------------------------------------------------------------- modes
def run_sim(args: argparse.Namespace, out: Path, say: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                   list[dict[str, Any]]]:
    from testbed import mobility
    from testbed.scenario import run_ue_plans
    from testbed.stack import Stack

    actions = demo_actions(args.ues, args.rounds, args.rate)
    sites = getattr(args, "sites", 1)
    two: dict[str, Any] = {}
    moves: list[Any] = []
    rules = args.rules
    if sites > 1:  # after the usual actions, UE 1 moves while it clicks
        two = {"sites": sites, "prewarm": args.prewarm}
        # every click an event: the demo's rules merge two buys 50 ms apart (a double click), and a
        # click that a move delayed goes out right before the next one
        rules = rules or mobility.RULES
        moves = mobility.tour(mobility.TOUR, MOBILITY_STAY, MOBILITY_RATE, MOBILITY_HOLD,
                              at=max(a.at for a in actions) + 0.5)
    with Stack(out / "run", "sim", ues=args.ues, lab_id=args.lab_id, progress=say, eventing=args.eventing,
               **two, **({"rules": rules} if rules else {})) as stack:
        say(f"UEs act: {len(actions)} actions ({args.ues} UEs; cold round, then {args.rounds} warm buys "
            f"per UE at {args.rate:g}/s)")
        if moves:
            say(f"then UE 1 clicks {MOBILITY_RATE:g}/s and moves every {MOBILITY_STAY:g} s: "
                + ", ".join(f"{a.kind} to {'gNB' if a.kind == 'handover' else 'site'} {a.spec['to']}"
                            for a in moves if a.kind != "http"))
        results = run_ue_plans(stack, sorted(actions + moves, key=lambda a: a.at), time.time() + 0.3)
        own = [r for r in results if not mobility.is_mobility_tag(str(r.get("tag", "")))]
        failed = [r for r in own if not r.get("ok")]
        say(f"UE actions done: {len(own) - len(failed)} ok, {len(failed)} failed; waiting for functions")
        if moves:
            ran = [r for r in results if r.get("kind") in ("handover", "relocate")]
            say(f"UE 1's moves done: {sum(1 for r in ran if r.get('ok'))}/{len(ran)} ok")
            time.sleep(MOBILITY_SETTLE)
        want = sum(1 for r in own if r.get("ok"))
        deadline = time.monotonic() + args.deadline
        while True:
            events = mobility.site_events(stack) if sites > 1 else stack.broker_events(0)
            invocations = stack.invocations()
            traces = build_traces(own, demo_events(events), invocations)
            done = sum(1 for t in traces if t.ok)
            settled = not moves or mobility.settled(mobility.analyse(results, mobility.broker_accepted(events),
                                                                     invocations))
            if (done >= want and settled) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        say(f"{done}/{len(own)} actions reached a function; tearing down")
        shutil.copy(stack.workdir / "tap.log", out / "tap.log")
        for k in range(2, sites + 1):
            name = f"{stack.part('tap', k)}.log"
            shutil.copy(stack.workdir / name, out / name)
    return results, events, invocations


def demo_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events the usual actions' traces are built from: without the detectors' warm-ups
    (--sites 2), which carry a copy of a UE's last event of a type."""
    from testbed.mobility import is_warmup

    return [e for e in events if not is_warmup(e)]


def run_replay(args: argparse.Namespace, out: Path, say: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                      list[dict[str, Any]]]:
    import subprocess

    from testbed.stack import Stack
    from upf_tap.live.sender import DetectorSender

    capture = Path(args.capture) if args.capture else DEMO_CAPTURE
    if not capture.exists():
        raise SystemExit(f"testbed demo: capture {capture} not found")
    with Stack(out / "run", "replay", progress=say, eventing=args.eventing,
               **({"rules": args.rules} if args.rules else {})) as stack:
        say(f"replaying {capture.name} through upf-tap read → detector")
        res = subprocess.run([sys.executable, "-m", "upf_tap", "read", str(capture)], capture_output=True,
                             text=True, check=True)
        lines = [json.loads(line) for line in res.stdout.splitlines()]
        sender = DetectorSender(stack.detector_url, stack.token)
        sender.start()
        for ev in lines:
            sender.put(ev)
        sender.close()
        say(f"{len(lines)} AppEvents sent; waiting for functions")
        want = sum(1 for e in lines if e["kind"] == "http.request" and e["app"].get("method") == "POST")
        deadline = time.monotonic() + args.deadline
        while True:
            events = stack.broker_events(0)
            invocations = stack.invocations()
            buys = [e for e in events if e["attributes"].get("type") == "mec.app.buy"]
            ran = {i["id"] for i in invocations}
            if (len(buys) >= want and all(e["attributes"]["id"] in ran for e in buys)) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    # replay: the capture's own times are from when it was recorded, so the stages start at the
    # detector; each buy in the capture is one "action"
    results = [{"ue": 0, "kind": "http", "tag": f"replay:id={e['attributes']['id']}", "ok": True, "t_send": None}
               for e in buys]
    if len(buys) < want:
        results += [{"ue": 0, "kind": "http", "tag": "replay:missing", "ok": False}] * (want - len(buys))
    return results, events, invocations


def add_demo_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="the embedded default: UE actions fire serverless functions, with a report",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--mode", choices=("auto", "sim", "replay"), default="auto",
                   help="auto (default): sim as root, replay otherwise")
    p.add_argument("--ues", type=int, default=3, help="UEs in the sim lab (default 3)")
    p.add_argument("--rounds", type=int, default=20, help="warm buys per UE (default 20)")
    p.add_argument("--rate", type=float, default=20.0, help="warm actions per second, all UEs together (default 20)")
    p.add_argument("--deadline", type=float, default=30.0, help="seconds to wait for functions after the actions")
    p.add_argument("--out", type=Path, help="report directory (default out/demo-<time>)")
    p.add_argument("--capture", help=f"replay mode: capture to feed (default {DEMO_CAPTURE.relative_to(REPO)})")
    p.add_argument("--lab-id", default="demo", help="sim lab id (namespaces mec<ID>-…)")
    p.add_argument("--rules", type=Path, help="detector rules (default examples/rules/mec-demo.yaml; with --sites 2 "
                                              "bench/rules-e2e.yaml, where every click is an event: no 50 ms "
                                              "double-click debounce)")
    p.add_argument("--eventing", choices=("broker", "channel"), default="broker",
                   help="the detector's sink: the Broker and its Triggers (default), or the Channel "
                        "mec-events and its Subscriptions (k8s/knative/channel.yaml)")
    p.add_argument("--trace", type=int, metavar="N",
                   help="show the whole trace of UE action N (from 1, as in report.json's traces); "
                        "default: the first warm buy")
    p.add_argument("--sites", type=int, choices=(1, 2), default=1,
                   help="MEC sites in the sim lab (default 1). 2: a gNB, UPF, tap, detector and broker per "
                        "site (docs/sim-sites.md); after the usual actions UE 1 keeps pressing \"buy\" while it "
                        "is moved to site 2 and back twice (relocate, handover, handover, relocate), and the "
                        "report gets a Mobility section: each move's interruption and first function start "
                        "at the target site, clicks lost or duplicated, mec.ue.moved events, warm-ups, a plot "
                        "of the serving site per click (sim mode only; about 40 s)")
    p.add_argument("--prewarm", action=argparse.BooleanOptionalAction, default=True,
                   help="with --sites 2: on a move the detector sends the target site's broker a warm-up for "
                        "the functions the UE used, so they are running when its next events arrive "
                        "(default on; --no-prewarm: the first function start at a site may be a cold start)")
    return p


def _sim_possible() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("ip"):
        return "no `ip` command (iproute2)"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    return None


def run_demo(args: argparse.Namespace) -> int:
    if args.ues < 1 or args.rounds < 1 or args.rate <= 0 or (args.trace is not None and args.trace < 1):
        print("testbed demo: --ues, --rounds, --rate and --trace must be positive", file=sys.stderr)
        return 2
    mode = args.mode
    why = _sim_possible()
    sites = getattr(args, "sites", 1)
    if sites > 1 and (mode == "replay" or why):
        print("testbed demo: --sites 2 needs the sim mode, as root with network namespaces"
              + (f" ({why})" if why else ""), file=sys.stderr)
        return 2
    if mode == "auto":
        mode = "replay" if why else "sim"
        if why:
            print(f"testbed demo: {why}: running the replay mode (a capture through tap → detector → broker "
                  "→ functions); run as root for the sim lab", file=sys.stderr)
    elif mode == "sim" and why:
        print(f"testbed demo: the sim mode needs root and network namespaces ({why})", file=sys.stderr)
        return 2
    out = args.out or REPO / "out" / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    from testbed.stack import StackError

    try:
        results, events, invocations = (run_sim if mode == "sim" else run_replay)(args, out, say)
    except StackError as e:
        print(f"testbed demo: {e}", file=sys.stderr)
        return 1
    mob = None
    if sites > 1:
        from testbed.mobility import is_mobility_tag

        mob = mobility_report(results, events, invocations, args.prewarm, args.rules)
        results = [r for r in results if not is_mobility_tag(str(r.get("tag", "")))]
        events = demo_events(events)
    traces = build_traces(results, events, invocations)
    summary = summarize(traces)
    ok = sum(t.ok for t in traces)
    meta = {"mode": mode, "eventing": args.eventing, "ues": args.ues, "rounds": args.rounds, "rate": args.rate,
            "actions": len(traces),
            "reached_function": ok, "cloudevents_accepted": len(events), "function_invocations": len(invocations),
            "summary_line": f"{mode} mode, {args.eventing} path: {ok}/{len(traces)} UE actions ran a serverless function; "
                            f"{len(events)} CloudEvents accepted by the broker, {len(invocations)} invocations",
            "supis": sorted({str(t.extras["supi"]) for t in traces if t.extras.get("supi")})}
    if mob is not None:
        meta.update(sites=sites, prewarm=args.prewarm)
        meta["summary_line"] += (f"; 2 MEC sites: UE 1 moved {mob['moves'] - mob['moves_failed']}/{mob['moves']} "
                                 f"times, {mob['lost']} clicks lost, {mob['duplicated']} duplicated")
    if args.trace is not None and args.trace > len(traces):
        print(f"testbed demo: no action {args.trace} (there are {len(traces)}): showing the default trace",
              file=sys.stderr)
    trace = trace_report(traces, args.trace)
    print_report(traces, summary)
    print_trace(trace)
    plot = "latency.png" if write_plot(summary, out / "latency.png") else None
    if mob is not None:
        write_mobility_plot(mob, out / "mobility.png")
        print_mobility(mob)
    write_html(traces, summary, meta, out / "report.html", plot, trace, mob)
    report: dict[str, Any] = {"meta": meta, "summary": summary, "trace": trace,
                              "traces": [t.__dict__ for t in traces]}
    if mob is not None:
        report["mobility"] = mob
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"\n{meta['summary_line']}")
    print(f"report: {out / 'report.html'}")
    expected_supis = {supi(n) for n in range(1, args.ues + 1)} if mode == "sim" else set()
    missing = expected_supis - set(meta["supis"])
    if ok < len(traces) or missing:
        print(f"testbed demo: FAILED: {len(traces) - ok} actions did not reach a function"
              + (f"; no events for {sorted(missing)}" if missing else ""), file=sys.stderr)
        return 1
    bad = mobility_failures(mob) if mob is not None else []
    if bad:
        print(f"testbed demo: FAILED: mobility: {'; '.join(bad)}", file=sys.stderr)
        return 1
    return 0
