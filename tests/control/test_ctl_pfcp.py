"""The PFCP decoder: against tshark on every PFCP frame of the captures, and hand-built cases."""

from __future__ import annotations

import collections
import struct

import pytest

from tests.conftest import CAPTURES
from tests.control import ctl_oracle as oracle
from tests.control.ctl_pcap import read_outer
from upf_tap.constants import PFCP_PORT
from upf_tap.control import pfcp
from upf_tap.control.correlator import ControlPlane

CAPS = ["open5gs-registration.pcapng", "oai-ueransim.pcap", "free5gc-registration.pcap",
        "oai-5greplay.pcap", "pfcp-scapy.pcap", "pfcp-ndpi.pcapng"]
CORES = CAPS[:4]


def _pfcp_frames(name: str) -> dict[int, bytes]:
    return {o.frame: o.udp_payload for o in read_outer(CAPTURES / name)
            if o.proto == 17 and PFCP_PORT in (o.sport, o.dport)}


@pytest.mark.skipif(oracle.TSHARK is None, reason="needs tshark")
@pytest.mark.parametrize("name", CAPS)
def test_header_fields_match_tshark(name: str) -> None:
    rows = oracle.fields(name, "udp && pfcp && !icmp", ("frame.number", "pfcp.msg_type", "pfcp.seqno", "pfcp.seid",
                                        "pfcp.f_seid.ipv4"))
    frames = _pfcp_frames(name)
    assert len(rows) == len(frames)
    for r in rows:
        msgs = pfcp.parse_messages(frames[int(r["frame.number"][0])])
        m = msgs[0]
        assert [str(m.msg_type)] == r["pfcp.msg_type"][:1]
        assert str(m.seq) == r["pfcp.seqno"][0]
        if m.seid is not None:
            assert int(r["pfcp.seid"][0], 16) == m.seid


@pytest.mark.skipif(oracle.TSHARK is None, reason="needs tshark")
@pytest.mark.parametrize("name", CORES)
def test_session_ies_match_tshark(name: str) -> None:
    # session messages only: node messages carry network instances in other IEs
    rows = oracle.fields(name, "udp && pfcp.msg_type >= 50 && !icmp", ("frame.number", "pfcp.ue_ip_addr_ipv4", "pfcp.f_teid.teid",
                                        "pfcp.outer_hdr_creation.teid", "pfcp.outer_hdr_creation.ipv4",
                                        "pfcp.network_instance", "pfcp.qfi_value", "pfcp.seid"))
    frames = _pfcp_frames(name)
    checked = 0
    for r in rows:
        (m,) = pfcp.parse_messages(frames[int(r["frame.number"][0])])
        f = pfcp.session_facts(m)
        pdrs = f.pdrs + f.created_pdrs
        assert sorted(p.ue_ipv4 for p in pdrs if p.ue_ipv4) == sorted(r["pfcp.ue_ip_addr_ipv4"])
        assert sorted(p.f_teid["teid"] for p in pdrs if p.f_teid and "teid" in p.f_teid) == \
            sorted(int(t, 16) for t in r["pfcp.f_teid.teid"])
        ohcs = [fa.ohc for fa in f.fars if fa.ohc]
        assert sorted(o["teid"] for o in ohcs) == sorted(int(t, 16) for t in r["pfcp.outer_hdr_creation.teid"])
        assert sorted(o["ipv4"] for o in ohcs) == sorted(r["pfcp.outer_hdr_creation.ipv4"])
        nis = [p.network_instance for p in pdrs] + [fa.network_instance for fa in f.fars]
        assert sorted(n for n in nis if n) == sorted(n for n in r["pfcp.network_instance"] if n.strip("\x00"))
        qfis = [q for p in pdrs for q in p.qfis] + f.qfis
        assert sorted(qfis) == sorted(int(q, 16) for q in r["pfcp.qfi_value"])
        if f.f_seid:
            assert f.f_seid[0] == int(r["pfcp.seid"][-1], 16)
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("name", ["pfcp-scapy.pcap", "pfcp-ndpi.pcapng"])
def test_fuzzed_captures_never_raise_past_the_decoder(name: str) -> None:
    """scapy's and nDPI's PFCP samples are random field values: only PfcpError may come out."""
    for payload in _pfcp_frames(name).values():
        try:
            for m in pfcp.parse_messages(payload):
                pfcp.session_facts(m)
        except pfcp.PfcpError:
            pass


