"""Benchmark: highest replay rate `upf-tap live` keeps up with, with zero kernel drops.

    python bench/bench_live.py [--workload bulk|mixed] [--packets 300000] [--rates 50000,100000,150000,200000,0]
                               [--workers 1,2] [--ring-mb 64] [--loop 1] [--peer dumpcap|none]

Generates bench/out/n3-live-<packets>.pcap (--workload bulk, the default: mostly bulk TCP in
GTP-U, one flow after another, a few hundred app events) or bench/out/n3-live-mixed-<packets>.pcap
(--workload mixed: a real UPF's mix, many short DNS, TLS, QUIC and HTTP flows interleaved, ~10k
app events in 300k packets) with tests/support/n3_workload.py unless it exists, makes a network
namespace with a veth pair, and for 1 and 2 workers replays the capture into one end
with tcpreplay at rising rates (`--pps R`; 0 means `--topspeed`) while `upf-tap live`
captures on the other end. After each replay the tap is stopped with SIGINT (it
drains its ring) and its final counters are read: kernel packets and drops
(PACKET_STATISTICS) and the frames it decoded. A rate stops the series once it shows
drops. With --peer dumpcap, Wireshark's dumpcap runs alone at the same rates as a
reference (its own "received/dropped" line). Needs root, tcpreplay (and dumpcap).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.support.n3_workload import generate, generate_mixed  # noqa: E402

PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable


@dataclass
class Run:
    who: str
    workers: int
    rate: int          # requested packets/s, 0 = topspeed
    sent: int = 0
    sent_pps: float = 0.0
    kernel_packets: int = 0
    kernel_drops: int = 0
    decoded: int = 0
    drain_s: float = 0.0  # from SIGINT to exit: how far behind the tap was

    @property
    def clean(self) -> bool:
        return self.kernel_drops == 0 and self.kernel_packets >= self.sent and self.sent > 0


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Netns:
    def __init__(self) -> None:
        self.name = f"mectap-bench-{secrets.token_hex(3)}"
        sh("ip", "netns", "add", self.name)
        try:
            self.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            self.exec("ip", "link", "add", "tx0", "mtu", "9000", "type", "veth", "peer", "name", "rx0", "mtu", "9000")
            for dev in ("tx0", "rx0", "lo"):
                self.exec("ip", "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise

    def exec(self, *args: str) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *args)

    def popen(self, *args: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], text=True, **kw)  # type: ignore[call-overload]

    def replay(self, pcap: Path, rate: int, loop: int) -> tuple[int, float]:
        speed = ["--topspeed"] if rate == 0 else [f"--pps={rate}"]
        res = self.exec("tcpreplay", "-q", "-K", f"--loop={loop}", "-i", "tx0", *speed, str(pcap))
        m = re.search(r"Actual: (\d+) packets .* sent in ([\d.]+) seconds", res.stdout)
        if not m:
            raise SystemExit(f"bench: cannot read tcpreplay's output: {res.stdout} {res.stderr}")
        sent, secs = int(m.group(1)), float(m.group(2))
        return sent, sent / secs if secs else 0.0

    def close(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


class Stderr:
    """Collect a child's stderr lines; signal when a line matches."""

    def __init__(self, proc: subprocess.Popen[str], ready: str) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._t = threading.Thread(target=self._read, args=(proc, ready), daemon=True)
        self._t.start()

    def _read(self, proc: subprocess.Popen[str], ready: str) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)
            if ready in line:
                self.ready.set()
        self.ready.set()

    def text(self) -> str:
        self._t.join(10)
        return "".join(self.lines)


def counter(text: str, name: str) -> int:
    m = re.search(rf"^\s+{re.escape(name)}\s+(\d+)\s*$", text, re.M)
    return int(m.group(1)) if m else 0


