"""The two-site sim lab (issue 18): two gNBs, a UPF per MEC site, one SMF, N3/N4/N6 bridges.

One lab serves the module: UE 1 starts at site 1, UE 2 at site 2. The capture runs on the
switch ports towards each UPF and the SMF, so the last tests can tell which site carried what.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.corpus import tshark as oracle
from testbed.sim.lab import SimLab, SimLabError
from testbed.sim.topology import SHOP_IP
from tests.sim.test_sim_lab import leftovers as one_site_leftovers
from tests.sim.test_sim_lab import new_lab_id

pytestmark = [pytest.mark.root, pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")]

GNB1, GNB2 = "192.168.100.10", "192.168.100.11"
UPF1_N3, UPF2_N3 = "192.168.100.20", "192.168.100.21"
UPF1_N4, UPF2_N4 = "192.168.104.20", "192.168.104.21"


def leftovers(lab_id: str, marker: str) -> list[str]:
    """What test_sim_lab looks for, and the switch's bridges and ports should one land in the root namespace."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    extra = [f"link {ln.split(':')[1].strip()}" for ln in links.splitlines()
             if any(k in ln for k in (" br-n3", " br-n4", " br-n6", " n3-", " n4-", " n6-"))]
    return one_site_leftovers(lab_id, marker) + extra


def tshark(pcap: Path, fields: list[str], dfilter: str) -> list[dict[str, str]]:
    return oracle.joined(oracle.fields(pcap, fields, dfilter))


def buy(lab: SimLab, n: int, item: int) -> dict[str, Any]:
    r = lab.run_in_ue(n, ["curl", "-sS", "-m", "5", "-X", "POST", f"http://shop.mec.local/api/v1/buy?item={item}"])
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


@pytest.fixture(scope="module")
def state_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sitestate")


@pytest.fixture(scope="module")
def lab(state_root: Path) -> Iterator[SimLab]:
    lab = SimLab(new_lab_id(), 2, sites=2, placement={2: 2}, state_root=state_root,
                 capture=state_root / "sites.pcapng")
    lab.up()
    yield lab
    lab.down()


@pytest.fixture(scope="module")
def finished(lab: SimLab, state_root: Path) -> dict[str, Any]:
    for n in (1, 2):   # the traffic the capture checks rely on, whether or not the tests above ran
        assert lab.ue_ping(n, SHOP_IP, count=1).returncode == 0
    sessions = {n: dict(s) for n, s in lab.sessions.items()}
    problems = lab.down()
    return {"problems": problems, "warnings": list(lab.warnings), "left": leftovers(lab.lab_id, str(state_root)),
            "sessions": sessions, "pcap": state_root / "sites.pcapng"}


def test_two_sites_have_their_own_nodes(lab: SimLab) -> None:
    ns = set(lab.status()["namespaces"])
    p = f"mec{lab.lab_id}-"
    assert {p + r for r in ("gnb", "gnb2", "upf", "upf2", "smf", "dn", "sw", "ue1", "ue2")} == ns
    assert lab.tap_interfaces() == {"netns": p + "upf", "n3": "n3", "n4": "n4", "n6": "n6"}   # today's, site 1
    assert lab.tap_interfaces(2) == {"netns": p + "upf2", "n3": "n3", "n4": "n4", "n6": "n6"}
    assert (lab.upf_netns(1), lab.upf_netns(2), lab.gnb_netns(2)) == (p + "upf", p + "upf2", p + "gnb2")
    assert (lab.ue_pool(1), lab.ue_pool(2)) == ("10.45.0.0/16", "10.46.0.0/16")
    smf = lab.daemon_status("smf")
    assert smf["associated"] and smf["associated_with"] == [UPF1_N4, UPF2_N4]   # one association per UPF
    assert lab.daemon_status("upf")["peers"] == lab.daemon_status("upf2")["peers"] == ["192.168.104.10"]
    with pytest.raises(SimLabError, match="no site 3"):
        lab.upf_netns(3)


def test_a_ue_at_each_site_reaches_the_shop_over_its_site(lab: SimLab) -> None:
    s1, s2 = lab.serving(1), lab.serving(2)
    assert (s1["site"], s1["gnb"], s1["gnb_ip"], s1["upf_ip"], s1["ue_ip"]) == (1, 1, GNB1, UPF1_N3, "10.45.0.2")
    assert (s2["site"], s2["gnb"], s2["gnb_ip"], s2["upf_ip"], s2["ue_ip"]) == (2, 2, GNB2, UPF2_N3, "10.46.0.3")
    assert s1["supi"] == "imsi-999700000000001" and s2["supi"] == "imsi-999700000000002"
    before = {k: lab.daemon_status(k)["counters"]["ul_packets"] for k in ("upf", "upf2")}
    assert buy(lab, 1, 1)["client"] == "10.45.0.2"
    mid = {k: lab.daemon_status(k)["counters"]["ul_packets"] for k in ("upf", "upf2")}
    assert mid["upf"] > before["upf"]
    assert buy(lab, 2, 2)["client"] == "10.46.0.3"
    after = {k: lab.daemon_status(k)["counters"]["ul_packets"] for k in ("upf", "upf2")}
    # (upf1 may still see UE 1's last ACK here: that the sites stay apart is the capture test's job)
    assert after["upf2"] > mid["upf2"]
    r = lab.ue_dns(2, "mqtt.mec.local")   # the DN's DNS answers site 2's pool too
    assert r.returncode == 0, r.stderr
    assert "query[A] mqtt.mec.local from 10.46.0.3" in (lab.log_dir / "dns.log").read_text()
    assert lab.ue_ip(2) == "10.46.0.3"