# ------------------------------------------------------------------ hand-built messages

def ie(t: int, body: bytes) -> bytes:
    return struct.pack("!HH", t, len(body)) + body


def msg(mtype: int, seq: int, body: bytes, seid: int | None = 0, follow: bool = False) -> bytes:
    flags = 0x20 | (0x01 if seid is not None else 0) | (0x04 if follow else 0)
    hdr = struct.pack("!QI", seid, seq << 8) if seid is not None else struct.pack("!I", seq << 8)
    return struct.pack("!BBH", flags, mtype, len(hdr) + len(body)) + hdr + body


def f_seid(seid: int, ip: bytes) -> bytes:
    return ie(pfcp.IE_F_SEID, b"\x02" + struct.pack("!Q", seid) + ip)


CAUSE_OK = ie(pfcp.IE_CAUSE, b"\x01")
SMF, UPF = "192.0.2.1", "192.0.2.2"


def est_request(seq: int, cp_seid: int, ue_ip: bytes, fteid: bytes | None, extra: bytes = b"") -> bytes:
    pdi = ie(pfcp.IE_SOURCE_INTERFACE, b"\x00") + ie(pfcp.IE_UE_IP_ADDRESS, b"\x06" + ue_ip)
    pdi += ie(pfcp.IE_NETWORK_INSTANCE, b"\x08internet")
    pdi += ie(pfcp.IE_F_TEID, fteid if fteid is not None else b"\x05")   # V4 + CH: the UPF chooses
    pdr = ie(pfcp.IE_PDR_ID, b"\x00\x01") + ie(pfcp.IE_PDI, pdi) + ie(pfcp.IE_FAR_ID, b"\x00\x00\x00\x01")
    far = ie(pfcp.IE_FAR_ID, b"\x00\x00\x00\x02") + ie(pfcp.IE_FORWARDING_PARAMETERS,
                                                       ie(pfcp.IE_DESTINATION_INTERFACE, b"\x00"))
    qer = ie(pfcp.IE_QER_ID, b"\x00\x00\x00\x01") + ie(pfcp.IE_QFI, b"\x09")
    body = ie(pfcp.IE_NODE_ID, b"\x00" + bytes([192, 0, 2, 1])) + f_seid(cp_seid, bytes([192, 0, 2, 1]))
    body += ie(pfcp.IE_CREATE_PDR, pdr) + ie(pfcp.IE_CREATE_FAR, far) + ie(pfcp.IE_CREATE_QER, qer) + extra
    return msg(pfcp.SESS_EST_REQ, seq, body, seid=0)


def est_response(seq: int, cp_seid: int, up_seid: int, created_teid: int | None = None,
                 cause: bytes = CAUSE_OK) -> bytes:
    body = cause + f_seid(up_seid, bytes([192, 0, 2, 2]))
    if created_teid is not None:
        ft = b"\x01" + struct.pack("!I", created_teid) + bytes([198, 51, 100, 2])
        body += ie(pfcp.IE_CREATED_PDR, ie(pfcp.IE_PDR_ID, b"\x00\x01") + ie(pfcp.IE_F_TEID, ft))
    return msg(pfcp.SESS_EST_RESP, seq, body, seid=cp_seid)


def mod_request(seq: int, up_seid: int, dl_teid: int, gnb: bytes) -> bytes:
    ohc = ie(pfcp.IE_OUTER_HEADER_CREATION, b"\x01\x00" + struct.pack("!I", dl_teid) + gnb)
    upd = ie(pfcp.IE_UPDATE_FORWARDING_PARAMETERS, ie(pfcp.IE_DESTINATION_INTERFACE, b"\x00") + ohc)
    return msg(pfcp.SESS_MOD_REQ, seq, ie(pfcp.IE_UPDATE_FAR, ie(pfcp.IE_FAR_ID, b"\x00\x00\x00\x02") + upd),
               seid=up_seid)


