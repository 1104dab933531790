"""NAS-5GS (TS 24.501) facts for identity: who the UE is and what its PDU session got.

pycrate's ``parse_NAS5G`` walks the messages whose wanted IEs are optional (it knows
every IE's format): Registration Accept, Security Mode Complete, UL/DL NAS Transport
and the 5GSM messages inside. Mandatory IEs at fixed places (the mobile identity of a
Registration Request, Identity Response, Service Request, Deregistration Request; the
algorithms of a Security Mode Command) are read directly: pycrate costs about a
millisecond a message and most N2 traffic is Service Request/Accept, which the tap
does not otherwise need. The values kept (5GS mobile identity, PDU address, S-NSSAI,
DNN) are decoded here from the IE bytes, so their text form is ours and tested.

Security-protected NAS: integrity-only messages (header types 1, 3) are plain after
the 7-byte security header. Ciphered ones (2, 4) are read only when the ciphering
algorithm is NEA0 (learnt from the Security Mode Command), or, when the algorithm is
not known, only if the inner bytes parse as a whole plain NAS message (as Wireshark's
``nas-5gs.null_decipher`` does). Real ciphering is reported, never guessed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

EPD_5GMM = 0x7E
EPD_5GSM = 0x2E

# 5GMM message types (TS 24.501 §9.7)
MM_REGISTRATION_REQUEST = 0x41
MM_REGISTRATION_ACCEPT = 0x42
MM_REGISTRATION_COMPLETE = 0x43
MM_DEREGISTRATION_REQUEST_UE_ORIG = 0x45
MM_DEREGISTRATION_REQUEST_UE_TERM = 0x47
MM_SERVICE_REQUEST = 0x4C
MM_IDENTITY_RESPONSE = 0x5C
MM_SECURITY_MODE_COMMAND = 0x5D
MM_SECURITY_MODE_COMPLETE = 0x5E
MM_UL_NAS_TRANSPORT = 0x67
MM_DL_NAS_TRANSPORT = 0x68

# 5GSM message types
SM_ESTABLISHMENT_REQUEST = 0xC1
SM_ESTABLISHMENT_ACCEPT = 0xC2
SM_ESTABLISHMENT_REJECT = 0xC3
SM_RELEASE_COMMAND = 0xD3
SM_RELEASE_COMPLETE = 0xD4

_parse: Any = None


def _parser() -> Any:
    """pycrate's NAS parser, imported on first use (and without its CryptoMobile warning)."""
    global _parse
    if _parse is None:
        # pycrate logs a warning at import ("CryptoMobile not found": the tap never deciphers)
        # and one per IE it cannot decode (we count those ourselves): keep its log quiet.
        logging.getLogger("pycrate_mobile").setLevel(logging.ERROR)
        from pycrate_mobile.NAS5G import parse_NAS5G

        _parse = parse_NAS5G
    return _parse


class NasError(ValueError):
    """NAS that cannot be read (malformed, unknown, or ciphered)."""


@dataclass(slots=True)
class NasFacts:
    mm_type: int | None = None
    sm_type: int | None = None
    ciphered: bool = False             # security-protected and not readable
    supi: str | None = None            # from a null-scheme SUCI
    suci_concealed: bool = False       # a SUCI with a real protection scheme: no SUPI here
    tmsi_key: tuple[int, int, int] | None = None   # (AMF set id, AMF pointer, 5G-TMSI)
    guti_assigned: bool = False        # tmsi_key comes from a Registration Accept
    cipher_alg: int | None = None      # from a Security Mode Command (0 = NEA0)
    pdu_session_id: int | None = None
    ue_ipv4: str | None = None
    ue_ipv6_iid: str | None = None     # the PDU address carries only the interface id
    dnn: str | None = None
    snssai: str | None = None
    inner: list[NasFacts] = field(default_factory=list)   # NAS container (Security Mode Complete)


# ------------------------------------------------------------------ value decoders

