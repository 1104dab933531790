"""Mobility as a real core shows it: the End Marker, a PFCP modification that moves the DL
tunnel, NGAP path switch and N2 handover, and the serving gNB (and cell) on user events.

The captures are built here, each message the way TS 29.281 / 29.244 / 38.413 lay it out:
GTP-U by hand, PFCP with scapy's contrib pfcp, NGAP with pycrate's NGAP (aligned PER), all
in Ethernet/IPv4 (SCTP for NGAP) in a pcap read with `upf-tap read`. tshark is the oracle:
it decodes the same frames independently and the events must carry its values. A public
capture of a real NGAP path switch or handover was searched for (free5GC, Open5GS,
Wireshark's sample captures, 5Greplay, 5g-trace-visualizer) and none was found; see
docs/tap.md, "Mobility".
"""

from __future__ import annotations

import collections
import ipaddress
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pycrate_asn1dir import NGAP
from scapy.contrib import pfcp as sp
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkData
from scapy.packet import Packet
from scapy.utils import wrpcap

from tests.conftest import SCHEMAS
from tests.control import ctl_oracle as oracle
from upf_tap.control import ngap
from upf_tap.control.correlator import ControlPlane
from upf_tap.events import identify

SCHEMA = json.loads((SCHEMAS / "app-event.schema.json").read_text())
needs_tshark = pytest.mark.skipif(oracle.TSHARK is None, reason="needs tshark as the oracle")

# addresses: N2 (gNB <-> AMF), N3 (gNB <-> UPF), N4 (SMF <-> UPF)
GNB1_N2, GNB2_N2, AMF_N2 = "10.0.2.1", "10.0.2.2", "10.0.2.100"
GNB1_N3, GNB2_N3, UPF_N3 = "10.0.4.1", "10.0.4.2", "10.0.3.100"
SMF_N4, UPF_N4 = "10.0.5.1", "10.0.5.100"
UE_IP, DN = "10.45.0.2", "10.200.0.10"
UL_TEID, DL_TEID1, DL_TEID2 = 0x100, 0x1001, 0x2002
SUPI = "imsi-999700000000001"
PLMN = bytes.fromhex("99f907")            # 999/70 in TBCD (TS 24.008 §10.5.1.13)
CELL1, CELL2, TAC1, TAC2 = 0x10, 0x20, 1, 2
# Registration Request with a null-scheme SUCI for 999 70 0000000001 (TS 24.501 §9.11.3.4)
REGISTRATION_REQUEST = bytes.fromhex("7e004179000d0199f907f0ff000000000000102e02f0f0")


# ------------------------------------------------------------------ NGAP, encoded with pycrate

def _aper(type_name: str, value: Any) -> bytes:
    t = getattr(NGAP.NGAP_IEs, type_name.replace("-", "_"))
    t.set_val(value)
    return t.to_aper()


def _pdu(outcome: str, proc: int, name: str, ies: list[tuple[int, str, Any]]) -> bytes:
    pdu = NGAP.NGAP_PDU_Descriptions.NGAP_PDU
    pdu.set_val((outcome, {"procedureCode": proc, "criticality": "reject", "value": (name, {"protocolIEs": [
        {"id": i, "criticality": "reject", "value": (n, v)} for i, n, v in ies]})}))
    return pdu.to_aper()


def _tla(ip: str) -> tuple[int, int]:
    return int(ipaddress.IPv4Address(ip)), 32


def _gtp_tunnel(ip: str, teid: int) -> tuple[str, dict[str, Any]]:
    return "gTPTunnel", {"transportLayerAddress": _tla(ip), "gTP-TEID": teid.to_bytes(4, "big")}


def _uli(nci: int, tac: int) -> tuple[str, dict[str, Any]]:
    return "userLocationInformationNR", {"nR-CGI": {"pLMNIdentity": PLMN, "nRCellIdentity": (nci, 36)},
                                         "tAI": {"pLMNIdentity": PLMN, "tAC": tac.to_bytes(3, "big")}}


SNSSAI = {"sST": b"\x01"}
SEC_CAPS = {"nRencryptionAlgorithms": (0xC000, 16), "nRintegrityProtectionAlgorithms": (0xC000, 16),
            "eUTRAencryptionAlgorithms": (0, 16), "eUTRAintegrityProtectionAlgorithms": (0, 16)}
SEC_CONTEXT = {"nextHopChainingCount": 1, "nextHopNH": (0, 256)}
ALLOWED_NSSAI = [{"s-NSSAI": SNSSAI}]
QOS_FLOW = {"qosFlowIdentifier": 1, "qosFlowLevelQosParameters": {
    "qosCharacteristics": ("nonDynamic5QI", {"fiveQI": 9}),
    "allocationAndRetentionPriority": {"priorityLevelARP": 8,
                                       "pre-emptionCapability": "shall-not-trigger-pre-emption",
                                       "pre-emptionVulnerability": "not-pre-emptable"}}}


def _setup_request_transfer(upf_ip: str, teid: int) -> bytes:
    return _aper("PDUSessionResourceSetupRequestTransfer", {"protocolIEs": [
        {"id": 139, "criticality": "reject", "value": ("UPTransportLayerInformation", _gtp_tunnel(upf_ip, teid))},
        {"id": 134, "criticality": "reject", "value": ("PDUSessionType", "ipv4")},
        {"id": 136, "criticality": "reject", "value": ("QosFlowSetupRequestList", [QOS_FLOW])}]})


