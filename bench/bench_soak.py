"""Benchmark: soak and chaos — the sim lab at a steady rate of UE actions while its parts fail (root).

    sudo .venv/bin/python bench/bench_soak.py [--seconds 600] [--rate 200] [--ues 10] [--faults default]

UE buys at --rate per second for --seconds; meanwhile one fault of each kind (kill -9 of the
tap, the detector, the broker and the function; 503 and 429 storms at the detector's sink;
N3 loss, delay and reordering; the detector's disk full), spread over the first 80 % of the
run (testbed/soak/faults.py; --faults kind@at[:duration],… for your own). At the end every
action the main application served is accounted for: reached its function (duplicates
counted) or lost (listed). Memory and open files of every process are sampled each second.
Writes soak.json, soak.txt and soak.png (rate, latency, memory and the faults over time) to --out.
Goal (issue 15): 0 lost; memory and file descriptors flat.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from testbed.soak.faults import ScheduleError, parse_schedule
from testbed.soak.harness import SoakConfig, SoakRun
from testbed.soak.report import write_all

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="length of the UE load (default %(default)g)")
    ap.add_argument("--rate", type=float, default=200.0, help="UE actions per second, all UEs (default %(default)g)")
    ap.add_argument("--ues", type=int, default=10, help="UEs sharing the rate (default %(default)d)")
    ap.add_argument("--faults", default="default",
                    help="'default' (one of each kind), 'none', or kind@seconds[:duration],…")
    ap.add_argument("--settle", type=float, default=90.0, help="seconds to wait for late deliveries (default %(default)g)")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "soak", help="report directory (default %(default)s)")
    ap.add_argument("--json", metavar="FILE", help="also write the summary as JSON (bench/run_all.py reads it)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench_soak: needs root (the sim lab uses network namespaces, the detector's disk a tmpfs)")
    if args.rate <= 0 or args.seconds <= 0 or args.ues < 1:
        raise SystemExit("bench_soak: --rate and --seconds must be positive, --ues at least 1")
    try:
        faults = parse_schedule(args.faults, args.seconds)
    except ScheduleError as e:
        raise SystemExit(f"bench_soak: {e}") from None
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="mec-soak-") as tmp:
        cfg = SoakConfig(Path(tmp), seconds=args.seconds, rate=args.rate, ues=args.ues, faults=faults,
                         lab_id=f"sk{os.getpid() % 10000}", settle=args.settle)
        result = SoakRun(cfg, say).run()
    write_all(result, args.out, sys.stdout)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "actions": result.actions, "expected": result.expected, "delivered": result.delivered,
            "lost": len(result.lost), "duplicates": result.duplicates, "latency_ms": result.latency_ms,
            "faults": len(result.faults), "rate": args.rate, "seconds": args.seconds,
            "resource_growth": result.resource_growth}, indent=2) + "\n")
    return 0 if not result.lost else 1


if __name__ == "__main__":
    sys.exit(main())
