"""Fuzzing: random bytes and mutated valid messages never raise anything but Malformed.

Each dissector is fed hypothesis-generated input; results must keep the contract's
shape: a list of (kind, dict) and, for streams, a position that never moves backwards.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from dissect_testlib import client_hello, crypto_frame, protect_initial, rfc9001_a2_packet, tls_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.contrib.coap import CoAP
from scapy.contrib.mqtt import MQTT, MQTTConnect, MQTTPublish
from scapy.layers.dns import DNS, DNSQR

from upf_tap.dissect import Malformed, coap, dns, http, icmp, mqtt, quic, tls

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_DNS_Q = bytes(DNS(rd=1, qd=[DNSQR(qname="a.mec.local"), DNSQR(qname="b.mec.local", qtype="AAAA")]))
SEEDS_STREAM: dict[str, tuple[Callable, bytes]] = {
    "http": (http.dissect_stream,
             b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nabc\r\n0\r\n\r\nPUT /c HTTP/1.1\r\nContent-Length: 2\r\n\r\nxy"),
    "tls": (tls.dissect_stream, tls_records(client_hello("f.mec.local", ["h2"], [0x0304]), sizes=[50, 60])),
    "mqtt": (mqtt.dissect_stream,
             bytes(MQTT() / MQTTConnect(protoname=b"MQTT", protolevel=4, clientId=b"c", usernameflag=1,
                                        username=b"u")) + bytes(MQTT(QOS=1) / MQTTPublish(topic=b"t", msgid=1,
                                                                                          value=b"v"))),
    "dns": (dns.dissect_stream, struct.pack("!H", len(_DNS_Q)) + _DNS_Q),
}
_HELLO = client_hello("q.mec.local", ["h3"], [0x0304])
SEEDS_DGRAM: dict[str, tuple[Callable, bytes]] = {
    "dns": (dns.dissect_datagram, _DNS_Q),
    "coap": (coap.dissect_datagram, bytes(CoAP(code=1, msg_id=1, token=b"\x01",
                                               options=[("Uri-Host", b"h"), ("Uri-Path", b"p")]))),
    "icmp4": (lambda d: icmp.dissect_icmp(d, False), b"\x08\x00\x00\x00\x00\x01\x00\x02abc"),
    "icmp6": (lambda d: icmp.dissect_icmp(d, True), b"\x80\x00\x00\x00\x00\x01\x00\x02abc"),
    "quic": (quic.dissect_datagram, protect_initial(b"\x11" * 8, crypto_frame(0, _HELLO), pad_to=400)),
    "quic_rfc": (quic.dissect_datagram, rfc9001_a2_packet()),
}


def _check_found(found: object) -> None:
    assert isinstance(found, list)
    for item in found:
        kind, app = item
        assert isinstance(kind, str) and isinstance(app, dict)


def _run_stream(fn: Callable, data: bytes, pos: int) -> None:
    try:
        found, new_pos, done = fn(data, pos)
    except Malformed:
        return
    _check_found(found)
    assert isinstance(new_pos, int) and new_pos >= pos and isinstance(done, bool)


def _run_dgram(fn: Callable, data: bytes) -> None:
    try:
        found = fn(data)
    except Malformed:
        return
    _check_found(found)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """The seed with a few byte flips, insertions, deletions, and maybe truncated."""
    b = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        i = draw(st.integers(0, max(0, len(b) - 1)))
        if op == "flip" and b:
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and b:
            b[i] = draw(st.sampled_from([0x00, 0x0D, 0x0A, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFF]))
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and b:
            del b[i : i + draw(st.integers(1, 4))]
    if draw(st.booleans()):
        b = b[: draw(st.integers(0, len(b)))]
    return bytes(b)


@pytest.mark.parametrize("name", sorted(SEEDS_STREAM))
@FUZZ
@given(data=st.binary(max_size=300), pos=st.integers(0, 40))
def test_stream_random_bytes(name: str, data: bytes, pos: int) -> None:
    _run_stream(SEEDS_STREAM[name][0], data, min(pos, len(data)))


@pytest.mark.parametrize("name", sorted(SEEDS_STREAM))
@FUZZ
@given(st.data())
def test_stream_mutated(name: str, data: st.DataObject) -> None:
    fn, seed = SEEDS_STREAM[name]
    buf = data.draw(mutated(seed))
    _run_stream(fn, buf, 0)
    # and as a pipeline would call it: growing prefixes with the returned pos
    pos = 0
    for cut in (len(buf) // 3, 2 * len(buf) // 3, len(buf)):
        if pos > cut:
            continue
        try:
            _, new_pos, done = fn(buf[:cut], pos)
        except Malformed:
            return
        assert new_pos >= pos
        pos = new_pos
        if done:
            return


@pytest.mark.parametrize("name", sorted(SEEDS_DGRAM))
@FUZZ
@given(data=st.binary(max_size=300))
def test_datagram_random_bytes(name: str, data: bytes) -> None:
    _run_dgram(SEEDS_DGRAM[name][0], data)


@pytest.mark.parametrize("name", sorted(SEEDS_DGRAM))
@FUZZ
@given(st.data())
def test_datagram_mutated(name: str, data: st.DataObject) -> None:
    fn, seed = SEEDS_DGRAM[name]
    _run_dgram(fn, data.draw(mutated(seed)))


@FUZZ
@given(st.data())
def test_quic_plaintext_mutated(data: st.DataObject) -> None:
    """Mutate the frames *before* protection, so the frame and TLS parsers see the damage."""
    frames = data.draw(mutated(crypto_frame(0, _HELLO) + b"\x01\x02\x00\x00\x00\x00"))
    pkt = protect_initial(b"\x22" * 8, frames, pad_to=0 if len(frames) > 100 else 200)
    _run_dgram(quic.dissect_datagram, pkt)
    asm = quic.QuicInitialAssembler()
    try:
        _check_found(asm.feed(pkt))
    except Malformed:
        pass


@FUZZ
@given(st.data())
def test_tls_hello_body_mutated(data: st.DataObject) -> None:
    body = data.draw(mutated(_HELLO[4:]))
    try:
        assert isinstance(tls.parse_client_hello(body), dict)
    except Malformed:
        pass


@pytest.mark.parametrize("fn", [http.looks_like, tls.looks_like, mqtt.looks_like, dns.looks_like,
                                dns.looks_like_datagram, coap.looks_like, quic.looks_like_datagram, quic.claims_datagram])
@FUZZ
@given(data=st.binary(max_size=64))
def test_looks_like_never_raises(fn: Callable[[bytes], bool], data: bytes) -> None:
    assert isinstance(fn(data), bool)
