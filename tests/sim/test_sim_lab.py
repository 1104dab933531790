"""The sim lab for real: namespaces, TUNs, GTP-U and PFCP on veths, DN services; tshark as the oracle.

One lab with 2 UEs serves the whole module (bringing it up takes about a second and a
half). The capture runs at the UPF (N3, N4, N6) from before the PFCP association to
after the last Session Deletion, so the last tests read the whole life cycle.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.corpus import tshark as oracle
from testbed.sim.lab import SimLab, SimLabError
from testbed.sim.topology import MQTT_IP, SHOP_IP, UE_MTU, UPF_N3_IP, UPF_N4_IP, lab_netns, teardown_lab

pytestmark = [pytest.mark.root, pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")]

UES = 2
MODIFIED_QFI = 5   # UE 2's QoS flow after the Session Modification test


def new_lab_id() -> str:
    return "t" + secrets.token_hex(3)


def tshark(pcap: Path, fields: list[str], dfilter: str) -> list[dict[str, str]]:
    return oracle.joined(oracle.fields(pcap, fields, dfilter))


def leftovers(lab_id: str, marker: str) -> list[str]:
    """Anything of the lab still on the machine: namespaces, links or TUNs, processes."""
    found = [f"netns {ns}" for ns in lab_netns(lab_id)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"link {ln.split(':')[1].strip()}" for ln in links.splitlines()
              if any(k in ln for k in ("uesimtun", "ogstun", " n3", " n4", " n6"))]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue   # gone meanwhile
        if marker in argv:
            found.append(f"process {cmdline.parent.name}: {argv[:120]}")
    return found


@pytest.fixture(scope="module")
def state_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("simstate")


@pytest.fixture(scope="module")
def lab(state_root: Path) -> Iterator[SimLab]:
    lab = SimLab(new_lab_id(), UES, state_root=state_root, capture=state_root / "upf.pcapng")
    lab.up()
    yield lab
    lab.down()


@pytest.fixture(scope="module")
def finished(lab: SimLab, state_root: Path) -> dict[str, Any]:
    """Tear the lab down (PFCP deletions included) and report what is left; the capture is then complete."""
    # the traffic the capture checks rely on, whether or not the tests above ran
    for n in range(1, UES + 1):
        assert lab.ue_ping(n, SHOP_IP, count=1).returncode == 0
    assert lab.ue_ping(1, SHOP_IP, count=1, size=UE_MTU - 28, dont_fragment=True).returncode == 0
    if lab.sessions[2]["qfi"] != MODIFIED_QFI:
        lab.modify_session(2, qfi=MODIFIED_QFI)
    assert lab.ue_ping(2, SHOP_IP, count=1).returncode == 0
    sessions = {n: dict(s) for n, s in lab.sessions.items()}
    problems = lab.down()
    return {"problems": problems, "warnings": list(lab.warnings), "left": leftovers(lab.lab_id, str(state_root)), "sessions": sessions,
            "pcap": state_root / "upf.pcapng"}


def test_ping_dn_from_each_ue(lab: SimLab) -> None:
    for n in range(1, UES + 1):
        r = lab.ue_ping(n, SHOP_IP, count=2)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "2 received" in r.stdout
    counters = lab.daemon_status("upf")["counters"]
    assert counters["ul_packets"] >= 4 and counters["dl_packets"] >= 4


def test_http_buy_reaches_the_app_from_the_ue_ip(lab: SimLab) -> None:
    r = lab.run_in_ue(1, ["curl", "-sS", "-m", "5", "-X", "POST", "http://shop.mec.local/api/v1/buy?item=3"])
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["ok"] is True and answer["item"] == 3 and answer["client"] == lab.ue_ip(1) == "10.45.0.2"
    calls = [c for c in lab.shop_calls() if c["path"] == "/api/v1/buy?item=3"]
    assert calls and calls[-1]["client"] == "10.45.0.2" and calls[-1]["method"] == "POST"
    assert calls[-1]["host"] == "shop.mec.local"
    r = lab.run_in_ue(2, ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                          "http://shop.mec.local/api/v1/buy?item=99"])
    assert r.stdout == "400"
    assert lab.shop_calls()[-1]["client"] == "10.45.0.3"


def test_dns_lookup_from_a_ue(lab: SimLab) -> None:
    r = lab.ue_dns(2, "shop.mec.local")
    assert r.returncode == 0 and r.stdout.split() == ["shop.mec.local", "A", SHOP_IP], r.stdout + r.stderr
    r = lab.ue_dns(1, "mqtt.mec.local")
    assert r.stdout.split()[-1] == MQTT_IP
    dns_log = (lab.log_dir / "dns.log").read_text()
    assert "query[A] shop.mec.local from 10.45.0.3" in dns_log   # it came through UE 2's tunnel
    r = lab.ue_dns(1, "example.org")   # nothing outside mec.local
    assert r.returncode != 0


def test_mqtt_publish_from_a_ue_reaches_mosquitto(lab: SimLab) -> None:
    broker_log = lab.log_dir / "mqtt.log"
    sub = subprocess.Popen(["ip", "netns", "exec", lab.topology.dn_ns, "mosquitto_sub", "-h", MQTT_IP,
                            "-i", "sim-test-sub", "-t", "shop/#", "-C", "1", "-W", "10", "-v"],
                           stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while "Received SUBSCRIBE from sim-test-sub" not in broker_log.read_text():
            assert time.monotonic() < deadline, "subscriber never subscribed"
            time.sleep(0.05)
        r = lab.run_in_ue(1, ["mosquitto_pub", "-h", "mqtt.mec.local", "-i", "ue1", "-t", "shop/buy",
                              "-m", "item=2"], timeout=10)
        assert r.returncode == 0, r.stderr
        out, _ = sub.communicate(timeout=10)
    finally:
        sub.kill()
    assert out.strip() == "shop/buy item=2"
    assert "New client connected from 10.45.0.2" in broker_log.read_text()


def test_mtu_fits_n3_without_fragments(lab: SimLab) -> None:
    biggest = UE_MTU - 28   # ICMP payload that fills the TUN MTU exactly (IP 20 + ICMP 8)
    r = lab.ue_ping(1, SHOP_IP, count=1, size=biggest, dont_fragment=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = lab.ue_ping(1, SHOP_IP, count=1, size=biggest + 1, dont_fragment=True)
    assert r.returncode != 0 and "too long" in r.stderr


def test_session_modification_changes_the_qfi(lab: SimLab) -> None:
    s = lab.modify_session(2, qfi=MODIFIED_QFI)
    assert s["qfi"] == MODIFIED_QFI
    upf_view = {x["ue_ip"]: x for x in lab.daemon_status("upf")["sessions"]}
    assert upf_view["10.45.0.3"]["qfi"] == MODIFIED_QFI and upf_view["10.45.0.2"]["qfi"] == 1
    r = lab.ue_ping(2, SHOP_IP, count=2)
    assert r.returncode == 0, r.stdout + r.stderr


def test_n3_impairment_drops_delays_and_clears(lab: SimLab) -> None:
    """The gNB's N3 impairment (the soak bench's netem stand-in): loss drops, delay adds to the RTT."""
    try:
        lab.impair_n3(loss=1.0)
        assert lab.ue_ping(1, SHOP_IP, count=2).returncode != 0  # every G-PDU dropped
        assert lab.daemon_status("gnb")["impairment"]["dropped"] >= 2
        lab.impair_n3(delay_ms=60)
        r = lab.ue_ping(1, SHOP_IP, count=2)
        assert r.returncode == 0, r.stdout
        rtts = [float(x.split("time=")[1].split()[0]) for x in r.stdout.splitlines() if "time=" in x]
        assert rtts and min(rtts) >= 120.0  # 60 ms each way, UL and DL both held at the gNB
        with pytest.raises(SimLabError, match="probabilities"):
            lab.impair_n3(loss=2.0)
    finally:
        cleared = lab.impair_n3()
    assert cleared["loss"] == 0 and cleared["delay_ms"] == 0
    r = lab.ue_ping(1, SHOP_IP, count=1)
    assert r.returncode == 0
    assert float(r.stdout.split("time=")[1].split()[0]) < 60.0


def test_garbage_on_n4_and_n3_is_dropped_and_counted(lab: SimLab) -> None:
    before = lab.daemon_status("upf")["counters"]
    def send(ns: str, payload: bytes, addr: tuple[str, int]) -> None:
        code = f"import socket; socket.socket(2, 2).sendto({payload!r}, {addr!r})"
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True)

    send(lab.topology.smf_ns, b"\x21\x32\x00\x03abc", (UPF_N4_IP, 8805))              # PFCP, bad length
    send(lab.topology.gnb_ns, b"\x30\xff\x00\x40\x00\x00\x00\x01", (UPF_N3_IP, 2152))  # GTP-U, truncated
    deadline = time.monotonic() + 5
    while True:
        after = lab.daemon_status("upf")["counters"]
        if after["pfcp_bad"] >= before["pfcp_bad"] + 1 and after["gtpu_bad"] >= before["gtpu_bad"] + 1:
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.05)
    assert lab.ue_ping(1, SHOP_IP, count=1).returncode == 0   # still forwarding


def test_status_and_tap_interfaces(lab: SimLab) -> None:
    st = SimLab.attach(lab.lab_id, lab.state_dir.parent).status()   # as another process would see it
    assert st["up"] is True and st["ues"] == UES
    assert set(st["processes"]) >= {"gnb", "upf", "smf", "shop", "dnsmasq", "mosquitto"}
    assert {s["ue_ip"] for s in st["sessions"]} == {"10.45.0.2", "10.45.0.3"}
    assert st["tap"] == {"netns": lab.topology.upf_ns, "n3": "n3", "n4": "n4", "n6": "n6"}
    links = subprocess.run(["ip", "-n", st["tap"]["netns"], "-o", "link"], capture_output=True, text=True).stdout
    assert " n3@" in links and " n4@" in links and " ogstun:" in links


def test_second_up_with_same_id_fails_and_keeps_the_running_lab(lab: SimLab, state_root: Path) -> None:
    with pytest.raises(SimLabError, match="exists already"):
        SimLab(lab.lab_id, 1, state_root=state_root).up()
    assert lab.ue_ping(1, SHOP_IP, count=1).returncode == 0


# --- after teardown: nothing left, and the capture holds the whole story ---

def test_down_leaves_nothing_behind(finished: dict[str, Any]) -> None:
    assert finished["problems"] == [] and finished["warnings"] == []
    assert finished["left"] == []


def test_n4_carries_the_pfcp_life_cycle(finished: dict[str, Any]) -> None:
    rows = tshark(finished["pcap"], ["pfcp.msg_type", "pfcp.seid", "pfcp.ue_ip_addr_ipv4", "pfcp.f_teid.teid",
                                     "pfcp.outer_hdr_creation.teid", "pfcp.cause", "frame.interface_name",
                                     "e212.imsi"],
                  "pfcp && !_ws.expert")
    # the only PFCP frame tshark may complain about is the garbage test's
    assert len(tshark(finished["pcap"], ["frame.number"], "pfcp && _ws.expert")) <= 1
    assert {r["frame.interface_name"] for r in rows} == {"n4"}
    types = [int(r["pfcp.msg_type"]) for r in rows]
    assert types[:2] == [5, 6]                                    # association first
    assert types.count(50) == types.count(51) == UES              # one establishment per UE
    assert types.count(52) == types.count(53) == 1                # the modification test
    assert types.count(54) == types.count(55) == UES              # and a deletion per UE at down
    sessions = finished["sessions"]
    req_ips = [r["pfcp.ue_ip_addr_ipv4"].split(",")[0] for r in rows if r["pfcp.msg_type"] == "50"]
    assert sorted(req_ips) == sorted(s["ue_ip"] for s in sessions.values())
    imsis = sorted(r["e212.imsi"] for r in rows if r["pfcp.msg_type"] == "50")   # User ID IE
    assert imsis == sorted(s["supi"].removeprefix("imsi-") for s in sessions.values())
    rsp_teids = {int(r["pfcp.f_teid.teid"], 16) for r in rows if r["pfcp.msg_type"] == "51"}
    assert rsp_teids == {s["ul_teid"] for s in sessions.values()}
    ohc_teids = {int(r["pfcp.outer_hdr_creation.teid"], 16) for r in rows if r["pfcp.msg_type"] == "50"}
    assert ohc_teids == {s["dl_teid"] for s in sessions.values()}
    assert all(r["pfcp.cause"] in ("", "1") for r in rows)


def test_n3_is_gtpu_with_pdu_session_container(finished: dict[str, Any]) -> None:
    rows = tshark(finished["pcap"], ["gtp.teid", "gtp.ext_hdr.pdu_ses_con.pdu_type",
                                     "gtp.ext_hdr.pdu_ses_con.qos_flow_id", "ip.src", "ip.dst", "ip.flags.mf",
                                     "ip.frag_offset", "ip.len"], 'frame.interface_name == "n3" && gtp && udp.srcport == 2152')
    assert len(rows) >= 2 * (UES + 2)   # at least the fixture's pings, both ways
    # the MTU test's biggest ping filled N3 exactly (outer IP 1500 bytes), and nothing was fragmented
    assert max(int(r["ip.len"].split(",")[0]) for r in rows) == 1500
    by_ul = {s["ul_teid"]: s for s in finished["sessions"].values()}
    by_dl = {s["dl_teid"]: s for s in finished["sessions"].values()}
    qfis: dict[tuple[int, str], set[str]] = {}
    for r in rows:
        teid = int(r["gtp.teid"], 16)
        outer_src, inner_src = r["ip.src"].split(",")
        outer_dst, inner_dst = r["ip.dst"].split(",")
        assert r["ip.flags.mf"].split(",")[0] == "0" and r["ip.frag_offset"].split(",")[0] == "0"
        if r["gtp.ext_hdr.pdu_ses_con.pdu_type"] == "1":          # uplink: gNB -> UPF, UPF's TEID
            s = by_ul[teid]
            assert (outer_src, outer_dst, inner_src) == ("192.168.100.10", UPF_N3_IP, s["ue_ip"])
            qfis.setdefault((s["ue"], "ul"), set()).add(r["gtp.ext_hdr.pdu_ses_con.qos_flow_id"])
        else:                                                     # downlink: UPF -> gNB, gNB's TEID
            assert r["gtp.ext_hdr.pdu_ses_con.pdu_type"] == "0"
            s = by_dl[teid]
            assert (outer_src, outer_dst, inner_dst) == (UPF_N3_IP, "192.168.100.10", s["ue_ip"])
            qfis.setdefault((s["ue"], "dl"), set()).add(r["gtp.ext_hdr.pdu_ses_con.qos_flow_id"])
    assert qfis[(1, "ul")] == qfis[(1, "dl")] == {"1"}
    assert qfis[(2, "ul")] == qfis[(2, "dl")] == {"1", str(MODIFIED_QFI)}   # before and after the modification


def test_n6_is_plain_ip_from_the_ue_addresses(finished: dict[str, Any]) -> None:
    rows = tshark(finished["pcap"], ["ip.src", "ip.dst"], 'frame.interface_name == "n6" && ip')
    srcs = {r["ip.src"] for r in rows}
    assert {"10.45.0.2", "10.45.0.3", SHOP_IP} <= srcs
    assert not tshark(finished["pcap"], ["frame.number"], 'frame.interface_name == "n6" && gtp')


# --- failures ---

class FailingLab(SimLab):
    """A lab whose bring-up breaks after every process has started (the worst moment)."""

    def start_services(self) -> None:
        super().start_services()
        raise RuntimeError("forced failure after start_services")


def test_failed_up_cleans_everything(tmp_path: Path) -> None:
    lab = FailingLab(new_lab_id(), 1, state_root=tmp_path)
    with pytest.raises(RuntimeError, match="forced failure"):
        lab.up()
    assert leftovers(lab.lab_id, str(tmp_path)) == []
    assert not lab.state_dir.exists()


def test_process_that_cannot_start_fails_up_cleanly(tmp_path: Path) -> None:
    """A real failure: the SMF cannot associate because no UPF runs (the SMF exits with an error)."""

    class NoUpf(SimLab):
        assoc_timeout = 0.5

        def _spawn(self, name: str, ns: str, argv: list[str], ready: Any) -> None:
            if name == "upf":
                return
            super()._spawn(name, ns, argv, ready)

    lab = NoUpf(new_lab_id(), 1, state_root=tmp_path)
    with pytest.raises(SimLabError, match="smf"):
        lab.up()
    assert leftovers(lab.lab_id, str(tmp_path)) == []


def test_cli_up_status_down_across_processes(tmp_path: Path) -> None:
    lab_id = new_lab_id()
    base = [sys.executable, "-m", "testbed.sim"]
    common = ["--lab-id", lab_id, "--state-root", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    try:
        up = subprocess.run([*base, "up", "--ues", "1", *common], capture_output=True, text=True, env=env,
                            timeout=60)
        assert up.returncode == 0, up.stderr
        assert "UE 1: imsi-999700000000001 10.45.0.2" in up.stdout
        st = subprocess.run([*base, "status", "--json", *common], capture_output=True, text=True, env=env)
        assert st.returncode == 0 and json.loads(st.stdout)["up"] is True
        again = subprocess.run([*base, "up", *common], capture_output=True, text=True, env=env)
        assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
        # another process drives the same lab: release UE 1's session and set it up again
        other = SimLab.attach(lab_id, tmp_path)
        first = dict(other.sessions[1])
        other.release_ue(1)
        assert other.ue_ping(1, SHOP_IP, count=1, wait=0.5).returncode != 0   # no session, no path
        again_s = other.attach_ue(1)
        assert again_s["ue_ip"] == first["ue_ip"] and again_s["cp_seid"] != first["cp_seid"]
        assert other.ue_ping(1, SHOP_IP, count=1).returncode == 0
        # a crashed SMF: status says so; down still removes everything and only warns
        os.kill(int((tmp_path / lab_id / "pids" / "smf.pid").read_text()), 9)
        time.sleep(0.2)
        st = subprocess.run([*base, "status", *common], capture_output=True, text=True, env=env)
        assert st.returncode == 1 and "DEGRADED" in st.stdout and "DEAD" in st.stdout
    finally:
        down = subprocess.run([*base, "down", *common], capture_output=True, text=True, env=env, timeout=60)
    assert down.returncode == 0, down.stderr
    assert "warning: PFCP deletion skipped" in down.stderr
    assert leftovers(lab_id, str(tmp_path)) == []
    st = subprocess.run([*base, "status", *common], capture_output=True, text=True, env=env)
    assert st.returncode == 1 and "down" in st.stdout
    bad = subprocess.run([*base, "up", "--lab-id", "BAD-ID"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "bad lab id" in bad.stderr


def test_teardown_never_touches_a_foreign_namespace() -> None:
    lab_id = new_lab_id()
    foreign = f"mec{lab_id}-bench"   # shares the prefix, is not one of our roles
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        assert teardown_lab(lab_id) == []
        assert foreign in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=True)