def test_attach_from_another_process_sees_both_sites(lab: SimLab) -> None:
    other = SimLab.attach(lab.lab_id, lab.state_dir.parent)
    assert other.sites == 2 and other.serving(2) == lab.serving(2) and other.ue_ip(2) == "10.46.0.3"
    st = other.status()
    assert st["up"] and st["sites"] == 2
    assert set(st["processes"]) >= {"gnb", "gnb2", "upf", "upf2", "smf", "shop", "dnsmasq", "mosquitto"}


def test_down_leaves_nothing_behind(finished: dict[str, Any]) -> None:
    assert finished["problems"] == [] and finished["warnings"] == []
    assert finished["left"] == []


def test_each_site_carries_only_its_ue(finished: dict[str, Any]) -> None:
    rows = tshark(finished["pcap"], ["frame.interface_name", "ip.src", "ip.dst", "gtp.teid"], "gtp")
    where: dict[str, set[str]] = {}
    for r in rows:
        outer_src, inner_src = r["ip.src"].split(",")
        outer_dst, inner_dst = r["ip.dst"].split(",")
        ue = inner_src if inner_src.startswith("10.4") else inner_dst
        where.setdefault(ue, set()).add(f"{r['frame.interface_name']} {outer_src}>{outer_dst}")
    assert where["10.45.0.2"] == {f"n3-upf1 {GNB1}>{UPF1_N3}", f"n3-upf1 {UPF1_N3}>{GNB1}"}
    assert where["10.46.0.3"] == {f"n3-upf2 {GNB2}>{UPF2_N3}", f"n3-upf2 {UPF2_N3}>{GNB2}"}
    n4 = tshark(finished["pcap"], ["ip.dst", "pfcp.msg_type"], "pfcp.msg_type == 50")
    assert sorted(r["ip.dst"] for r in n4) == [UPF1_N4, UPF2_N4]   # each UE's session at its site's UPF
    n6 = tshark(finished["pcap"], ["frame.interface_name", "ip.src"], f"ip.dst == {SHOP_IP} && !gtp")
    assert {(r["frame.interface_name"], r["ip.src"]) for r in n6} == {("n6-upf1", "10.45.0.2"),
                                                                     ("n6-upf2", "10.46.0.3")}


def test_cli_sites_2_up_status_down(tmp_path: Path) -> None:
    lab_id = new_lab_id()
    base = [sys.executable, "-m", "testbed.sim"]
    common = ["--lab-id", lab_id, "--state-root", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    try:
        up = subprocess.run([*base, "up", "--ues", "1", "--sites", "2", *common], capture_output=True, text=True,
                            env=env, timeout=60)
        assert up.returncode == 0, up.stderr
        assert "2 sites" in up.stdout and f"mec{lab_id}-upf2" in up.stdout and "10.46.0.0/16" in up.stdout
        st = subprocess.run([*base, "status", "--json", *common], capture_output=True, text=True, env=env)
        status = json.loads(st.stdout)
        assert st.returncode == 0 and status["up"] is True and status["sites"] == 2
        ho = subprocess.run([*base, "handover", "1", "2", "--json", *common], capture_output=True, text=True,
                            env=env, timeout=30)
        assert ho.returncode == 0, ho.stderr
        assert json.loads(ho.stdout)["gnb"] == 2 and json.loads(ho.stdout)["end_marker"] is True
        rl = subprocess.run([*base, "relocate", "1", "2", *common], capture_output=True, text=True, env=env,
                            timeout=30)
        assert rl.returncode == 0 and "site 1 -> 2, 10.45.0.2 -> 10.46.0.2" in rl.stdout, rl.stderr
        again = subprocess.run([*base, "relocate", "1", "2", *common], capture_output=True, text=True, env=env)
        assert again.returncode == 1 and "anchored at site 2 already" in again.stderr
    finally:
        down = subprocess.run([*base, "down", *common], capture_output=True, text=True, env=env, timeout=60)
    assert down.returncode == 0, down.stderr
    assert leftovers(lab_id, str(tmp_path)) == []
    bad = subprocess.run([*base, "up", "--sites", "3", *common], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--sites" in bad.stderr
