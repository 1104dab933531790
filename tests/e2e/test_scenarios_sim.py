"""End to end on the sim lab: UE actions → GTP-U/PFCP on real veths → upf-tap live →
detector → local broker → functions. As root (CI is root)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.scenario import load_scenario, run_on_stack
from testbed.stack import Stack

REPO = Path(__file__).resolve().parent.parent.parent
SCENARIOS = REPO / "examples" / "scenarios"

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    s = Stack(tmp_path_factory.mktemp("e2e"), "sim", ues=2, lab_id="e2e")
    s.start()
    try:
        yield s
    finally:
        s.stop()


# edge-services releases UE 2's session: it runs last
@pytest.mark.parametrize("name", ["buy-click.yaml", "edge-services.yaml"])
def test_example_scenario_passes(stack: Stack, name: str) -> None:
    out = run_on_stack(load_scenario(SCENARIOS / name), stack)
    assert out.ok, "\n".join(f"{n}: {ok} ({d})" for n, ok, d in out.checks)


def test_buy_event_carries_identity_and_tunnel(stack: Stack, tmp_path: Path) -> None:
    scn = tmp_path / "one-buy.yaml"
    scn.write_text("""
name: one-buy
ues: 2
actions:
  - {ue: 1, at: 0.1, http: {method: POST, url: "http://shop.mec.local/api/v1/buy?item=4&n=e2e"}}
expect:
  deadline: 15
  cloudevents:
    - {type: mec.app.buy, data: {path: "*n=e2e"}}
  functions: [{service: fn-buy, min: 1}]
""")
    out = run_on_stack(load_scenario(scn), stack)
    assert out.ok, out.checks
    (ev,) = [e for e in out.events if e["attributes"]["type"] == "mec.app.buy" and "n=e2e" in (e["data"] or "")]
    a = ev["attributes"]
    session = stack.lab.sessions[1]
    assert a["supi"] == session["supi"] == "imsi-999700000000001"
    assert a["ueip"] == session["ue_ip"] and a["dnn"] == "internet"
    assert int(a["teid"]) == session["ul_teid"]          # the UPF's uplink F-TEID, learned from PFCP
    assert a["source"] == "/mec/detector/demo/ue/imsi-999700000000001"
    assert a["specversion"] == "1.0" and a["rule"] == "buy-click"
    # fn-buy recorded the order for this subscriber
    orders = [json.loads(line) for p in (stack.workdir / "broker").glob("**/orders.jsonl")
              for line in p.read_text().splitlines()]
    assert any(o["supi"] == a["supi"] and o["event_id"] == a["id"] for o in orders)


def test_unknown_action_in_scenario_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nues: 1\nactions:\n  - {ue: 1, teleport: {}}\n")
    res = subprocess.run([sys.executable, "-m", "testbed", "scenario", "run", str(bad)],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2
    assert "actions[0]" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_channel_path_scenario_passes(tmp_path: Path) -> None:
    """The paper's other event path: the detector's sink is the Channel mec-events; its
    Subscriptions reach fn-channel-log directly and fn-buy through the Broker."""
    scn = load_scenario(SCENARIOS / "buy-click-channel.yaml")
    assert scn.eventing == "channel"
    with Stack(tmp_path / "run", "sim", ues=scn.ues, lab_id="e2c", eventing="channel") as s:
        out = run_on_stack(scn, s)
        log = (tmp_path / "run" / "detector.log").read_text()
    assert out.ok, "\n".join(f"{n}: {ok} ({d})" for n, ok, d in out.checks)
    assert "/channels/mec/mec-events" in log  # the detector's sink was the Channel
