"""Benchmark: a UE moving between two MEC sites while it keeps using a function (issue 18).

    python bench/bench_mobility.py [--moves 12] [--stay 4] [--rate 10] [--procedures handover,relocate]
                                   [--prewarm off,on] [--idle-window 1.5] [--json FILE] [--plot FILE]

On the two-site sim (docs/sim-sites.md: a gNB, UPF, tap, detector and local broker with its
functions per site), UE 1 presses "buy" ``--rate`` times a second (each POST carries its own
item number) while the testbed moves it every ``--stay`` seconds, to the other site and back:

  handover  an Xn path switch to the other gNB on the same UPF: PFCP Session Modification with
            the new DL F-TEID, the UPF's End Marker on the old path; the detector sees the new
            gNB and routes the UE's later CloudEvents to that gNB's site
  relocate  SSC mode 3: a new PDU session at the other site's UPF, then (after --hold s) release of the old one;
            the other site's tap and detector see the UE from then on

Each configuration (procedure x pre-warm off/on) runs on a fresh stack. The brokers scale a
function to zero after ``--idle-window`` seconds (+0.5 s grace) without a request, so the site a
UE comes back to after ``--stay`` seconds has no fn-buy running: without pre-warm the first
click there waits for a cold start; with pre-warm the detector has sent that site's broker a
warm-up (`mecwarmup: "true"`) for fn-buy the moment it saw the move.

Measured per move, from what the sites' brokers and functions recorded:
  interruption    capture time of the UE's first CloudEvent after the move minus that of its last
                  before it (the action stream runs every 1/rate s, so 1/rate is the floor)
  lost / dup      clicks whose POST was answered but that reached fn-buy at no site / more than once
  first start     UE send time -> fn-buy handler start, for the first click served at the target
                  site after the move; and whether that invocation was a cold start
  served where    each click's serving site (the plot: one UE's clicks over time, by site)
Printed as p50/p95/p99 per configuration, with a markdown table (docs/performance.md shows it).
Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from testbed.mobility import GRACE, RULES, SETTLE, analyse, plan, plot  # noqa: E402
from testbed.scenario import run_ue_plans  # noqa: E402
from testbed.stack import Stack  # noqa: E402


def run_config(args: argparse.Namespace, procedure: str, prewarm: bool, root: Path) -> dict[str, Any]:
    label = f"{procedure}, pre-warm {'on' if prewarm else 'off'}"
    work = root / f"{procedure}-{'prewarm' if prewarm else 'cold'}"
    print(f"== {label}: {args.moves} moves every {args.stay} s, {args.rate:g} clicks/s", file=sys.stderr, flush=True)
    stack = Stack(work, "sim", ues=1, rules=RULES, lab_id=f"bm{'p' if prewarm else 'c'}{procedure[0]}", sites=2, prewarm=prewarm,
                  broker_args=["--idle-window", str(args.idle_window), "--scale-to-zero-grace", str(GRACE)],
                  progress=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True))
    with stack:
        t_begin = time.time()
        results = run_ue_plans(stack, plan(args.moves, args.stay, args.rate, procedure, args.hold), t_begin + 0.5)
        time.sleep(SETTLE)
        events = [{**e, "site": k} for k in (1, 2) for e in stack.broker_events(0, site=k)]
        invocations = stack.invocations()
        warmups = sum(1 for e in events if str(e["attributes"].get("mecwarmup", "")).lower() == "true")
        moved = sum(1 for e in events if e["attributes"].get("type") == "mec.ue.moved")
    out = analyse(results, events, invocations)
    out.update(procedure=procedure, prewarm=prewarm, label=label, warmups=warmups, moved_events=moved,
               workdir=str(work))
    return out


def fmt(p: dict[str, Any], scale: float = 1000.0) -> str:
    if not p["n"]:
        return "–"
    return " / ".join(f"{p[k] * scale:.0f}" for k in ("p50", "p95", "p99"))


def markdown(runs: list[dict[str, Any]]) -> str:
    rows = ["| procedure | pre-warm | moves | clicks answered | lost | dup | interruption p50/p95/p99 ms "
            "| first start at target p50/p95/p99 ms | cold starts | moved events | warm-ups |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rows.append(f"| {r['procedure']} | {'on' if r['prewarm'] else 'off'} | {r['moves'] - r['moves_failed']}/{r['moves']} "
                    f"| {r['answered']}/{r['clicks']} | {r['lost']} | {r['duplicated']} | {fmt(r['interruption_s'])} "
                    f"| {fmt(r['first_start_s'])} | {r['first_cold']}/{r['first_seen']} | {r['moved_events']} "
                    f"| {r['warmups']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=12, help="moves per configuration (default 12)")
    ap.add_argument("--stay", type=float, default=4.0, help="seconds at a site between moves (default 4)")
    ap.add_argument("--rate", type=float, default=10.0, help="clicks per second (default 10)")
    ap.add_argument("--procedures", default="handover,relocate", help="handover, relocate or both (default both)")
    ap.add_argument("--prewarm", default="off,on", help="off, on or both (default both)")
    ap.add_argument("--idle-window", type=float, default=1.5,
                    help="the brokers' scale-to-zero idle window in seconds (default 1.5; must be below --stay)")
    ap.add_argument("--hold", type=float, default=1.0,
                    help="relocate: seconds the old PDU session is kept for the connections still on it (default 1)")
    ap.add_argument("--workdir", type=Path, help="where the stacks' logs go (default a new temporary folder)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--plot", metavar="FILE", help="also plot UE 1's clicks over time by serving site (PNG)")
    args = ap.parse_args(argv)
    procedures = [p.strip() for p in args.procedures.split(",") if p.strip()]
    prewarms = [p.strip() for p in args.prewarm.split(",") if p.strip()]
    if (not procedures or any(p not in ("handover", "relocate") for p in procedures)
            or not prewarms or any(p not in ("off", "on") for p in prewarms)
            or args.moves < 1 or args.rate <= 0 or not 0 < args.idle_window + GRACE < args.stay):
        print("bench_mobility: --procedures takes handover,relocate; --prewarm off,on; --moves >= 1; --rate > 0; "
              f"--idle-window + {GRACE} must be below --stay", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench_mobility: needs root (the sim lab's network namespaces)", file=sys.stderr)
        return 2
    root = args.workdir or Path(tempfile.mkdtemp(prefix="mec-bench-mobility-"))
    runs = [run_config(args, proc, pw == "on", root) for proc in procedures for pw in prewarms]
    bad = False
    for r in runs:
        print(f"\n== {r['label']}: {r['moves'] - r['moves_failed']}/{r['moves']} moves, "
              f"{r['answered']}/{r['clicks']} clicks answered, lost {r['lost']}, duplicated {r['duplicated']}, "
              f"{r['moved_events']} mec.ue.moved, {r['warmups']} warm-ups")
        print(f"  interruption (ms) p50/p95/p99: {fmt(r['interruption_s'])}")
        print(f"  first fn-buy start at the target site (ms) p50/p95/p99: {fmt(r['first_start_s'])}; "
              f"cold starts {r['first_cold']}/{r['first_seen']}")
        if r["lost"]:
            print(f"  LOST clicks: {r['lost_items']}")
        if r["click_errors"]:
            print(f"  clicks not answered: {r['click_errors']}")
        bad |= r["lost"] > 0
    table = markdown(runs)
    print("\n" + table)
    print(f"\nlogs: {root}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                         for k, v in vars(args).items()},
                                               "runs": runs, "ok": not bad}, indent=1) + "\n")
    if args.plot:
        plot(runs, Path(args.plot))
        print(f"plot: {args.plot}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
