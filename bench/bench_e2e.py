"""Benchmark: end-to-end latency per stage at rising UE action rates, on the sim lab (root).

    sudo .venv/bin/python bench/bench_e2e.py [--rates 10,100,1000] [--ues 10] [--seconds 10]
                                             [--eventing broker,channel]

For each rate and each event path it runs `testbed demo` (sim mode, `bench/rules-e2e.yaml`:
every click is an event) with warm buys at that rate for about --seconds, and prints the warm
p50/p95/p99 of each stage, the achieved rate and how many actions reached a function. The
paths (issue 16): `broker`, the detector's sink is the Broker and a Trigger routes the buy to
fn-buy; `channel`, the sink is the Channel mec-events and a Subscription delivers it to
fn-channel-log (k8s/knative/channel.yaml). The two runs of a rate follow each other, with the
same UE actions. Target (issue 7): warm UE send → function start p99 ≤ 50 ms at 100 actions/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STAGES = ("ue_to_tap", "tap_to_detector", "detector_to_broker", "broker_to_function", "detector_to_function",
          "function_run", "ue_to_function")
PATHS = ("broker", "channel")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="10,100,1000", help="UE actions per second, comma-separated")
    ap.add_argument("--ues", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10.0, help="warm phase length at each rate")
    ap.add_argument("--eventing", default="broker,channel",
                    help="event paths to run, comma-separated: broker, channel (default both, side by side)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON (bench/run_all.py reads it)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench_e2e: needs root (the sim lab uses network namespaces)")
    paths = [p.strip() for p in args.eventing.split(",") if p.strip()]
    if not paths or any(p not in PATHS for p in paths):
        raise SystemExit(f"bench_e2e: --eventing takes {', '.join(PATHS)}")
    rows = []
    for rate in [float(r) for r in args.rates.split(",")]:
        for path in paths:
            rows.append(_run(rate, path, args))
    print(f"machine: {os.cpu_count()} cores; {args.ues} UEs; sim lab (GTP-U/PFCP in namespaces), upf-tap live, "
          "detector, local broker; broker path: Trigger -> fn-buy; channel path: Subscription -> fn-channel-log")
    for rate in sorted({r[0] for r in rows}):
        same = [r for r in rows if r[0] == rate]
        print(f"\nrate {rate:g}/s: " + "; ".join(
            f"{path} (achieved {achieved:.0f}/s) {meta['reached_function']}/{meta['actions']} reached a function "
            f"in {wall:.0f} s" for _r, path, achieved, meta, _w, wall in same))
        head = "".join(f"{path + ' p50/p95/p99':>27}" for _r, path, *_ in same)
        print(f"  {'warm stage (ms)':<22}{head}")
        for st in STAGES:
            cells = [w.get(st) for _r, _p, _a, _m, w, _wall in same]
            if not any(cells):
                continue
            print(f"  {st:<22}" + "".join(f"{c['p50']:>9.2f}{c['p95']:>9.2f}{c['p99']:>9.2f}" if c else f"{'-':>27}"
                                         for c in cells))
    target = next((w for r, p, _a, _m, w, _ in rows if r == 100 and p == "broker"), None)
    if target and "ue_to_function" in target:
        p99 = target["ue_to_function"]["p99"]
        print(f"\ntarget: warm UE send → function start p99 at 100/s = {p99:.1f} ms (target ≤ 50 ms: "
              f"{'met' if p99 <= 50 else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"ues": args.ues, "rates": [
            {"rate": rate, "eventing": path, "achieved": round(achieved, 1), "reached_function": meta["reached_function"],
             "actions": meta["actions"], "warm": warm} for rate, path, achieved, meta, warm, _ in rows]}, indent=2) + "\n")
    return 0


def _run(rate: float, path: str, args: argparse.Namespace) -> tuple[float, str, float, dict[str, Any], dict[str, Any],
                                                                   float]:
    """One `testbed demo` at ``rate`` on event path ``path``: (rate, path, achieved, meta, warm stages, wall s)."""
    rounds = max(1, int(rate * args.seconds / args.ues))
    out = HERE / "out" / f"e2e-{rate:g}-{path}"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "testbed", "demo", "--mode", "sim", "--ues", str(args.ues),
                          "--rounds", str(rounds), "--rate", str(rate), "--out", str(out), "--deadline", "60",
                          "--rules", str(HERE / "rules-e2e.yaml"), "--lab-id", f"b{int(rate)}{path[0]}",
                          "--eventing", path],
                         capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - t0
    report_path = out / "report.json"
    if not report_path.exists():
        print(res.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"bench_e2e: the demo at {rate:g}/s ({path}) wrote no report")
    report = json.loads(report_path.read_text())
    paced = [t for t in report["traces"] if t["round"] == "warm" and t["t_send"]]
    sends = sorted(t["t_send"] for t in paced)
    achieved = (len(sends) - 1) / (sends[-1] - sends[0]) if len(sends) > 1 else 0.0
    return rate, path, achieved, report["meta"], report["summary"]["warm"], wall


if __name__ == "__main__":
    sys.exit(main())
