"""NGAP (TS 38.413) facts for identity, decoded with pycrate's ASN.1 (aligned PER).

pycrate's NGAP module takes about a second to import, so it is imported on the first
NGAP message, once. ``decode`` returns ``NgapFacts``: the UE's NGAP ids, the NAS PDUs
carried, the PDU sessions being set up (UL tunnel from the setup request transfer,
DL tunnel from the response transfer, QoS flows, S-NSSAI) or released, and the
5G-S-TMSI of an Initial UE Message. Malformed input raises ``NgapError``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from upf_tap.control.tunnel import Tunnel

_pdu: Any = None
_transfers: dict[str, Any] = {}


def _ngap_pdu() -> Any:
    global _pdu
    if _pdu is None:
        from pycrate_asn1dir import NGAP  # slow import: done once, on the first NGAP message

        _pdu = NGAP.NGAP_PDU_Descriptions.NGAP_PDU
        _transfers["PDUSessionResourceSetupRequestTransfer"] = \
            NGAP.NGAP_IEs.PDUSessionResourceSetupRequestTransfer
        _transfers["PDUSessionResourceSetupResponseTransfer"] = \
            NGAP.NGAP_IEs.PDUSessionResourceSetupResponseTransfer
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


def _setup_response_item(item: dict[str, Any]) -> PduSessionItem:
    out = PduSessionItem(psi=item["pDUSessionID"])
    tr = _transfer(item.get("pDUSessionResourceSetupResponseTransfer"),
                   "PDUSessionResourceSetupResponseTransfer")
    dl = (tr or {}).get("dLQosFlowPerTNLInformation")
    if dl:
        out.tunnel = _tunnel(dl.get("uPTransportLayerInformation"))
        out.qfis = [q["qosFlowIdentifier"] for q in dl.get("associatedQosFlowList", [])]
    return out


def decode(data: bytes) -> NgapFacts:
    pdu = _ngap_pdu()
    try:
        pdu.from_aper(data)
        outcome, body = pdu.get_val()
        message, value = body["value"]
        facts = NgapFacts(procedure=body["procedureCode"], outcome=outcome, message=message)
        for ie in value.get("protocolIEs", []):
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
    elif name == "FiveG-S-TMSI":
        facts.s_tmsi = (val["aMFSetID"][0], val["aMFPointer"][0], int.from_bytes(val["fiveG-TMSI"], "big"))
