"""Benchmark: `upf-tap read` against tshark, nDPI and NFStream on three N3 workloads, in one run.

    python bench/bench_tap.py [--workloads bulk,mixed,real] [--packets 300000] [--rounds 3]
                              [--format pcap|pcapng] [--corpus DIR] [--tap-workers N[,M]] [--json FILE]

Workloads (GTP-U on N3, 200 UEs):
  bulk   bench/out/n3-<packets>.pcap, tests/support/n3_workload.generate: mostly bulk TCP downloads
         one after another, a few hundred app events
  mixed  bench/out/n3-mixed-<packets>.pcap, generate_mixed: what a UPF sees, ~130 flows in progress
         at once, DNS, TLS over TCP, QUIC, HTTP and some bulk (300k packets: ~8.5k flows, ~10.5k events)
  real   DIR/all.pcap of a corpus made by `testbed corpus build --out DIR` (--corpus DIR or $MEC_CORPUS):
         public test captures tunnelled into GTP-U; skipped, with the reason, when there is none
The generated captures are made once and kept.

Tools, each a process timed from start to exit (wall time; peak RSS from wait4, the process spawned
by a small launcher so that the bench's own memory is not counted in it):
  upf-tap      python -m upf_tap read --no-control FILE ("upf-tap py": the same with UPF_TAP_ACCEL=0, the
               Python walk instead of the compiled one; and "upf-tap xN" with --workers N, for each N of
               --tap-workers, when `upf-tap read` has that option)
  tshark       one pass extracting HTTP requests, DNS queries and SNIs inside GTP-U (what the tap reports)
  ndpiReader   nDPI's reader, GTP tunnels dissected (-t), quiet (-q)
  nfstream     NFStreamer(decode_tunnels=True, statistical_analysis=False, n_meters=1), every flow read
A tool that is not installed is skipped with the reason.

Rounds are interleaved (round r runs every tool on every workload before round r+1), so a noisy
spell of the machine hits all alike; best and median are reported, and the ratios upf-tap vs each
peer (>1: the tap is faster). The tap's events are checked against tshark's (the oracle the tests
use): on bulk and mixed they must be identical (exit status 1 otherwise), on real recall and
precision per kind are printed. Every worker count must give the events of the single process.
At the end, a markdown table (workload rows, tool columns) as docs/performance.md shows it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from testbed.corpus.oracle import ORACLE_FILTER, Key, Score  # noqa: E402
from tests.support.n3_workload import generate, generate_mixed  # noqa: E402
from tests.support.oracle import TSHARK, oracle_events, tap_keys  # noqa: E402
from upf_tap.constants import ACCEL_ENV  # noqa: E402
from upf_tap.walk import ACCEL  # noqa: E402

WORKLOADS = ("bulk", "mixed", "real")
PEERS = ("tshark", "ndpiReader", "nfstream")
NDPI = shutil.which("ndpiReader")
HAS_NFSTREAM = importlib.util.find_spec("nfstream") is not None
# What a user of NFStream runs to read every flow of a capture (the n_dissections default: 20
# packets per flow for nDPI's classification); one metering process, as the tap is one process.
NFSTREAM_SCRIPT = """\
import sys
from nfstream import NFStreamer
n = 0
for _flow in NFStreamer(source=sys.argv[1], decode_tunnels=True, statistical_analysis=False, n_meters=1):
    n += 1
print(n)
"""


@dataclass
class Tool:
    name: str
    cmd: Callable[[Path], list[str]]
    skipped: str | None = None           # why it does not run


@dataclass
class Workload:
    name: str
    cap: Path | None = None
    skipped: str | None = None
    packets: int = 0
    runs: dict[str, list[tuple[float, int]]] = field(default_factory=dict)    # tool -> (seconds, KiB)
    failed: dict[str, str] = field(default_factory=dict)                      # tool -> why
    outputs: dict[str, Path] = field(default_factory=dict)                    # tool -> stdout of its last run


# Starts one tool and reports its wall time and peak RSS. A child's ru_maxrss counts the memory
# of the process it was spawned from (Linux keeps the old address space's high-water mark at
# exec), so the tools are spawned from this small process (~8 MiB), not from the bench (which
# holds generated captures and events): what is measured is the tool's own peak.
LAUNCHER = """\
import os, sys, time
t0 = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
dt = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    f.write(f"{dt!r} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def run_measured(cmd: list[str], stdout_path: Path) -> tuple[float, int, int, str]:
    """Wall time, peak RSS (KiB, of the process and the children it waited for), exit code and the
    end of stderr of one tool (``cmd[0]`` an absolute path), its stdout to ``stdout_path``."""
    err_path, res_path = stdout_path.with_suffix(".stderr"), stdout_path.with_suffix(".measured")
    res_path.unlink(missing_ok=True)
    with stdout_path.open("wb") as out, err_path.open("wb") as err:
        rc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(res_path), *cmd], stdout=out, stderr=err,
                            cwd=REPO, check=False).returncode
    tail = err_path.read_text(errors="replace")[-600:]
    err_path.unlink()
    if rc != 0 or not res_path.exists():
        return 0.0, 0, rc or 1, tail
    dt, kib, code = res_path.read_text().split()
    res_path.unlink()
    return float(dt), int(kib), int(code), tail


