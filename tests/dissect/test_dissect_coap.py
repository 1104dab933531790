"""CoAP request dissector: scapy-built messages and crafted option encodings."""

from __future__ import annotations

import pytest
from scapy.contrib.coap import CoAP

from upf_tap.dissect import Malformed
from upf_tap.dissect.coap import dissect_datagram, looks_like


def test_get_with_host_path_query() -> None:
    msg = bytes(CoAP(type=0, code=1, msg_id=0x1234, token=b"\xca\xfe", options=[
        ("Uri-Host", b"sensors.mec.local"), ("Uri-Path", b"api"), ("Uri-Path", b"temp"), ("Uri-Query", b"u=c")]))
    assert dissect_datagram(msg) == [("coap.request", {
        "method": "GET", "uri_host": "sensors.mec.local", "uri_path": "/api/temp", "uri_query": "u=c",
        "type": "CON", "token": "cafe"})]
    assert looks_like(msg)


@pytest.mark.parametrize(("code", "name"), [(2, "POST"), (3, "PUT"), (4, "DELETE"), (5, "FETCH"),
                                            (6, "PATCH"), (7, "iPATCH")])
def test_methods_non_no_path(code: int, name: str) -> None:
    found = dissect_datagram(bytes(CoAP(type=1, code=code, msg_id=1)) + b"\xffpayload")
    assert found == [("coap.request", {"method": name, "uri_path": "/", "type": "NON", "token": ""})]


def test_extended_delta_and_length() -> None:
    seg = b"s" * 300
    query = b"q" * 20
    msg = (bytes([0x40, 0x01, 0x00, 0x01])
           + bytes([0x36]) + b"h.mec1"                                  # Uri-Host (3), 6 bytes
           + bytes([0x8E]) + (300 - 269).to_bytes(2, "big") + seg       # Uri-Path (11), length 14-ext
           + bytes([0x4D, 20 - 13]) + query                             # Uri-Query (15), length 13-ext
           + bytes([0xD1, 45 - 13]) + b"\x07"                           # Size1 (60), delta 13-ext
           + bytes([0xE1]) + (1989 - 269).to_bytes(2, "big") + b"x"     # option 2049, delta 14-ext
           + b"\xffbody")
    found = dissect_datagram(msg)
    assert found[0][1]["uri_host"] == "h.mec1"
    assert found[0][1]["uri_path"] == "/" + "s" * 300
    assert found[0][1]["uri_query"] == "q" * 20


def test_responses_and_empty_messages_give_nothing() -> None:
    assert dissect_datagram(bytes(CoAP(type=2, code=69, msg_id=1, token=b"\x01"))) == []   # 2.05 Content
    assert dissect_datagram(bytes([0x60, 0x00, 0x00, 0x07])) == []                          # empty ACK
    assert dissect_datagram(bytes([0x40, 0x00, 0x00, 0x07])) == []                          # CoAP ping
    assert dissect_datagram(bytes([0x60, 0x01, 0x00, 0x07])) == []                          # request code in ACK


@pytest.mark.parametrize("bad", [
    b"\x40\x01",                              # shorter than the header
    b"\x80\x01\x00\x01",                      # version 2
    b"\x49\x01\x00\x01" + bytes(9),           # token length 9
    b"\x48\x01\x00\x01\x00",                  # token runs past the end
    b"\x40\x01\x00\x01\xb5ab",                # option value runs past the end
    b"\x40\x01\x00\x01\xf1a",                 # delta nibble 15
    b"\x40\x01\x00\x01\xff",                  # payload marker, no payload
    b"\x40\x00\x00\x01\x00",                  # empty message with bytes after it
])
def test_malformed(bad: bytes) -> None:
    with pytest.raises(Malformed):
        dissect_datagram(bad)


def test_looks_like_rejects() -> None:
    assert not looks_like(bytes(CoAP(type=2, code=69, msg_id=1)))
    assert not looks_like(b"\x16\x03\x01\x00")
