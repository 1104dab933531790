"""tshark as the independent oracle for the control-plane tests (run once per capture)."""

from __future__ import annotations

import functools
import shutil

from testbed.corpus import tshark
from tests.conftest import CAPTURES

TSHARK = shutil.which("tshark")
NULL_DECIPHER = ("-o", "nas-5gs.null_decipher:TRUE")


@functools.cache
def fields(name: str, display_filter: str, names: tuple[str, ...],
           options: tuple[str, ...] = ()) -> list[dict[str, list[str]]]:
    """One dict per matching frame: field name -> all its occurrences (possibly empty)."""
    rows = tshark.fields(CAPTURES / name, names, display_filter, options)
    return [{n: [v for v in vs if v] for n, vs in r.items()} for r in rows]


def pfcp_established(name: str) -> list[tuple[str | None, int | None]]:
    """(UE IPv4 of the request, UP F-SEID of the response) per accepted establishment.

    An establishment counts when tshark pairs a Session Establishment Response
    (cause 1) with a Session Establishment Request sent the other way.
    """
    rows = fields(name, "pfcp", ("frame.number", "ip.src", "ip.dst", "pfcp.msg_type", "pfcp.response_to",
                                 "pfcp.cause", "pfcp.ue_ip_addr_ipv4", "pfcp.seid"))
    by_frame = {int(r["frame.number"][0]): r for r in rows}
    out: list[tuple[str | None, int | None]] = []
    for r in rows:
        if r["pfcp.msg_type"] != ["51"] or r["pfcp.cause"][:1] != ["1"] or not r["pfcp.response_to"]:
            continue
        req = by_frame.get(int(r["pfcp.response_to"][0]))
        if req is None or req["pfcp.msg_type"] != ["50"]:
            continue
        if (req["ip.src"], req["ip.dst"]) != (r["ip.dst"], r["ip.src"]):
            continue
        ue_ip = req["pfcp.ue_ip_addr_ipv4"][0] if req["pfcp.ue_ip_addr_ipv4"] else None
        seids = r["pfcp.seid"]      # header SEID first, then the F-SEID's
        up_seid = int(seids[-1], 16) if len(seids) >= 2 else None
        out.append((ue_ip, up_seid))
    return out


def supis(name: str) -> set[str]:
    """SUPIs from every null-scheme SUCI that tshark decodes on N2 (SCTP only, not SBI)."""
    rows = fields(name, "sctp && nas_5gs.mm.suci.msin", ("nas_5gs.mm.suci.msin", "e212.mcc", "e212.mnc"),
                  NULL_DECIPHER)
    out: set[str] = set()
    for r in rows:
        # the SUCI's PLMN is the one decoded right before its MSIN (the last e212 pair)
        mcc, mnc = r["e212.mcc"][-1], r["e212.mnc"][-1]
        mnc = mnc.zfill(2)
        for msin in r["nas_5gs.mm.suci.msin"]:
            out.add(f"imsi-{mcc}{mnc}{msin}")
    return out


def gtp_packets(name: str) -> list[tuple[int, str, int, str, str]]:
    """(frame, outer dst, TEID, inner src, inner dst) for each G-PDU carrying IPv4."""
    rows = fields(name, "gtp.message == 0xff && ip.proto", ("frame.number", "ip.dst", "gtp.teid", "ip.src"))
    out = []
    for r in rows:
        if len(r["ip.dst"]) < 2:
            continue
        out.append((int(r["frame.number"][0]), r["ip.dst"][0], int(r["gtp.teid"][0], 16),
                    r["ip.src"][-1], r["ip.dst"][-1]))
    return out


def ngap_pdu_addresses(name: str) -> set[str]:
    rows = fields(name, "sctp && nas_5gs.sm.pdu_addr_inf_ipv4", ("nas_5gs.sm.pdu_addr_inf_ipv4",), NULL_DECIPHER)
    return {ip for r in rows for ip in r["nas_5gs.sm.pdu_addr_inf_ipv4"]}


def ngap_teids(name: str) -> set[int]:
    rows = fields(name, "sctp && ngap.gTP_TEID", ("ngap.gTP_TEID",))
    return {int(t.replace(":", ""), 16) for r in rows for t in r["ngap.gTP_TEID"]}