def initial_ue_message(ran: int) -> bytes:
    return _pdu("initiatingMessage", 15, "InitialUEMessage", [
        (85, "RAN-UE-NGAP-ID", ran), (38, "NAS-PDU", REGISTRATION_REQUEST),
        (121, "UserLocationInformation", _uli(CELL1, TAC1)), (90, "RRCEstablishmentCause", "mo-Signalling")])


def setup_request(amf: int, ran: int) -> bytes:
    return _pdu("initiatingMessage", 29, "PDUSessionResourceSetupRequest", [
        (10, "AMF-UE-NGAP-ID", amf), (85, "RAN-UE-NGAP-ID", ran),
        (74, "PDUSessionResourceSetupListSUReq", [{
            "pDUSessionID": 1, "s-NSSAI": SNSSAI,
            "pDUSessionResourceSetupRequestTransfer": _setup_request_transfer(UPF_N3, UL_TEID)}])])


def setup_response(amf: int, ran: int) -> bytes:
    tr = _aper("PDUSessionResourceSetupResponseTransfer", {"dLQosFlowPerTNLInformation": {
        "uPTransportLayerInformation": _gtp_tunnel(GNB1_N3, DL_TEID1),
        "associatedQosFlowList": [{"qosFlowIdentifier": 1}]}})
    return _pdu("successfulOutcome", 29, "PDUSessionResourceSetupResponse", [
        (10, "AMF-UE-NGAP-ID", amf), (85, "RAN-UE-NGAP-ID", ran),
        (75, "PDUSessionResourceSetupListSURes", [{"pDUSessionID": 1,
                                                   "pDUSessionResourceSetupResponseTransfer": tr}])])


def path_switch_request(ran: int, source_amf: int, gnb_n3: str, teid: int) -> bytes:
    tr = _aper("PathSwitchRequestTransfer", {"dL-NGU-UP-TNLInformation": _gtp_tunnel(gnb_n3, teid),
                                             "qosFlowAcceptedList": [{"qosFlowIdentifier": 1}]})
    return _pdu("initiatingMessage", 25, "PathSwitchRequest", [
        (85, "RAN-UE-NGAP-ID", ran), (100, "AMF-UE-NGAP-ID", source_amf),
        (121, "UserLocationInformation", _uli(CELL2, TAC2)), (119, "UESecurityCapabilities", SEC_CAPS),
        (76, "PDUSessionResourceToBeSwitchedDLList", [{"pDUSessionID": 1, "pathSwitchRequestTransfer": tr}])])


def path_switch_ack(amf: int, ran: int) -> bytes:
    tr = _aper("PathSwitchRequestAcknowledgeTransfer", {})
    return _pdu("successfulOutcome", 25, "PathSwitchRequestAcknowledge", [
        (10, "AMF-UE-NGAP-ID", amf), (85, "RAN-UE-NGAP-ID", ran), (93, "SecurityContext", SEC_CONTEXT),
        (77, "PDUSessionResourceSwitchedList", [{"pDUSessionID": 1, "pathSwitchRequestAcknowledgeTransfer": tr}]),
        (0, "AllowedNSSAI", ALLOWED_NSSAI)])


def path_switch_failure(amf: int, ran: int) -> bytes:
    tr = _aper("PathSwitchRequestUnsuccessfulTransfer", {"cause": ("radioNetwork", "unspecified")})
    return _pdu("unsuccessfulOutcome", 25, "PathSwitchRequestFailure", [
        (10, "AMF-UE-NGAP-ID", amf), (85, "RAN-UE-NGAP-ID", ran),
        (69, "PDUSessionResourceReleasedListPSFail", [{"pDUSessionID": 1,
                                                       "pathSwitchRequestUnsuccessfulTransfer": tr}])])


def _source_to_target() -> bytes:
    return _aper("SourceNGRANNode-ToTargetNGRANNode-TransparentContainer", {
        "rRCContainer": b"\x00",
        "targetCell-ID": ("nR-CGI", {"pLMNIdentity": PLMN, "nRCellIdentity": (CELL2, 36)}),
        "uEHistoryInformation": [{"lastVisitedCellInformation": ("nGRANCell", {
            "globalCellID": ("nR-CGI", {"pLMNIdentity": PLMN, "nRCellIdentity": (CELL1, 36)}),
            "cellType": {"cellSize": "small"}, "timeUEStayedInCell": 10})}]})


def handover_required(amf: int, ran: int) -> bytes:
    target = ("targetRANNodeID", {
        "globalRANNodeID": ("globalGNB-ID", {"pLMNIdentity": PLMN, "gNB-ID": ("gNB-ID", (2, 22))}),
        "selectedTAI": {"pLMNIdentity": PLMN, "tAC": TAC2.to_bytes(3, "big")}})
    return _pdu("initiatingMessage", 12, "HandoverRequired", [
        (10, "AMF-UE-NGAP-ID", amf), (85, "RAN-UE-NGAP-ID", ran), (29, "HandoverType", "intra5gs"),
        (15, "Cause", ("radioNetwork", "handover-desirable-for-radio-reason")), (105, "TargetID", target),
        (61, "PDUSessionResourceListHORqd", [{"pDUSessionID": 1,
                                              "handoverRequiredTransfer": _aper("HandoverRequiredTransfer", {})}]),
        (101, "SourceToTarget-TransparentContainer", _source_to_target())])


