"""Two MEC sites end to end (issue 18): a UE moves mid-stream and no click is lost.

The sim with two sites (a gNB, UPF, tap, detector and local broker per site, one SMF), real
PFCP and GTP-U on the veths: UE 1 presses "buy" ten times a second while the testbed relocates
it to site 2 (a new PDU session at site 2's UPF, then release of the old one) and then hands it
over to site 1's gNB while it stays anchored at site 2's UPF (PFCP Session Modification, End
Marker; site 2's detector routes its later events to site 1's broker). Every click the shop
answered must reach fn-buy exactly once, the detector must say `mec.ue.moved` once per move,
and each click must be served at the site the UE was at.
As root (CI is root).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from testbed import mobility as bm
from testbed.scenario import Action, load_scenario, run_on_stack, run_ue_plans
from testbed.stack import Stack

REPO = Path(__file__).resolve().parent.parent.parent

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_mobility_scenario_passes(tmp_path: Path) -> None:
    scn = load_scenario(REPO / "examples" / "scenarios" / "mobility.yaml")
    assert scn.sites == 2
    with Stack(tmp_path / "run", "sim", ues=scn.ues, lab_id="mob", sites=2) as s:
        out = run_on_stack(scn, s)
    assert out.ok, "\n".join(f"{n}: {ok} ({d})" for n, ok, d in out.checks)
    moves = [a for a in out.actions if a["kind"] in ("handover", "relocate")]
    assert [m["session"]["site"] for m in moves] == [2, 2]  # the handover keeps the UE at site 2's UPF
    assert [m["session"]["gnb"] for m in moves] == [2, 1]
    assert moves[0]["session"]["ue_ip"].startswith("10.46.")  # site 2's pool


def test_moving_ue_loses_no_click(tmp_path: Path) -> None:
    clicks = [Action(1, round(0.3 + i * 0.1, 2), "http",
                     {"method": "POST", "url": bm.BUY_URL.format(n=i + 1)}, f"buy-{i + 1}") for i in range(80)]
    moves = [Action(1, 2.5, "relocate", {"to": 2, "hold": 1.0}, "move-1"), Action(1, 5.5, "handover", {"to": 1}, "move-2")]
    with Stack(tmp_path / "run", "sim", ues=1, lab_id="mob2", sites=2, prewarm=True, rules=bm.RULES) as s:
        results = run_ue_plans(s, sorted(clicks + moves, key=lambda a: a.at), time.time() + 0.5)
        time.sleep(bm.SETTLE)
        events = [{**e, "site": k} for k in (1, 2) for e in s.broker_events(0, site=k)]
        invocations = s.invocations()
        detector_log = (tmp_path / "run" / "detector.log").read_text()
    res = bm.analyse(results, events, invocations)
    assert res["moves_failed"] == 0, res["per_move"]
    assert res["answered"] == res["clicks"] == 80, res["click_errors"]
    assert res["lost"] == 0, f"clicks that reached no fn-buy: {res['lost_items']}"
    assert res["duplicated"] == 0
    moved = [e for e in events if e["attributes"].get("type") == "mec.ue.moved"]
    assert len(moved) == 2, [e["attributes"] for e in moved]
    assert sorted((e["site"], e["attributes"].get("tosite")) for e in moved) == [(1, "site1"), (2, "site2")]
    site_of = {c["item"]: c["site"] for c in res["served"]}
    # clicks sent 0.5 s or more away from a move: at the site the UE was at (the move's own
    # neighbourhood may be served on either side, but once)
    assert all(site_of[n] == 1 for n in range(1, 21))       # 0.3-2.2 s: site 1
    assert all(site_of[n] == 2 for n in range(32, 51))      # 3.4-5.2 s: site 2's UPF, tap and detector
    assert all(site_of[n] == 1 for n in range(62, 81))      # 6.4-8.2 s: routed by site 2's detector to site 1
    warmups = [e for e in events if str(e["attributes"].get("mecwarmup", "")).lower() == "true"]
    assert {e["site"] for e in warmups} == {1, 2}  # pre-warm: fn-buy's type at each target site
    assert "mobility: site site1" in detector_log
