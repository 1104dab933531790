"""SCTP chunk handling, NGAP and NAS-5GS facts, and the N2 side of the correlator."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP
from scapy.layers.sctp import SCTP, SCTPChunkData, SCTPChunkSACK
from scapy.utils import wrpcap

from tests.conftest import CAPTURES
from tests.control import ctl_oracle as oracle
from tests.control.ctl_pcap import read_outer
from tests.control.ctl_replay import replay
from upf_tap.control import nas, ngap
from upf_tap.control.correlator import ControlPlane
from upf_tap.control.sctp import SctpError, SctpReader

GNB, AMF = "192.0.2.10", "192.0.2.20"


def _ngap_messages(name: str) -> list[tuple[int, bytes]]:
    """(frame, NGAP bytes) of the capture's single-chunk NGAP DATA."""
    out = []
    reader = SctpReader(collections.Counter())
    for o in read_outer(CAPTURES / name):
        if o.proto == 132:
            out += [(o.frame, data) for _ppid, _sid, data in reader.feed(o.src, o.dst, o.l4)]
    return out


def _frame(name: str, frame: int) -> bytes:
    for o in read_outer(CAPTURES / name):
        if o.frame == frame:
            return o.l4
    raise LookupError(frame)


def test_bundled_data_chunks_are_all_read() -> None:
    got = SctpReader(collections.Counter()).feed("a", "b", _frame("oai-ueransim.pcap", 53))
    assert len(got) == 2 and all(ppid == 60 for ppid, _sid, _d in got)
    if oracle.TSHARK:
        (row,) = oracle.fields("oai-ueransim.pcap", "frame.number == 53", ("ngap.procedureCode",))
        assert [str(ngap.decode(d).procedure) for _p, _s, d in got] == row["ngap.procedureCode"]


