"""ControlPlane on the real 5G captures, checked against tshark's own decoding."""

from __future__ import annotations

import collections
import json

import jsonschema
import pytest

from tests.conftest import CAPTURES, SCHEMAS
from tests.control import ctl_oracle as oracle
from tests.control.ctl_pcap import read_outer
from tests.control.ctl_replay import feed, replay
from upf_tap.control.correlator import ControlPlane

pytestmark = pytest.mark.skipif(oracle.TSHARK is None, reason="needs tshark as the oracle")

CORES = ["open5gs-registration.pcapng", "oai-ueransim.pcap", "free5gc-registration.pcap", "oai-5greplay.pcap"]
PFCP_ONLY = ["pfcp-scapy.pcap", "pfcp-ndpi.pcapng"]


@pytest.mark.parametrize("name", CORES + PFCP_ONLY)
def test_one_session_up_per_established_pfcp_session(name: str) -> None:
    expected = oracle.pfcp_established(name)
    got = [(e["app"].get("ue_ip"), e["app"].get("seid")) for e in replay(name).kinds("session.up")]
    assert got == expected
    if name in CORES:
        assert expected, "the capture has PFCP sessions"


@pytest.mark.parametrize("name", CORES)
def test_sessions_carry_what_n2_says(name: str) -> None:
    r = replay(name)
    supis = oracle.supis(name)
    # every session that saw its N2 side (a modify after PDU Session Resource Setup) has a SUPI
    modifies = [e for e in r.kinds("session.modify") if "dl_teid" in e["app"]]
    assert modifies
    for e in modifies:
        assert e["ue"].get("supi") in supis, e
        assert e["ue"]["ip"] == e["app"]["ue_ip"]


@pytest.mark.parametrize("name", CORES)
def test_learned_supis_equal_tsharks(name: str) -> None:
    learned = {e["ue"]["supi"] for e in replay(name).events if e["point"] == "n2" and "supi" in e.get("ue", {})}
    assert learned == oracle.supis(name)


@pytest.mark.parametrize("name", CORES)
def test_every_gtp_packet_resolves_to_the_right_ue(name: str) -> None:
    """Each G-PDU's TEID gives its UE: the inner address matches and the SUPI is tshark's."""
    r = replay(name)
    got = {frame: ue for frame, _dst, _teid, ue in r.gtp}
    suci_frames = oracle.fields(name, "sctp && nas_5gs.mm.suci.msin",
                                ("frame.number", "nas_5gs.mm.suci.msin", "e212.mcc", "e212.mnc"),
                                oracle.NULL_DECIPHER)
    packets = oracle.gtp_packets(name)
    assert packets
    for frame, _dst, _teid, inner_src, inner_dst in packets:
        ue = got[frame]
        assert ue is not None, f"frame {frame}: no UE"
        assert ue["ip"] in (inner_src, inner_dst), (frame, ue)
        seen = {f"imsi-{r['e212.mcc'][-1]}{r['e212.mnc'][-1].zfill(2)}{r['nas_5gs.mm.suci.msin'][0]}"
                for r in suci_frames if int(r["frame.number"][0]) < frame}
        if len(seen) == 1:
            assert ue["supi"] == next(iter(seen)), frame
        else:
            assert ue["supi"] in seen, frame


@pytest.mark.parametrize("name", CORES)
def test_pdu_sessions_match_ngap(name: str) -> None:
    r = replay(name)
    setups = r.kinds("pdu_session.setup")
    assert setups
    teids = oracle.ngap_teids(name)
    for e in setups:
        assert e["app"]["ul_teid"] in teids and e["app"]["dl_teid"] in teids
    # UE addresses from unciphered PDU Session Establishment Accepts: exactly tshark's
    assert r.n2_ips == oracle.ngap_pdu_addresses(name)


def test_ciphered_nas_is_counted_not_guessed() -> None:
    r = replay("oai-ueransim.pcap")    # OAI picks NEA1 in its Security Mode Command
    assert r.stats["nas.ciphered"] > 0
    setup = r.kinds("pdu_session.setup")[0]
    # the UE IP comes from PFCP through the UL TEID join, not from the (ciphered) NAS
    assert setup["app"]["ue_ip"] == "12.1.1.2"
    assert setup["ue"]["supi"] == "imsi-208950000000031"


def test_duplicated_pfcp_gives_one_session() -> None:
    r = replay("oai-ueransim.pcap")    # every PFCP datagram was captured twice
    assert r.stats["pfcp.duplicate_response"] > 0
    assert len(r.kinds("session.up")) == 1


def test_deleted_sessions_are_reported_and_forgotten() -> None:
    r = replay("open5gs-registration.pcapng")
    downs = r.kinds("session.down")
    dels = oracle.fields("open5gs-registration.pcapng", "pfcp.msg_type == 55 && pfcp.cause == 1", ("frame.number",))
    assert len(downs) == len(dels)
    cp = r.control
    assert cp is not None
    live = {s.up_seid for s in cp.n4.sessions()}
    for e in downs:
        assert e["app"]["seid"] not in live


@pytest.mark.parametrize("name", CORES + PFCP_ONLY)
def test_events_follow_the_schema(name: str) -> None:
    validator = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "app-event.schema.json").read_text()))
    for e in replay(name).events:
        validator.validate(e)
        json.dumps(e)


def test_reused_dl_teid_goes_to_the_newest_ue_and_the_ue_ip_breaks_ties() -> None:
    """Open5GS frame 216: DL TEID 1 at the gNB now belongs to 10.45.0.3 (N2 said so at frame 212),
    while PFCP still has it on 10.45.0.2's session (the Modification's response is frame 217)."""
    cp = ControlPlane("t", lambda e: None, collections.Counter())
    feed(cp, "open5gs-registration.pcapng", until=216)
    assert cp.ue_for_teid(1, "127.0.0.2")["ip"] == "10.45.0.3"
    assert cp.ue_for_teid(1, "127.0.0.2", ue_ip="10.45.0.2")["ip"] == "10.45.0.2"
    assert cp.ue_for_teid(1, "127.0.0.7")["ip"] == "10.45.0.2"          # UL TEIDs are not shared
    assert cp.ue_for_teid(2, "127.0.0.7")["ip"] == "10.45.0.3"


def test_an_n4_tap_started_late_picks_sessions_up_at_their_next_modification() -> None:
    """N2 seen all along, N4 only after the first session's establishment (Open5GS frames 119/122)."""
    events: list[dict] = []
    cp = ControlPlane("t", events.append, collections.Counter())
    for o in read_outer(CAPTURES / "open5gs-registration.pcapng"):
        if o.frame >= 140:
            break
        if o.proto == 132:
            cp.on_sctp(o.ts_ns, o.src, o.dst, o.l4)
        elif o.proto == 17 and 8805 in (o.sport, o.dport) and o.frame > 122:
            cp.on_pfcp(o.ts_ns, o.src, o.sport, o.dst, o.dport, o.udp_payload)
    n4 = [e for e in events if e["point"] == "n4"]
    assert n4[0]["kind"] == "session.modify" and n4[0]["app"]["partial"] is True
    assert n4[0]["app"]["seid"] == 1 and n4[0]["app"]["dl_teid"] == 1
    # N2 (PDU Session Resource Setup, frames 127/131) gives the rest through the DL tunnel
    assert n4[0]["ue"]["supi"] == "imsi-901700000021309" and n4[0]["ue"]["ip"] == "10.45.0.2"