def mod_response(seq: int, cp_seid: int) -> bytes:
    return msg(pfcp.SESS_MOD_RESP, seq, CAUSE_OK, seid=cp_seid)


def new_cp() -> tuple[ControlPlane, list[dict], collections.Counter[str]]:
    events: list[dict] = []
    stats: collections.Counter[str] = collections.Counter()
    return ControlPlane("t", events.append, stats), events, stats


def test_choose_teid_and_created_pdr_then_modification() -> None:
    cp, events, _ = new_cp()
    cp.on_pfcp(1, SMF, 8805, UPF, 8805, est_request(7, 0x11, bytes([10, 45, 0, 9]), None))
    assert events == []                                    # nothing until the response
    cp.on_pfcp(2, UPF, 8805, SMF, 8805, est_response(7, 0x11, 0x22, created_teid=0xABCD))
    (up,) = events
    assert up["kind"] == "session.up" and up["point"] == "n4"
    assert up["app"]["seid"] == 0x22 and up["app"]["cp_seid"] == 0x11
    assert (up["app"]["ue_ip"], up["app"]["ul_teid"], up["app"]["upf_ip"]) == ("10.45.0.9", 0xABCD, "198.51.100.2")
    assert up["app"]["qfis"] == [9] and up["ue"]["qfi"] == 9 and up["ue"]["dnn"] == "internet"
    assert cp.ue_for_teid(0xABCD, "198.51.100.2")["ip"] == "10.45.0.9"
    cp.on_pfcp(3, SMF, 8805, UPF, 8805, mod_request(8, 0x22, 0x77, bytes([198, 51, 100, 9])))
    cp.on_pfcp(4, UPF, 8805, SMF, 8805, mod_response(8, 0x11))
    mod = events[-1]
    assert mod["kind"] == "session.modify"
    assert (mod["app"]["dl_teid"], mod["app"]["gnb_ip"]) == (0x77, "198.51.100.9")
    assert mod["app"]["changed"] == ["dl_teid", "gnb_ip"]
    assert cp.ue_for_teid(0x77, "198.51.100.9")["ip"] == "10.45.0.9"
    cp.on_pfcp(5, SMF, 8805, UPF, 8805, msg(pfcp.SESS_DEL_REQ, 9, b"", seid=0x22))
    cp.on_pfcp(6, UPF, 8805, SMF, 8805, msg(pfcp.SESS_DEL_RESP, 9, CAUSE_OK, seid=0x11))
    assert events[-1]["kind"] == "session.down" and events[-1]["app"]["seid"] == 0x22
    assert cp.ue_for_teid(0xABCD, "198.51.100.2") is None
    assert cp.ue_for_ip("10.45.0.9") is None


def test_rejected_unanswered_and_stray_responses_make_no_session() -> None:
    cp, events, stats = new_cp()
    cp.on_pfcp(1, SMF, 8805, UPF, 8805, est_request(1, 1, bytes([10, 45, 0, 2]), b"\x01" + bytes(4) + bytes(4)))
    cp.on_pfcp(2, UPF, 8805, SMF, 8805, est_response(1, 1, 2, cause=ie(pfcp.IE_CAUSE, b"\x40")))
    cp.on_pfcp(3, SMF, 8805, UPF, 8805, est_request(2, 3, bytes([10, 45, 0, 3]), None))
    cp.on_pfcp(4, UPF, 8805, SMF, 8805, est_response(99, 3, 4))         # wrong sequence number
    cp.on_pfcp(5, SMF, 8805, UPF, 8805, est_response(2, 3, 4))          # right number, wrong sender
    cp.flush(6)
    assert events == []
    assert stats["pfcp.rejected"] == 1 and stats["pfcp.unmatched_response"] == 2
    assert stats["pfcp.unanswered"] >= 1


