"""QUIC client Initial dissector: RFC 9001 Appendix A and Initials protected here."""

from __future__ import annotations

import struct

import pytest
from dissect_testlib import (
    RFC9001_DCID,
    client_hello,
    crypto_frame,
    initial_keys,
    protect_initial,
    rfc9001_a2_packet,
    varint,
)

from upf_tap.dissect import Malformed
from upf_tap.dissect.quic import (
    V2,
    QuicInitialAssembler,
    claims_datagram,
    client_initial_keys,
    dissect_datagram,
    looks_like_datagram,
    version_spec,
)

DCID = bytes.fromhex("c0ffee0102030405")
HELLO = client_hello("video.mec.local", ["h3"], [0x0304])
EXPECT = [("quic.initial", {"sni": "video.mec.local", "alpn": ["h3"], "tls_version": "TLS 1.3", "version": "1"})]


def test_rfc9001_a1_keys() -> None:
    key, iv, hp = client_initial_keys(RFC9001_DCID)
    assert key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert hp.hex() == "9f50449e04a0e810283a1e9933adedd2"
    assert initial_keys(RFC9001_DCID) == (key, iv, hp)  # cryptography's HKDF agrees


def test_rfc9001_a2_client_initial() -> None:
    pkt = rfc9001_a2_packet()
    assert len(pkt) == 1200 and looks_like_datagram(pkt)
    assert dissect_datagram(pkt) == [
        ("quic.initial", {"sni": "example.com", "alpn": ["alpn"], "tls_version": "TLS 1.3", "version": "1"})
    ]


def test_generated_initial_round_trip() -> None:
    assert dissect_datagram(protect_initial(DCID, crypto_frame(0, HELLO))) == EXPECT


def test_quic_v2() -> None:
    found = dissect_datagram(protect_initial(DCID, crypto_frame(0, HELLO), version=V2))
    assert found[0][1]["version"] == "2" and found[0][1]["sni"] == "video.mec.local"


def test_out_of_order_crypto_frames_with_ping_and_ack() -> None:
    a, b, c = HELLO[:40], HELLO[40:90], HELLO[90:]
    frames = (b"\x01" + crypto_frame(90, c) + b"\x02\x00\x00\x00\x00"
              + crypto_frame(40, b) + b"\x00\x00" + crypto_frame(0, a) + crypto_frame(20, HELLO[20:60]))
    assert dissect_datagram(protect_initial(DCID, frames, pn_len=4, token=b"tok")) == EXPECT


def test_coalesced_with_handshake_and_short_header() -> None:
    initial = protect_initial(DCID, crypto_frame(0, HELLO), pad_to=0)
    handshake = bytes([0xE1]) + struct.pack("!I", 1) + b"\x08" + DCID + b"\x00" + varint(40) + bytes(40)
    short = b"\x41" + DCID + bytes(30)
    assert dissect_datagram(initial + handshake + short) == EXPECT


def test_hello_split_over_two_datagrams_needs_the_assembler() -> None:
    big = client_hello("pq.mec.local", ["h3"], [0x0304], pad_ext=1800)  # like a PQ key share
    d1 = protect_initial(DCID, crypto_frame(0, big[:1100]), pn=0)
    d2 = protect_initial(DCID, crypto_frame(1100, big[1100:]), pn=1)
    assert dissect_datagram(d1) == [] and dissect_datagram(d2) == []
    asm = QuicInitialAssembler()
    assert asm.feed(d2) == []
    assert asm.pending() > 0
    found = asm.feed(d1)
    assert [a["sni"] for _, a in found] == ["pq.mec.local"]
    assert asm.feed(d1) == [] and asm.feed(d2) == []  # reported once
    assert asm.pending() == 0


