"""`make bench` = bench/run_all.py: every benchmark in one table (structure only; numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN_ALL = REPO / "bench" / "run_all.py"


def run_all(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN_ALL), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=240)


def test_makefile_bench_target_runs_it() -> None:
    assert "bench/run_all.py" in (REPO / "Makefile").read_text() and RUN_ALL.is_file()


def test_unknown_benchmark_is_one_clear_error() -> None:
    p = run_all("--only", "tap,nosuch")
    assert p.returncode == 2 and p.stderr.strip() == "run_all: unknown benchmark(s) nosuch"


def test_a_quick_detector_run_gives_its_rows_and_json(tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    p = run_all("--quick", "--only", "detector", "--json", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("benchmark"))
    rows = lines[head + 1:]
    assert rows[0].startswith("detector, CloudEvents/s delivered") and "target >= 3,000" in rows[0]
    assert any("latency p50 / p99" in r for r in rows)
    res = json.loads(out.read_text())["detector"]
    assert res["events"] == 5000 and res["delivered_per_s"] > 0
