"""NGAP (TS 38.413) facts for identity, decoded with pycrate's ASN.1 (aligned PER).

pycrate's NGAP module takes about a second to import, so it is imported on the first
NGAP message, once. ``decode`` returns ``NgapFacts``: the UE's NGAP ids, the NAS PDUs
carried, the PDU sessions being set up (UL tunnel from the setup request transfer,
DL tunnel from the response transfer, QoS flows, S-NSSAI) or released, and the
5G-S-TMSI of an Initial UE Message. Malformed input raises ``NgapError``.

Mobility (TS 38.413 §8.4): a Path Switch Request (procedure 25; Xn handover) gives the
UE's new RAN-UE-NGAP-ID, its Source AMF-UE-NGAP-ID and, per PDU session, the new DL
tunnel (PathSwitchRequestTransfer: dL-NGU-UP-TNLInformation); its Acknowledge the
sessions switched (and a new UL tunnel, if any). An N2 handover is Handover Required
(procedure 12: the sessions, the target), Handover Request (13: the sessions' UL tunnels
at the target side), its Acknowledge (13: the admitted sessions' DL tunnels at the
target gNB) and Handover Notify (11: the UE arrived). The User Location Information
(NR CGI and TAI), wherever it appears, gives the UE's cell.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from upf_tap.control import nas
from upf_tap.control.tunnel import Tunnel

_pdu: Any = None
_transfers: dict[str, Any] = {}

# procedure codes (TS 38.413 §9.4.7, as pycrate's NGAP-Constants has them)
PROC_HANDOVER_CANCEL = 10
PROC_HANDOVER_NOTIFICATION = 11
PROC_HANDOVER_PREPARATION = 12
PROC_HANDOVER_RESOURCE_ALLOCATION = 13
PROC_PATH_SWITCH_REQUEST = 25

IE_SOURCE_AMF_UE_NGAP_ID = 100   # id-SourceAMF-UE-NGAP-ID: an AMF-UE-NGAP-ID, told apart by its id

# Which side starts each procedure (TS 38.413 §8): its initiating message comes from there and
# its outcomes from the other. Used when the SCTP ports do not tell the gNB from the AMF (both
# ends on 38412, as some gNBs bind); procedures started by either side are in neither set.
RAN_INITIATED = frozenset({10, 11, 12, 15, 18, 19, 21, 25, 27, 30, 35, 37, 42, 44, 46, 48, 49})
AMF_INITIATED = frozenset({0, 4, 7, 13, 14, 24, 26, 28, 29, 36, 40, 41, 43})


def _ngap_pdu() -> Any:
    global _pdu
    if _pdu is None:
        from pycrate_asn1dir import NGAP  # slow import: done once, on the first NGAP message

        _pdu = NGAP.NGAP_PDU_Descriptions.NGAP_PDU
        _transfers["PDUSessionResourceSetupRequestTransfer"] = \
            NGAP.NGAP_IEs.PDUSessionResourceSetupRequestTransfer
        _transfers["PDUSessionResourceSetupResponseTransfer"] = \
            NGAP.NGAP_IEs.PDUSessionResourceSetupResponseTransfer
        for name in ("PathSwitchRequestTransfer", "PathSwitchRequestAcknowledgeTransfer",
                     "HandoverRequestAcknowledgeTransfer"):
            _transfers[name] = getattr(NGAP.NGAP_IEs, name)
    return _pdu


class NgapError(ValueError):
    """NGAP that pycrate cannot decode."""


@dataclass(slots=True)
class PduSessionItem:
    psi: int
    snssai: str | None = None
    tunnel: Tunnel | None = None      # UL (request: the UPF's) or DL (response: the gNB's)
    qfis: list[int] = field(default_factory=list)
    nas: bytes | None = None


@dataclass(slots=True, frozen=True)
class Location:
    """Where the UE is: NR CGI (PLMN, 36-bit NR cell identity) and TAI (PLMN, TAC)."""

    plmn: str                         # the cell's PLMN, "mcc-mnc"
    nci: int
    tai_plmn: str
    tac: int

    def cell_text(self) -> str:
        """The NR CGI as one string: "999-70-000000010" (the NCI in 9 hex digits)."""
        return f"{self.plmn}-{self.nci:09x}"

    def cell(self) -> dict[str, Any]:
        return {"plmn": self.plmn, "nci": f"{self.nci:09x}"}

    def tai(self) -> dict[str, Any]:
        return {"plmn": self.tai_plmn, "tac": self.tac}


@dataclass(slots=True)
class NgapFacts:
    procedure: int
    outcome: str                      # initiatingMessage | successfulOutcome | unsuccessfulOutcome
    message: str                      # e.g. "PDUSessionResourceSetupRequest"
    amf_ue_id: int | None = None
    ran_ue_id: int | None = None
    nas_pdus: list[bytes] = field(default_factory=list)
    setup_requests: list[PduSessionItem] = field(default_factory=list)
    setup_responses: list[PduSessionItem] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    s_tmsi: tuple[int, int, int] | None = None   # (AMF set id, AMF pointer, 5G-TMSI)
    location: Location | None = None             # User Location Information (NR)
    source_amf_ue_id: int | None = None          # Path Switch Request: the UE's AMF id before
    switch_dl: list[PduSessionItem] = field(default_factory=list)    # path switch: new DL tunnels
    switched: list[PduSessionItem] = field(default_factory=list)     # its ack: switched (new UL, if any)
    ho_required: list[int] = field(default_factory=list)            # Handover Required: PSIs
    ho_setup: list[PduSessionItem] = field(default_factory=list)     # Handover Request: UL tunnels
    ho_admitted: list[PduSessionItem] = field(default_factory=list)  # its ack: target DL tunnels
    ho_type: str | None = None                   # HandoverType: intra5gs, fivegs-to-eps, ...
    target: dict[str, Any] | None = None         # Handover Required's TargetID (gNB, TAI)


def transport_address(bits: tuple[int, int]) -> str:
    """TransportLayerAddress (BIT STRING): IPv4 (32), IPv6 (128), or both (160: IPv4 first)."""
    value, n = bits
    if n == 32:
        return str(ipaddress.IPv4Address(value))
    if n == 128:
        return str(ipaddress.IPv6Address(value))
    if n == 160:
        return str(ipaddress.IPv4Address(value >> 128))
    raise NgapError(f"transport layer address of {n} bits")


def snssai_text(v: dict[str, Any]) -> str:
    sst = v["sST"][0]
    sd = v.get("sD")
    return f"{sst}-{sd.hex()}" if sd else str(sst)


def _tunnel(up_info: Any) -> Tunnel | None:
    if isinstance(up_info, tuple) and up_info[0] == "gTPTunnel":
        g = up_info[1]
        return Tunnel(transport_address(g["transportLayerAddress"]), int.from_bytes(g["gTP-TEID"], "big"))
    return None


def _transfer(value: Any, name: str) -> dict[str, Any] | None:
    """A setup request/response transfer: pycrate decodes the open type; decode it if it did not."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        return value[1]
    if isinstance(value, bytes | bytearray):
        typ = _transfers[name]
        typ.from_aper(bytes(value))
        return typ.get_val()
    return None


