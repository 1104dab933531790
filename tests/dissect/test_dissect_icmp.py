"""ICMP echo request dissector, v4 and v6, with scapy-built messages."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest

from upf_tap.dissect import Malformed
from upf_tap.dissect.icmp import dissect_datagram, dissect_icmp


def test_v4_echo_request() -> None:
    assert dissect_icmp(bytes(ICMP(type=8, id=0x1a2b, seq=513) / b"ping"), False) == [
        ("icmp.echo_request", {"id": 0x1A2B, "seq": 513})]
    assert dissect_datagram(bytes(ICMP(type=8, id=1, seq=2))) == [("icmp.echo_request", {"id": 1, "seq": 2})]


def test_v6_echo_request() -> None:
    assert dissect_icmp(bytes(ICMPv6EchoRequest(id=77, seq=3, data=b"x")), True) == [
        ("icmp.echo_request", {"id": 77, "seq": 3})]


def test_other_messages_give_nothing() -> None:
    assert dissect_icmp(bytes(ICMP(type=0, id=1, seq=1)), False) == []
    assert dissect_icmp(bytes(ICMP(type=3, code=3)), False) == []
    assert dissect_icmp(bytes(ICMPv6EchoReply(id=1, seq=1)), True) == []
    # the v4 echo request type means nothing in ICMPv6 and the other way round
    assert dissect_icmp(bytes(ICMP(type=8, id=1, seq=1)), True) == []
    assert dissect_icmp(bytes(ICMPv6EchoRequest(id=1, seq=1)), False) == []


@pytest.mark.parametrize("bad", [b"", b"\x08\x00", b"\x08\x00\x00\x00\x00\x01"])
def test_malformed(bad: bytes) -> None:
    with pytest.raises(Malformed):
        dissect_icmp(bad, False)