def test_assembler_later_initial_with_new_dcid_uses_first_keys() -> None:
    # after the server's Initial the client switches DCID but keeps the first keys
    big = client_hello("switch.mec.local", None, [0x0304], pad_ext=1500)
    d1 = protect_initial(DCID, crypto_frame(0, big[:1000]))
    d2 = protect_initial(bytes.fromhex("aabbccdd"), crypto_frame(1000, big[1000:]), pn=1, key_dcid=DCID)
    assert dissect_datagram(d2) == []
    asm = QuicInitialAssembler()
    assert asm.feed(d1) == []
    assert [a["sni"] for _, a in asm.feed(d2)] == ["switch.mec.local"]


def test_assembler_is_bounded() -> None:
    asm = QuicInitialAssembler(max_dcids=4, max_bytes=2000)
    big = client_hello("b.example", None, None, pad_ext=1500)
    for i in range(20):
        dcid = bytes([i]) * 8
        asm.feed(protect_initial(dcid, crypto_frame(0, big[:900])))
    assert len(asm._frags) <= 4 and asm.pending() <= 4 * 900
    # a CRYPTO stream bigger than max_bytes is dropped, not grown
    asm = QuicInitialAssembler(max_bytes=1000)
    asm.feed(protect_initial(DCID, crypto_frame(0, big[:900])))
    asm.feed(protect_initial(DCID, crypto_frame(900, big[900:1200]), pn=1))
    assert asm.pending() == 0


def test_server_initial_and_corrupted_packets_give_nothing() -> None:
    server = protect_initial(DCID, crypto_frame(0, b"\x02\x00\x00\x04abcd"), side=b"server in")
    assert dissect_datagram(server) == []
    good = bytearray(protect_initial(DCID, crypto_frame(0, HELLO)))
    good[-1] ^= 1
    assert dissect_datagram(bytes(good)) == []


def test_not_quic_or_not_initial() -> None:
    assert dissect_datagram(b"\x40" + bytes(100)) == []          # short header
    assert dissect_datagram(b"\xc0\x00\x00\x00\x00\x08" + bytes(30)) == []  # version negotiation
    assert dissect_datagram(b"\xc0Q050\x08" + bytes(60)) == []   # gQUIC: a version we don't read
    assert not looks_like_datagram(b"\x40" + bytes(100))
    assert not looks_like_datagram(bytes(DCID))
    assert not claims_datagram(b"\x40" + bytes(100)) and not claims_datagram(b"\xc0Q050\x08" + bytes(60))
    assert claims_datagram(b"\xc0\x00\x00\x00\x00\x08" + bytes(30))  # version negotiation stays QUIC's


def test_version_salts() -> None:
    """Each version family opens with its own salt (RFC 9001, RFC 9369, the drafts, Google's T05x);
    the corpus test shows tshark opening the same captures."""
    assert version_spec(1)[0].hex() == "38762cf7f55934b34d179ae6a4c80cadccbb7f0a"
    assert version_spec(0xFF00001D)[0] == version_spec(0xFF000020)[0] == version_spec(0x1A2A3A4A)[0]
    assert version_spec(0xFF000017)[0] == version_spec(0xFF00001C)[0] == version_spec(0xFACEB002)[0]
    assert version_spec(0xFF000016)[0] == version_spec(0xFACEB001)[0]
    assert version_spec(V2)[1] == b"quicv2 " and version_spec(V2)[2] == 1
    assert version_spec(0x51303530) is None and version_spec(0xFF000010) is None  # gQUIC Q050, draft-16


@pytest.mark.parametrize("bad", [
    b"\xc0\x00\x00\x00\x01\x15" + bytes(40),                # DCID longer than 20
    b"\xc0\x00\x00\x00\x01\x08" + bytes(8) + b"\x00\x00\x44\x00" + bytes(10),  # length overruns
    b"\xc0\x00\x00\x00\x01\x08" + bytes(8) + b"\x00\x00\x10" + bytes(16),     # too short to sample
])
def test_malformed(bad: bytes) -> None:
    with pytest.raises(Malformed):
        dissect_datagram(bad)