def _fragments(data: bytes, n: int, tsn: int) -> list[SCTPChunkData]:
    step = -(-len(data) // n)
    parts = [data[i:i + step] for i in range(0, len(data), step)]
    return [SCTPChunkData(tsn=tsn + i, stream_id=1, stream_seq=0, proto_id=60, data=p,
                          beginning=int(i == 0), ending=int(i == len(parts) - 1))
            for i, p in enumerate(parts)]


def test_fragmented_message_is_reassembled_as_tshark_does(tmp_path: Path) -> None:
    _frame, data = next((f, d) for f, d in _ngap_messages("oai-5greplay.pcap") if ngap.decode(d).procedure == 29)
    chunks = _fragments(data, 3, 1000)
    pkts = [IP(src=GNB, dst=AMF) / SCTP(sport=38412, dport=38412, tag=7) / c for c in chunks]
    pcap = tmp_path / "frag.pcap"
    wrpcap(str(pcap), pkts)
    stats: collections.Counter[str] = collections.Counter()
    reader = SctpReader(stats)
    out = [m for p in pkts for m in reader.feed(GNB, AMF, bytes(p[SCTP]))]
    assert out == [(60, 1, data)] and stats["sctp.reassembled"] == 1
    if oracle.TSHARK:
        res = subprocess.run([oracle.TSHARK, "-n", "-r", str(pcap), "-Y", "ngap", "-T", "fields",
                              "-e", "ngap.procedureCode", "-e", "ngap.gTP_TEID"],
                             capture_output=True, text=True, check=True)
        (line,) = res.stdout.splitlines()
        code, teid = line.split("\t")
        assert int(code) == 29
        assert int(teid.split(",")[0].replace(":", ""), 16) == ngap.decode(data).setup_requests[0].tunnel[1]


def test_fragments_out_of_order_retransmissions_and_other_chunks() -> None:
    stats: collections.Counter[str] = collections.Counter()
    reader = SctpReader(stats)
    data = bytes(range(200))
    a, _b, c = _fragments(data, 3, 50)
    sack = SCTPChunkSACK(cumul_tsn_ack=1)

    def pkt(*chunks: object) -> bytes:
        p = SCTP(sport=1, dport=38412, tag=9)
        for ch in chunks:
            p = p / ch
        return bytes(p)

    assert reader.feed(GNB, AMF, pkt(sack, a)) == []
    assert reader.feed(GNB, AMF, pkt(c)) == []            # gap: b missing -> dropped
    assert stats["sctp.fragment_dropped"] == 1
    whole = SCTPChunkData(tsn=60, stream_id=0, proto_id=60, data=b"xyz", beginning=1, ending=1)
    assert reader.feed(GNB, AMF, pkt(whole)) == [(60, 0, b"xyz")]
    assert reader.feed(GNB, AMF, pkt(whole)) == []        # same TSN again: a retransmission
    assert stats["sctp.retransmission"] == 1
    with pytest.raises(SctpError):
        reader.feed(GNB, AMF, pkt(whole)[:-4])
    with pytest.raises(SctpError):
        reader.feed(GNB, AMF, b"\x00" * 11)


def test_control_plane_counts_bad_sctp_and_other_ppids() -> None:
    stats: collections.Counter[str] = collections.Counter()
    events: list[dict] = []
    cp = ControlPlane("t", events.append, stats)
    other = bytes(SCTP(sport=2905, dport=2905) / SCTPChunkData(tsn=1, proto_id=3, data=b"m3ua", beginning=1, ending=1))
    cp.on_sctp(0, GNB, AMF, other)
    cp.on_sctp(0, GNB, AMF, b"\x01\x02")
    junk = bytes(SCTP(sport=9, dport=38412) / SCTPChunkData(tsn=1, proto_id=60, data=b"\xff" * 9,
                                                            beginning=1, ending=1))
    cp.on_sctp(0, GNB, AMF, junk)
    assert stats["sctp.not_ngap"] == 1 and stats["sctp.malformed"] == 1 and stats["ngap.malformed"] == 1
    assert events == []


# ------------------------------------------------------------------ NAS

def test_suci_guti_and_tmsi_identities() -> None:
    f = nas.NasFacts()
    nas.mobile_identity(bytes.fromhex("0109f107f0ff00000000203190"), f)
    assert f.supi == "imsi-901700000021309"
    f = nas.NasFacts()
    nas.mobile_identity(bytes.fromhex("0102f859000000000000000013"), f)     # OAI UE: 208/95
    assert f.supi == "imsi-208950000000031"
    f = nas.NasFacts()
    nas.mobile_identity(bytes.fromhex("0109f107f0ff01010203040506"), f)     # profile A: concealed
    assert f.supi is None and f.suci_concealed
    f = nas.NasFacts()
    nas.mobile_identity(bytes.fromhex("f209f107020040c7004bb3"), f)
    assert f.tmsi_key == (1, 0, 0xC7004BB3)
    f2 = nas.NasFacts()
    nas.mobile_identity(bytes.fromhex("f40040c7004bb3"), f2)                 # 5G-S-TMSI: same UE
    assert f2.tmsi_key == f.tmsi_key
    assert nas.plmn(bytes.fromhex("130014")) == ("310", "410")               # 3-digit MNC
    sr = nas.decode(bytes.fromhex("7e004c100007f40040c7004bb3"))            # Service Request
    assert sr.mm_type == nas.MM_SERVICE_REQUEST and sr.tmsi_key == f.tmsi_key
    with pytest.raises(nas.NasError):
        nas.decode(bytes.fromhex("7e004c100009f40040"))                     # identity overruns


def test_null_ciphered_accept_is_read_and_real_ciphering_is_not() -> None:
    accept = bytes.fromhex("7e02fc0bb33a027e006801004a2e0a01c211000901000631310101ff070606001606001429"
                           "05010c0101882204010000017900060720410101077b0001802517036f6169066d6e6330"
                           "3935066d63633230380467707273120a")
    f = nas.decode(accept, cipher_alg=0)
    assert (f.sm_type, f.pdu_session_id, f.ue_ipv4, f.dnn, f.snssai) == (0xC2, 10, "12.1.1.136", "oai", "1-000001")
    assert nas.decode(accept).ue_ipv4 == "12.1.1.136"          # algorithm unknown: parses whole, so plain
    assert nas.decode(accept, cipher_alg=2).ciphered            # NEA2: not guessed
    scrambled = accept[:7] + bytes(b ^ 0x5A for b in accept[7:])
    assert nas.decode(scrambled).ciphered
    with pytest.raises(nas.NasError):
        nas.decode(b"\x7e\x00")


def test_dnn_and_snssai_text() -> None:
    assert nas.dnn_text(b"\x03oai\x06mnc095\x06mcc208\x04gprs") == "oai"
    assert nas.dnn_text(b"\x08internet") == "internet"
    assert nas.dnn_text(b"\x04oai") == "oai"                   # one-too-long last label (seen from OAI)
    assert nas.snssai_text(b"\x01") == "1"
    assert nas.snssai_text(b"\xde\x00\x00\x7b") == "222-00007b"


# ------------------------------------------------------------------ N2 state on the captures

def test_registrations_by_guti_get_the_supi_from_the_earlier_accept() -> None:
    r = replay("open5gs-registration.pcapng")
    regs = r.kinds("ue.registered")
    assert len(regs) >= 20
    assert all(e["ue"].get("supi") for e in regs)
    # some registrations carried only a 5G-GUTI: count them with tshark
    guti_regs = oracle.fields("open5gs-registration.pcapng", "ngap.procedureCode == 15 && nas_5gs.mm.type_id == 2",
                              ("frame.number",), oracle.NULL_DECIPHER)
    assert guti_regs


def test_release_and_deregistration_events() -> None:
    r = replay("open5gs-registration.pcapng")
    assert r.kinds("ue.context_release") and r.kinds("ue.deregistered") and r.kinds("pdu_session.release")
    for e in r.kinds("pdu_session.release"):
        assert e["point"] == "n2" and "pdu_session_id" in e["app"]


def test_ngap_import_is_lazy() -> None:
    code = ("import sys, collections; from upf_tap.control.correlator import ControlPlane; "
            "ControlPlane('t', print, collections.Counter()).on_pfcp(0, 'a', 8805, 'b', 8805, b'');"
            "assert 'pycrate_asn1dir.NGAP' not in sys.modules; assert 'pycrate_mobile.NAS5G' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
