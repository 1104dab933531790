"""Replay: a capture of a handover and a relocation, made by the two-site sim, through the tap
and a detector (issue 18, "Lab and replay").

UERANSIM cannot hand over (docs/lab.md), so the lab's tap and detector are proven on what a core
puts on the wire instead: `testbed.sim.mobility_capture` runs the two-site sim (real PFCP and
GTP-U, captured on N3 and N4) through one Xn handover to gNB 2 and one SSC mode 3 relocation to
site 2's UPF, with a purchase before, between and after. `upf-tap read` of that capture must
report the path switch as the core did it (session.modify with the new DL F-TEID, the End
Marker on the old path, the new session at UPF 2 and the release of the old one), and a detector
with the two sites fed those AppEvents must say `mec.ue.moved` once and send the later purchases
to site 2's sink. As root (the sim).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from detlib import Sink, base_url, det_config, ndjson, post_events, running
from test_det_mobility import GNB1, GNB2, UPF1, UPF2, mobility, moved, settle

from testbed.constants import SITE_UE_POOLS_V4, UE_POOL_V4

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from testbed.sim.mobility_capture import make_capture

    d = tmp_path_factory.mktemp("mobcap")
    cap = d / "mobility.pcap"
    facts = make_capture(cap)
    pools = [a for p in {UE_POOL_V4, *SITE_UE_POOLS_V4.values()} for a in ("--ue-pool", p)]
    out = subprocess.run([sys.executable, "-m", "upf_tap", "read", *pools, str(cap)], capture_output=True,
                         text=True, check=True)
    return facts, [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_the_tap_reports_the_path_switch_as_the_core_did(replayed: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    facts, events = replayed
    kinds = [e["kind"] for e in events]
    (modify,) = [e for e in events if e["kind"] == "session.modify" and e["app"].get("prev_gnb_ip")]
    assert modify["app"]["prev_gnb_ip"] == GNB1 and modify["app"]["gnb_ip"] == GNB2
    assert modify["app"]["dl_teid"] == facts["handover"]["dl_teid"]
    assert modify["app"]["prev_dl_teid"] == facts["before"]["dl_teid"]
    assert modify["app"].get("end_marker") is True          # SNDEM: the SMF asked for End Markers
    (marker,) = [e for e in events if e["kind"] == "gtpu.end_marker"]
    assert marker["tunnel"] == {"src": UPF1, "dst": GNB1, "teid": facts["before"]["dl_teid"]}
    assert marker["ue"]["supi"] == facts["supi"]
    # the sim's UPF sends the End Marker on the Modification, before it answers; the tap reports the
    # modification at the answer (it pairs request and response), so the marker comes first
    assert kinds.index("gtpu.end_marker") < kinds.index("session.modify") and marker["time"] <= modify["time"]
    ups = [e for e in events if e["kind"] == "session.up"]
    assert [u["app"]["upf_ip"] for u in ups] == [UPF1, UPF2]   # the relocation's new session at UPF 2
    assert all(u["ue"]["supi"] == facts["supi"] for u in ups)
    assert ups[1]["ue"]["ip"].startswith("10.46.")
    downs = [e for e in events if e["kind"] == "session.down"]
    # then the old one is released (the lab's teardown at the end releases the new one too)
    assert any(d["app"]["upf_ip"] == UPF1 and d["time"] >= ups[1]["time"] for d in downs)
    buys = [e for e in events if e["kind"] == "http.request" and e["app"]["path"].startswith("/api/v1/buy")]
    assert [b["ue"].get("gnb_ip") for b in buys if b["direction"] == "ul"] == [GNB1, GNB2, GNB2]
    assert [b["tunnel"]["dst"] for b in buys if b["direction"] == "ul"] == [UPF1, UPF1, UPF2]


async def test_a_detector_fed_the_replay_moves_the_ue_once(replayed: tuple[dict[str, Any], list[dict[str, Any]]],
                                                          tmp_path: Path, sink: Sink) -> None:
    _facts, events = replayed
    sink2 = Sink()
    await sink2.start()
    try:
        cfg = det_config(tmp_path, sink.url, mobility=mobility("site1", sink.url, sink2.url))
        async with running(cfg) as srv:
            status, ans = await post_events(base_url(srv), ndjson(events))
            assert status == 202, ans
            await settle(1.0)
        (mv,) = moved(sink, sink2)
        assert mv.get_data()["from"]["gnb_ip"] == GNB1 and mv.get_data()["to"] == {"gnb_ip": GNB2, "site": "site2"}
        # the purchases: the first at site 1, the two after the handover at site 2 (the UE's serving site)
        at = {s_name: [r.ce for r in s.accepted if r.ce.get_type() == "mec.upf.http.request"
                       and "/api/v1/buy" in json.dumps(r.ce.get_data())]
              for s_name, s in (("site1", sink), ("site2", sink2))}
        assert len(at["site1"]) >= 1 and len(at["site2"]) >= 2
    finally:
        await sink2.stop()
