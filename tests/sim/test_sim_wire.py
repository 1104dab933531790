"""The sim's GTP-U and PFCP encoders against tshark, the UPF's PFCP logic on real message bytes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from testbed.corpus import tshark
from testbed.sim import gtpu, pfcp
from testbed.sim.upf import Upf
from upf_tap.constants import GTPU_PORT, PFCP_PORT

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

SMF, UPF, GNB, UPF_N3 = "192.168.104.10", "192.168.104.20", "192.168.100.10", "192.168.100.20"


def tshark_fields(pcap: Path, fields: list[str], dfilter: str = "") -> list[dict[str, str]]:
    return tshark.joined(tshark.fields(pcap, fields, dfilter))


def inner(src: str, dst: str) -> bytes:
    return bytes(IP(src=src, dst=dst) / ICMP(id=7, seq=1) / (b"x" * 40))


def test_gpdu_round_trip_and_tshark(tmp_path: Path) -> None:
    ul = gtpu.encode_gpdu(0x1, inner("10.45.0.2", "10.200.0.10"), 1, gtpu.PDU_TYPE_UL)
    dl = gtpu.encode_gpdu(0x100, inner("10.200.0.10", "10.45.0.2"), 9, gtpu.PDU_TYPE_DL)
    for data, teid, qfi, typ in ((ul, 1, 1, 1), (dl, 0x100, 9, 0)):
        msg = gtpu.decode(data)
        assert (msg.msg_type, msg.teid, msg.qfi, msg.pdu_type) == (255, teid, qfi, typ)
        assert IP(msg.payload)[ICMP].id == 7
    pcap = tmp_path / "n3.pcap"
    wrpcap(str(pcap), [Ether() / IP(src=GNB, dst=UPF_N3) / UDP(sport=GTPU_PORT, dport=GTPU_PORT) / ul,
                       Ether() / IP(src=UPF_N3, dst=GNB) / UDP(sport=GTPU_PORT, dport=GTPU_PORT) / dl])
    rows = tshark_fields(pcap, ["gtp.teid", "gtp.ext_hdr.pdu_ses_con.pdu_type",
                                "gtp.ext_hdr.pdu_ses_con.qos_flow_id", "ip.src", "_ws.expert"])
    assert [(r["gtp.teid"], r["gtp.ext_hdr.pdu_ses_con.pdu_type"], r["gtp.ext_hdr.pdu_ses_con.qos_flow_id"])
            for r in rows] == [("0x00000001", "1", "1"), ("0x00000100", "0", "9")]
    assert rows[0]["ip.src"] == f"{GNB},10.45.0.2"   # tshark sees the inner packet too
    assert all(r["_ws.expert"] == "" for r in rows)


def test_echo_response_answers_request() -> None:
    msg = gtpu.decode(gtpu.encode_echo_response(gtpu.decode(gtpu.encode_echo_request(42)).seq or 0))
    assert (msg.msg_type, msg.seq) == (2, 42)


@pytest.mark.parametrize("bad", [b"", b"\x30\xff\x00", b"\x50\xff\x00\x00\x00\x00\x00\x01",
                                 b"\x34\xff\x00\x08\x00\x00\x00\x01\x00\x00\x00\x85\x00\x00\x00\x00",
                                 b"\x34\xff\x00\x40\x00\x00\x00\x01"])
def test_gtpu_malformed_is_an_error(bad: bytes) -> None:
    with pytest.raises(gtpu.GtpuError):
        gtpu.decode(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_gtpu_decode_never_crashes(data: bytes) -> None:
    try:
        gtpu.decode(data)
    except gtpu.GtpuError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_pfcp_parse_never_crashes(data: bytes) -> None:
    try:
        pfcp.parse(data)
    except pfcp.PfcpError:
        pass


def test_upf_pfcp_life_cycle_on_real_bytes(tmp_path: Path) -> None:
    """The UPF's N4 logic: association first, F-TEID allocation (CH), modify, delete, errors by cause."""
    upf = Upf(UPF_N3, UPF, "ogstun")
    smf = (SMF, PFCP_PORT)
    est = pfcp.session_establishment_request(
        2, cp_seid=7, smf_ip=SMF, ue_ip="10.45.0.2", gnb_ip=GNB, gnb_teid=0x100, qfi=1, dnn="internet",
        imsi="999700000000001")
    frames: list[tuple[str, str, bytes]] = []

    def exchange(req: bytes) -> bytes:
        answer = upf.handle_pfcp(req, smf)
        assert answer is not None
        frames.extend([(SMF, UPF, req), (UPF, SMF, answer)])
        return answer

    assert pfcp.cause_of(pfcp.parse(exchange(est))) == pfcp.CAUSE_NO_ASSOCIATION
    resp = pfcp.parse(exchange(pfcp.association_setup_request(1, SMF, 1)))
    assert pfcp.cause_of(resp) == pfcp.CAUSE_ACCEPTED
    resp = pfcp.parse(exchange(est))
    assert pfcp.cause_of(resp) == pfcp.CAUSE_ACCEPTED and int(resp.seid) == 7
    (summary,) = [s.summary() for s in upf.sessions.values()]
    assert summary == {"cp_seid": 7, "up_seid": 1, "ue_ip": "10.45.0.2", "ul_teid": 1, "dl_teid": 0x100,
                       "gnb_ip": GNB, "qfi": 1}
    # the same UE IP twice is refused: the downlink would be ambiguous
    dup = pfcp.session_establishment_request(
        3, cp_seid=8, smf_ip=SMF, ue_ip="10.45.0.2", gnb_ip=GNB, gnb_teid=0x101, qfi=1, dnn="internet")
    assert pfcp.cause_of(pfcp.parse(exchange(dup))) == pfcp.CAUSE_MANDATORY_IE_INCORRECT
    mod = pfcp.session_modification_request(4, up_seid=1, gnb_ip=GNB, gnb_teid=0x200, qfi=5)
    assert pfcp.cause_of(pfcp.parse(exchange(mod))) == pfcp.CAUSE_ACCEPTED
    assert next(iter(upf.sessions.values())).summary()["dl_teid"] == 0x200
    assert next(iter(upf.sessions.values())).summary()["qfi"] == 5
    bad_mod = pfcp.session_modification_request(5, up_seid=99, qfi=2)
    assert pfcp.cause_of(pfcp.parse(exchange(bad_mod))) == pfcp.CAUSE_SESSION_NOT_FOUND
    assert pfcp.cause_of(pfcp.parse(exchange(pfcp.session_deletion_request(6, up_seid=1)))) == pfcp.CAUSE_ACCEPTED
    assert upf.sessions == {} and upf.by_teid == {} and upf.by_ue_ip == {}
    assert upf.handle_pfcp(b"\x21\x05\x00\x10garbage", smf) is None
    assert upf.counters["pfcp_bad"] == 1

    # tshark reads the whole exchange without complaint and finds the rules where 3GPP puts them
    pcap = tmp_path / "n4.pcap"
    wrpcap(str(pcap), [Ether() / IP(src=s, dst=d) / UDP(sport=PFCP_PORT, dport=PFCP_PORT) / raw
                       for s, d, raw in frames])
    rows = tshark_fields(pcap, ["pfcp.msg_type", "pfcp.seid", "pfcp.ue_ip_addr_ipv4", "pfcp.f_teid.teid",
                                "pfcp.outer_hdr_creation.teid", "pfcp.cause", "e212.imsi", "_ws.expert"])
    assert all(r["_ws.expert"] == "" for r in rows), json.dumps(rows, indent=1)
    est_rsp = [r for r in rows if r["pfcp.msg_type"] == "51" and r["pfcp.cause"] == "1"]
    assert est_rsp[0]["pfcp.f_teid.teid"] == "0x00000001"
    est_req = [r for r in rows if r["pfcp.msg_type"] == "50"]
    assert est_req[0]["pfcp.ue_ip_addr_ipv4"] == "10.45.0.2,10.45.0.2"   # UL PDR (source) and DL PDR (dest)
    assert est_req[0]["pfcp.outer_hdr_creation.teid"] == "0x00000100"
    assert est_req[0]["e212.imsi"] == "999700000000001"


def test_tbcd() -> None:
    assert pfcp.tbcd("999700000000001").hex() == "99790000000000f1"
    assert pfcp.tbcd("1234") == b"\x21\x43"
    with pytest.raises(ValueError):
        pfcp.tbcd("12a")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=16, max_value=400), st.integers(0, 255)), min_size=1, max_size=6))
def test_upf_survives_mutated_establishment(mutations: list[tuple[int, int]]) -> None:
    """Flipped bytes inside a well-framed request: an answer with a cause or a counted drop, no exception."""
    upf = Upf(UPF_N3, UPF, "ogstun")
    upf.handle_pfcp(pfcp.association_setup_request(1, SMF, 1), (SMF, PFCP_PORT))
    data = bytearray(pfcp.session_establishment_request(
        2, cp_seid=7, smf_ip=SMF, ue_ip="10.45.0.2", gnb_ip=GNB, gnb_teid=0x100, qfi=1, dnn="internet"))
    for pos, val in mutations:
        data[pos % len(data)] = val
    answer = upf.handle_pfcp(bytes(data), (SMF, PFCP_PORT))
    if answer is None:
        assert upf.counters["pfcp_bad"] == 1
    else:
        pfcp.parse(answer)