def handover_request(amf: int) -> bytes:
    guami = {"pLMNIdentity": PLMN, "aMFRegionID": (2, 8), "aMFSetID": (1, 10), "aMFPointer": (0, 6)}
    return _pdu("initiatingMessage", 13, "HandoverRequest", [
        (10, "AMF-UE-NGAP-ID", amf), (29, "HandoverType", "intra5gs"),
        (15, "Cause", ("radioNetwork", "handover-desirable-for-radio-reason")),
        (110, "UEAggregateMaximumBitRate", {"uEAggregateMaximumBitRateDL": 10**9,
                                            "uEAggregateMaximumBitRateUL": 10**9}),
        (119, "UESecurityCapabilities", SEC_CAPS), (93, "SecurityContext", SEC_CONTEXT),
        (73, "PDUSessionResourceSetupListHOReq", [{
            "pDUSessionID": 1, "s-NSSAI": SNSSAI,
            "handoverRequestTransfer": _setup_request_transfer(UPF_N3, UL_TEID)}]),
        (0, "AllowedNSSAI", ALLOWED_NSSAI), (101, "SourceToTarget-TransparentContainer", _source_to_target()),
        (28, "GUAMI", guami)])


def handover_request_ack(amf: int, ran: int) -> bytes:
    tr = _aper("HandoverRequestAcknowledgeTransfer", {
        "dL-NGU-UP-TNLInformation": _gtp_tunnel(GNB2_N3, DL_TEID2),
        "qosFlowSetupResponseList": [{"qosFlowIdentifier": 1}]})
    t2s = _aper("TargetNGRANNode-ToSourceNGRANNode-TransparentContainer", {"rRCContainer": b"\x00"})
    return _pdu("successfulOutcome", 13, "HandoverRequestAcknowledge", [
        (10, "AMF-UE-NGAP-ID", amf), (85, "RAN-UE-NGAP-ID", ran),
        (53, "PDUSessionResourceAdmittedList", [{"pDUSessionID": 1, "handoverRequestAcknowledgeTransfer": tr}]),
        (106, "TargetToSource-TransparentContainer", t2s)])


def handover_command(amf: int, ran: int) -> bytes:
    t2s = _aper("TargetNGRANNode-ToSourceNGRANNode-TransparentContainer", {"rRCContainer": b"\x00"})
    return _pdu("successfulOutcome", 12, "HandoverCommand", [
        (10, "AMF-UE-NGAP-ID", amf), (85, "RAN-UE-NGAP-ID", ran), (29, "HandoverType", "intra5gs"),
        (106, "TargetToSource-TransparentContainer", t2s)])


def handover_notify(amf: int, ran: int) -> bytes:
    return _pdu("initiatingMessage", 11, "HandoverNotify", [
        (10, "AMF-UE-NGAP-ID", amf), (85, "RAN-UE-NGAP-ID", ran),
        (121, "UserLocationInformation", _uli(CELL2, TAC2))])


def context_release_command(amf: int, ran: int) -> bytes:
    return _pdu("initiatingMessage", 41, "UEContextReleaseCommand", [
        (114, "UE-NGAP-IDs", ("uE-NGAP-ID-pair", {"aMF-UE-NGAP-ID": amf, "rAN-UE-NGAP-ID": ran})),
        (15, "Cause", ("radioNetwork", "successful-handover"))])


def context_release_complete(amf: int, ran: int) -> bytes:
    return _pdu("successfulOutcome", 41, "UEContextReleaseComplete", [
        (10, "AMF-UE-NGAP-ID", amf), (85, "RAN-UE-NGAP-ID", ran)])


# ------------------------------------------------------------------ PFCP, built with scapy.contrib.pfcp

def _ohc(gnb_ip: str, teid: int) -> Packet:
    return sp.IE_OuterHeaderCreation(GTPUUDPIPV4=1, TEID=teid, ipv4=gnb_ip)


def pfcp_est_request(seq: int) -> bytes:
    pdr_ul = sp.IE_CreatePDR(IE_list=[
        sp.IE_PDR_Id(id=1), sp.IE_Precedence(precedence=255),
        sp.IE_PDI(IE_list=[sp.IE_SourceInterface(interface=0), sp.IE_FTEID(CH=1, V4=1),
                           sp.IE_NetworkInstance(instance=b"internet"),
                           sp.IE_UE_IP_Address(V4=1, SD=0, ipv4=UE_IP)]),
        sp.IE_OuterHeaderRemoval(header=0), sp.IE_FAR_Id(id=1)])
    pdr_dl = sp.IE_CreatePDR(IE_list=[
        sp.IE_PDR_Id(id=2), sp.IE_Precedence(precedence=255),
        sp.IE_PDI(IE_list=[sp.IE_SourceInterface(interface=1), sp.IE_UE_IP_Address(V4=1, SD=1, ipv4=UE_IP)]),
        sp.IE_FAR_Id(id=2)])
    far_ul = sp.IE_CreateFAR(IE_list=[sp.IE_FAR_Id(id=1), sp.IE_ApplyAction(FORW=1),
                                      sp.IE_ForwardingParameters(IE_list=[sp.IE_DestinationInterface(interface=1)])])
    far_dl = sp.IE_CreateFAR(IE_list=[sp.IE_FAR_Id(id=2), sp.IE_ApplyAction(FORW=1),
                                      sp.IE_ForwardingParameters(IE_list=[sp.IE_DestinationInterface(interface=0),
                                                                          _ohc(GNB1_N3, DL_TEID1)])])
    body = sp.PFCPSessionEstablishmentRequest(IE_list=[
        sp.IE_NodeId(id_type=0, ipv4=SMF_N4), sp.IE_FSEID(v4=1, seid=0x11, ipv4=SMF_N4),
        pdr_ul, pdr_dl, far_ul, far_dl])
    return bytes(sp.PFCP(version=1, S=1, message_type=50, seid=0, seq=seq) / body)