def count_packets(path: Path) -> int:
    from upf_tap.capture.pcapfile import read_batches

    return sum(len(recs) >> 2 for _, recs in read_batches(path))


def tap_has_workers() -> bool:
    out = subprocess.run([sys.executable, "-m", "upf_tap", "read", "--help"], capture_output=True, text=True,
                         cwd=REPO, check=False).stdout
    return "--workers" in out


def make_tools(tap_workers: list[int]) -> list[Tool]:
    def tap(extra: list[str]) -> Callable[[Path], list[str]]:
        return lambda cap: [sys.executable, "-m", "upf_tap", "read", "--no-control", *extra, str(cap)]

    tools = [Tool("upf-tap", tap([]))]
    # the same tap with the compiled walk off (upf_tap/_walk.c): what the accelerator buys
    py_only = ["/usr/bin/env", f"{ACCEL_ENV}=0"]
    tools.append(Tool("upf-tap py", lambda cap: [*py_only, *tap([])(cap)],
                      None if ACCEL is not None else "the compiled walk is not built: upf-tap is the Python walk already"))
    if tap_workers:
        why = None if tap_has_workers() else "`upf-tap read` has no --workers option (yet)"
        tools += [Tool(f"upf-tap x{n}", tap(["--workers", str(n)]), why) for n in tap_workers]
    # the peer: one tshark pass extracting the same fields (what a user would run)
    tools.append(Tool("tshark", lambda cap: [
        TSHARK or "tshark", "-n", "-r", str(cap), "-o", "tcp.reassemble_out_of_order:TRUE", "-Y", ORACLE_FILTER,
        "-T", "fields", "-e", "http.request.method", "-e", "http.host", "-e", "http.request.uri",
        "-e", "dns.qry.name", "-e", "tls.handshake.extensions_server_name"],
        None if TSHARK else "tshark is not installed (Debian package tshark; make sysdeps)"))
    tools.append(Tool("ndpiReader", lambda cap: [NDPI or "ndpiReader", "-t", "-q", "-i", str(cap)],
                      None if NDPI else "ndpiReader is not installed (Debian package libndpi-bin)"))
    tools.append(Tool("nfstream", lambda cap: [sys.executable, "-c", NFSTREAM_SCRIPT, str(cap)],
                      None if HAS_NFSTREAM else f"nfstream is not installed in {sys.prefix} (pip install nfstream)"))
    return tools


def prepare(name: str, args: argparse.Namespace, out: Path) -> Workload:
    """The workload's capture (generated once), or why it is skipped."""
    w = Workload(name)
    if name == "real":
        corpus = args.corpus or os.environ.get("MEC_CORPUS")
        if not corpus:
            w.skipped = "no corpus: pass --corpus DIR or set MEC_CORPUS (made by `testbed corpus build --out DIR`)"
            return w
        cap = Path(corpus) / "all.pcap"
        if not cap.is_file():
            w.skipped = f"{cap} not found (`testbed corpus build --out {corpus}` writes it)"
            return w
    else:
        cap = out / (f"n3-{args.packets}.pcap" if name == "bulk" else f"n3-mixed-{args.packets}.pcap")
        if not cap.exists():
            print(f"generating {cap} ...", file=sys.stderr)
            tmp = cap.with_suffix(".tmp")
            counts = (generate if name == "bulk" else generate_mixed)(tmp, args.packets, 200, 1)
            tmp.rename(cap)
            print(f"  {counts}", file=sys.stderr)
    if args.format == "pcapng":
        ng = out / f"{cap.stem}{'-real' if name == 'real' else ''}.pcapng"
        if not ng.exists() or ng.stat().st_mtime < cap.stat().st_mtime:
            subprocess.run(["editcap", "-F", "pcapng", str(cap), str(ng)], check=True)
        cap = ng
    w.cap = cap
    w.packets = count_packets(cap)
    return w


