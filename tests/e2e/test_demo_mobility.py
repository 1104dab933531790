"""`testbed demo --sites 2` end to end, as a user runs it: two MEC sites, UE 1 moved mid-stream
with both procedures, and the report's Mobility section (issue 18). As root (CI is root)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent

@pytest.mark.root
@pytest.mark.slow
def test_demo_two_sites_reports_the_moves(tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, "-m", "testbed", "demo", "--mode", "sim", "--sites", "2", "--ues", "2",
                          "--rounds", "5", "--lab-id", "dms", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    meta = report["meta"]
    assert meta["sites"] == 2 and meta["prewarm"] is True
    assert meta["reached_function"] == meta["actions"] == 2 * 3 + 2 * 5   # the usual actions, as with one site
    mob = report["mobility"]
    assert mob["moves"] == 4 and mob["moves_failed"] == 0, mob["per_move"]
    assert all(m["ok"] for m in mob["per_move"])
    assert [m["kind"] for m in mob["per_move"]] == ["relocate", "handover", "handover", "relocate"]
    assert [m["to_site"] for m in mob["per_move"]] == [2, 1, 2, 1]
    assert mob["answered"] == mob["clicks"] > 0, mob["click_errors"]
    assert mob["lost"] == 0, f"clicks that reached no fn-buy: {mob['lost_items']}"
    assert mob["duplicated"] == 0
    assert mob["moved_events"] == mob["moves"], mob["moved"]
    assert mob["rules"].endswith("bench/rules-e2e.yaml")             # every click an event: no debounce
    assert mob["warmups"] >= 1                                         # pre-warm is on by default
    assert mob["interruption_s"]["n"] == 4 and mob["first_seen"] == 4
    assert {s["site"] for s in mob["served"]} == {1, 2}               # the per-click list: in the JSON
    page = (out / "report.html").read_text()
    assert "<h2>Mobility</h2>" in page and "first function start (ms)" in page
    assert "mec.ue.moved events" in page
    assert '"served"' not in page and "t_send" not in page            # not the per-click list
    if mob["plot"]:
        assert (out / mob["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'<img src="{mob["plot"]}"' in page
    else:
        assert "matplotlib" in mob["plot_note"] and mob["plot_note"] in page
    assert "Mobility (2 MEC sites, pre-warm on)" in res.stdout and "0 lost, 0 duplicated" in res.stdout
    # nothing left behind
    assert "mecdms" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_demo_two_sites_needs_the_sim() -> None:
    res = subprocess.run([sys.executable, "-m", "testbed", "demo", "--mode", "replay", "--sites", "2"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 2 and "--sites 2 needs the sim mode" in res.stderr
    help_text = subprocess.run([sys.executable, "-m", "testbed", "demo", "--help"], capture_output=True,
                               text=True, cwd=REPO, timeout=60, check=True).stdout
    assert "--sites {1,2}" in help_text and "--prewarm, --no-prewarm" in help_text