def plmn(raw: bytes) -> tuple[str, str]:
    """PLMN identity (3 bytes BCD, TS 24.008 §10.5.1.13) as (mcc, mnc)."""
    if len(raw) < 3:
        raise NasError("short PLMN")
    d = [raw[0] & 0x0F, raw[0] >> 4, raw[1] & 0x0F, raw[1] >> 4, raw[2] & 0x0F, raw[2] >> 4]
    mcc_d = d[0:3]
    mnc_d = [d[4], d[5]] + ([] if d[3] == 0x0F else [d[3]])
    if any(x > 9 for x in mcc_d + mnc_d):
        raise NasError("non-decimal PLMN digit")
    return "".join(map(str, mcc_d)), "".join(map(str, mnc_d))


def bcd_digits(raw: bytes) -> str:
    out: list[str] = []
    for b in raw:
        for nib in (b & 0x0F, b >> 4):
            if nib == 0x0F:
                return "".join(out)
            if nib > 9:
                raise NasError("non-decimal BCD digit")
            out.append(chr(0x30 + nib))
    return "".join(out)


def mobile_identity(raw: bytes, facts: NasFacts) -> None:
    """5GS mobile identity (§9.11.3.4): SUCI, 5G-GUTI or 5G-S-TMSI into facts."""
    if not raw:
        raise NasError("empty 5GS mobile identity")
    kind = raw[0] & 0x07
    if kind == 1:                                   # SUCI
        fmt = (raw[0] >> 4) & 0x07
        if fmt == 0:                                # IMSI-based
            if len(raw) < 8:
                raise NasError("short SUCI")
            mcc, mnc = plmn(raw[1:4])
            scheme = raw[6] & 0x0F
            if scheme != 0:
                facts.suci_concealed = True
                return
            msin = bcd_digits(raw[8:])
            if not msin:
                raise NasError("SUCI without MSIN")
            facts.supi = f"imsi-{mcc}{mnc}{msin}"
        elif fmt == 1:                              # NAI-based (network specific identifier)
            facts.suci_concealed = True
    elif kind == 2:                                 # 5G-GUTI
        if len(raw) < 11:
            raise NasError("short 5G-GUTI")
        set_ptr = int.from_bytes(raw[5:7], "big")
        facts.tmsi_key = (set_ptr >> 6, set_ptr & 0x3F, int.from_bytes(raw[7:11], "big"))
    elif kind == 4:                                 # 5G-S-TMSI
        if len(raw) < 7:
            raise NasError("short 5G-S-TMSI")
        set_ptr = int.from_bytes(raw[1:3], "big")
        facts.tmsi_key = (set_ptr >> 6, set_ptr & 0x3F, int.from_bytes(raw[3:7], "big"))


def snssai_text(raw: bytes) -> str | None:
    """S-NSSAI contents (§9.11.2.8): "sst" or "sst-sd" (sd as 6 hex digits)."""
    if not raw:
        return None
    if len(raw) in (4, 5, 8):
        return f"{raw[0]}-{raw[1:4].hex()}"
    return str(raw[0])


def dnn_text(raw: bytes) -> str | None:
    """DNN (§9.11.2.1B, APN encoding) without the operator identifier (.mncNNN.mccNNN.gprs)."""
    labels: list[str] = []
    off = 0
    while off < len(raw):
        n = raw[off]
        if n == 0:
            return None
        # some UEs send a label length one too long for the last label (\x04oai in a
        # 4-byte IE); read what is there, as Wireshark does
        labels.append(raw[off + 1:off + 1 + n].decode("ascii", "replace"))
        off += 1 + n
    if (len(labels) >= 4 and labels[-1].lower() == "gprs" and labels[-2].lower().startswith("mcc")
            and labels[-3].lower().startswith("mnc")):
        labels = labels[:-3]
    return ".".join(labels) or None