def run_tap(ns: Netns, pcap: Path, rate: int, workers: int, ring_mb: int, loop: int) -> Run:
    p = ns.popen(PYTHON, "-m", "upf_tap", "live", "--iface", "rx0", "--workers", str(workers),
                 "--ring-mb", str(ring_mb), "--report-every", "3600",
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(REPO))
    err = Stderr(p, "capturing on")
    if not err.ready.wait(60) or p.poll() is not None:
        p.kill()
        raise SystemExit(f"bench: upf-tap live did not start: {err.text()}")
    r = Run("upf-tap", workers, rate)
    r.sent, r.sent_pps = ns.replay(pcap, rate, loop)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    p.wait(600)
    r.drain_s = time.monotonic() - t0
    text = err.text()
    if p.returncode != 0:
        raise SystemExit(f"bench: upf-tap live failed: {text}")
    r.kernel_packets = counter(text, "kernel.packets")
    r.kernel_drops = counter(text, "kernel.drops")
    r.decoded = counter(text, "packets")
    return r


def run_dumpcap(ns: Netns, pcap: Path, rate: int, loop: int) -> Run:
    p = ns.popen("dumpcap", "-q", "-i", "rx0", "-f", "udp port 2152 or udp port 8805 or sctp", "-w", "-",
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = Stderr(p, "Capturing on")
    if not err.ready.wait(30) or p.poll() is not None:
        p.kill()
        raise SystemExit(f"bench: dumpcap did not start: {err.text()}")
    time.sleep(0.3)
    r = Run("dumpcap", 1, rate)
    r.sent, r.sent_pps = ns.replay(pcap, rate, loop)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    p.wait(60)
    text = err.text()
    m = re.search(r"received/dropped on interface '\S+': (\d+)/(\d+)", text)
    if not m:
        raise SystemExit(f"bench: cannot read dumpcap's counters: {text}")
    r.kernel_packets, r.kernel_drops = int(m.group(1)), int(m.group(2))
    r.kernel_packets += r.kernel_drops  # dumpcap's "received" excludes the drops; ours includes them
    r.decoded = int(m.group(1))
    return r


def capacity(ns: Netns, pcap: Path, packets: int) -> tuple[float, float, float]:
    """(ring only, ring + decode by blocks, ring + decode frame by frame) packets/s of one
    worker on one core, sender out of the way.

    The whole capture is replayed into a ring big enough to hold it, then drained three
    times over: blocks handed to nothing; blocks handed to the tap's fast path (what a
    worker with one ring does); frames handed one by one to the full decoder (what a
    worker does when it merges several rings by time).
    """
    import ctypes

    from upf_tap.capture import bpf
    from upf_tap.capture.ring import Ring
    from upf_tap.pipeline import Tap, TapConfig

    libc = ctypes.CDLL(None, use_errno=True)
    mb = max(64, int(pcap.stat().st_size * 2) >> 20)
    rates = []
    for mode in ("ring", "blocks", "frames"):
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
        try:
            libc.setns(target, 0x40000000)
            ring = Ring("rx0", ring_mb=mb)
        finally:
            libc.setns(home, 0x40000000)
            os.close(target)
            os.close(home)
        try:
            bpf.attach(ring.sock, bpf.capture_program("n3", 14, (2152, 8805)))
            ring.start()
            ns.replay(pcap, 0, 1)
            time.sleep(0.3)
            tap = Tap(TapConfig(), lambda ev: None)
            n = 0
            t0 = time.perf_counter()
            if mode == "frames":
                while k := ring.drain(tap.feed):
                    n += k
            else:
                def block(buf: bytes, recs: list[int], tap: Tap = tap) -> None:
                    tap.consume_batches(((buf, recs),))

                sink = block if mode == "blocks" else (lambda buf, recs: None)
                while k := ring.drain_batches(sink):
                    n += k
            dt = time.perf_counter() - t0
            kstats = ring.read_stats()
            if kstats.drops or n < packets:
                raise SystemExit(f"bench: capacity run lost packets: {n} of {packets} decoded, "
                                 f"{kstats.drops} dropped by the kernel (ring {mb} MiB)")
            rates.append(n / dt)
        finally:
            ring.close()
    return rates[0], rates[1], rates[2]


def series(label: str, rates: list[int], one: Callable[[int], Run]) -> list[Run]:
    out: list[Run] = []
    for rate in rates:
        r = one(rate)
        out.append(r)
        print(f"  {label:<20} {'topspeed' if rate == 0 else rate:>9}  sent {r.sent:>8} at {r.sent_pps:>9,.0f}/s  "
              f"kernel {r.kernel_packets:>8}  drops {r.kernel_drops:>7}  decoded {r.decoded:>8}  "
              f"drain {r.drain_s:5.1f} s  {'ok' if r.clean else 'DROPS'}", flush=True)
        if not r.clean:
            break
    return out


def best(runs: list[Run]) -> str:
    ok = [r.sent_pps for r in runs if r.clean]
    return f"{max(ok):,.0f} packets/s" if ok else "none without drops"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("bulk", "mixed"), default="bulk",
                    help="bulk: mostly bulk TCP (default); mixed: many short app flows interleaved, as at a real UPF")
    ap.add_argument("--packets", type=int, default=300_000, help="packets in the generated capture")
    ap.add_argument("--rates", default="50000,100000,150000,200000,0",
                    help="comma-separated packets/s to try in order; 0 = tcpreplay --topspeed")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--ring-mb", type=int, default=64, help="ring size per worker (MiB)")
    ap.add_argument("--loop", type=int, default=1, help="replay the capture this many times per run")
    ap.add_argument("--peer", choices=("dumpcap", "none"), default="dumpcap",
                    help="also measure Wireshark's dumpcap at the same rates")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON (bench/run_all.py reads it)")
    args = ap.parse_args(argv)
    try:
        rates = [int(x) for x in args.rates.split(",")]
        workers = [int(x) for x in args.workers.split(",")]
    except ValueError:
        print("bench: --rates and --workers take comma-separated integers", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, AF_PACKET)", file=sys.stderr)
        return 2
    if not shutil.which("tcpreplay"):
        print("bench: needs tcpreplay (Debian package tcpreplay)", file=sys.stderr)
        return 2
    if args.peer == "dumpcap" and not shutil.which("dumpcap"):
        print("bench: dumpcap not found; running without the peer", file=sys.stderr)
        args.peer = "none"
    mixed = args.workload == "mixed"
    pcap = HERE / "out" / f"n3-live-{'mixed-' if mixed else ''}{args.packets}.pcap"
    if not pcap.exists():
        pcap.parent.mkdir(parents=True, exist_ok=True)
        tmp = pcap.with_suffix(".tmp")
        counts = (generate_mixed if mixed else generate)(tmp, args.packets, 200, 1)
        tmp.rename(pcap)
        print(f"generated {pcap}: {counts}", file=sys.stderr)
    avg = (pcap.stat().st_size - 24) / args.packets - 16
    print(f"bench_live: {args.workload} workload, {args.packets} packets x{args.loop} ({avg:.0f} bytes/frame on average), "
          f"ring {args.ring_mb} MiB per worker, {os.cpu_count()} CPUs, kernel {os.uname().release}")
    ns = Netns()
    results: dict[str, list[Run]] = {}
    try:
        ring_only, decode, by_frame = capacity(ns, pcap, args.packets)
        print(f"  capacity of one worker on one core (capture buffered first): ring only {ring_only:,.0f} "
              f"packets/s, ring + decode {decode:,.0f} packets/s by blocks (one ring), "
              f"{by_frame:,.0f} frame by frame (several rings)", flush=True)
        print(f"  load average before the rate series: {os.getloadavg()[0]:.2f}", flush=True)
        for w in workers:
            label = f"upf-tap {w} worker{'s' if w > 1 else ''}"
            results[label] = series(label, rates, functools.partial(run_tap, ns, pcap, workers=w,
                                                                    ring_mb=args.ring_mb, loop=args.loop))
        if args.peer == "dumpcap":
            results["dumpcap"] = series("dumpcap", rates, lambda rate: run_dumpcap(ns, pcap, rate, args.loop))
    finally:
        ns.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("highest replay rate with zero kernel drops:")
    for label, runs in results.items():
        print(f"  {label:<20} {best(runs)}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "workload": args.workload, "packets": args.packets, "capacity_ring_pps": round(ring_only), "capacity_decode_pps": round(decode),
            "zero_drop_pps": {label: max((r.sent_pps for r in runs if r.clean), default=0)
                              for label, runs in results.items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
