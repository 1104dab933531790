"""TLS ClientHello dissector: scapy-built hellos, record fragmentation, TCP splitting."""

from __future__ import annotations

import struct

import pytest
from dissect_testlib import client_hello, tls_records
from scapy.layers.tls.handshake import TLSServerHello
from scapy.layers.tls.record import TLS

from upf_tap.dissect import Malformed
from upf_tap.dissect.tls import dissect_stream, looks_like, parse_client_hello


def test_fields_from_scapy_hello() -> None:
    hello = client_hello("auth.iot.mec.local", ["h2", "http/1.1"], [0x0304, 0x0303])
    buf = tls_records(hello)
    found, pos, done = dissect_stream(buf, 0)
    assert found == [("tls.client_hello", {
        "sni": "auth.iot.mec.local", "alpn": ["h2", "http/1.1"], "version": "TLS 1.3",
        "legacy_version": "TLS 1.2", "record_version": "TLS 1.0",
    })]
    assert pos == len(buf) and not done  # a second ClientHello may follow a HelloRetryRequest
    assert dissect_stream(buf + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x02ok", pos) == \
        ([], pos + 6, True)  # CCS, then encrypted: done


def test_second_hello_after_hello_retry_request() -> None:
    """TLS 1.3 (RFC 8446 §4.1.4): after a HelloRetryRequest the client sends a compatibility
    CCS and a second ClientHello; tshark shows both hellos, and so does the tap."""
    first, second = tls_records(client_hello("hrr.example")), tls_records(client_hello("hrr.example"))
    ccs = b"\x14\x03\x03\x00\x01\x01"
    buf = first + ccs + second + b"\x17\x03\x03\x00\x02ok"
    found, pos, done = dissect_stream(buf, 0)
    assert [a["sni"] for _, a in found] == ["hrr.example"] and pos == len(first) and not done
    found, pos, done = dissect_stream(buf, pos)
    assert [a["sni"] for _, a in found] == ["hrr.example"] and pos == len(first) + 6 + len(second) and not done
    assert dissect_stream(buf, pos) == ([], pos, True)


def test_tls12_hello_without_supported_versions_or_alpn() -> None:
    found, _, _ = dissect_stream(tls_records(client_hello("old.example")), 0)
    assert found[0][1]["version"] == "TLS 1.2" and found[0][1]["alpn"] == []


def test_grease_versions_ignored() -> None:
    found, _, _ = dissect_stream(tls_records(client_hello("g.example", None, [0x3A3A, 0x0304, 0x0303])), 0)
    assert found[0][1]["version"] == "TLS 1.3"


def test_handshake_fragmented_over_records_and_segments() -> None:
    hello = client_hello("frag.mec.local", ["h2"], [0x0304], pad_ext=3000)
    buf = tls_records(hello, sizes=[1, 3, 700, 1200]) + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x02ok"
    end_of_hello = len(buf) - 13
    expect = [("tls.client_hello", parse_client_hello(hello[4:]) | {"record_version": "TLS 1.0"})]
    assert expect[0][1]["sni"] == "frag.mec.local"
    for step in (1, 7, 100, 1399):
        pos, events, cut, done = 0, [], 0, False
        while not done:
            cut = min(len(buf), cut + step)
            found, pos, done = dissect_stream(buf[:cut], pos)
            events += found
            assert done or pos in (0, end_of_hello, end_of_hello + 6)
        assert events == expect and pos == end_of_hello + 6
        assert cut >= end_of_hello


def test_server_side_and_non_hello_streams_finish_quietly() -> None:
    sh = bytes(TLS(msg=[TLSServerHello()]))
    assert dissect_stream(sh, 0)[0] == [] and dissect_stream(sh, 0)[2]
    assert dissect_stream(sh[:7], 0) == ([], 0, True)  # told by the first handshake byte
    assert dissect_stream(b"\x17\x03\x03\x00\x05hello", 0) == ([], 0, True)


def test_hello_without_sni_gives_nothing() -> None:
    buf = tls_records(client_hello(None, ["h2"]))
    assert dissect_stream(buf, 0) == ([], len(buf), False)


def test_incomplete_waits() -> None:
    buf = tls_records(client_hello("w.example"))
    for cut in range(len(buf)):
        assert dissect_stream(buf[:cut], 0) == ([], 0, False)


def _hello_with_ext(ext: bytes) -> bytes:
    body = struct.pack("!H", 0x0303) + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(ext)) + ext
    return body


@pytest.mark.parametrize("bad", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"\x16\x05\x01\x00\x10",                        # record major version 5
    b"\x16\x03\x01\xff\xff",                        # record longer than allowed
    b"\x19\x03\x03\x00\x01\x00",                    # unknown content type
    b"\x16\x03\x01\x00\x00",                        # empty handshake record
    tls_records(b"\x01\x00\x00\x05" + b"\x03\x03\x00\x00\x00"),  # ClientHello too short
    tls_records(b"\x01" + (1 << 20).to_bytes(3, "big")),         # beyond the size limit
])
def test_malformed(bad: bytes) -> None:
    with pytest.raises(Malformed):
        dissect_stream(bad, 0)


@pytest.mark.parametrize("ext", [
    b"\x00\x00\x00\x05\x00\x09\x00\x00\x01",         # server_name list overruns
    b"\x00\x10\x00\x04\x00\x02\x05h",                # ALPN name overruns
    b"\x00\x2b\x00\x02\x03\x03",                     # odd supported_versions list
    b"\x00\x00\x00\x09",                             # extension overruns the block
])
def test_malformed_extensions(ext: bytes) -> None:
    with pytest.raises(Malformed):
        parse_client_hello(_hello_with_ext(ext))


def test_looks_like() -> None:
    buf = tls_records(client_hello("x.example"))
    assert looks_like(buf) and looks_like(buf[:1]) and looks_like(buf[:3])
    assert not looks_like(bytes(TLS(msg=[TLSServerHello()])))
    assert not looks_like(b"GET /")
    assert not looks_like(b"")
