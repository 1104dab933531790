"""Measuring a UE that moves between two MEC sites (issue 18): the click stream, the moves, and
what the sites' brokers and functions recorded of them.

Used by bench/bench_mobility.py (many moves, cold versus pre-warmed) and tests/e2e/test_mobility.py
(a UE moved mid-stream loses no click). A click is one `POST /api/v1/buy?item=1&click=N` from
the UE; its CloudEvent's `data.path` carries N, so each click is followed to the site whose
fn-buy served it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from testbed.scenario import Action

BUY_URL = "http://shop.mec.local/api/v1/buy?item=1&click={n}"  # click: the one number of each press
BUY_TYPE = "mec.app.buy"
SERVICE = "fn-buy"
RULES = Path(__file__).resolve().parent.parent / "bench" / "rules-e2e.yaml"   # every click is an event: the demo's buy rule debounces 50 ms (a double click)
SETTLE = 4.0          # seconds after the last click for the sites to deliver what is in flight
GRACE = 0.5           # the brokers' scale-to-zero grace (seconds) on top of --idle-window
MOVED_TYPE = "mec.ue.moved"
# `testbed demo --sites 2`: both procedures, each move to the other site (handover: to the other
# site's gNB, the anchor UPF stays; relocate: a new anchor, after a handover when needed)
TOUR = ("relocate", "handover", "handover", "relocate")


def percentiles(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    s = sorted(xs)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, round(p * (len(s) - 1)))], 4)

    return {"n": len(s), "p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "max": round(s[-1], 4)}


def plan(moves: int, stay: float, rate: float, procedure: str, hold: float = 1.0) -> list[Action]:
    """Clicks every 1/rate s from 0.5 s to the end; a move every ``stay`` s, alternating sites."""
    actions: list[Action] = []
    end = stay * (moves + 1)
    n, t = 0, 0.5
    while t < end:
        n += 1
        actions.append(Action(1, round(t, 3), "http", {"method": "POST", "url": BUY_URL.format(n=n)}, f"buy-{n}"))
        t += 1.0 / rate
    for i in range(moves):
        to = 2 if i % 2 == 0 else 1
        kind = "handover" if procedure == "handover" else "relocate"
        spec: dict[str, Any] = {"to": to} if kind == "handover" else {"to": to, "hold": hold}
        actions.append(Action(1, round(stay * (i + 1), 3), kind, spec, f"move-{i + 1}"))
    return sorted(actions, key=lambda a: a.at)


def tour(procedures: Sequence[str], stay: float, rate: float, hold: float = 1.0, at: float = 0.0,
         ue: int = 1) -> list[Action]:
    """As plan(), with one procedure per move (``procedures[i]`` for move i+1), the moves alternating
    to site 2 and back to site 1, and every time shifted by ``at`` seconds."""
    if any(p not in ("handover", "relocate") for p in procedures):
        raise ValueError(f"procedures are handover or relocate, not {list(procedures)}")
    clicks = [a for a in plan(len(procedures), stay, rate, "handover", hold) if a.kind == "http"]
    moves = []
    for i, kind in enumerate(procedures):
        to = 2 if i % 2 == 0 else 1
        spec: dict[str, Any] = {"to": to} if kind == "handover" else {"to": to, "hold": hold}
        moves.append(Action(1, round(stay * (i + 1), 3), kind, spec, f"move-{i + 1}"))
    return sorted((dataclasses.replace(a, ue=ue, at=round(a.at + at, 3)) for a in clicks + moves),
                  key=lambda a: a.at)


def is_mobility_tag(tag: str) -> bool:
    """The tags plan() and tour() give their clicks and moves."""
    return tag.startswith(("buy-", "move-"))


def site_events(stack: Any) -> list[dict[str, Any]]:
    """Every site's broker's accepted events, each with its ``site``."""
    return [{**e, "site": k} for k in stack.site_numbers() for e in stack.broker_events(0, site=k)]


def broker_accepted(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Broker's acceptances only: on the channel path the Channel's are listed too (before its
    Subscription hands each event on to the Broker), and would count every click twice."""
    return [e for e in events if "channel" not in e]


def is_warmup(event: dict[str, Any]) -> bool:
    return str(event["attributes"].get("mecwarmup", "")).lower() == "true"


def moved_events(events: list[dict[str, Any]], supi: str | None = None) -> list[dict[str, Any]]:
    """The detectors' mec.ue.moved (of one SUPI's UE, when given)."""
    return [e for e in events if e["attributes"].get("type") == MOVED_TYPE
            and (supi is None or e["attributes"].get("supi") in (None, supi))]


def settled(result: dict[str, Any]) -> bool:
    """analyse() found every answered click at a site, each with its fn-buy run."""
    return result["lost"] == 0 and all(s["fn_start"] is not None for s in result["served"])


def item_of(event: dict[str, Any]) -> int | None:
    try:
        data = json.loads(event.get("data") or "null")
    except ValueError:
        return None
    path = (data or {}).get("path") if isinstance(data, dict) else None
    if not isinstance(path, str):
        return None
    v = parse_qs(urlsplit(path).query).get("click")
    return int(v[0]) if v and v[0].isdigit() else None