def pfcp_est_response(seq: int) -> bytes:
    body = sp.PFCPSessionEstablishmentResponse(IE_list=[
        sp.IE_NodeId(id_type=0, ipv4=UPF_N4), sp.IE_Cause(cause=1), sp.IE_FSEID(v4=1, seid=0x22, ipv4=UPF_N4),
        sp.IE_CreatedPDR(IE_list=[sp.IE_PDR_Id(id=1), sp.IE_FTEID(V4=1, TEID=UL_TEID, ipv4=UPF_N3)])])
    return bytes(sp.PFCP(version=1, S=1, message_type=51, seid=0x11, seq=seq) / body)


def pfcp_mod_request(seq: int, gnb_ip: str, teid: int) -> bytes:
    """A path switch as TS 29.244 §7.5.4.3 has it: Update FAR, Update Forwarding Parameters with the
    new Outer Header Creation and PFCPSMReq-Flags SNDEM (send End Markers on the old path)."""
    upd = sp.IE_UpdateFAR(IE_list=[sp.IE_FAR_Id(id=2), sp.IE_ApplyAction(FORW=1),
                                   sp.IE_UpdateForwardingParameters(IE_list=[
                                       sp.IE_DestinationInterface(interface=0), _ohc(gnb_ip, teid),
                                       sp.IE_PFCPSMReqFlags(SNDEM=1)])])
    body = sp.PFCPSessionModificationRequest(IE_list=[upd])
    return bytes(sp.PFCP(version=1, S=1, message_type=52, seid=0x22, seq=seq) / body)


def pfcp_mod_response(seq: int) -> bytes:
    body = sp.PFCPSessionModificationResponse(IE_list=[sp.IE_Cause(cause=1)])
    return bytes(sp.PFCP(version=1, S=1, message_type=53, seid=0x11, seq=seq) / body)


# ------------------------------------------------------------------ frames

def gtpu(mtype: int, teid: int, payload: bytes = b"", pdu_type: int | None = None) -> bytes:
    """A GTP-U header (TS 29.281 §5.1), with a PDU Session Container (TS 38.415) when pdu_type is given."""
    if pdu_type is None:
        return struct.pack("!BBHI", 0x30, mtype, len(payload), teid) + payload
    ext = bytes([1, pdu_type << 4, 1, 0])           # length 1 (x4), PDU type, QFI 1, no next
    body = b"\x00\x00\x00\x85" + ext + payload       # sequence, N-PDU, next type: PDU Session Container
    return struct.pack("!BBHI", 0x34, mtype, len(body), teid) + body


def n2(src: str, dst: str, data: bytes, tsn: int) -> Packet:
    """One NGAP message in one SCTP DATA chunk; each direction its own verification tag (the
    peer's initiate tag, RFC 9260 §8.5), as tshark tells associations apart by it."""
    tag = zlib.crc32(f"{src}>{dst}".encode())
    return (Ether() / IP(src=src, dst=dst) / SCTP(sport=38412, dport=38412, tag=tag)
            / SCTPChunkData(tsn=tsn, stream_id=1, proto_id=60, data=data, beginning=1, ending=1))


def n4(src: str, dst: str, data: bytes) -> Packet:
    return Ether() / IP(src=src, dst=dst) / UDP(sport=8805, dport=8805) / data


def n3(src: str, dst: str, data: bytes) -> Packet:
    return Ether() / IP(src=src, dst=dst) / UDP(sport=2152, dport=2152) / data


def ul_dns(gnb: str, name: str) -> Packet:
    inner = bytes(IP(src=UE_IP, dst=DN) / UDP(sport=40000, dport=53) / DNS(rd=1, qd=DNSQR(qname=name)))
    return n3(gnb, UPF_N3, gtpu(255, UL_TEID, inner, pdu_type=1))


def dl_ping(gnb: str, teid: int, seq: int) -> Packet:
    inner = bytes(IP(src=DN, dst=UE_IP) / ICMP(type=8, id=7, seq=seq))
    return n3(UPF_N3, gnb, gtpu(255, teid, inner, pdu_type=0))


def setup() -> list[Packet]:
    """Registration on gNB1, a PDU session (N2 and N4), traffic both ways on gNB1."""
    return [
        n2(GNB1_N2, AMF_N2, initial_ue_message(1), 1),
        n2(AMF_N2, GNB1_N2, setup_request(1, 1), 1),
        n2(GNB1_N2, AMF_N2, setup_response(1, 1), 2),
        n4(SMF_N4, UPF_N4, pfcp_est_request(1)),
        n4(UPF_N4, SMF_N4, pfcp_est_response(1)),
        ul_dns(GNB1_N3, "before.mec.local"),
        dl_ping(GNB1_N3, DL_TEID1, 1),
    ]


