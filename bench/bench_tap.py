"""Benchmark: `upf-tap read` against tshark on a large generated N3 capture, in the same run.

    python bench/bench_tap.py [--packets 300000] [--rounds 3] [--format pcap|pcapng]

Generates bench/out/n3-<packets>.pcap (mostly bulk TCP, a few thousand app events) unless it
exists, runs `upf-tap read` and tshark (extracting the same HTTP/DNS/TLS events) on it, checks
that both report identical events, and prints packets/s for each, the ratio and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.support.n3_workload import generate  # noqa: E402
from tests.support.oracle import TSHARK, oracle_events, tap_keys  # noqa: E402


def run_measured(cmd: list[str], stdout_path: Path) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one child process."""
    with stdout_path.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {cmd[0]} failed with status {status}")
    return dt, usage.ru_maxrss


def count_packets(path: Path) -> int:
    from upf_tap.capture.pcapfile import read_batches

    return sum(len(recs) >> 2 for _, recs in read_batches(path))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="upf-tap read vs tshark on a generated N3 capture")
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of each tool, interleaved; best and median reported (default 3)")
    ap.add_argument("--format", choices=("pcap", "pcapng"), default="pcap",
                    help="capture format (pcapng: converted with editcap, as dumpcap would write it)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON (bench/run_all.py reads it)")
    args = ap.parse_args(argv)
    if TSHARK is None:
        raise SystemExit("bench: tshark is not installed (make sysdeps)")
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    cap = out / f"n3-{args.packets}.pcap"
    if not cap.exists():
        print(f"generating {cap} ...", file=sys.stderr)
        counts = generate(cap, args.packets, 200, 1)
        print(f"  {counts}", file=sys.stderr)
    if args.format == "pcapng":
        ng = cap.with_suffix(".pcapng")
        if not ng.exists():
            subprocess.run(["editcap", "-F", "pcapng", str(cap), str(ng)], check=True)
        cap = ng
    n = count_packets(cap)
    subprocess.run(["cat", str(cap)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    # Byte-compile the tap first, as `pip install` does for an installed package: with an
    # editable install and PYTHONDONTWRITEBYTECODE set (as on CI machines), every start would
    # otherwise compile the tap's modules from source (~30 ms).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "upf_tap"),
                    str(HERE.parent / "testbed" / "constants.py")], stdout=subprocess.DEVNULL, check=True)

    tap_cmd = [sys.executable, "-m", "upf_tap", "read", "--no-control", str(cap)]
    # the peer: one tshark pass extracting the same fields (what a user would run)
    tshark_cmd = [TSHARK, "-n", "-r", str(cap), "-o", "tcp.reassemble_out_of_order:TRUE",
                  "-Y", "gtp && (http.request || dns.flags.response == 0 || tls.handshake.type == 1)",
                  "-T", "fields", "-e", "http.request.method", "-e", "http.host", "-e", "http.request.uri",
                  "-e", "dns.qry.name", "-e", "tls.handshake.extensions_server_name"]
    tap_out = out / "tap-events.jsonl"
    tap_runs, tshark_runs = [], []
    for r in range(args.rounds):  # interleaved, so that a noisy spell of the machine hits both
        print(f"round {r + 1}/{args.rounds} ...", file=sys.stderr)
        tap_runs.append(run_measured(tap_cmd, tap_out))
        tshark_runs.append(run_measured(tshark_cmd, out / "tshark-fields.tsv"))
    events = [json.loads(line) for line in tap_out.read_text().splitlines()]
    expected = oracle_events(cap)  # untimed: the per-kind oracle used by the tests
    got = tap_keys(events)
    same = got == expected

    def line(name: str, runs: list[tuple[float, int]]) -> str:
        best, med = min(dt for dt, _ in runs), statistics.median(dt for dt, _ in runs)
        rss = max(kib for _, kib in runs)
        return (f"{name:<13}: best {best:6.2f} s {n / best:>10,.0f} packets/s   median {med:6.2f} s "
                f"{n / med:>10,.0f} packets/s   peak RSS {rss / 1024:.0f} MiB")

    tap_best, tshark_best = min(dt for dt, _ in tap_runs), min(dt for dt, _ in tshark_runs)
    tap_med = statistics.median(dt for dt, _ in tap_runs)
    tshark_med = statistics.median(dt for dt, _ in tshark_runs)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"capture: {cap.name}, {n} packets, {sum(expected.values())} app events (tshark), "
          f"{args.rounds} rounds")
    print(line("upf-tap read", tap_runs))
    print(line("tshark", tshark_runs))
    print(f"ratio        : {tshark_best / tap_best:.1f}x tshark's packets/s (best vs best), "
          f"{tshark_med / tap_med:.1f}x (median vs median)")
    print(f"events equal : {same} (tap {sum(got.values())}, tshark {sum(expected.values())})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "packets": n, "rounds": args.rounds, "format": args.format, "app_events": sum(expected.values()),
            "tap_pps_best": round(n / tap_best), "tap_pps_median": round(n / tap_med),
            "tshark_pps_best": round(n / tshark_best), "tshark_pps_median": round(n / tshark_med),
            "ratio_best": round(tshark_best / tap_best, 2), "ratio_median": round(tshark_med / tap_med, 2),
            "events_equal": same}, indent=2) + "\n")
    if not same:
        print(f"  missing {dict(Counter(expected) - Counter(got))}\n  extra {dict(Counter(got) - Counter(expected))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