def test_user_id_gives_the_supi_and_follow_on_messages_are_read() -> None:
    cp, events, _ = new_cp()
    imsi = bytes([0x99, 0x79, 0x00, 0x00, 0x00, 0x00, 0x00, 0xF1])     # TBCD 999700000000001
    user = ie(pfcp.IE_USER_ID, b"\x01" + bytes([len(imsi)]) + imsi)
    req = est_request(5, 0x31, bytes([10, 45, 0, 2]), b"\x01" + struct.pack("!I", 5) + bytes([198, 51, 100, 2]),
                      extra=user)
    hb = msg(pfcp.HEARTBEAT_REQ, 6, ie(pfcp.IE_RECOVERY_TIME_STAMP, bytes(4)), seid=None, follow=True)
    cp.on_pfcp(1, SMF, 8805, UPF, 8805, hb + req)          # FO flag: two messages in one datagram
    cp.on_pfcp(2, UPF, 8805, SMF, 8805, est_response(5, 0x31, 0x41))
    (up,) = events
    assert up["ue"]["supi"] == "imsi-999700000000001"
    assert cp.ue_for_ip("10.45.0.2")["supi"] == "imsi-999700000000001"


def test_ie_decoders() -> None:
    assert pfcp.decode_network_instance(b"\x06access\x03oai\x03org") == "access.oai.org"
    assert pfcp.decode_network_instance(b"internet") == "internet"
    assert pfcp.decode_network_instance(b"\x00") is None
    buf = b"\x02" + bytes([10, 0, 0, 1])
    assert pfcp.decode_ue_ip(buf, 0, len(buf)) == ("10.0.0.1", None)
    ft = b"\x0c\x07"                                       # CH + CHID, choose id 7
    assert pfcp.decode_f_teid(ft, 0, len(ft)) == {"choose": True, "choose_id": 7}
    ohc = b"\x02\x00" + struct.pack("!I", 3) + bytes(15) + b"\x01"
    assert pfcp.decode_outer_header_creation(ohc, 0, len(ohc)) == {"gtpu": True, "teid": 3, "ipv6": "::1"}
    ent = struct.pack("!HHH", 0x8001, 4, 18681) + b"ab"   # enterprise IE: id skipped
    assert pfcp.walk_ies(ent, 0, len(ent)) == [(0x8001, 6, 8)]
    for bad in (b"", b"\x20\x32\x00", b"\x40\x01\x00\x04\x00\x00\x01\x00", b"\x21\x32\x00\x20" + bytes(12),
                b"\x20\x01\x00\x08\x00\x00\x01\x00\x00\x13\x00\x05\x01"):
        with pytest.raises(pfcp.PfcpError):
            for m in pfcp.parse_messages(bad):
                pfcp.session_facts(m)


def test_a_restarted_peer_ends_its_sessions() -> None:
    cp, events, stats = new_cp()

    def assoc(seq: int, smf_ts: int, upf_ts: int, mtype: int = pfcp.ASSOC_SETUP_REQ) -> None:
        def body(ts: int) -> bytes:
            return ie(pfcp.IE_RECOVERY_TIME_STAMP, struct.pack("!I", ts))
        cp.on_pfcp(seq, SMF, 8805, UPF, 8805, msg(mtype, seq, body(smf_ts), seid=None))
        cp.on_pfcp(seq, UPF, 8805, SMF, 8805, msg(mtype + 1, seq, CAUSE_OK + body(upf_ts), seid=None))

    assoc(1, 1000, 5000)
    cp.on_pfcp(2, SMF, 8805, UPF, 8805, est_request(2, 1, bytes([10, 45, 0, 2]), None))
    cp.on_pfcp(3, UPF, 8805, SMF, 8805, est_response(2, 1, 2, created_teid=9))
    assoc(4, 1000, 5000)                                    # same time stamps: nothing happens
    assoc(5, 1001, 5001, pfcp.HEARTBEAT_REQ)                # heartbeats are not trusted for this
    assert [e["kind"] for e in events] == ["session.up"]
    assoc(6, 1000, 7000)                                    # the UPF came back with a new one
    down = events[-1]
    assert down["kind"] == "session.down" and down["app"]["reason"] == "association"
    assert stats["pfcp.peer_restart"] == 1
    assert cp.ue_for_teid(9, "198.51.100.2") is None