def after() -> list[Packet]:
    return [ul_dns(GNB2_N3, "after.mec.local"), dl_ping(GNB2_N3, DL_TEID2, 2)]


def xn_handover() -> list[Packet]:
    """An Xn handover as Open5GS runs it: the End Marker goes out before the PFCP answer."""
    return [
        *setup(),
        n2(GNB2_N2, AMF_N2, path_switch_request(7, 1, GNB2_N3, DL_TEID2), 1),
        n4(SMF_N4, UPF_N4, pfcp_mod_request(2, GNB2_N3, DL_TEID2)),
        n3(UPF_N3, GNB1_N3, gtpu(254, DL_TEID1)),
        n4(UPF_N4, SMF_N4, pfcp_mod_response(2)),
        n2(AMF_N2, GNB2_N2, path_switch_ack(1, 7), 1),
        *after(),
    ]


def n2_handover() -> list[Packet]:
    return [
        *setup(),
        n2(GNB1_N2, AMF_N2, handover_required(1, 1), 3),
        n2(AMF_N2, GNB2_N2, handover_request(2), 1),
        n2(GNB2_N2, AMF_N2, handover_request_ack(2, 9), 1),
        n2(AMF_N2, GNB1_N2, handover_command(1, 1), 2),
        n2(GNB2_N2, AMF_N2, handover_notify(2, 9), 2),
        n4(SMF_N4, UPF_N4, pfcp_mod_request(2, GNB2_N3, DL_TEID2)),
        n4(UPF_N4, SMF_N4, pfcp_mod_response(2)),
        n3(UPF_N3, GNB1_N3, gtpu(254, DL_TEID1)),       # after the answer, this time
        n2(AMF_N2, GNB1_N2, context_release_command(1, 1), 3),
        n2(GNB1_N2, AMF_N2, context_release_complete(1, 1), 4),
        *after(),
    ]


def write(path: Path, pkts: list[Packet]) -> Path:
    for n, p in enumerate(pkts):
        p.time = 1_780_000_000 + n / 100
    wrpcap(str(path), pkts)
    return path


