"""Identities agree across Open5GS, UERANSIM, provisioning, compose and the tap's identity file.

Each file is read on its own terms (YAML, the JSON inside provision.js) and compared with
testbed/constants.py, so a hand edit of any generated file, or a constant changed without
re-rendering, fails here.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest
import yaml

from testbed import constants as C
from testbed.lab import layout as L
from testbed.lab import render
from testbed.lab.subscribers import SubscriberError, generate, load, validate

CONF = L.COMPOSE_DIR / "configs"


def y(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def subs() -> list:
    return load(L.SUBSCRIBERS_FILE)


def provisioned() -> list[dict]:
    text = (L.COMPOSE_DIR / "provision/provision.js").read_text()
    m = re.search(r"^const SUBSCRIBERS = (\[.*?^\]);$", text, re.S | re.M)
    assert m, "provision.js has no SUBSCRIBERS array"
    return json.loads(m.group(1))


def test_generated_files_are_up_to_date(subs: list) -> None:
    assert render.stale_files(L.REPO, subs) == []
    assert render.stray_ue_configs(L.REPO, subs) == []


def test_identity_file_is_the_subscriber_list(subs: list) -> None:
    raw = y(L.SUBSCRIBERS_FILE)
    assert [set(e) for e in raw] == [{"supi", "ip", "dnn", "snssai"}] * len(raw)
    for n, e in enumerate(raw, 1):
        assert e == {"supi": C.supi(n), "ip": C.ue_ipv4(n), "dnn": C.DNN, "snssai": str(C.SST)}


def test_open5gs_plmn_tac_slice_dnn_pool() -> None:
    plmn = {"mcc": C.MCC, "mnc": C.MNC}
    amf = y(CONF / "open5gs/amf.yaml")["amf"]
    assert [g["plmn_id"] for g in amf["guami"]] == [plmn]
    assert amf["tai"] == [{"plmn_id": plmn, "tac": C.TAC}]
    assert amf["plmn_support"] == [{"plmn_id": plmn, "s_nssai": [{"sst": C.SST}]}]
    assert amf["security"]["ciphering_order"][0] == "NEA0", "NAS must stay readable for the tap"
    assert y(CONF / "open5gs/nrf.yaml")["nrf"]["serving"] == [{"plmn_id": plmn}]
    nsi = y(CONF / "open5gs/nssf.yaml")["nssf"]["sbi"]["client"]["nsi"]
    assert [n["s_nssai"] for n in nsi] == [{"sst": C.SST}]
    for nf in ("smf", "upf"):
        (sess,) = y(CONF / f"open5gs/{nf}.yaml")[nf]["session"]
        assert (sess["subnet"], sess["gateway"], sess["dnn"]) == (C.UE_POOL_V4, C.UE_GATEWAY_V4, C.DNN)
    assert y(CONF / "open5gs/upf.yaml")["upf"]["session"][0]["dev"] == "ogstun"


def test_open5gs_peers_point_at_the_right_containers() -> None:
    compose = y(L.COMPOSE_DIR / "docker-compose.yaml")["services"]

    def addr(service: str, net: str) -> str:
        return compose[service]["networks"][net]["ipv4_address"]

    scp_uri = f"http://{addr('scp', 'core')}:7777"
    for nf in ("amf", "smf", "ausf", "udm", "udr", "pcf", "nssf", "bsf"):
        doc = y(CONF / f"open5gs/{nf}.yaml")[nf]
        assert doc["sbi"]["client"]["scp"] == [{"uri": scp_uri}], nf
        assert doc["sbi"]["server"][0]["address"] == addr(nf, "core"), nf
    assert y(CONF / "open5gs/scp.yaml")["scp"]["sbi"]["client"]["nrf"] == [{"uri": f"http://{addr('nrf', 'core')}:7777"}]
    smf = y(CONF / "open5gs/smf.yaml")["smf"]
    upf = y(CONF / "open5gs/upf.yaml")["upf"]
    assert smf["pfcp"]["client"]["upf"] == [{"address": upf["pfcp"]["server"][0]["address"]}]
    assert upf["pfcp"]["server"][0]["address"] == addr("upf", "core")
    assert upf["gtpu"]["server"][0]["address"] == addr("upf", "ran")
    assert smf["dns"] == [addr("dns", "n6")]
    gnb = y(CONF / "ueransim/gnb.yaml")
    amf = y(CONF / "open5gs/amf.yaml")["amf"]
    assert gnb["amfConfigs"] == [{"address": amf["ngap"]["server"][0]["address"], "port": 38412}]
    assert gnb["ngapIp"] == gnb["gtpIp"] == gnb["linkIp"] == addr("gnb", "ran")
    for svc in ("udr", "pcf"):
        assert y(CONF / f"open5gs/{svc}.yaml")["db_uri"] == f"mongodb://{addr('mongo', 'core')}/open5gs"


def test_mtu_leaves_room_for_gtpu() -> None:
    smf_mtu = y(CONF / "open5gs/smf.yaml")["smf"]["mtu"]
    upf_env = y(L.COMPOSE_DIR / "docker-compose.yaml")["services"]["upf"]["environment"]
    assert int(upf_env["OGSTUN_MTU"]) == smf_mtu
    # outer IPv4 20 + UDP 8 + GTP-U 8 + PDU session container 8 on a 1500-byte Docker link
    assert smf_mtu + 44 <= 1500


def test_gnb_and_ues_agree_with_the_constants_and_the_list(subs: list) -> None:
    gnb = y(CONF / "ueransim/gnb.yaml")
    assert (gnb["mcc"], gnb["mnc"], gnb["tac"], gnb["slices"]) == (C.MCC, C.MNC, C.TAC, [{"sst": C.SST}])
    ue_files = sorted((CONF / "ueransim").glob("ue*.yaml"))
    assert len(ue_files) == len(subs)
    for s in subs:
        ue = y(CONF / f"ueransim/ue{s.n}.yaml")
        assert ue["supi"] == s.supi and ue["supi"].startswith(f"imsi-{ue['mcc']}{ue['mnc']}")
        assert (ue["mcc"], ue["mnc"]) == (C.MCC, C.MNC)
        assert (ue["key"], ue["op"], ue["opType"], ue["amf"]) == (C.SUBSCRIBER_K, C.SUBSCRIBER_OPC, "OPC", C.AMF_FIELD)
        assert "protectionScheme" not in ue       # 3.2.6 always uses the null scheme (facts/ueransim.yaml)
        (sess,) = ue["sessions"]
        assert sess["apn"] == s.dnn == C.DNN and sess["slice"] == {"sst": C.SST}
        assert ue["gnbSearchList"] == [gnb["linkIp"]]


def test_provisioning_agrees_with_the_list(subs: list) -> None:
    docs = provisioned()
    assert [d["imsi"] for d in docs] == [s.imsi for s in subs]
    for d, s in zip(docs, subs, strict=True):
        assert d["security"] == {"k": C.SUBSCRIBER_K, "op": None, "opc": C.SUBSCRIBER_OPC, "amf": C.AMF_FIELD}
        (sl,) = d["slice"]
        assert sl["sst"] == C.SST and "sd" not in sl and sl["default_indicator"] is True
        (sess,) = sl["session"]
        # Open5GS reads only ue.ipv4 / ue.ipv6 (tests/lab/facts/open5gs.yaml: lib/dbi/subscription.c)
        assert sess["name"] == C.DNN and sess["ue"] == {"ipv4": s.ip}
        assert ipaddress.ip_address(s.ip) in ipaddress.ip_network(C.UE_POOL_V4)


def test_compose_has_one_ue_service_per_subscriber(subs: list) -> None:
    services = y(L.COMPOSE_DIR / "docker-compose.yaml")["services"]
    ues = sorted(n for n in services if re.fullmatch(r"ue\d+", n))
    assert ues == sorted(f"ue{s.n}" for s in subs)
    for s in subs:
        svc = services[f"ue{s.n}"]
        assert svc["labels"] == {"mec.supi": s.supi, "mec.ue-ip": s.ip}
        assert svc["command"][-1].endswith(f"/ue{s.n}.yaml") and svc["environment"]["UE_SUPI"] == s.supi
        assert s.ip in svc["healthcheck"]["test"][1]


def test_render_follows_a_new_subscriber_count(tmp_path: Path) -> None:
    five = generate(5)
    files = render.render_all(five)
    assert "compose/configs/ueransim/ue5.yaml" in files
    assert "ue5:" in files["compose/docker-compose.yaml"]
    written = render.write_all(tmp_path, five)
    assert len(written) == len(files)
    # shrinking removes the configs of UEs that are gone
    (tmp_path / "compose/configs/ueransim/ue9.yaml").write_text("stale\n")
    assert render.stray_ue_configs(tmp_path, generate(2))[-1].name == "ue9.yaml"
    render.write_all(tmp_path, generate(2))
    assert sorted(p.name for p in (tmp_path / "compose/configs/ueransim").glob("ue*.yaml")) == ["ue1.yaml", "ue2.yaml"]


@pytest.mark.parametrize("entries,needle", [
    ([], "non-empty"),
    ("x", "non-empty"),
    ([{"supi": "imsi-001010000000001", "ip": "10.45.0.2", "dnn": "internet", "snssai": "1"}], "imsi-99970"),
    ([{"supi": "imsi-999700000000001", "ip": "10.46.0.2", "dnn": "internet", "snssai": "1"}], "usable host"),
    ([{"supi": "imsi-999700000000001", "ip": "10.45.0.1", "dnn": "internet", "snssai": "1"}], "usable host"),
    ([{"supi": "imsi-999700000000001", "ip": "10.45.0.2", "dnn": "ims", "snssai": "1"}], "dnn"),
    ([{"supi": "imsi-999700000000001", "ip": "10.45.0.2", "dnn": "internet"}], "exactly the keys"),
    ([{"supi": "imsi-999700000000001", "ip": "10.45.0.2", "dnn": "internet", "snssai": "1"}] * 2, "duplicate"),
])
def test_bad_subscriber_lists_are_refused_with_a_reason(entries: object, needle: str) -> None:
    with pytest.raises(SubscriberError, match=needle):
        validate(entries)


def test_unreadable_subscriber_file(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("- supi: [unclosed\n")
    with pytest.raises(SubscriberError, match="not valid YAML"):
        load(bad)
    with pytest.raises(SubscriberError, match="cannot read"):
        load(tmp_path / "missing.yaml")