def pdu_address(raw: bytes, facts: NasFacts) -> None:
    """PDU address (§9.11.4.10): IPv4, IPv6 interface identifier, or both."""
    if not raw:
        return
    kind = raw[0] & 0x07
    if kind == 1 and len(raw) >= 5:
        facts.ue_ipv4 = ".".join(str(b) for b in raw[1:5])
    elif kind == 2 and len(raw) >= 9:
        facts.ue_ipv6_iid = raw[1:9].hex()
    elif kind == 3 and len(raw) >= 13:
        facts.ue_ipv6_iid = raw[1:9].hex()
        facts.ue_ipv4 = ".".join(str(b) for b in raw[9:13])


# ------------------------------------------------------------------ pycrate access

def _ie(msg: Any, name: str) -> Any | None:
    try:
        ie = msg[name]
    except Exception:        # pycrate's EltErr for an IE this message type does not have
        return None
    if ie.get_trans():
        return None
    return ie


def _ie_value(msg: Any, name: str) -> bytes | None:
    """The value bytes of a TLV/LV IE (its last component), or None when absent."""
    ie = _ie(msg, name)
    if ie is None:
        return None
    try:
        return bytes(ie[-1].to_bytes())
    except (TypeError, IndexError, AttributeError):
        return bytes(ie.to_bytes())


def _parse_plain(buf: bytes) -> Any | None:
    """A plain NAS message, or None unless pycrate reads all of it without error."""
    if len(buf) < 3 or buf[0] not in (EPD_5GMM, EPD_5GSM):
        return None
    if buf[0] == EPD_5GMM and buf[1] & 0x0F:
        return None
    try:
        msg, err = _parser()(buf)
    except Exception:        # pycrate raises assorted errors on junk; all mean "not NAS"
        return None
    if err or msg is None:
        return None
    try:
        if len(msg.to_bytes()) != len(buf):
            return None
    except Exception:
        return None
    return msg


# 5GMM messages whose needed IEs are optional (TLV): these go through pycrate
_NEEDS_PYCRATE = frozenset({MM_REGISTRATION_ACCEPT, MM_SECURITY_MODE_COMPLETE,
                            MM_UL_NAS_TRANSPORT, MM_DL_NAS_TRANSPORT})
# offset of the mandatory 5GS mobile identity (LV-E) in messages that carry one
_IDENTITY_AT = {MM_REGISTRATION_REQUEST: 4, MM_DEREGISTRATION_REQUEST_UE_ORIG: 4,
                MM_SERVICE_REQUEST: 4, MM_IDENTITY_RESPONSE: 3}
# every 5GMM type the correlator acts on: these are never taken on trust from bytes that
# might be ciphered
_ACTED_ON = frozenset(_IDENTITY_AT) | _NEEDS_PYCRATE | {MM_SECURITY_MODE_COMMAND, MM_DEREGISTRATION_REQUEST_UE_TERM}


def _worth_reading(plain: bytes) -> bool:
    """Could these bytes be a plain message we take facts from? (a cheap look at the header)"""
    if len(plain) < 3 or plain[0] not in (EPD_5GMM, EPD_5GSM):
        return True              # not plain-looking: let the full parse decide (and count it)
    if plain[0] == EPD_5GSM or plain[1] & 0x0F:
        return True
    return plain[2] in _ACTED_ON