def _setup_request_item(item: dict[str, Any]) -> PduSessionItem:
    out = PduSessionItem(psi=item["pDUSessionID"])
    if "s-NSSAI" in item:
        out.snssai = snssai_text(item["s-NSSAI"])
    out.nas = item.get("pDUSessionNAS-PDU") or item.get("nAS-PDU")
    tr = _transfer(item.get("pDUSessionResourceSetupRequestTransfer"),
                   "PDUSessionResourceSetupRequestTransfer")
    for ie in (tr or {}).get("protocolIEs", []):
        name, val = ie["value"]
        if name == "UPTransportLayerInformation":
            out.tunnel = _tunnel(val)
        elif name == "QosFlowSetupRequestList":
            out.qfis = [q["qosFlowIdentifier"] for q in val]
    return out


def plmn_text(raw: bytes) -> str | None:
    """A PLMN identity (3 BCD octets) as "mcc-mnc", or None if its digits are not decimal."""
    try:
        mcc, mnc = nas.plmn(bytes(raw))
    except nas.NasError:
        return None
    return f"{mcc}-{mnc}"


def _location(val: Any) -> Location | None:
    """User Location Information: only the NR form names a cell the tap reports (E-UTRA and
    N3IWF forms are left out)."""
    if not (isinstance(val, tuple) and val[0] == "userLocationInformationNR"):
        return None
    cgi, tai = val[1]["nR-CGI"], val[1]["tAI"]
    plmn, tai_plmn = plmn_text(cgi["pLMNIdentity"]), plmn_text(tai["pLMNIdentity"])
    if plmn is None or tai_plmn is None:
        return None     # a garbled PLMN: no location rather than a wrong one
    return Location(plmn, cgi["nRCellIdentity"][0], tai_plmn, int.from_bytes(tai["tAC"], "big"))


