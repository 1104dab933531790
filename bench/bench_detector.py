"""Detector benchmark: CloudEvents/s delivered on one core, and added latency at a paced 1,000 events/s.

Starts `python -m detector serve` (pinned to CPU 0 for phase 1) and, in this process, a local
sink and the ingest client. Phase 1 ingests N AppEvents of many UEs in batches as fast as it
can and measures the rate at which distinct CloudEvents reach the sink. Phase 2 sends events
at a fixed rate (each POST carries the events due at that instant) and measures, per event,
the time from its ingest POST to its arrival at the sink (p50/p99). Targets (issue 5):
>= 3,000 CloudEvents/s; p99 <= 20 ms at 1,000 events/s.

    .venv/bin/python bench/bench_detector.py [--events 20000] [--rate 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from detector.cloudevent import ce_id  # noqa: E402
from testbed.constants import supi, ue_ipv4  # noqa: E402
from upf_tap.events import make_event, to_json_line  # noqa: E402

TOKEN = "bench-token"
T0_NS = 1_795_000_000_000_000_000


def event(n: int, i: int) -> dict:
    ue = {"ip": ue_ipv4(n), "supi": supi(n), "teid": 0x10000 + n, "qfi": 1, "dnn": "internet"}
    flow = {"proto": "tcp", "src": ue_ipv4(n), "sport": 40000 + n % 20000, "dst": "10.200.0.10", "dport": 80}
    return make_event("http.request", T0_NS + i * 1000, "n3", "upf1", direction="ul", ue=ue, flow=flow,
                      tunnel={"src": "192.168.100.10", "dst": "192.168.100.20", "teid": 0x10000 + n, "qfi": 1},
                      app={"method": "POST", "host": "shop.mec.local", "path": f"/api/v1/buy?item={i}"})


class Sink:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.requests = 0
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        self.arrived.setdefault(request.headers["ce-id"], time.monotonic())
        self.changed.set()
        return web.Response(status=202)

    async def wait_count(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.arrived) < n:
            if time.monotonic() > deadline:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), 0.5)
            except TimeoutError:
                pass
        return True


async def start_detector(sink_url: str, workdir: Path, durability: str) -> tuple[asyncio.subprocess.Process, int]:
    cfg = workdir / "detector.yaml"
    cfg.write_text(f"concurrency: 64\ndurability: {durability}\nmax_pending: 1000000\n"
                   "max_body_bytes: 16777216\n")
    env = {**os.environ, "DETECTOR_TOKEN": TOKEN}
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "detector", "serve", "--listen", "127.0.0.1:0", "--sink", sink_url,
        "--outbox", str(workdir / "outbox.db"), "--config", str(cfg), "--log-level", "info",
        cwd=REPO, env=env, stderr=asyncio.subprocess.PIPE)
    assert p.stderr is not None
    while True:
        line = (await asyncio.wait_for(p.stderr.readline(), 30)).decode()
        if not line:
            raise SystemExit("bench: the detector did not start")
        m = re.search(r"listening on [^ ]*:(\d+),", line)
        if m:
            break
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        pin(p.pid, {0})                         # the detector gets one core (its SQLite threads too)
    asyncio.get_running_loop().create_task(_drain(p.stderr))
    return p, int(m.group(1))


def pin(pid: int, cpus: set[int]) -> None:
    """CPU affinity for every thread of a process (a thread keeps the mask it was created with)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> None:
    async with session.post(url, data=body, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        await r.read()
        if r.status != 202:
            raise SystemExit(f"bench: ingest answered {r.status}")


async def throughput(session: aiohttp.ClientSession, url: str, sink: Sink, n: int, ues: int,
                     batch: int) -> tuple[float, float]:
    evs = [event(1 + k % ues, k) for k in range(n)]
    bodies = ["\n".join(to_json_line(e) for e in evs[i:i + batch]).encode() for i in range(0, n, batch)]
    base = len(sink.arrived)
    t0 = time.monotonic()
    sem = asyncio.Semaphore(4)                  # a few ingest requests in flight, like a busy tap

    async def one(b: bytes) -> None:
        async with sem:
            await post(session, url, b)
    await asyncio.gather(*(one(b) for b in bodies))
    t_ingest = time.monotonic() - t0
    if not await sink.wait_count(base + n, 300):
        raise SystemExit("bench: not everything was delivered")
    return n / (time.monotonic() - t0), n / t_ingest


async def latency(session: aiohttp.ClientSession, url: str, sink: Sink, rate: float, seconds: float,
                  ues: int, offset: int) -> list[float]:
    total = int(rate * seconds)
    evs = [event(1 + k % ues, offset + k) for k in range(total)]
    sent_at: dict[str, float] = {}
    tasks = []
    t0 = time.monotonic()
    k = 0
    while k < total:
        due = min(total, int((time.monotonic() - t0) * rate) + 1)
        if due > k:
            chunk = evs[k:due]
            now = time.monotonic()
            for e in chunk:
                sent_at[ce_id(e["id"], "default")] = now
            tasks.append(asyncio.create_task(post(session, url, "\n".join(to_json_line(e) for e in chunk).encode())))
            k = due
        await asyncio.sleep(0.001)
    await asyncio.gather(*tasks)
    if not await sink.wait_count(offset + total, 120):
        raise SystemExit("bench: paced events were not all delivered")
    return [(sink.arrived[i] - t) * 1000.0 for i, t in sent_at.items()]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100.0 * len(xs)))]


