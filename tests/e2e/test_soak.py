"""The soak and chaos run, short: 30 s of UE buys at 200/s while every kind of fault happens once.

bench/bench_soak.py as a user runs it: the sim lab, the tap with its spool and kept capture
rings, the detector on its own tmpfs, the durable local broker, a fault proxy at the
detector's sink. Every buy the main application served must reach the function; the
report must show every fault applied and the processes' memory and file descriptors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.soak.faults import FAULT_KINDS

REPO = Path(__file__).resolve().parent.parent.parent

pytestmark = [pytest.mark.root, pytest.mark.slow]


# One of each kind, as the bench's default schedule but with the disk full for longer: SQLite
# reuses its own pages, so a full disk bites only once the outbox must grow, which a few seconds
# of backlog may or may not need (tests/detector/test_det_store_failure.py proves the 503 itself).
SCHEDULE = ("kill_tap@2:1.5,kill_detector@4.5:1.5,kill_broker@7:1.5,kill_function@9.5,sink_503@11:1.5,"
            "sink_429@13:1.5,n3_loss@15:1.5,n3_delay@17:1.5,n3_reorder@19:1.5,disk_full@21:4")


def test_soak_30s_loses_nothing_across_every_fault(tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, "bench/bench_soak.py", "--seconds", "30", "--rate", "200", "--ues", "10",
                          "--faults", SCHEDULE, "--settle", "60", "--out", str(out),
                          "--json", str(tmp_path / "summary.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=400)
    report = json.loads((out / "soak.json").read_text()) if (out / "soak.json").exists() else {}
    assert report, res.stderr[-3000:]
    faults = report["faults"]
    assert [f["kind"] for f in faults] == list(FAULT_KINDS)
    assert all(f["started"] and f["ended"] for f in faults), faults
    assert report["actions"] == 6000
    assert report["expected"] >= 0.95 * report["actions"], "the main application served too few buys to judge"
    assert report["lost"] == [], (report["lost"][:50], res.stdout[-3000:])
    assert report["unseen_delivered"] == 0
    assert report["delivered"] == report["expected"]
    assert res.returncode == 0, res.stderr[-3000:]
    # the faults really happened: parts restarted with new pids, storms answered, N3 degraded, disk filled
    kills = {f["kind"]: f["detail"] for f in faults if f["kind"].startswith("kill_") and f["kind"] != "kill_function"}
    assert all(d["new_pid"] and d["new_pid"] != d["pid"] for d in kills.values()), kills
    assert next(f for f in faults if f["kind"] == "kill_function")["detail"]["pids"]
    proxy = report["counters"]["proxy"]
    assert proxy.get("storm_503", 0) > 0 and proxy.get("storm_429", 0) > 0, proxy
    assert next(f for f in faults if f["kind"] == "n3_loss")["detail"]["dropped"] > 0
    disk = next(f for f in faults if f["kind"] == "disk_full")["detail"]
    assert disk["ballast_bytes"] > 0 and disk["ingest_refused"] >= 0, disk  # a refusal is a 503: sent again
    # sampled every second, for every part
    roles = {s["role"] for s in report["samples"]}
    assert {"tap", "detector", "broker", "function", "gnb", "upf"} <= roles
    assert (out / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "LOST: 0" in (out / "soak.txt").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["lost"] == 0 and summary["faults"] == len(FAULT_KINDS)
