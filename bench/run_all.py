"""Run every benchmark, one after another, and print one table (what `make bench` runs).

    .venv/bin/python bench/run_all.py [--quick] [--only tap,detector,live,e2e,soak,mobility] [--json FILE]

Each benchmark runs as its own process with `--json` and keeps its own output (progress and
its full report) on the terminal; the table at the end takes one line per headline number,
with the peer or target it is measured against in the same run. Benchmarks that need root
(live capture, the sim lab) are skipped with the reason when not run as root. `--quick` runs
smaller workloads (a minute or two in all) for a first look; the numbers in
docs/performance.md come from the full sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
Row = tuple[str, str, str]          # metric, value, against (peer or target)


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    full: list[str]
    quick: list[str]
    needs_root: bool
    rows: Callable[[dict[str, Any]], list[Row]]


def _tap_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, w in r["workloads"].items():
        if w.get("skipped"):
            rows.append((f"upf-tap read on {name}: skipped", "-", w["skipped"]))
            continue
        tap = w["tools"].get("upf-tap")
        peers = ", ".join(f"{p} {w['tools'][p]['pps_best']:,} ({x['best']:.2f}x)" for p, x in w["ratios"].items())
        rows.append((f"upf-tap read on {name}, packets/s (best)", f"{tap['pps_best']:,}" if tap else "failed",
                     peers or "no peer ran"))
        for tool, same in w.get("workers_identical", {}).items():
            rows.append((f"  {tool}, packets/s (best)", f"{w['tools'][tool]['pps_best']:,}",
                         f"events identical to single-process: {same}"))
        ev = w.get("events")
        if ev:
            a = ev["score"]["all"]
            rows.append(("  events vs tshark's: equal" if ev["equal"] else "  events vs tshark's: recall / precision",
                         str(ev["equal"]) if ev["equal"] else f"{a['recall']:.4f} / {a['precision']:.4f}",
                         f"{ev['tshark']:,} app events, {w['packets']:,} packets"))
    return rows


def _detector_rows(r: dict[str, Any]) -> list[Row]:
    return [("detector, CloudEvents/s delivered", f"{r['delivered_per_s']:,}", "target >= 3,000"),
            ("  CPU per CloudEvent (us)", str(r["detector_cpu_us_per_event"]),
             f"{r['per_core_capacity_per_s']:,}/s per core"),
            (f"  latency p50 / p99 at {r['paced_rate']:g}/s (ms)",
             f"{r['latency_ms_p50']} / {r['latency_ms_p99']}", "target p99 <= 20")]


def _live_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [("live: ring + decode capacity, packets/s", f"{r['capacity_decode_pps']:,}",
                        f"ring alone {r['capacity_ring_pps']:,}")]
    peer = r["zero_drop_pps"].get("dumpcap")
    for label, pps in r["zero_drop_pps"].items():
        if label != "dumpcap":
            rows.append((f"  {label}: zero-drop replay rate", f"{pps:,.0f}",
                         f"dumpcap {peer:,.0f}" if peer is not None else "no peer"))
    return rows


def _e2e_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for x in r["rates"]:
        s = x["warm"].get("ue_to_function") or {}
        rows.append((f"e2e at {x['rate']:g}/s, {x.get('eventing', 'broker')} path: UE send -> function p50 / p99 (ms)",
                     f"{s.get('p50', float('nan')):.1f} / {s.get('p99', float('nan')):.1f}",
                     f"{x['reached_function']}/{x['actions']} reached"
                     + (", target p99 <= 50" if x["rate"] == 100 and x.get("eventing", "broker") == "broker" else "")))
    return rows


def _soak_rows(r: dict[str, Any]) -> list[Row]:
    lat = r["latency_ms"]
    flat = max((g["rss_growth_pct"] for g in r["resource_growth"].values()), default=0.0)
    return [(f"soak {r['seconds']:g} s at {r['rate']:g}/s, {r['faults']} faults: lost / duplicates",
             f"{r['lost']} / {r['duplicates']}", f"{r['delivered']}/{r['expected']} delivered, target 0 lost"),
            ("  UE send -> function p50 / p99 (ms)", f"{lat['p50']:.0f} / {lat['p99']:.0f}", "faults included"),
            ("  largest RSS growth of a process (%)", f"{flat:+.1f}", "target flat")]


def _mobility_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for run in r["runs"]:
        first = run["first_start_s"]
        rows.append((f"mobility, {run['label']}: lost / duplicated", f"{run['lost']} / {run['duplicated']}",
                     f"{run['answered']} clicks over {run['moves']} moves, target 0 lost"))
        if first["n"]:
            rows.append(("  first function start at the target site p50 / p99 (ms)",
                         f"{first['p50'] * 1000:.0f} / {first['p99'] * 1000:.0f}",
                         f"cold starts {run['first_cold']}/{run['first_seen']}"))
    return rows


BENCHES = [
    Bench("tap", "bench_tap.py", [], ["--packets", "100000", "--rounds", "2"], False, _tap_rows),
    Bench("detector", "bench_detector.py", [], ["--events", "5000", "--seconds", "3"], False, _detector_rows),
    Bench("live", "bench_live.py", [], ["--packets", "100000", "--rates", "50000,100000,0", "--peer", "none"],
          True, _live_rows),
    Bench("e2e", "bench_e2e.py", [], ["--rates", "10,100", "--seconds", "5"], True, _e2e_rows),
    Bench("soak", "bench_soak.py", [], ["--seconds", "30", "--rate", "100", "--settle", "60"], True, _soak_rows),
    Bench("mobility", "bench_mobility.py", [], ["--moves", "2"], True, _mobility_rows),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller workloads, for a first look")
    ap.add_argument("--only", metavar="NAMES", help=f"comma-separated subset of {','.join(b.name for b in BENCHES)}")
    ap.add_argument("--json", metavar="FILE", help="also write every benchmark's results as one JSON file")
    args = ap.parse_args(argv)
    chosen = BENCHES
    if args.only:
        names = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = names - {b.name for b in BENCHES}
        if unknown:
            print(f"run_all: unknown benchmark(s) {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        chosen = [b for b in BENCHES if b.name in names]
    root = os.geteuid() == 0
    results: dict[str, Any] = {}
    table: list[Row] = []
    failed = 0
    with tempfile.TemporaryDirectory(prefix="mec-bench-") as tmp:
        for i, b in enumerate(chosen, 1):
            head = f"[{i}/{len(chosen)}] {b.name} ({b.script})"
            if b.needs_root and not root:
                print(f"{head}: skipped, needs root", file=sys.stderr)
                table.append((f"{b.name}: skipped", "-", "needs root"))
                continue
            out = Path(tmp) / f"{b.name}.json"
            argv_b = [sys.executable, str(HERE / b.script), *(b.quick if args.quick else b.full), "--json", str(out)]
            print(f"{head}: {' '.join(argv_b[1:])}", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            rc = subprocess.run(argv_b, cwd=HERE.parent).returncode
            took = time.monotonic() - t0
            if rc != 0 or not out.exists():
                failed += 1
                table.append((f"{b.name}: FAILED (exit {rc})", "-", f"{took:.0f} s"))
                continue
            res = json.loads(out.read_text())
            results[b.name] = res
            table += b.rows(res)
            table.append((f"  ({b.name}: {took:.0f} s)", "", ""))
    w = max(len(r[0]) for r in table) if table else 10
    v = max(len(r[1]) for r in table) if table else 5
    print(f"\n{'benchmark':<{w}}  {'value':>{v}}  against")
    for metric, value, against in table:
        print(f"{metric:<{w}}  {value:>{v}}  {against}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
