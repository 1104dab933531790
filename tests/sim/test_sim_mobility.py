"""Mobility in the two-site sim lab (issue 18), read back from the wire with tshark as the oracle.

UE 1 is handed over gnb1 -> gnb2 (intra-UPF: upf1 stays its anchor) while one TCP
connection keeps talking to the shop; UE 2 is relocated from site 1 to site 2 (SSC mode 3:
a handover first, then a new PDU session at upf2, then the old one deleted at upf1). The
capture on the switch ports (N3, N4, N6 of both sites) must show each step where 3GPP puts it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from testbed.corpus import tshark as oracle
from testbed.sim import gtpu, pfcp
from testbed.sim.lab import SimLab, SimLabError
from testbed.sim.mobility_capture import make_capture
from testbed.sim.topology import SHOP_IP
from testbed.sim.upf import Upf
from tests.sim.test_sim_lab import new_lab_id
from tests.sim.test_sim_sites import leftovers
from upf_tap.constants import GTPU_PORT, PFCP_PORT

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
root = pytest.mark.root

SMF_N4 = "192.168.104.10"
GNB1, GNB2 = "192.168.100.10", "192.168.100.11"
UPF1_N3, UPF2_N3 = "192.168.100.20", "192.168.100.21"
UPF1_N4, UPF2_N4 = "192.168.104.20", "192.168.104.21"

# one TCP connection, many HTTP requests on it: it must survive the handover untouched
KEEPALIVE = r"""
import http.client, json, sys, time
c = http.client.HTTPConnection("shop.mec.local", 80, timeout=5)
ok, fail, ports = 0, [], set()
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        c.request("GET", "/api/v1/items")
        r = c.getresponse()
        r.read()
        ok += r.status == 200
        ports.add(c.sock.getsockname()[1])
    except Exception as e:
        fail.append(repr(e))
        break
    time.sleep(0.02)