def _dl_item(item: dict[str, Any], field_name: str, transfer: str, key: str) -> PduSessionItem:
    """A PSI and the tunnel a transfer carries under ``key`` (path switch / handover items)."""
    out = PduSessionItem(psi=item["pDUSessionID"])
    tr = _transfer(item.get(field_name), transfer)
    if tr:
        out.tunnel = _tunnel(tr.get(key))
        if transfer == "PathSwitchRequestTransfer":
            out.qfis = [q["qosFlowIdentifier"] for q in tr.get("qosFlowAcceptedList", [])]
        elif transfer == "HandoverRequestAcknowledgeTransfer":
            out.qfis = [q["qosFlowIdentifier"] for q in tr.get("qosFlowSetupResponseList", [])]
    return out


def _ho_setup_item(item: dict[str, Any]) -> PduSessionItem:
    """A Handover Request item: its transfer is a PDU Session Resource Setup Request Transfer."""
    as_setup = {"pDUSessionID": item["pDUSessionID"],
                "pDUSessionResourceSetupRequestTransfer": item.get("handoverRequestTransfer")}
    if "s-NSSAI" in item:
        as_setup["s-NSSAI"] = item["s-NSSAI"]
    return _setup_request_item(as_setup)


def _target(val: Any) -> dict[str, Any] | None:
    """TargetID of a Handover Required: the target gNB (PLMN, gNB id) and its TAI."""
    if not (isinstance(val, tuple) and val[0] == "targetRANNodeID"):
        return None
    out: dict[str, Any] = {}
    node = val[1].get("globalRANNodeID")
    if isinstance(node, tuple) and node[0] == "globalGNB-ID":
        gnb_id = node[1]["gNB-ID"]
        if isinstance(gnb_id, tuple) and gnb_id[0] == "gNB-ID":
            value, nbits = gnb_id[1]
            out["gnb_id"] = value
            out["gnb_id_bits"] = nbits
        out["plmn"] = plmn_text(node[1]["pLMNIdentity"])
    tai = val[1].get("selectedTAI")
    if tai:
        out["tai"] = {"plmn": plmn_text(tai["pLMNIdentity"]), "tac": int.from_bytes(tai["tAC"], "big")}
    return {k: v for k, v in out.items() if v is not None} or None


def _setup_response_item(item: dict[str, Any]) -> PduSessionItem:
    out = PduSessionItem(psi=item["pDUSessionID"])
    tr = _transfer(item.get("pDUSessionResourceSetupResponseTransfer"),
                   "PDUSessionResourceSetupResponseTransfer")
    dl = (tr or {}).get("dLQosFlowPerTNLInformation")
    if dl:
        out.tunnel = _tunnel(dl.get("uPTransportLayerInformation"))
        out.qfis = [q["qosFlowIdentifier"] for q in dl.get("associatedQosFlowList", [])]
    return out