async def main_async(args: argparse.Namespace) -> dict:
    sink = Sink()
    app = web.Application()
    app.router.add_post("/", sink.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sink_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory(prefix="bench-detector-") as tmp:
        proc, port = await start_detector(f"http://127.0.0.1:{sink_port}/", Path(tmp), args.durability)
        url = f"http://127.0.0.1:{port}/v1/events"
        try:
            async with aiohttp.ClientSession() as session:
                await post(session, url, to_json_line(event(1, 10**9)).encode())   # warm up
                await sink.wait_count(1, 30)
                c0 = cpu_seconds(proc.pid)
                delivered, ingested = await throughput(session, url, sink, args.events, args.ues, args.batch)
                cpu_us = (cpu_seconds(proc.pid) - c0) / args.events * 1e6
                if hasattr(os, "sched_setaffinity"):
                    # latency is measured with the detector free to run on any core: on a shared
                    # machine a pinned process waits for its core while the other one idles
                    pin(proc.pid, set(range(os.cpu_count() or 1)))
                lat = await latency(session, url, sink, args.rate, args.seconds, args.ues, len(sink.arrived))
        finally:
            proc.terminate()
            await proc.wait()
    await runner.cleanup()
    return {"cpu_count": os.cpu_count(), "durability": args.durability, "events": args.events, "ues": args.ues,
            "batch": args.batch, "delivered_per_s": round(delivered), "detector_cpu_us_per_event": round(cpu_us, 1),
            "per_core_capacity_per_s": round(1e6 / cpu_us),
            "load_average": round(os.getloadavg()[0], 2), "ingested_per_s": round(ingested),
            "paced_rate": args.rate, "paced_events": len(lat), "latency_ms_p50": round(pct(lat, 50), 2),
            "latency_ms_p99": round(pct(lat, 99), 2), "latency_ms_max": round(max(lat), 2),
            "latency_ms_mean": round(statistics.fmean(lat), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20000, help="events in the throughput phase (default 20000)")
    p.add_argument("--ues", type=int, default=200, help="distinct UEs (default 200)")
    p.add_argument("--batch", type=int, default=500, help="AppEvents per ingest POST in phase 1 (default 500)")
    p.add_argument("--rate", type=float, default=1000.0, help="paced events/s in phase 2 (default 1000)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of phase 2 (default 10)")
    p.add_argument("--durability", choices=["full", "normal"], default="full", help="outbox fsync policy")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.events < 1 or args.rate <= 0 or args.seconds <= 0 or args.ues < 1 or args.batch < 1:
        p.error("counts and rates must be positive")
    res = asyncio.run(main_async(args))
    print(f"detector bench on {res['cpu_count']} cores (detector pinned to one), outbox durability "
          f"{res['durability']}")
    print(f"throughput: {res['delivered_per_s']} CloudEvents/s delivered ({res['events']} events, {res['ues']} UEs, "
          f"ingest {res['ingested_per_s']} events/s in batches of {res['batch']})  target >= 3000")
    print(f"detector CPU: {res['detector_cpu_us_per_event']} us per CloudEvent (ingest + outbox + delivery) = "
          f"{res['per_core_capacity_per_s']} CloudEvents/s per fully used core; load average {res['load_average']}")
    print(f"latency at {res['paced_rate']:g} events/s: p50 {res['latency_ms_p50']} ms, p99 {res['latency_ms_p99']} ms, "
          f"max {res['latency_ms_max']} ms ({res['paced_events']} events)  target p99 <= 20 ms")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