def ce_time(attrs: dict[str, Any]) -> float | None:
    from datetime import datetime

    t = attrs.get("time")
    if not isinstance(t, str):
        return None
    try:
        return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def analyse(results: list[dict[str, Any]], events: list[dict[str, Any]], invocations: list[dict[str, Any]]
            ) -> dict[str, Any]:
    """Per-move and per-click figures from the UE's action records and the sites' journals."""
    clicks = {int(r["tag"].split("-")[1]): r for r in results if r.get("kind") == "http" and r.get("tag", "").startswith("buy-")}
    moves = [r for r in results if r.get("kind") in ("handover", "relocate")]
    buys: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        a = e["attributes"]
        if a.get("type") == BUY_TYPE and str(a.get("mecwarmup", "")).lower() != "true":
            n = item_of(e)
            if n is not None:
                buys.setdefault(n, []).append({"site": e["site"], "id": a.get("id"), "time": ce_time(a)})
    inv_by_id = {i.get("id"): i for i in invocations if i.get("service") == SERVICE and i.get("status", 500) < 300}
    answered = [n for n, r in clicks.items() if r.get("ok")]
    errors: dict[str, int] = {}
    for r in clicks.values():
        if not r.get("ok"):
            why = str(r.get("error") or f"status {r.get('status')}")[:80]
            errors[why] = errors.get(why, 0) + 1
    lost = sorted(n for n in answered if not buys.get(n))
    dup = sum(max(0, len(buys.get(n, [])) - 1) for n in answered)
    served: list[dict[str, Any]] = []
    for n in sorted(clicks):
        r = clicks[n]
        for b in buys.get(n, [])[:1]:
            inv = inv_by_id.get(b["id"])
            served.append({"item": n, "t_send": r.get("t_send"), "site": b["site"], "ce_time": b["time"],
                           "fn_start": inv.get("start") if inv else None, "cold": bool(inv and inv.get("first"))})
    per_move = []
    for m in moves:
        if not m.get("ok"):
            per_move.append({"move": m["tag"], "ok": False, "error": m.get("error")})
            continue
        t0 = m["t"]
        target = int(m["spec"]["to"])
        before = [s for s in served if s["ce_time"] is not None and s["t_send"] is not None and s["t_send"] < t0]
        after = [s for s in served if s["ce_time"] is not None and s["t_send"] is not None and s["t_send"] >= t0]
        first_target = next((s for s in sorted(after, key=lambda s: s["t_send"])
                             if s["site"] == target and s["fn_start"] is not None), None)
        rec: dict[str, Any] = {"move": m["tag"], "kind": m["kind"], "to_site": target, "ok": True,
                               "took_s": m.get("elapsed"), "t": t0}
        if before and after:
            rec["interruption_s"] = round(min(s["ce_time"] for s in after) - max(s["ce_time"] for s in before), 4)
        if first_target is not None:
            rec["first_start_s"] = round(first_target["fn_start"] - first_target["t_send"], 4)
            rec["first_cold"] = first_target["cold"]
            rec["first_item"] = first_target["item"]
        per_move.append(rec)
    good = [m for m in per_move if m.get("ok")]
    return {
        "clicks": len(clicks), "answered": len(answered), "failed_clicks": len(clicks) - len(answered),
        "click_errors": errors,
        "lost": len(lost), "lost_items": lost[:20], "duplicated": dup,
        "moves": len(moves), "moves_failed": sum(1 for m in per_move if not m.get("ok")),
        "interruption_s": percentiles([m["interruption_s"] for m in good if "interruption_s" in m]),
        "first_start_s": percentiles([m["first_start_s"] for m in good if "first_start_s" in m]),
        "first_cold": sum(1 for m in good if m.get("first_cold")),
        "first_seen": sum(1 for m in good if "first_start_s" in m),
        "per_move": per_move, "served": served,
    }


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 1.9 * len(runs) + 0.6), sharex=False, squeeze=False)
    for ax, r in zip(axes[:, 0], runs, strict=True):
        served = [s for s in r["served"] if s["t_send"] is not None]
        if not served:
            continue
        t0 = min(s["t_send"] for s in served)
        for cold, colour, name in ((False, "tab:blue", "warm"), (True, "tab:red", "cold start")):
            xs = [s["t_send"] - t0 for s in served if s["cold"] == cold]
            ys = [s["site"] for s in served if s["cold"] == cold]
            ax.scatter(xs, ys, s=9 if not cold else 30, c=colour, label=name, marker="o" if not cold else "x")
        for m in r["per_move"]:
            if m.get("ok") and m.get("t") is not None:
                ax.axvline(m["t"] - t0, color="grey", lw=0.6, ls=":")
        ax.set_yticks([1, 2], ["site 1", "site 2"])
        ax.set_ylim(0.5, 2.5)
        ax.set_title(r["label"], fontsize=9, loc="left")
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds (UE 1's clicks, by the site whose fn-buy served them)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