def read(path: Path) -> list[dict[str, Any]]:
    res = subprocess.run([sys.executable, "-m", "upf_tap", "read", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def tshark(path: Path, display_filter: str, *names: str) -> list[dict[str, list[str]]]:
    assert oracle.TSHARK is not None
    res = subprocess.run([oracle.TSHARK, "-n", "-r", str(path), "-Y", display_filter, "-T", "fields",
                          "-E", "occurrence=a", "-E", "separator=\t", "-E", "aggregator=|",
                          *[a for n in names for a in ("-e", n)]],
                         capture_output=True, text=True, check=True)
    return [{n: [v for v in col.split("|") if v] for n, col in zip(names, line.split("\t"), strict=True)}
            for line in res.stdout.splitlines()]


def one(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [e for e in events if e["kind"] == kind]
    assert len(found) == 1, (kind, [e["kind"] for e in events])
    return found[0]


def _user(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] in ("dns.query", "icmp.echo_request")]


# ------------------------------------------------------------------ the Xn path switch

@pytest.fixture(scope="module")
def xn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    path = write(tmp_path_factory.mktemp("xn") / "xn-handover.pcap", xn_handover())
    return path, read(path)


def test_xn_handover_events_in_order(xn: tuple[Path, list[dict[str, Any]]]) -> None:
    _path, events = xn
    assert [e["kind"] for e in events] == [
        "pdu_session.setup", "session.up", "dns.query", "icmp.echo_request",
        "gtpu.end_marker", "session.modify", "ngap.path_switch", "dns.query", "icmp.echo_request"]
    for ev in events:
        errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(ev))
        assert not errors, f"{ev}: {errors[0].message}"


def test_user_events_carry_the_serving_gnb_and_cell(xn: tuple[Path, list[dict[str, Any]]]) -> None:
    _path, events = xn
    before_ul, before_dl, after_ul, after_dl = _user(events)
    for e, gnb, cell in ((before_ul, GNB1_N3, CELL1), (before_dl, GNB1_N3, CELL1),
                         (after_ul, GNB2_N3, CELL2), (after_dl, GNB2_N3, CELL2)):
        assert e["ue"]["gnb_ip"] == gnb, e
        assert e["ue"]["cell"] == f"999-70-{cell:09x}"
        assert (e["ue"]["supi"], e["ue"]["ip"]) == (SUPI, UE_IP)   # the binding survives the switch
        assert e["ue"]["gnb_ip"] == (e["tunnel"]["src"] if e["direction"] == "ul" else e["tunnel"]["dst"])
    assert after_dl["ue"]["teid"] == DL_TEID2


@needs_tshark
def test_end_marker_matches_tshark(xn: tuple[Path, list[dict[str, Any]]]) -> None:
    path, events = xn
    (row,) = tshark(path, "gtp.message == 0xfe", "ip.src", "ip.dst", "gtp.teid")
    em = one(events, "gtpu.end_marker")
    assert em["point"] == "n3" and em["direction"] == "dl"
    assert em["tunnel"] == {"src": row["ip.src"][0], "dst": row["ip.dst"][0], "teid": int(row["gtp.teid"][0], 16)}
    assert em["app"] == {"gnb_ip": GNB1_N3, "dl_teid": DL_TEID1}
    # sent before the PFCP answer: N4 still has the old tunnel, found by it
    assert (em["ue"]["supi"], em["ue"]["ip"], em["ue"]["teid"]) == (SUPI, UE_IP, DL_TEID1)
    assert em["ue"].get("gnb_ip") != GNB1_N3


@needs_tshark
def test_session_modify_matches_tshark(xn: tuple[Path, list[dict[str, Any]]]) -> None:
    path, events = xn
    (est,) = tshark(path, "pfcp.msg_type == 50", "pfcp.outer_hdr_creation.teid", "pfcp.outer_hdr_creation.ipv4")
    (mod,) = tshark(path, "pfcp.msg_type == 52", "pfcp.outer_hdr_creation.teid", "pfcp.outer_hdr_creation.ipv4",
                    "pfcp.smreq_flags.sndem")
    m = one(events, "session.modify")
    assert m["point"] == "n4"
    assert (m["app"]["gnb_ip"], m["app"]["dl_teid"]) == (mod["pfcp.outer_hdr_creation.ipv4"][0],
                                                         int(mod["pfcp.outer_hdr_creation.teid"][0], 16))
    assert (m["app"]["prev_gnb_ip"], m["app"]["prev_dl_teid"]) == (est["pfcp.outer_hdr_creation.ipv4"][0],
                                                                   int(est["pfcp.outer_hdr_creation.teid"][0], 16))
    assert (m["app"]["gnb_ip"], m["app"]["dl_teid"], m["app"]["prev_gnb_ip"]) == (GNB2_N3, DL_TEID2, GNB1_N3)
    assert m["app"]["changed"] == ["dl_teid", "gnb_ip"]
    assert mod["pfcp.smreq_flags.sndem"] in (["1"], ["True"]) and m["app"]["end_marker"] is True
    assert "prev_ul_teid" not in m["app"] and m["app"]["ul_teid"] == UL_TEID
    assert m["ue"]["supi"] == SUPI


@needs_tshark
def test_path_switch_matches_tshark(xn: tuple[Path, list[dict[str, Any]]]) -> None:
    path, events = xn
    (req,) = tshark(path, "ngap.procedureCode == 25 && ngap.PathSwitchRequest_element", "ip.src", "ip.dst",
                    "ngap.RAN_UE_NGAP_ID", "ngap.AMF_UE_NGAP_ID", "ngap.NRCellIdentity", "ngap.tAC",
                    "e212.nrcgi.mcc", "e212.nrcgi.mnc", "ngap.TransportLayerAddressIPv4", "ngap.gTP_TEID",
                    "ngap.pDUSessionID")
    (ack,) = tshark(path, "ngap.procedureCode == 25 && ngap.PathSwitchRequestAcknowledge_element",
                    "ngap.AMF_UE_NGAP_ID", "ngap.RAN_UE_NGAP_ID")
    ps = one(events, "ngap.path_switch")
    app = ps["app"]
    assert ps["point"] == "n2"
    assert (app["gnb_n2"], app["amf_n2"]) == (req["ip.src"][0], req["ip.dst"][0])
    assert app["ran_ue_ngap_id"] == int(req["ngap.RAN_UE_NGAP_ID"][0]) == int(ack["ngap.RAN_UE_NGAP_ID"][0])
    assert app["amf_ue_ngap_id"] == int(ack["ngap.AMF_UE_NGAP_ID"][0]) == int(req["ngap.AMF_UE_NGAP_ID"][0])
    mcc, mnc = req["e212.nrcgi.mcc"][0], req["e212.nrcgi.mnc"][0].zfill(2)
    assert app["cell"] == {"plmn": f"{mcc}-{mnc}", "nci": f"{int(req['ngap.NRCellIdentity'][0], 16):09x}"}
    assert app["tai"] == {"plmn": f"{mcc}-{mnc}", "tac": int(req["ngap.tAC"][0])}
    (s,) = app["pdu_sessions"]
    assert s == {"id": int(req["ngap.pDUSessionID"][0]), "gnb_ip": req["ngap.TransportLayerAddressIPv4"][0],
                 "dl_teid": int(req["ngap.gTP_TEID"][0].replace(":", ""), 16),
                 "prev_gnb_ip": GNB1_N3, "prev_dl_teid": DL_TEID1}
    assert (app["gnb_ip"], app["dl_teid"], app["prev_gnb_ip"]) == (GNB2_N3, DL_TEID2, GNB1_N3)
    assert app["prev_gnb_n2"] == GNB1_N2 and app["supi"] == SUPI
    assert ps["ue"]["cell"] == f"999-70-{CELL2:09x}" and ps["ue"]["ip"] == UE_IP


def test_ids_are_stable_across_re_decodes(xn: tuple[Path, list[dict[str, Any]]]) -> None:
    path, events = xn
    again = read(path)
    assert [e["id"] for e in again] == [e["id"] for e in events]
    assert len({e["id"] for e in events}) == len(events)


# ------------------------------------------------------------------ the N2 handover

@pytest.fixture(scope="module")
def ho(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    path = write(tmp_path_factory.mktemp("ho") / "n2-handover.pcap", n2_handover())
    return path, read(path)


def test_n2_handover_events_in_order(ho: tuple[Path, list[dict[str, Any]]]) -> None:
    _path, events = ho
    assert [e["kind"] for e in events] == [
        "pdu_session.setup", "session.up", "dns.query", "icmp.echo_request", "ngap.handover",
        "session.modify", "gtpu.end_marker", "ue.context_release", "dns.query", "icmp.echo_request"]
    for ev in events:
        errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(ev))
        assert not errors, f"{ev}: {errors[0].message}"


@needs_tshark
def test_handover_matches_tshark(ho: tuple[Path, list[dict[str, Any]]]) -> None:
    path, events = ho
    (notify,) = tshark(path, "ngap.procedureCode == 11", "ip.src", "ip.dst", "ngap.AMF_UE_NGAP_ID",
                       "ngap.RAN_UE_NGAP_ID", "ngap.NRCellIdentity", "ngap.tAC", "e212.nrcgi.mcc", "e212.nrcgi.mnc")
    (ack,) = tshark(path, "ngap.procedureCode == 13 && ngap.HandoverRequestAcknowledge_element",
                    "ngap.TransportLayerAddressIPv4", "ngap.gTP_TEID", "ngap.pDUSessionID")
    (req,) = tshark(path, "ngap.procedureCode == 12 && ngap.HandoverRequired_element", "ip.src",
                    "ngap.gNB_ID", "ngap.HandoverType", "ngap.tAC")
    h = one(events, "ngap.handover")
    app = h["app"]
    assert h["point"] == "n2"
    assert (app["gnb_n2"], app["amf_n2"]) == (notify["ip.src"][0], notify["ip.dst"][0])
    assert app["amf_ue_ngap_id"] == int(notify["ngap.AMF_UE_NGAP_ID"][0])
    assert app["ran_ue_ngap_id"] == int(notify["ngap.RAN_UE_NGAP_ID"][0])
    mcc, mnc = notify["e212.nrcgi.mcc"][0], notify["e212.nrcgi.mnc"][0].zfill(2)
    assert app["cell"] == {"plmn": f"{mcc}-{mnc}", "nci": f"{int(notify['ngap.NRCellIdentity'][0], 16):09x}"}
    assert app["tai"]["tac"] == int(notify["ngap.tAC"][0])
    (s,) = app["pdu_sessions"]
    assert (s["id"], s["gnb_ip"], s["dl_teid"]) == (int(ack["ngap.pDUSessionID"][0]),
                                                     ack["ngap.TransportLayerAddressIPv4"][0],
                                                     int(ack["ngap.gTP_TEID"][0].replace(":", ""), 16))
    assert (s["prev_gnb_ip"], s["prev_dl_teid"]) == (GNB1_N3, DL_TEID1)
    assert app["prev_gnb_n2"] == req["ip.src"][0] == GNB1_N2
    raw = req["ngap.gNB_ID"][0]                 # tshark: the BIT STRING's octets, bits left-aligned
    assert app["target"]["gnb_id"] == int(raw, 16) >> (len(raw) * 4 - app["target"]["gnb_id_bits"])
    assert app["target"]["tai"]["tac"] == int(req["ngap.tAC"][0])
    assert app["handover_type"] == "intra5gs" and req["ngap.HandoverType"] == ["0"]
    assert app["supi"] == SUPI and h["ue"]["ip"] == UE_IP


def test_handover_keeps_the_binding_and_the_old_path_names_the_ue(ho: tuple[Path, list[dict[str, Any]]]) -> None:
    _path, events = ho
    em = one(events, "gtpu.end_marker")
    # sent after the PFCP answer: the old tunnel is no longer bound, and still names the UE
    assert (em["ue"]["supi"], em["ue"]["ip"]) == (SUPI, UE_IP)
    assert em["ue"]["gnb_ip"] == GNB2_N3
    rel = one(events, "ue.context_release")
    assert rel["app"]["gnb_n2"] == GNB1_N2 and rel["ue"]["supi"] == SUPI
    for e in _user(events)[2:]:
        assert (e["ue"]["supi"], e["ue"]["gnb_ip"], e["ue"]["cell"]) == (SUPI, GNB2_N3, f"999-70-{CELL2:09x}")


# ------------------------------------------------------------------ the control plane alone

def _cp() -> tuple[ControlPlane, list[dict[str, Any]], collections.Counter[str]]:
    events: list[dict[str, Any]] = []
    stats: collections.Counter[str] = collections.Counter()
    return ControlPlane("t", events.append, stats), events, stats


def _feed(cp: ControlPlane, pkts: list[Packet]) -> None:
    for n, p in enumerate(pkts):
        ip = p[IP]
        if SCTP in p:
            cp.on_sctp(n, ip.src, ip.dst, bytes(ip.payload))
        elif UDP in p and p[UDP].dport == 8805:
            cp.on_pfcp(n, ip.src, 8805, ip.dst, 8805, bytes(p[UDP].payload))


def test_a_failed_path_switch_puts_the_old_tunnel_back() -> None:
    cp, events, stats = _cp()
    _feed(cp, [*setup(), n2(GNB2_N2, AMF_N2, path_switch_request(7, 1, GNB2_N3, DL_TEID2), 1)])
    assert cp.ue_for_teid(DL_TEID2, GNB2_N3)["supi"] == SUPI       # bound at the request already
    _feed(cp, [n2(AMF_N2, GNB2_N2, path_switch_failure(1, 7), 1)])
    assert stats["ngap.path_switch_failed"] == 1
    assert not [e for e in events if e["kind"] == "ngap.path_switch"]
    assert (GNB2_N3, DL_TEID2) not in cp.n2.by_tunnel
    assert cp.n2.by_tunnel[(GNB1_N3, DL_TEID1)].supi == SUPI
    assert cp.ue_for_teid(DL_TEID1, GNB1_N3)["gnb_ip"] == GNB1_N3


def test_a_path_switch_for_a_ue_never_seen_still_reports() -> None:
    cp, events, _stats = _cp()
    _feed(cp, [n2(GNB2_N2, AMF_N2, path_switch_request(7, 42, GNB2_N3, DL_TEID2), 1),
               n2(AMF_N2, GNB2_N2, path_switch_ack(42, 7), 1)])
    (ev,) = events
    assert ev["kind"] == "ngap.path_switch" and ev["app"]["amf_ue_ngap_id"] == 42
    assert ev["app"]["pdu_sessions"] == [{"id": 1, "gnb_ip": GNB2_N3, "dl_teid": DL_TEID2}]
    assert "prev_gnb_n2" not in ev["app"] and "supi" not in ev["app"]


def test_the_moved_tunnel_is_forgotten_with_its_session() -> None:
    cp, _events, _stats = _cp()
    _feed(cp, [*setup(), n4(SMF_N4, UPF_N4, pfcp_mod_request(2, GNB2_N3, DL_TEID2)),
               n4(UPF_N4, SMF_N4, pfcp_mod_response(2))])
    assert cp.ue_for_teid(DL_TEID1, GNB1_N3)["ip"] == UE_IP      # the old path still names the UE
    assert cp.ue_for_teid(DL_TEID2, GNB2_N3)["gnb_ip"] == GNB2_N3
    del_req = bytes(sp.PFCP(version=1, S=1, message_type=54, seid=0x22, seq=3) / sp.PFCPSessionDeletionRequest())
    del_resp = bytes(sp.PFCP(version=1, S=1, message_type=55, seid=0x11, seq=3)
                     / sp.PFCPSessionDeletionResponse(IE_list=[sp.IE_Cause(cause=1)]))
    _feed(cp, [n4(SMF_N4, UPF_N4, del_req), n4(UPF_N4, SMF_N4, del_resp)])
    assert (GNB1_N3, DL_TEID1) not in cp.n4.moved


def test_identify_names_the_serving_gnb_with_or_without_a_tunnel() -> None:
    cp, _events, _stats = _cp()
    _feed(cp, setup())
    gnb, upf = ipaddress.IPv4Address(GNB1_N3).packed, ipaddress.IPv4Address(UPF_N3).packed
    ue, _tun = identify(UE_IP, None, cp)                              # N6: the control plane's
    assert (ue["gnb_ip"], ue["cell"], ue["supi"]) == (GNB1_N3, "999-70-000000010", SUPI)
    ue, _tun = identify(UE_IP, (gnb, upf, UL_TEID, 1, 1), None)      # no direction: the PDU type
    assert ue["gnb_ip"] == GNB1_N3
    ue, _tun = identify(UE_IP, (upf, gnb, DL_TEID1, 1, 0), None)
    assert ue["gnb_ip"] == GNB1_N3
    ue, _tun = identify(UE_IP, (upf, gnb, DL_TEID1, -1, -1), None)   # neither: not guessed
    assert "gnb_ip" not in ue
    ue, _tun = identify(UE_IP, (gnb, upf, UL_TEID, -1, -1), None, "ul")
    assert ue["gnb_ip"] == GNB1_N3


def test_location_decoding() -> None:
    f = ngap.decode(handover_notify(2, 9))
    assert f.location == ngap.Location("999-70", CELL2, "999-70", TAC2)
    assert f.location.cell_text() == "999-70-000000020"
    f = ngap.decode(handover_required(1, 1))
    assert f.target == {"gnb_id": 2, "gnb_id_bits": 22, "plmn": "999-70", "tai": {"plmn": "999-70", "tac": 2}}
    assert ngap.plmn_text(b"\xff\xff\xff") is None


# ------------------------------------------------------------------ malformed input

def test_malformed_end_markers_are_counted_never_fatal(tmp_path: Path) -> None:
    pkts = [
        n3(UPF_N3, GNB1_N3, gtpu(254, DL_TEID1)[:6]),                       # truncated header
        n3(UPF_N3, GNB1_N3, struct.pack("!BBHI", 0x30, 254, 40, 5)),        # length past the datagram
        n3(UPF_N3, GNB1_N3, struct.pack("!BBHI", 0x34, 254, 4, 5) + b"\x00\x00\x00\x85"),  # extension cut
        n3(UPF_N3, GNB1_N3, struct.pack("!BBHI", 0x50, 254, 0, 5)),         # not version 1
        n3(UPF_N3, GNB1_N3, gtpu(254, 0xDEAD)),                              # nobody's TEID: reported
        n3(UPF_N3, GNB1_N3, gtpu(254, 0xBEEF, b"\xff" * 7)),                 # trailing junk: ignored
    ]
    path = write(tmp_path / "bad-end-markers.pcap", pkts)
    res = subprocess.run([sys.executable, "-m", "upf_tap", "read", "--stats", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(e["kind"], e["tunnel"]["teid"]) for e in events] == [("gtpu.end_marker", 0xDEAD),
                                                                   ("gtpu.end_marker", 0xBEEF)]
    assert events[0]["ue"] == {"teid": 0xDEAD}
    assert "gtpu.truncated" in res.stderr and "gtpu.end_marker" in res.stderr