def summary(runs: list[tuple[float, int]], packets: int) -> dict[str, Any]:
    best, med = min(dt for dt, _ in runs), statistics.median(dt for dt, _ in runs)
    return {"best_s": round(best, 4), "median_s": round(med, 4), "pps_best": round(packets / best),
            "pps_median": round(packets / med), "peak_rss_kib": max(kib for _, kib in runs)}


def read_tap_keys(path: Path) -> Counter[Key]:
    with path.open() as f:
        return tap_keys(json.loads(line) for line in f if line.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument("--packets", type=int, default=300_000, help="packets in each generated capture (default 300000)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of each tool on each workload, interleaved; best and median reported (default 3)")
    ap.add_argument("--format", choices=("pcap", "pcapng"), default="pcap",
                    help="capture format (pcapng: converted with editcap, as dumpcap would write it)")
    ap.add_argument("--corpus", metavar="DIR", help="corpus of real captures for the real workload (default $MEC_CORPUS)")
    ap.add_argument("--tap-workers", metavar="N[,M]", default="",
                    help="also run `upf-tap read --workers N` for each N (when the tap has the option)")
    ap.add_argument("--out", metavar="DIR", type=Path, default=HERE / "out",
                    help="where the generated captures and the tools' outputs go (default bench/out)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON (bench/run_all.py reads it)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    try:
        workers = [int(x) for x in args.tap_workers.split(",") if x.strip()]
    except ValueError:
        workers = [0]
    if unknown or not names or any(n < 1 for n in workers) or args.rounds < 1:
        print(f"bench: --workloads takes a subset of {','.join(WORKLOADS)}, --tap-workers positive integers, "
              "--rounds at least 1", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tools = make_tools(workers)
    for t in tools:
        if t.skipped:
            print(f"bench: skipping {t.name}: {t.skipped}", file=sys.stderr)
    loads = [prepare(n, args, out) for n in names]
    for w in loads:
        if w.skipped:
            print(f"bench: skipping the {w.name} workload: {w.skipped}", file=sys.stderr)
    active = [w for w in loads if w.cap is not None]
    running = [t for t in tools if not t.skipped]
    for w in active:
        assert w.cap is not None
        subprocess.run(["cat", str(w.cap)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    # Byte-compile the tap first, as `pip install` does for an installed package: with an
    # editable install and PYTHONDONTWRITEBYTECODE set (as on CI machines), every start would
    # otherwise compile the tap's modules from source (~30 ms).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "upf_tap"),
                    str(REPO / "testbed" / "constants.py")], stdout=subprocess.DEVNULL, check=True)

    for r in range(args.rounds):
        for w in active:
            assert w.cap is not None
            print(f"round {r + 1}/{args.rounds}: {w.name} ({w.cap.name}, {w.packets} packets) ...",
                  file=sys.stderr, flush=True)
            for t in running:
                if t.name in w.failed:
                    continue
                stdout = out / f"{w.name}-{t.name.replace(' ', '')}.out"
                dt, kib, rc, err = run_measured(t.cmd(w.cap), stdout)
                if rc != 0:
                    w.failed[t.name] = f"exit status {rc}: {err.strip()[-300:]}"
                    print(f"bench: {t.name} failed on {w.name}: {w.failed[t.name]}", file=sys.stderr)
                    continue
                w.runs.setdefault(t.name, []).append((dt, kib))
                w.outputs[t.name] = stdout

    # correctness: the tap's events against tshark's (untimed: the per-kind oracle of the tests)
    bad = bool(any(w.failed for w in active))
    results: dict[str, Any] = {}
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {args.rounds} round{'s' * (args.rounds > 1)}, {args.format}")
    for w in loads:
        if w.cap is None:
            print(f"\n== {w.name}: skipped ({w.skipped})")
            results[w.name] = {"skipped": w.skipped}
            continue
        res: dict[str, Any] = {"skipped": None, "capture": str(w.cap), "packets": w.packets,
                               "tools": {}, "ratios": {}, "failed": w.failed}
        expected = oracle_events(w.cap) if TSHARK else None
        got = read_tap_keys(w.outputs["upf-tap"]) if "upf-tap" in w.outputs else None
        flows = None
        if "nfstream" in w.outputs:
            text = w.outputs["nfstream"].read_text().strip()
            flows = int(text) if text.isdigit() else None
        res["app_events"] = sum(expected.values()) if expected is not None else None
        res["flows"] = flows
        print(f"\n== {w.name}: {w.cap.name}, {w.packets:,} packets"
              + (f", {flows:,} flows (nfstream)" if flows is not None else "")
              + (f", {res['app_events']:,} app events (tshark)" if expected is not None else ""))
        print(f"  {'tool':<13} {'best s':>8} {'packets/s':>11} {'median s':>9} {'packets/s':>11} {'peak RSS':>9}")
        for t in tools:
            if t.name not in w.runs:
                why = t.skipped or w.failed.get(t.name, "not run")
                print(f"  {t.name:<13} skipped: {why}" if t.skipped else f"  {t.name:<13} FAILED: {why}")
                continue
            s = summary(w.runs[t.name], w.packets)
            res["tools"][t.name] = s
            print(f"  {t.name:<13} {s['best_s']:>8.3f} {s['pps_best']:>11,} {s['median_s']:>9.3f} "
                  f"{s['pps_median']:>11,} {s['peak_rss_kib'] / 1024:>5.0f} MiB")
        tap = res["tools"].get("upf-tap")
        for peer in PEERS:
            p = res["tools"].get(peer)
            if tap and p:
                ratio = {"best": round(p["best_s"] / tap["best_s"], 2),
                         "median": round(p["median_s"] / tap["median_s"], 2)}
                res["ratios"][peer] = ratio
                print(f"  upf-tap vs {peer:<10}: {ratio['best']:.2f}x (best vs best), "
                      f"{ratio['median']:.2f}x (median vs median)")
        res["events"] = None
        if expected is not None and got is not None:
            score = Score()
            score.add(w.name, expected, got)
            equal = got == expected
            res["events"] = {"equal": equal, "tap": sum(got.values()), "tshark": sum(expected.values()),
                             "score": score.as_dict()}
            print(f"  events vs tshark's: {'identical' if equal else 'DIFFERENT'} "
                  f"(tap {sum(got.values())}, tshark {sum(expected.values())})")
            print("    " + score.table().replace("\n", "\n    "))
            if not equal:
                for label, diff in (("missed", expected - got), ("extra", got - expected)):
                    shown = ", ".join(ascii(k)[:90] + (f" x{n}" if n > 1 else "") for k, n in list(diff.items())[:4])
                    print(f"    {label} {diff.total()}: {shown}{', ...' if len(diff) > 4 else ''}")
                if w.name != "real":
                    bad = True
        elif got is None:
            print("  events: not checked (upf-tap did not run)")
        else:
            print("  events: not checked (no tshark)")
        same_workers: dict[str, bool] = {}
        for t in tools:
            if t.name.startswith("upf-tap x") and t.name in w.outputs and got is not None:
                same_workers[t.name] = read_tap_keys(w.outputs[t.name]) == got
                print(f"  {t.name}: events identical to single-process: {same_workers[t.name]}")
                bad |= not same_workers[t.name]
        res["workers_identical"] = same_workers
        if "upf-tap py" in w.outputs and "upf-tap" in w.outputs:
            same = w.outputs["upf-tap py"].read_bytes() == w.outputs["upf-tap"].read_bytes()
            res["python_walk_identical"] = same
            print(f"  upf-tap py: output byte for byte the compiled walk's: {same}")
            bad |= not same
        results[w.name] = res

    table = markdown(results, tools, args.rounds)
    print("\n" + table)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rounds": args.rounds, "format": args.format,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "python": platform.python_version()},
            "tools": {t.name: {"skipped": t.skipped} for t in tools},
            "workloads": results, "ok": not bad}, indent=2) + "\n")
    return 1 if bad else 0


def markdown(results: dict[str, Any], tools: list[Tool], rounds: int) -> str:
    """Workload rows, tool columns: packets/s (best of the rounds) and upf-tap's ratio to each peer."""
    cols = [t.name for t in tools if not t.skipped]
    lines = ["| workload | packets | app events | " + " | ".join(cols) + " |",
             "|---|---:|---:|" + "---:|" * len(cols)]
    for name, r in results.items():
        if r.get("skipped"):
            lines.append(f"| {name} | – | – | " + " | ".join("–" for _ in cols) + " |")
            continue
        cells = []
        for c in cols:
            s = r["tools"].get(c)
            if s is None:
                cells.append("failed")
            elif c in r["ratios"]:
                cells.append(f"{s['pps_best']:,} ({r['ratios'][c]['best']:.2f}x)")
            else:
                cells.append(f"{s['pps_best']:,}")
        events = f"{r['app_events']:,}" if r.get("app_events") is not None else "?"
        lines.append(f"| {name} | {r['packets']:,} | {events} | " + " | ".join(cells) + " |")
    lines.append(f"\npackets/s: best of {rounds} round{'s' * (rounds > 1)}; (Nx): upf-tap's packets/s over the "
                 "tool's (>1: the tap is faster)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