print(json.dumps({"ok": ok, "fail": fail, "ports": sorted(ports)}))
"""


def tshark(pcap: Path, fields: list[str], dfilter: str) -> list[dict[str, str]]:
    return oracle.joined(oracle.fields(pcap, fields, dfilter))


# --- the UPF's End Marker logic on real PFCP bytes (no root) ---

def test_path_switch_with_sndem_sends_one_end_marker_on_the_old_tunnel(tmp_path: Path) -> None:
    upf = Upf(UPF1_N3, UPF1_N4, "ogstun")
    smf = (SMF_N4, PFCP_PORT)
    upf.handle_pfcp(pfcp.association_setup_request(1, SMF_N4, 1), smf)
    upf.handle_pfcp(pfcp.session_establishment_request(
        2, cp_seid=1, smf_ip=SMF_N4, ue_ip="10.45.0.2", gnb_ip=GNB1, gnb_teid=0x100, qfi=1, dnn="internet"), smf)
    mods = [pfcp.session_modification_request(3, up_seid=1, qfi=5),                         # QoS only
            pfcp.session_modification_request(4, up_seid=1, gnb_ip=GNB1, gnb_teid=0x101),   # no SNDEM
            pfcp.session_modification_request(5, up_seid=1, gnb_ip=GNB2, gnb_teid=0x2000100, end_marker=True),
            pfcp.session_modification_request(6, up_seid=1, gnb_ip=GNB2, gnb_teid=0x2000100, end_marker=True)]
    for m in mods:
        assert pfcp.cause_of(pfcp.parse(upf.handle_pfcp(m, smf) or b"")) == pfcp.CAUSE_ACCEPTED
    # only the switch with SNDEM to a different tunnel: the repeat changes nothing, so no marker
    assert [(e["teid"], e["gnb_ip"]) for e in upf.end_markers] == [(0x101, GNB1)]
    assert next(iter(upf.sessions.values())).summary()["dl_teid"] == 0x2000100
    # tshark reads the SNDEM flag and the End Marker as 3GPP defines them
    em = gtpu.encode_end_marker(0x101)
    assert gtpu.decode(em) == gtpu.GtpuPacket(254, 0x101, None, None, None, b"")
    pcap = tmp_path / "switch.pcap"
    wrpcap(str(pcap), [Ether() / IP(src=SMF_N4, dst=UPF1_N4) / UDP(sport=PFCP_PORT, dport=PFCP_PORT) / mods[2],
                       Ether() / IP(src=UPF1_N3, dst=GNB1) / UDP(sport=GTPU_PORT, dport=GTPU_PORT) / em])
    rows = tshark(pcap, ["pfcp.smreq_flags.sndem", "pfcp.outer_hdr_creation.teid", "pfcp.outer_hdr_creation.ipv4",
                         "gtp.message", "gtp.teid", "gtp.length", "_ws.expert"], "")
    assert rows[0]["pfcp.smreq_flags.sndem"] == "1" and rows[0]["pfcp.outer_hdr_creation.teid"] == "0x02000100"
    assert rows[0]["pfcp.outer_hdr_creation.ipv4"] == GNB2
    assert (rows[1]["gtp.message"], rows[1]["gtp.teid"], rows[1]["gtp.length"]) == ("0xfe", "0x00000101", "0")
    assert all(r["_ws.expert"] == "" for r in rows)


# --- the live lab ---

@pytest.fixture(scope="module")
def state_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mobstate")


@pytest.fixture(scope="module")
def lab(state_root: Path) -> Iterator[SimLab]:
    lab = SimLab(new_lab_id(), 2, sites=2, state_root=state_root, capture=state_root / "mobility.pcapng")
    lab.up()
    yield lab
    lab.down()


@pytest.fixture(scope="module")
def moves(lab: SimLab) -> dict[str, Any]:
    """Both procedures, once: the tests below read what they did (live and on the wire)."""
    before = {n: lab.serving(n) for n in (1, 2)}
    talk = subprocess.Popen(["ip", "netns", "exec", lab.ue_netns(1), sys.executable, "-c", KEEPALIVE, "1.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)   # a few requests on gnb1 first
    handover = lab.handover(1, to_gnb=2)
    out, err = talk.communicate(timeout=20)
    assert talk.returncode == 0, err
    t_reloc = time.time()
    relocation = lab.relocate(2, to_site=2)
    return {"before": before, "handover": handover, "talk": json.loads(out), "relocation": relocation,
            "t_reloc": t_reloc}


@root
def test_handover_moves_the_radio_and_the_dl_tunnel(lab: SimLab, moves: dict[str, Any]) -> None:
    h, before = moves["handover"], moves["before"][1]
    assert (h["from_gnb"], h["gnb"], h["gnb_ip"], h["site"]) == (1, 2, GNB2, 1)   # intra-UPF: upf1 stays
    assert (h["upf_ip"], h["ul_teid"], h["ue_ip"]) == (UPF1_N3, before["ul_teid"], "10.45.0.2")
    assert h["old_dl_teid"] == before["dl_teid"] and h["dl_teid"] != before["dl_teid"]
    assert h["end_marker"] is True and h["radio_overlap_s"] < 0.5
    gnb1, gnb2 = lab.daemon_status("gnb"), lab.daemon_status("gnb2")
    assert gnb1["counters"]["end_marker"] == 2   # UE 1's handover, and UE 2's ahead of its relocation
    assert [m["teid"] for m in gnb1["end_markers"] if m["ue"] == 1] == [before["dl_teid"]]
    assert gnb1["ues"] == [] and gnb1["handed_over"] == []   # both released after their End Marker
    assert {u["ue"] for u in gnb2["ues"]} == {1, 2}
    assert lab.daemon_status("upf")["counters"]["end_marker_tx"] == 2
    r = lab.ue_ping(1, SHOP_IP, count=2)
    assert r.returncode == 0, r.stdout + r.stderr


@root
def test_a_tcp_connection_survives_the_handover(moves: dict[str, Any]) -> None:
    talk = moves["talk"]
    assert talk["fail"] == [] and len(talk["ports"]) == 1, talk   # one connection, never broken
    assert talk["ok"] >= 20


@root
def test_relocation_gives_a_new_anchor_and_address(lab: SimLab, moves: dict[str, Any]) -> None:
    r, before = moves["relocation"], moves["before"][2]
    assert r["handover"] is not None and r["handover"]["end_marker"]   # the radio moved to gnb2 first
    assert (r["site"], r["gnb"], r["upf_ip"], r["ue_ip"], r["pdu_session_id"]) == (2, 2, UPF2_N3, "10.46.0.3", 2)
    assert r["supi"] == before["supi"] == "imsi-999700000000002"
    assert (r["old"]["site"], r["old"]["ue_ip"], r["old"]["up_seid"]) == (1, "10.45.0.3", before["up_seid"])
    assert lab.ue_ip(2) == "10.46.0.3" and lab.serving(2) == {k: r[k] for k in lab.serving(2)}
    assert {s["ue_ip"] for s in lab.daemon_status("upf")["sessions"]} == {"10.45.0.2"}
    assert {s["ue_ip"] for s in lab.daemon_status("upf2")["sessions"]} == {"10.46.0.3"}
    r2 = lab.run_in_ue(2, ["curl", "-sS", "-m", "5", "-X", "POST", "http://shop.mec.local/api/v1/buy?item=4"])
    assert r2.returncode == 0 and json.loads(r2.stdout)["client"] == "10.46.0.3", r2.stderr
    addrs = subprocess.run(["ip", "-n", lab.ue_netns(2), "-o", "addr", "show", lab.ue_tun(2)],
                           capture_output=True, text=True).stdout
    assert "10.46.0.3/32" in addrs and "10.45.0.3" not in addrs   # the old session's address is gone
    other = SimLab.attach(lab.lab_id, lab.state_dir.parent)   # the state dir tells another process
    assert other.serving(2) == lab.serving(2) and other.serving(1) == lab.serving(1)


@root
def test_mobility_refuses_what_makes_no_sense(lab: SimLab, moves: dict[str, Any]) -> None:
    with pytest.raises(SimLabError, match="on gNB 2 already"):
        lab.handover(1, to_gnb=2)
    with pytest.raises(SimLabError, match="anchored at site 2 already"):
        lab.relocate(2, to_site=2)
    with pytest.raises(SimLabError, match="no gNB 3"):
        lab.handover(1, to_gnb=3)
    one = SimLab(new_lab_id(), 1)   # a one-site lab has nowhere to go (refused before anything is asked)
    with pytest.raises(SimLabError, match="no gNB 2"):
        one.handover(1, to_gnb=2)
    with pytest.raises(SimLabError, match="no site 2"):
        one.relocate(1, to_site=2)


@pytest.fixture(scope="module")
def finished(lab: SimLab, moves: dict[str, Any], state_root: Path) -> dict[str, Any]:
    assert lab.ue_ping(1, SHOP_IP, count=1).returncode == 0   # UE 1 after the handover: gnb2 -> upf1
    problems = lab.down()
    return {"problems": problems, "left": leftovers(lab.lab_id, str(state_root)),
            "pcap": state_root / "mobility.pcapng", **moves}


N4_FIELDS = ["frame.time_epoch", "ip.src", "ip.dst", "pfcp.msg_type", "pfcp.seid", "pfcp.outer_hdr_creation.teid",
             "pfcp.outer_hdr_creation.ipv4", "pfcp.smreq_flags.sndem", "pfcp.ue_ip_addr_ipv4", "pfcp.cause"]
N3_FIELDS = ["frame.time_epoch", "ip.src", "ip.dst", "gtp.message", "gtp.teid", "_ws.expert"]


@root
def test_down_after_moves_leaves_nothing_behind(finished: dict[str, Any]) -> None:
    assert finished["problems"] == [] and finished["left"] == []


@root
def test_wire_shows_the_path_switch_and_the_end_marker(finished: dict[str, Any]) -> None:
    h = finished["handover"]
    pcap = finished["pcap"]
    mods = tshark(pcap, N4_FIELDS, f"pfcp.msg_type == 52 && pfcp.outer_hdr_creation.teid == {h['dl_teid']}")
    (mod,) = mods
    assert (mod["ip.src"], mod["ip.dst"], mod["pfcp.outer_hdr_creation.ipv4"]) == (SMF_N4, UPF1_N4, GNB2)
    assert mod["pfcp.smreq_flags.sndem"] == "1" and int(mod["pfcp.seid"], 16) == h["up_seid"]
    rsp = next(r for r in tshark(pcap, N4_FIELDS, f"pfcp.msg_type == 53 && ip.src == {UPF1_N4}")
               if float(r["frame.time_epoch"]) > float(mod["frame.time_epoch"]))
    ems = tshark(pcap, N3_FIELDS, f"gtp.message == 254 && gtp.teid == {h['old_dl_teid']}")
    (em,) = ems   # exactly one End Marker on the old tunnel, from the UPF to the old gNB
    assert (em["ip.src"], em["ip.dst"], em["_ws.expert"]) == (UPF1_N3, GNB1, "")
    t_mod, t_em, t_rsp = (float(x["frame.time_epoch"]) for x in (mod, em, rsp))
    assert t_mod <= t_em <= t_rsp   # sent on the modification, before the UPF answers it
    dl = tshark(pcap, N3_FIELDS, f"gtp.message == 255 && ip.src == {UPF1_N3} && ip.dst == {GNB1} && "
                                 f"gtp.teid == {h['old_dl_teid']}")
    assert dl and all(float(r["frame.time_epoch"]) < t_em for r in dl)   # nothing on the old path after it
    after_dl = tshark(pcap, N3_FIELDS, f"gtp.message == 255 && ip.src == {UPF1_N3} && ip.dst == {GNB2} && "
                                       f"gtp.teid == {h['dl_teid']}")
    after_ul = tshark(pcap, N3_FIELDS, f"gtp.message == 255 && ip.src == {GNB2} && ip.dst == {UPF1_N3} && "
                                       f"gtp.teid == {h['ul_teid']}")
    assert len(after_dl) >= 10 and len(after_ul) >= 10   # the kept TCP connection, now gnb2 <-> upf1
    assert all(float(r["frame.time_epoch"]) > t_mod for r in after_dl)


@root
def test_wire_shows_the_relocation(finished: dict[str, Any]) -> None:
    r = finished["relocation"]
    pcap = finished["pcap"]
    est = [x for x in tshark(pcap, N4_FIELDS, "pfcp.msg_type == 50")
           if float(x["frame.time_epoch"]) >= finished["t_reloc"]]
    (e,) = est
    assert (e["ip.dst"], e["pfcp.ue_ip_addr_ipv4"], e["pfcp.outer_hdr_creation.ipv4"]) == \
        (UPF2_N4, "10.46.0.3,10.46.0.3", GNB2)
    assert int(e["pfcp.outer_hdr_creation.teid"], 16) == r["dl_teid"]
    dels = [x for x in tshark(pcap, N4_FIELDS, "pfcp.msg_type == 54")
            if float(x["frame.time_epoch"]) >= finished["t_reloc"]]
    # the old session at upf1 goes after the new one is up; the rest are the teardown's
    first = dels[0]
    assert (first["ip.dst"], int(first["pfcp.seid"], 16)) == (UPF1_N4, r["old"]["up_seid"])
    assert float(first["frame.time_epoch"]) > float(e["frame.time_epoch"])
    up2 = tshark(pcap, ["ip.src", "gtp.teid"], f"gtp.message == 255 && ip.dst == {UPF2_N3} && ip.src == {GNB2}")
    assert any(x["ip.src"] == f"{GNB2},10.46.0.3" for x in up2)   # site 2 carries the new address


@root
def test_generator_writes_a_capture_of_both_procedures(tmp_path: Path) -> None:
    out, lab_id = tmp_path / "mobility.pcap", new_lab_id()
    facts = make_capture(out, lab_id=lab_id, state_root=tmp_path / "state")
    assert facts["handover"]["end_marker"] and facts["relocation"]["site"] == 2
    assert [b["client"] for b in facts["buys"]] == ["10.45.0.2", "10.45.0.2", "10.46.0.2"]
    assert leftovers(lab_id, str(tmp_path / "state")) == []
    rows = tshark(out, ["ip.dst", "pfcp.msg_type", "gtp.message", "pfcp.smreq_flags.sndem"],
                  "pfcp.msg_type == 50 || pfcp.msg_type == 52 || pfcp.msg_type == 54 || gtp.message == 254")
    seq = [(r["pfcp.msg_type"] or r["gtp.message"], r["ip.dst"]) for r in rows]
    # file order is time order: establish at upf1, path switch + End Marker, establish at upf2, delete at upf1
    assert seq[:5] == [("50", UPF1_N4), ("52", UPF1_N4), ("0xfe", GNB1), ("50", UPF2_N4), ("54", UPF1_N4)]
    assert rows[1]["pfcp.smreq_flags.sndem"] == "1"
