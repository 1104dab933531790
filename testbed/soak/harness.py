"""The soak and chaos run: the sim lab under steady UE load while parts fail, every action accounted for.

One run (``SoakRun.run``):

1. The detector's state directory is a small tmpfs of its own (so ``disk_full`` fills a real
   file system, not the machine's disk). A :class:`~testbed.soak.proxy.SinkProxy` stands
   between the detector and the broker (for the 503/429 storms).
2. The sim lab, tap (with its on-disk spool), detector and local broker start
   (:class:`testbed.stack.Stack`); the broker reads ``testbed/soak/manifests``: one Trigger
   for ``mec.app.buy`` to ``fn-soak-log``, which logs every event it gets.
3. Every UE posts ``/api/v1/buy?n=N`` at its share of the rate, each action numbered; a
   thread applies the fault schedule; every second the memory (RSS) and open file
   descriptors of every process are sampled.
4. When the load is over the run waits (up to ``settle`` s) until every action the main
   application saw has reached the function, then judges: an action is *expected* when the
   application served it (it crossed N3 and the UPF, so the tap could see it), *delivered*
   when the function logged its event (duplicates counted), *lost* otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from testbed.soak.faults import Fault, default_schedule
from testbed.soak.proxy import SinkProxy

HERE = Path(__file__).resolve().parent
SOAK_MANIFESTS = HERE / "manifests"
SOAK_RULES = HERE / "rules.yaml"
SOAK_FUNCTION = ("mec", "fn-soak-log")  # the Service in manifests/soak.yaml
SHOP = "http://shop.mec.local/api/v1/buy"
DETECTOR_SETTINGS = {  # short backoff caps: a part back from a fault is retried within a second or two
    "backoff_cap": "2s", "retry_after_cap": "2s",
}
TAP_RING_MB = 128  # per interface: 2048 kept blocks, so the ring outlasts a tap restart of a few seconds
Progress = Callable[[str], None]


@dataclass
class SoakConfig:
    workdir: Path
    seconds: float = 600.0
    rate: float = 200.0            # UE actions per second, over all UEs
    ues: int = 10
    faults: list[Fault] | None = None   # None: default_schedule(seconds)
    lab_id: str = "soak"
    outbox_mb: int = 64            # the detector's tmpfs
    settle: float = 90.0           # how long to wait after the load for delayed deliveries
    sample_every: float = 1.0
    tap_args: list[str] = field(default_factory=list)


@dataclass
class SoakResult:
    config: dict[str, Any]
    started: float
    load_seconds: float
    actions: int
    ue_ok: int
    ue_failed: int
    expected: int                   # actions the main application served
    delivered: int                  # of those, reached the function at least once
    duplicates: int                 # deliveries beyond the first
    lost: list[int]                 # action numbers served but never delivered
    unseen_delivered: int           # delivered although the application never logged them (should be 0)
    faults: list[dict[str, Any]]
    samples: list[dict[str, Any]]   # {"t", "role", "pid", "rss_kb", "fds"}
    timeline: list[dict[str, Any]]  # per second of the run: sent, delivered, latency p50/p99 (ms)
    latency_ms: dict[str, float]
    counters: dict[str, Any]
    resource_growth: dict[str, dict[str, float]]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------- processes
def read_rss_fds(pid: int) -> tuple[int, int] | None:
    """(VmRSS in kB, open file descriptors) of a process; None once it is gone."""
    try:
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    return rss, fds


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------- accounting
def action_number(path: str) -> int | None:
    values = parse_qs(urlsplit(path).query).get("n")
    try:
        return int(values[0]) if values else None
    except ValueError:
        return None


def _epoch(rfc3339: str) -> float | None:
    try:
        return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    with contextlib.suppress(FileNotFoundError), path.open(errors="replace") as f:
        for line in f:
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    out.append(rec)
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def growth(samples: list[dict[str, Any]], started: float, load_seconds: float) -> dict[str, dict[str, float]]:
    """Per role: median RSS and fds over the second tenth of the load and over its last tenth, and the change.

    The first tenth is warm-up (imports, caches, the first function start)."""
    out: dict[str, dict[str, float]] = {}
    roles = sorted({s["role"] for s in samples})
    for role in roles:
        rs = [s for s in samples if s["role"] == role]

        def window(a: float, b: float, rs: list[dict[str, Any]] = rs) -> list[dict[str, Any]]:
            return [s for s in rs if started + a * load_seconds <= s["t"] < started + b * load_seconds]

        early, late = window(0.1, 0.2), window(0.9, 1.0)
        if not early or not late:
            continue
        e_rss = percentile([s["rss_kb"] for s in early], 0.5)
        l_rss = percentile([s["rss_kb"] for s in late], 0.5)
        out[role] = {"rss_kb_early": e_rss, "rss_kb_late": l_rss,
                     "rss_growth_pct": round(100.0 * (l_rss - e_rss) / e_rss, 1) if e_rss else 0.0,
                     "fds_early": percentile([s["fds"] for s in early], 0.5),
                     "fds_late": percentile([s["fds"] for s in late], 0.5),
                     "fds_max": max(s["fds"] for s in rs)}
    return out


# ---------------------------------------------------------------------- the run
class SoakRun:
    """Lifecycle: ``run()`` builds everything, loads, faults, settles, judges and tears down."""

    def __init__(self, cfg: SoakConfig, progress: Progress = lambda msg: None) -> None:
        self.cfg = cfg
        self.say = progress
        self.faults = default_schedule(cfg.seconds) if cfg.faults is None else cfg.faults
        self.run_dir = cfg.workdir / "run"
        self.state_dir = self.run_dir / "detector"
        self.samples: list[dict[str, Any]] = []
        self.stack: Any = None
        self.proxy: SinkProxy | None = None
        self._mounted = False
        self._stop_sampling = threading.Event()
        self._fault_error: BaseException | None = None

    # ------------------------------------------------------------------ setup and teardown
    def _mount_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.cfg.outbox_mb}m,mode=0700",
                              "soak-detector", str(self.state_dir)], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"cannot mount the detector's tmpfs: {res.stderr.strip()}")
        self._mounted = True

    def _unmount_state(self) -> None:
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.state_dir)], capture_output=True)
            self._mounted = False

    def _start(self) -> None:
        from testbed.stack import BROKER_PATH, Stack

        if self.run_dir.exists():
            raise RuntimeError(f"{self.run_dir} exists: use a fresh work directory")
        self._mount_state()
        settings = self.run_dir / "detector-settings.yaml"
        settings.write_text("".join(f"{k}: {v}\n" for k, v in DETECTOR_SETTINGS.items()))
        self.stack = Stack(self.run_dir, "sim", ues=self.cfg.ues, lab_id=self.cfg.lab_id, rules=SOAK_RULES,
                           manifests=SOAK_MANIFESTS, progress=self.say, keep_capture=True,
                           tap_args=["--spool", str(self.run_dir / "tap-spool"), "--ring-mb", str(TAP_RING_MB),
                                     *self.cfg.tap_args],
                           detector_args=["--config", str(settings)])
        self.proxy = SinkProxy(lambda: self.stack.broker_url).start()
        self.stack.sink_url = self.proxy.url + BROKER_PATH
        self.stack.start()

    def _stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self._unmount_state()

    # ------------------------------------------------------------------ load
    def plan(self) -> list[Any]:
        """Every UE posts a numbered buy at rate/ues per second, for the whole run."""
        from testbed.scenario import Action
        from testbed.sim.topology import SHOP_IP

        acts: list[Action] = []
        gap = 1.0 / self.cfg.rate
        total = int(self.cfg.rate * self.cfg.seconds)
        for n in range(1, total + 1):
            ue = 1 + (n - 1) % self.cfg.ues
            acts.append(Action(ue, (n - 1) * gap, "http",
                               {"method": "POST", "url": f"{SHOP}?item={1 + n % 4}&n={n}", "ip": SHOP_IP},
                               f"soak:n={n}"))
        return acts

    # ------------------------------------------------------------------ faults
    def _apply_faults(self, t0: float) -> None:
        try:
            for fault in self.faults:
                delay = t0 + fault.at - time.time()
                if delay > 0:
                    time.sleep(delay)
                self.say(f"fault: {fault.kind} for {fault.duration:g} s")
                fault.started = time.time()
                self._fault(fault)
                fault.ended = time.time()
        except BaseException as e:  # the run reports it; the load goes on
            self._fault_error = e

    def _fault(self, f: Fault) -> None:
        stack = self.stack
        if f.kind in ("kill_tap", "kill_detector", "kill_broker"):
            name = f.kind.removeprefix("kill_")
            f.detail["pid"] = stack.pid(name)
            stack.kill(name)
            time.sleep(f.duration)
            stack.restart(name)
            f.detail["new_pid"] = stack.pid(name)
        elif f.kind == "kill_function":
            pids = self.function_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            f.detail["pids"] = pids
            time.sleep(f.duration)
        elif f.kind in ("sink_503", "sink_429"):
            assert self.proxy is not None
            self.proxy.storm(int(f.kind[-3:]), f.duration)
            time.sleep(f.duration)
        elif f.kind.startswith("n3_"):
            impair = {"n3_loss": {"loss": 0.05}, "n3_delay": {"delay_ms": 40.0, "jitter_ms": 10.0},
                      "n3_reorder": {"reorder": 0.2, "delay_ms": 5.0}}[f.kind]
            stack.lab.impair_n3(**impair)
            time.sleep(f.duration)
            f.detail.update(stack.lab.daemon_status("gnb")["impairment"])  # its counters, before they reset
            stack.lab.impair_n3()
        elif f.kind == "disk_full":
            # SQLite in WAL mode rewrites pages it already has: a full disk bites only when the
            # outbox must grow, as it does when deliveries back up. So the sink is held too.
            before = self._detector_metric("detector_ingest_store_failed_total")
            f.detail["ballast_bytes"] = self._fill_disk()
            assert self.proxy is not None
            self.proxy.storm(503, f.duration)
            time.sleep(f.duration)
            (self.state_dir / "ballast").unlink(missing_ok=True)
            after = self._detector_metric("detector_ingest_store_failed_total")
            f.detail["ingest_refused"] = after - before if after >= before else after  # a restart resets it
        else:
            raise ValueError(f"unknown fault {f.kind}")

    def _fill_disk(self) -> int:
        """Write a ballast file until the detector's file system is full; its size."""
        chunk = b"\0" * (1 << 20)
        written = 0
        with open(self.state_dir / "ballast", "wb", buffering=0) as f:
            while True:
                try:
                    written += f.write(chunk)
                except OSError:  # ENOSPC: full (smaller writes take the last pages)
                    if len(chunk) <= 4096:
                        break
                    chunk = chunk[: len(chunk) // 16]
        return written

    def function_pids(self) -> list[int]:
        broker = self.stack.pid("broker")
        if broker is None:
            return []
        return [p for p in children(broker) if "testbed.functions.serve" in cmdline(p)]

    # ------------------------------------------------------------------ sampling
    def roles(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in ("tap", "detector", "broker"):
            pid = self.stack.pid(name)
            if pid is not None:
                out[name] = pid
        for pid in self.function_pids():
            out[f"function:{pid}" if "function" in out else "function"] = pid
        out.update({name: pid for name, pid in self.stack.lab._pid_files().items() if name in ("gnb", "upf")})
        return out

    def _sample(self) -> None:
        while not self._stop_sampling.wait(self.cfg.sample_every):
            now = time.time()
            for role, pid in self.roles().items():
                got = read_rss_fds(pid)
                if got is not None:
                    self.samples.append({"t": now, "role": role.split(":")[0], "pid": pid, "rss_kb": got[0],
                                         "fds": got[1]})

    # ------------------------------------------------------------------ judging
    def delivered(self) -> Counter[int]:
        ns, name = SOAK_FUNCTION
        out: Counter[int] = Counter()
        for rec in read_jsonl(self.run_dir / "broker" / ns / name / "events.jsonl"):
            data = rec.get("data")
            n = action_number(str(data.get("path", ""))) if isinstance(data, dict) else None
            if n is not None:
                out[n] += 1
        return out

    def served(self) -> set[int]:
        return {n for c in self.stack.lab.shop_calls() if (n := action_number(str(c.get("path", "")))) is not None}

    def _detector_metric(self, name: str) -> float:
        with contextlib.suppress(OSError, ValueError), \
                urllib.request.urlopen(f"{self.stack.detector_url}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def _counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {"proxy": dict(self.proxy.counts) if self.proxy else {}}
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"{self.stack.detector_url}/metrics", timeout=5) as r:
                text = r.read().decode()
            out["detector"] = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines()
                               if ln and not ln.startswith("#") and len(ln.split()) == 2}
        return out

    # ------------------------------------------------------------------ the whole run
    def run(self) -> SoakResult:
        from testbed.scenario import run_ue_plans

        cfg = self.cfg
        started = time.time()
        try:
            self._start()
            actions = self.plan()
            self.say(f"load: {len(actions)} buys from {cfg.ues} UEs at {cfg.rate:g}/s for {cfg.seconds:g} s, "
                     f"{len(self.faults)} faults")
            sampler = threading.Thread(target=self._sample, name="soak-sampler", daemon=True)
            sampler.start()
            t0 = time.time() + 0.5
            faulter = threading.Thread(target=self._apply_faults, args=(t0,), name="soak-faults", daemon=True)
            faulter.start()
            results = run_ue_plans(self.stack, actions, t0)
            load_seconds = time.time() - t0
            faulter.join()
            if self._fault_error is not None:
                raise RuntimeError(f"a fault could not be applied: {self._fault_error}") from self._fault_error
            self.say(f"load done in {load_seconds:.0f} s; waiting up to {cfg.settle:g} s for deliveries")
            deadline = time.monotonic() + cfg.settle
            while True:
                served, got = self.served(), self.delivered()
                if served <= set(got) or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            counters = self._counters()
            self._stop_sampling.set()
            sampler.join()
            return self._judge(started, t0, load_seconds, results, served, got, counters)
        finally:
            self._stop_sampling.set()
            self._stop()

    def _judge(self, started: float, t0: float, load_seconds: float, results: list[dict[str, Any]],
               served: set[int], got: Counter[int], counters: dict[str, Any]) -> SoakResult:
        ns, name = SOAK_FUNCTION
        first_at: dict[int, float] = {}
        for rec in read_jsonl(self.run_dir / "broker" / ns / name / "events.jsonl"):
            data = rec.get("data")
            n = action_number(str(data.get("path", ""))) if isinstance(data, dict) else None
            at = _epoch(str(rec.get("received", "")))
            if n is not None and at is not None and n not in first_at:
                first_at[n] = at
        sent_at = {n: r["t_send"] for r in results if r.get("t_send")
                   and (n := action_number(str(r.get("spec", {}).get("url", "")))) is not None}
        latencies = {n: (first_at[n] - sent_at[n]) * 1000.0 for n in first_at if n in sent_at}
        timeline = []
        for sec in range(int(load_seconds + self.cfg.settle) + 1):
            lo, hi = t0 + sec, t0 + sec + 1
            lat = [latencies[n] for n, t in sent_at.items() if lo <= t < hi and n in latencies]
            timeline.append({"t": sec, "sent": sum(1 for t in sent_at.values() if lo <= t < hi),
                             "delivered": sum(1 for t in first_at.values() if lo <= t < hi),
                             "p50_ms": round(percentile(lat, 0.5), 2), "p99_ms": round(percentile(lat, 0.99), 2)})
        while timeline and not timeline[-1]["sent"] and not timeline[-1]["delivered"]:
            timeline.pop()
        all_lat = list(latencies.values())
        cfg = self.cfg
        return SoakResult(
            config={"seconds": cfg.seconds, "rate": cfg.rate, "ues": cfg.ues, "outbox_mb": cfg.outbox_mb,
                    "settle": cfg.settle, "cores": os.cpu_count()},
            started=t0, load_seconds=round(load_seconds, 2), actions=len(results),
            ue_ok=sum(1 for r in results if r.get("ok")), ue_failed=sum(1 for r in results if not r.get("ok")),
            expected=len(served), delivered=len(served & set(got)), duplicates=sum(c - 1 for c in got.values()),
            lost=sorted(served - set(got)), unseen_delivered=len(set(got) - served),
            faults=[f.to_json() for f in self.faults], samples=self.samples, timeline=timeline,
            latency_ms={"p50": round(percentile(all_lat, 0.5), 2), "p95": round(percentile(all_lat, 0.95), 2),
                        "p99": round(percentile(all_lat, 0.99), 2), "max": round(max(all_lat, default=0.0), 2)},
            counters=counters, resource_growth=growth(self.samples, t0, load_seconds))