def decode(buf: bytes, cipher_alg: int | None = None) -> NasFacts:
    """Facts from one NAS PDU as carried in an NGAP NAS-PDU IE.

    ``cipher_alg`` is the UE's NAS ciphering algorithm when known (0 = NEA0).
    Raises NasError when the PDU is malformed; sets ``ciphered`` when it is unreadable.
    """
    if len(buf) < 3:
        raise NasError("short NAS PDU")
    facts = NasFacts()
    plain = buf
    if buf[0] == EPD_5GMM and buf[1] & 0x0F:
        sec = buf[1] & 0x0F
        if sec not in (1, 2, 3, 4):
            raise NasError(f"security header type {sec}")
        if len(buf) < 10:
            raise NasError("short security-protected NAS")
        plain = buf[7:]
        if plain[0] == EPD_5GMM and plain[1] & 0x0F:
            # free5GC repeats the outer security header type in the inner header; the inner
            # message is plain by definition, so read it as such
            plain = plain[:1] + bytes([plain[1] & 0xF0]) + plain[2:]
        if sec in (2, 4) and cipher_alg not in (None, 0):
            facts.ciphered = True    # real ciphering: never guessed
            return facts
        if sec in (2, 4) and cipher_alg is None and _worth_reading(plain) and _parse_plain(plain) is None:
            facts.ciphered = True    # algorithm unknown and not a whole plain message
            return facts
    if len(plain) < 3 or plain[0] not in (EPD_5GMM, EPD_5GSM):
        raise NasError("not a 5GS NAS message")
    if plain[0] == EPD_5GSM:
        msg = _parse_plain(plain)
        if msg is None:
            raise NasError("malformed 5GSM message")
        _sm_facts(msg, plain, facts)
        return facts
    mt = plain[2]
    facts.mm_type = mt
    if mt in _IDENTITY_AT:
        # mandatory IE at a fixed place: read it directly (pycrate takes ~1 ms a message)
        off = _IDENTITY_AT[mt]
        if len(plain) < off + 2:
            raise NasError("truncated 5GS mobile identity")
        n = int.from_bytes(plain[off:off + 2], "big")
        if len(plain) < off + 2 + n:
            raise NasError("truncated 5GS mobile identity")
        mobile_identity(plain[off + 2:off + 2 + n], facts)
    elif mt == MM_SECURITY_MODE_COMMAND:
        if len(plain) < 4:
            raise NasError("truncated Security Mode Command")
        facts.cipher_alg = plain[3] >> 4          # NAS security algorithms: ciphering in bits 8-5
    elif mt in _NEEDS_PYCRATE:
        msg = _parse_plain(plain)
        if msg is None:
            raise NasError(f"malformed 5GMM message 0x{mt:02x}")
        _mm_facts(msg, plain, mt, facts)
    return facts


def _mm_facts(msg: Any, plain: bytes, mt: int, facts: NasFacts) -> None:
    if mt == MM_REGISTRATION_ACCEPT:
        guti = _ie_value(msg, "GUTI")
        if guti:
            mobile_identity(guti, facts)
            facts.guti_assigned = True
    elif mt == MM_SECURITY_MODE_COMPLETE:
        inner = _ie_value(msg, "NASContainer")
        if inner:
            try:
                facts.inner.append(decode(inner))
            except NasError:
                pass
    elif mt in (MM_UL_NAS_TRANSPORT, MM_DL_NAS_TRANSPORT):
        psi = _ie(msg, "PDUSessID")
        if psi is not None:
            facts.pdu_session_id = int(psi[-1].get_val())
        raw = _ie_value(msg, "DNN")
        if raw:
            facts.dnn = dnn_text(raw)
        raw = _ie_value(msg, "SNSSAI")
        if raw:
            facts.snssai = snssai_text(raw)
        container = _ie(msg, "PayloadContainer")
        if container is not None and plain[3] & 0x0F == 1:   # payload container type: N1 SM information
            sm_bytes = bytes(container[-1].to_bytes())
            sm = _parse_plain(sm_bytes)
            if sm is not None and sm_bytes[0] == EPD_5GSM:
                _sm_facts(sm, sm_bytes, facts)


def _sm_facts(msg: Any, plain: bytes, facts: NasFacts) -> None:
    if len(plain) < 4:
        return
    facts.sm_type = plain[3]
    if plain[1]:
        facts.pdu_session_id = plain[1]
    if facts.sm_type == SM_ESTABLISHMENT_ACCEPT:
        raw = _ie_value(msg, "PDUAddress")
        if raw:
            pdu_address(raw, facts)
        raw = _ie_value(msg, "SNSSAI")
        if raw:
            facts.snssai = snssai_text(raw)
        raw = _ie_value(msg, "DNN")
        if raw:
            facts.dnn = dnn_text(raw)
