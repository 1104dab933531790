"""PFCP (TS 29.244) messages the sim's SMF and UPF exchange, built and parsed with scapy.contrib.pfcp.

Only N4 control traffic goes through scapy (a few messages per session), never the
user plane. Session rules follow what Open5GS's SMF sends for a default QoS flow:

- PDR 1 (uplink): PDI source interface Access, F-TEID with CH=1 (the UPF picks the
  TEID and returns it in Created PDR), network instance = DNN, UE IP as source;
  outer header removal GTP-U/UDP/IPv4; FAR 1; QER 1.
- PDR 2 (downlink): PDI source interface Core, network instance, UE IP as destination
  (SD=1); FAR 2; QER 1.
- FAR 1: forward to Core. FAR 2: forward to Access with outer header creation
  GTP-U/UDP/IPv4 (gNB TEID, gNB N3 address).
- QER 1: gates open, QFI.
- User ID with the IMSI (the sim has no N2, so this is where the tap learns the SUPI).

A path switch (handover, TS 23.502 §4.9.1.2.2) is a Session Modification whose Update FAR 2
carries the new gNB tunnel and PFCPSMReq-Flags (IE type 49) with SNDEM: the UPF sends End
Markers on the old tunnel before it forwards on the new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

try:
    from scapy.contrib import pfcp as sp
    from scapy.packet import Packet, Raw
except ImportError:       # an extra: the tap's and detector's images do not ship it
    raise SystemExit("testbed sim: needs scapy: pip install 'mec-serverless-testbed[sim]'") from None

# message types (TS 29.244 §7.3)
HEARTBEAT_REQUEST = 1
HEARTBEAT_RESPONSE = 2
ASSOCIATION_SETUP_REQUEST = 5
ASSOCIATION_SETUP_RESPONSE = 6
ASSOCIATION_RELEASE_REQUEST = 9
ASSOCIATION_RELEASE_RESPONSE = 10
SESSION_ESTABLISHMENT_REQUEST = 50
SESSION_ESTABLISHMENT_RESPONSE = 51
SESSION_MODIFICATION_REQUEST = 52
SESSION_MODIFICATION_RESPONSE = 53
SESSION_DELETION_REQUEST = 54
SESSION_DELETION_RESPONSE = 55

# causes (TS 29.244 §8.2.1)
CAUSE_ACCEPTED = 1
CAUSE_REJECTED = 64
CAUSE_SESSION_NOT_FOUND = 65
CAUSE_MANDATORY_IE_MISSING = 66
CAUSE_MANDATORY_IE_INCORRECT = 69
CAUSE_NO_ASSOCIATION = 72

IFACE_ACCESS = 0
IFACE_CORE = 1
PDR_UL, PDR_DL = 1, 2
FAR_UL, FAR_DL = 1, 2
QER_DEFAULT = 1

_SESSION_TYPES = frozenset(range(50, 58))


class PfcpError(ValueError):
    """Malformed or unexpected PFCP: the caller counts a drop or answers with a cause."""


def _header(msg_type: int, seq: int, seid: int | None) -> Packet:
    if seid is None:
        return sp.PFCP(version=1, S=0, message_type=msg_type, seq=seq)
    return sp.PFCP(version=1, S=1, message_type=msg_type, seid=seid, seq=seq)


def _msg(msg_type: int, seq: int, seid: int | None, ies: list[Packet]) -> bytes:
    body_cls = {
        HEARTBEAT_REQUEST: sp.PFCPHeartbeatRequest,
        HEARTBEAT_RESPONSE: sp.PFCPHeartbeatResponse,
        ASSOCIATION_SETUP_REQUEST: sp.PFCPAssociationSetupRequest,
        ASSOCIATION_SETUP_RESPONSE: sp.PFCPAssociationSetupResponse,
        ASSOCIATION_RELEASE_REQUEST: sp.PFCPAssociationReleaseRequest,
        ASSOCIATION_RELEASE_RESPONSE: sp.PFCPAssociationReleaseResponse,
        SESSION_ESTABLISHMENT_REQUEST: sp.PFCPSessionEstablishmentRequest,
        SESSION_ESTABLISHMENT_RESPONSE: sp.PFCPSessionEstablishmentResponse,
        SESSION_MODIFICATION_REQUEST: sp.PFCPSessionModificationRequest,
        SESSION_MODIFICATION_RESPONSE: sp.PFCPSessionModificationResponse,
        SESSION_DELETION_REQUEST: sp.PFCPSessionDeletionRequest,
        SESSION_DELETION_RESPONSE: sp.PFCPSessionDeletionResponse,
    }[msg_type]
    return bytes(_header(msg_type, seq, seid) / body_cls(IE_list=ies))


def _node_id(ip: str) -> Packet:
    return sp.IE_NodeId(id_type=0, ipv4=ip)


def _recovery(ts: int) -> Packet:
    return sp.IE_RecoveryTimeStamp(timestamp=ts)


def _cause(cause: int) -> Packet:
    return sp.IE_Cause(cause=cause)


def _ohc(gnb_ip: str, gnb_teid: int) -> Packet:
    return sp.IE_OuterHeaderCreation(GTPUUDPIPV4=1, TEID=gnb_teid, ipv4=gnb_ip)


# --- node messages ---

def association_setup_request(seq: int, node_ip: str, recovery_ts: int) -> bytes:
    return _msg(ASSOCIATION_SETUP_REQUEST, seq, None, [_node_id(node_ip), _recovery(recovery_ts)])


def association_setup_response(seq: int, node_ip: str, cause: int, recovery_ts: int) -> bytes:
    ies = [_node_id(node_ip), _cause(cause), _recovery(recovery_ts)]
    if cause == CAUSE_ACCEPTED:
        # FTUP: this UPF allocates F-TEIDs itself (the CH bit in the SMF's requests)
        ies.append(sp.IE_UPFunctionFeatures(
            length=2, TREU=0, HEEU=0, PFDM=0, FTUP=1, TRST=0, DLBD=0, DDND=0, BUCP=0,
            spare=0, PFDE=0, FRRT=0, TRACE=0, QUOAC=0, UDBC=0, PDIU=0, EMPU=0))
    return _msg(ASSOCIATION_SETUP_RESPONSE, seq, None, ies)


def association_release_request(seq: int, node_ip: str) -> bytes:
    return _msg(ASSOCIATION_RELEASE_REQUEST, seq, None, [_node_id(node_ip)])


def association_release_response(seq: int, node_ip: str, cause: int) -> bytes:
    return _msg(ASSOCIATION_RELEASE_RESPONSE, seq, None, [_node_id(node_ip), _cause(cause)])


def heartbeat_response(seq: int, recovery_ts: int) -> bytes:
    return _msg(HEARTBEAT_RESPONSE, seq, None, [_recovery(recovery_ts)])


# --- session messages ---

def tbcd(digits: str) -> bytes:
    """Telephony BCD: two digits per octet, low nibble first, 0xF filler."""
    if not digits.isdigit():
        raise ValueError(f"not a digit string: {digits!r}")
    padded = digits + "F" * (len(digits) % 2)
    return bytes(int(padded[i + 1], 16) << 4 | int(padded[i]) for i in range(0, len(padded), 2))


def session_establishment_request(
    seq: int, *, cp_seid: int, smf_ip: str, ue_ip: str, gnb_ip: str, gnb_teid: int, qfi: int, dnn: str,
    imsi: str | None = None,
) -> bytes:
    """`imsi` (digits) adds a User ID IE (TS 29.244 §8.2.101), so N4 alone tells whose session it is."""
    ni = dnn.encode()
    pdr_ul = sp.IE_CreatePDR(IE_list=[
        sp.IE_PDR_Id(id=PDR_UL),
        sp.IE_Precedence(precedence=255),
        sp.IE_PDI(IE_list=[
            sp.IE_SourceInterface(interface=IFACE_ACCESS),
            sp.IE_FTEID(CH=1, V4=1),
            sp.IE_NetworkInstance(instance=ni),
            sp.IE_UE_IP_Address(V4=1, SD=0, ipv4=ue_ip),
            sp.IE_QFI(spare=0, QFI=qfi),
        ]),
        sp.IE_OuterHeaderRemoval(header=0),
        sp.IE_FAR_Id(id=FAR_UL),
        sp.IE_QER_Id(id=QER_DEFAULT),
    ])
    pdr_dl = sp.IE_CreatePDR(IE_list=[
        sp.IE_PDR_Id(id=PDR_DL),
        sp.IE_Precedence(precedence=255),
        sp.IE_PDI(IE_list=[
            sp.IE_SourceInterface(interface=IFACE_CORE),
            sp.IE_NetworkInstance(instance=ni),
            sp.IE_UE_IP_Address(V4=1, SD=1, ipv4=ue_ip),
        ]),
        sp.IE_FAR_Id(id=FAR_DL),
        sp.IE_QER_Id(id=QER_DEFAULT),
    ])
    far_ul = sp.IE_CreateFAR(IE_list=[
        sp.IE_FAR_Id(id=FAR_UL),
        sp.IE_ApplyAction(spare=0, FORW=1),
        sp.IE_ForwardingParameters(IE_list=[
            sp.IE_DestinationInterface(interface=IFACE_CORE),
            sp.IE_NetworkInstance(instance=ni),
        ]),
    ])
    far_dl = sp.IE_CreateFAR(IE_list=[
        sp.IE_FAR_Id(id=FAR_DL),
        sp.IE_ApplyAction(spare=0, FORW=1),
        sp.IE_ForwardingParameters(IE_list=[
            sp.IE_DestinationInterface(interface=IFACE_ACCESS),
            _ohc(gnb_ip, gnb_teid),
        ]),
    ])
    qer = sp.IE_CreateQER(IE_list=[
        sp.IE_QER_Id(id=QER_DEFAULT),
        sp.IE_GateStatus(ul=0, dl=0),
        sp.IE_QFI(spare=0, QFI=qfi),
    ])
    ies = [
        _node_id(smf_ip),
        sp.IE_FSEID(v4=1, seid=cp_seid, ipv4=smf_ip),
        pdr_ul, pdr_dl, far_ul, far_dl, qer,
        sp.IE_PDNType(pdn_type=1),
    ]
    if imsi:
        ies.append(sp.IE_UserId(IMSIF=1, imsi=tbcd(imsi)))
    return _msg(SESSION_ESTABLISHMENT_REQUEST, seq, 0, ies)


def session_establishment_response(
    seq: int, *, cp_seid: int, upf_ip: str, cause: int, up_seid: int = 0,
    created: Iterable[tuple[int, int, str]] = (),
) -> bytes:
    """`created`: (pdr_id, teid, ipv4) for each F-TEID the UPF allocated."""
    ies = [_node_id(upf_ip), _cause(cause)]
    if cause == CAUSE_ACCEPTED:
        ies.append(sp.IE_FSEID(v4=1, seid=up_seid, ipv4=upf_ip))
        for pdr_id, teid, ip in created:
            ies.append(sp.IE_CreatedPDR(IE_list=[
                sp.IE_PDR_Id(id=pdr_id), sp.IE_FTEID(V4=1, TEID=teid, ipv4=ip)]))
    return _msg(SESSION_ESTABLISHMENT_RESPONSE, seq, cp_seid, ies)


def session_modification_request(
    seq: int, *, up_seid: int, gnb_ip: str | None = None, gnb_teid: int | None = None, qfi: int | None = None,
    end_marker: bool = False,
) -> bytes:
    """Update the DL FAR's tunnel and/or the QER's QFI; `end_marker` (a path switch) sets SNDEM."""
    ies: list[Packet] = []
    if gnb_ip is not None and gnb_teid is not None:
        params: list[Packet] = [sp.IE_DestinationInterface(interface=IFACE_ACCESS), _ohc(gnb_ip, gnb_teid)]
        if end_marker:
            params.append(sp.IE_PFCPSMReqFlags(spare=0, QUARR=0, SNDEM=1, DROBU=0))
        ies.append(sp.IE_UpdateFAR(IE_list=[
            sp.IE_FAR_Id(id=FAR_DL),
            sp.IE_ApplyAction(spare=0, FORW=1),
            sp.IE_UpdateForwardingParameters(IE_list=params),
        ]))
    if qfi is not None:
        ies.append(sp.IE_UpdateQER(IE_list=[
            sp.IE_QER_Id(id=QER_DEFAULT), sp.IE_GateStatus(ul=0, dl=0), sp.IE_QFI(spare=0, QFI=qfi)]))
    return _msg(SESSION_MODIFICATION_REQUEST, seq, up_seid, ies)


def session_modification_response(seq: int, *, cp_seid: int, cause: int) -> bytes:
    return _msg(SESSION_MODIFICATION_RESPONSE, seq, cp_seid, [_cause(cause)])


def session_deletion_request(seq: int, *, up_seid: int) -> bytes:
    return _msg(SESSION_DELETION_REQUEST, seq, up_seid, [])


def session_deletion_response(seq: int, *, cp_seid: int, cause: int) -> bytes:
    return _msg(SESSION_DELETION_RESPONSE, seq, cp_seid, [_cause(cause)])


# --- parsing ---

def parse(data: bytes) -> Packet:
    """Decode one PFCP message; raises PfcpError unless header, length and IEs are sound."""
    if len(data) < 8:
        raise PfcpError(f"short PFCP message ({len(data)} bytes)")
    if data[0] >> 5 != 1:
        raise PfcpError(f"PFCP version {data[0] >> 5} not supported")
    length = int.from_bytes(data[2:4], "big")
    if length + 4 != len(data):
        raise PfcpError(f"PFCP length {length} does not match datagram ({len(data) - 4})")
    msg_type = data[1]
    if msg_type in _SESSION_TYPES and not data[0] & 0x01:
        raise PfcpError(f"session message {msg_type} without SEID")
    try:
        pkt = sp.PFCP(data)
    except Exception as e:   # scapy raises assorted errors on garbage
        raise PfcpError(f"undecodable PFCP: {e}") from e
    body = pkt.payload
    if isinstance(body, Raw):
        raise PfcpError(f"unsupported PFCP message type {msg_type}")
    return pkt


def ies_of(pkt: Packet) -> list[Packet]:
    """Top-level IEs of a parsed message (empty for a message without IEs)."""
    return list(getattr(pkt.payload, "IE_list", None) or [])


def walk(ies: Iterable[Packet]) -> Iterator[Packet]:
    """Every IE, grouped ones included, depth first."""
    for ie in ies or ():
        yield ie
        sub = getattr(ie, "IE_list", None)
        if sub:
            yield from walk(sub)


def first(ies: Iterable[Packet], cls: type) -> Any:
    """The first IE of class `cls` directly in `ies`, or None."""
    for ie in ies or ():
        if isinstance(ie, cls):
            return ie
    return None


def cause_of(pkt: Packet) -> int | None:
    ie = first(ies_of(pkt), sp.IE_Cause)
    return None if ie is None else int(ie.cause)