def sent_by_ran(f: NgapFacts) -> bool | None:
    """Did the NG-RAN node send this message (None: the procedure goes either way)?"""
    if f.procedure in RAN_INITIATED:
        return f.outcome == "initiatingMessage"
    if f.procedure in AMF_INITIATED:
        return f.outcome != "initiatingMessage"
    return None


def decode(data: bytes) -> NgapFacts:
    pdu = _ngap_pdu()
    try:
        pdu.from_aper(data)
        outcome, body = pdu.get_val()
        message, value = body["value"]
        facts = NgapFacts(procedure=body["procedureCode"], outcome=outcome, message=message)
        for ie in value.get("protocolIEs", []):
            if ie["id"] == IE_SOURCE_AMF_UE_NGAP_ID:
                facts.source_amf_ue_id = ie["value"][1]
                continue
            _ie(facts, *ie["value"])
    except NgapError:
        raise
    except Exception as exc:   # pycrate raises many kinds of errors on bad PER; all mean malformed
        raise NgapError(f"{type(exc).__name__}: {exc}") from None
    return facts


def _ie(facts: NgapFacts, name: str, val: Any) -> None:
    if name == "AMF-UE-NGAP-ID":
        facts.amf_ue_id = val
    elif name == "RAN-UE-NGAP-ID":
        facts.ran_ue_id = val
    elif name == "NAS-PDU":
        facts.nas_pdus.append(val)
    elif name in ("PDUSessionResourceSetupListSUReq", "PDUSessionResourceSetupListCxtReq"):
        facts.setup_requests.extend(_setup_request_item(it) for it in val)
    elif name in ("PDUSessionResourceSetupListSURes", "PDUSessionResourceSetupListCxtRes"):
        facts.setup_responses.extend(_setup_response_item(it) for it in val)
    elif name in ("PDUSessionResourceToReleaseListRelCmd", "PDUSessionResourceReleasedListRelRes"):
        facts.released.extend(it["pDUSessionID"] for it in val)
    elif name == "UE-NGAP-IDs":
        kind, ids = val
        if kind == "uE-NGAP-ID-pair":
            facts.amf_ue_id = ids["aMF-UE-NGAP-ID"]
            facts.ran_ue_id = ids["rAN-UE-NGAP-ID"]
        elif kind == "aMF-UE-NGAP-ID":
            facts.amf_ue_id = ids
    elif name == "UserLocationInformation":
        facts.location = _location(val)
    elif name == "PDUSessionResourceToBeSwitchedDLList":
        facts.switch_dl.extend(_dl_item(it, "pathSwitchRequestTransfer", "PathSwitchRequestTransfer",
                                        "dL-NGU-UP-TNLInformation") for it in val)
    elif name == "PDUSessionResourceSwitchedList":
        facts.switched.extend(_dl_item(it, "pathSwitchRequestAcknowledgeTransfer",
                                       "PathSwitchRequestAcknowledgeTransfer", "uL-NGU-UP-TNLInformation")
                              for it in val)
    elif name == "PDUSessionResourceListHORqd":
        facts.ho_required.extend(it["pDUSessionID"] for it in val)
    elif name == "PDUSessionResourceSetupListHOReq":
        facts.ho_setup.extend(_ho_setup_item(it) for it in val)
    elif name == "PDUSessionResourceAdmittedList":
        facts.ho_admitted.extend(_dl_item(it, "handoverRequestAcknowledgeTransfer",
                                          "HandoverRequestAcknowledgeTransfer", "dL-NGU-UP-TNLInformation")
                                 for it in val)
    elif name == "HandoverType":
        facts.ho_type = val
    elif name == "TargetID":
        facts.target = _target(val)
    elif name == "FiveG-S-TMSI":
        facts.s_tmsi = (val["aMFSetID"][0], val["aMFPointer"][0], int.from_bytes(val["fiveG-TMSI"], "big"))
