"""DNS query dissector over UDP and TCP, with scapy-built messages."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR

from upf_tap.dissect import Malformed
from upf_tap.dissect.dns import dissect_datagram, dissect_stream, looks_like, looks_like_datagram, read_name


def q(name: str, qtype: str | int = "A", **kw) -> bytes:
    return bytes(DNS(id=0x1234, rd=1, qd=[DNSQR(qname=name, qtype=qtype)], **kw))


def test_udp_query_fields() -> None:
    assert dissect_datagram(q("svc9.iot.mec.local.")) == [
        ("dns.query", {"qname": "svc9.iot.mec.local", "qtype": 1, "transport": "udp"})
    ]
    assert dissect_datagram(q("www.example.com", "AAAA"))[0][1]["qtype"] == 28
    assert dissect_datagram(q("_sip._udp.example.com", "SRV"))[0][1]["qname"] == "_sip._udp.example.com"


def test_one_event_per_question() -> None:
    msg = bytes(DNS(rd=1, qd=[DNSQR(qname="a.example", qtype="A"), DNSQR(qname="b.example", qtype="HTTPS")]))
    assert [(a["qname"], a["qtype"]) for _, a in dissect_datagram(msg)] == [("a.example", 1), ("b.example", 65)]


def test_response_and_other_opcodes_give_nothing() -> None:
    resp = bytes(DNS(id=1, qr=1, qd=[DNSQR(qname="a.example")], an=[DNSRR(rrname="a.example", rdata="10.0.0.1")]))
    assert dissect_datagram(resp) == []
    assert dissect_datagram(q("zone.example", "SOA", opcode=4)) == []  # NOTIFY


def test_compression_pointer_and_loop() -> None:
    # header, question 1 "mec.local", question 2 "svc" + pointer to offset 12
    hdr = struct.pack("!HHHHHH", 7, 0x0100, 2, 0, 0, 0)
    q1 = b"\x03mec\x05local\x00" + struct.pack("!HH", 1, 1)
    q2 = b"\x03svc\xc0\x0c" + struct.pack("!HH", 28, 1)
    found = dissect_datagram(hdr + q1 + q2)
    assert [a["qname"] for _, a in found] == ["mec.local", "svc.mec.local"]
    assert found[1][1]["qtype"] == 28
    loop = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x01a\xc0\x0c" + struct.pack("!HH", 1, 1)
    with pytest.raises(Malformed):
        dissect_datagram(loop)


def test_label_escaping_and_root() -> None:
    msg = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x04a.b\x01\x02ex\x00" + struct.pack("!HH", 16, 1)
    # labels "a.b\x01" and "ex": shown as tshark does (octal control byte, dot kept)
    assert dissect_datagram(msg)[0][1]["qname"] == "a.b\\001.ex"
    name, end = read_name(b"\x00", 0)
    assert (name, end) == ("", 1)


def test_tcp_stream_several_messages_split() -> None:
    m1, m2 = q("one.example"), q("two.example", "TXT")
    buf = struct.pack("!H", len(m1)) + m1 + struct.pack("!H", len(m2)) + m2
    found, pos, done = dissect_stream(buf, 0)
    assert [(a["qname"], a["qtype"], a["transport"]) for _, a in found] == [
        ("one.example", 1, "tcp"), ("two.example", 16, "tcp")]
    assert pos == len(buf) and not done
    for cut in range(len(buf)):
        f1, p1, _ = dissect_stream(buf[:cut], 0)
        f2, p2, _ = dissect_stream(buf, p1)
        assert f1 + f2 == found and p2 == len(buf)


@pytest.mark.parametrize("bad", [
    b"\x00" * 5,
    struct.pack("!HHHHHH", 1, 0, 50, 0, 0, 0) + b"\x00\x00\x01\x00\x01",
    struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x05ab",
    struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x81abc\x00\x00\x01\x00\x01",  # reserved label type
    struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x00\x00\x01",
    struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",
])
def test_malformed(bad: bytes) -> None:
    with pytest.raises(Malformed):
        dissect_datagram(bad)


def test_tcp_length_too_small() -> None:
    with pytest.raises(Malformed):
        dissect_stream(b"\x00\x03abc", 0)


def test_extended_label_named_as_tshark_names_it() -> None:
    """A label of type 0x40 ends the name, which tshark shows as "<Unknown extended label>"
    (seen on the nDPI fuzz capture in tests/corpus), reading the type right after it."""
    msg = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x03sip\x4d" + struct.pack("!HH", 0x646B, 1)
    assert dissect_datagram(msg) == [("dns.query", {"qname": "<Unknown extended label>", "qtype": 0x646B,
                                                    "transport": "udp"})]


def test_looks_like() -> None:
    """The datagram sniffer takes the header shapes tshark's DNS heuristic takes (checked against
    tshark on real DNS to other ports in tests/corpus); the stream sniffer takes queries only."""
    m = q("a.example")
    assert looks_like_datagram(m)
    assert looks_like_datagram(bytes(DNS(qr=1, qd=[DNSQR(qname="a.example")])))  # a response, too
    assert not looks_like_datagram(bytes(DNS(qd=[DNSQR(qname="a"), DNSQR(qname="b")])))  # a query asks one
    assert not looks_like_datagram(bytes(DNS(opcode=5, qd=[DNSQR(qname="a.example")])))  # UPDATE
    assert not looks_like_datagram(bytes(DNS(qd=[], an=[])))  # nothing asked or answered
    assert not looks_like_datagram(m[:12])
    assert not looks_like_datagram(m[:12] + b"\x00")  # no room for the question
    assert looks_like(struct.pack("!H", len(m)) + m)
    assert not looks_like(b"GET / HTTP/1.1\r\n")
