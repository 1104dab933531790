"""HTTP/1.x request dissector: fields, pipelining, splitting, body skipping."""

from __future__ import annotations

import pytest

from upf_tap.dissect import Malformed
from upf_tap.dissect.http import dissect_stream, looks_like

GET = (
    b"GET /api/v1/buy?item=3 HTTP/1.1\r\nHost: shop.mec.local:8080\r\n"
    b"User-Agent: curl/8.0\r\nAccept: */*\r\n\r\n"
)
POST_CL = (
    b"POST /upload HTTP/1.1\r\nhost: up.mec.local\r\nContent-Type: application/json\r\n"
    b"Content-Length: 13\r\n\r\n{\"a\": \"GET \"}"
)
POST_CHUNKED = (
    b"POST /chunks HTTP/1.1\r\nHost: c.mec.local\r\nTransfer-Encoding: gzip, chunked\r\n"
    b"Content-Length: 999\r\n\r\n"
    b"5\r\nhello\r\n1A;name=val\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n"
)
PIPELINE = GET + POST_CL + POST_CHUNKED + b"DELETE /item/4 HTTP/1.1\r\nHost: shop.mec.local\r\n\r\n"


def feed(buf: bytes, cuts: list[int]) -> tuple[list, int]:
    """Call as a pipeline would: growing prefixes of buf, keeping pos between calls."""
    events: list = []
    pos = 0
    for cut in [*cuts, len(buf)]:
        found, pos, done = dissect_stream(buf[:cut], pos)
        assert not done
        events += found
    return events, pos


def test_get_fields() -> None:
    found, pos, done = dissect_stream(GET, 0)
    assert found == [("http.request", {
        "method": "GET", "path": "/api/v1/buy?item=3", "version": "HTTP/1.1",
        "host": "shop.mec.local:8080", "user_agent": "curl/8.0",
    })]
    assert pos == len(GET) and not done


def test_pipelined_requests_and_bodies_skipped() -> None:
    found, pos, _ = dissect_stream(PIPELINE, 0)
    assert [(a["method"], a["host"], a["path"]) for _, a in found] == [
        ("GET", "shop.mec.local:8080", "/api/v1/buy?item=3"),
        ("POST", "up.mec.local", "/upload"),
        ("POST", "c.mec.local", "/chunks"),
        ("DELETE", "shop.mec.local", "/item/4"),
    ]
    assert found[1][1]["content_length"] == 13
    assert found[1][1]["content_type"] == "application/json"
    assert pos == len(PIPELINE)


def test_every_split_point_gives_the_same_events_once() -> None:
    whole, _ = dissect_stream(PIPELINE, 0)[:2]
    for cut in range(1, len(PIPELINE)):
        events, pos = feed(PIPELINE, [cut])
        assert events == whole, cut
        assert pos == len(PIPELINE)


def test_byte_by_byte() -> None:
    events, pos = feed(PIPELINE, list(range(1, len(PIPELINE))))
    assert events == dissect_stream(PIPELINE, 0)[0]
    assert pos == len(PIPELINE)


def test_body_beyond_buffer_moves_pos_past_it() -> None:
    head = b"PUT /big HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n"
    buf = head + b"x" * 500
    found, pos, done = dissect_stream(buf, 0)
    assert len(found) == 1 and found[0][1]["content_length"] == 100000
    assert pos == len(head) + 100000 and not done
    # called again before the body ends: nothing, pos kept
    assert dissect_stream(buf + b"y" * 10, pos) == ([], pos, False)
    # after the body, the next request is found
    nxt = b"x" * (pos - len(buf)) + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    found, end, _ = dissect_stream(buf + nxt, pos)
    assert [a["path"] for _, a in found] == ["/next"] and end == len(buf + nxt)


def test_chunked_body_beyond_buffer_resumes() -> None:
    head = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"400\r\n" + b"z" * 0x400 + b"\r\n0\r\n\r\n"
    tail = b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n"
    buf = head + body + tail
    found, pos, _ = dissect_stream(buf[: len(head) + 100], 0)
    assert [a["path"] for _, a in found] == ["/c"]
    assert pos == len(head) + 5 + 0x400  # just past the chunk data, beyond the 100 bytes held
    found, pos, _ = dissect_stream(buf, pos)
    assert [a["path"] for _, a in found] == ["/after"] and pos == len(buf)


def test_absolute_form_and_missing_host() -> None:
    found, _, _ = dissect_stream(b"GET http://user@proxy.example:3128/x?y HTTP/1.1\r\n\r\n", 0)
    assert found[0][1]["path"] == "http://user@proxy.example:3128/x?y"
    assert found[0][1]["host"] == "proxy.example:3128"
    found, _, _ = dissect_stream(b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n", 0)
    assert found[0][1]["host"] == "b.example"
    found, _, _ = dissect_stream(b"GET / HTTP/1.0\r\n\r\n", 0)
    assert found[0][1]["host"] == ""


def test_header_case_fold_lf_only_and_leading_blank_lines() -> None:
    req = b"\r\n\r\nOPTIONS * HTTP/1.1\nHOST: h.example\nuser-AGENT: a\n  b/1\n\n"
    found, pos, _ = dissect_stream(req, 0)
    assert found[0][1] == {"method": "OPTIONS", "path": "*", "version": "HTTP/1.1",
                           "host": "h.example", "user_agent": "a b/1"}
    assert pos == len(req)


def test_webdav_and_patch() -> None:
    buf = b"PROPFIND /d HTTP/1.1\r\nHost: d\r\n\r\nPATCH /p HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n"
    assert [a["method"] for _, a in dissect_stream(buf, 0)[0]] == ["PROPFIND", "PATCH"]


@pytest.mark.parametrize("bad", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"FOO /x HTTP/1.1\r\n\r\n",
    b"OPTIONS rtsp://cam.example/live RTSP/1.0\r\nCSeq: 1\r\n\r\n",  # RTSP: tshark's RTSP, not HTTP
    b"OPTIONS sip:ue@example SIP/2.0\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
    b"GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET /x HTTP/1.1\r\n: novalue\r\n\r\n",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed(bad: bytes) -> None:
    with pytest.raises(Malformed):
        dissect_stream(bad, 0)


def test_incomplete_head_waits() -> None:
    assert dissect_stream(b"GET /x HTTP/1.1\r\nHost: a\r\n", 0) == ([], 0, False)
    assert dissect_stream(b"GE", 0) == ([], 0, False)


def test_looks_like() -> None:
    assert looks_like(b"GET / HTTP/1.1\r\n")
    assert looks_like(b"M-SEARCH * HTTP/1.1\r\n")
    assert looks_like(b"PO")
    assert not looks_like(b"HTTP/1.1 200 OK\r\n")
    assert not looks_like(b"\x16\x03\x01")
    assert not looks_like(b"GETX / HTTP/1.1")
    assert not looks_like(b"")


def test_tunnels_and_protocol_switches_end_the_stream() -> None:
    conn = b"CONNECT api.mec.local:443 HTTP/1.1\r\nHost: api.mec.local:443\r\n\r\n"
    found, pos, done = dissect_stream(conn + b"\x16\x03\x01\x02\x00", 0)
    assert [(a["method"], a["path"]) for _, a in found] == [("CONNECT", "api.mec.local:443")]
    assert pos == len(conn) and done
    ws = b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    found, pos, done = dissect_stream(ws + b"\x81\x85abcd", 0)
    assert len(found) == 1 and pos == len(ws) and done
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    assert dissect_stream(preface[:10], 0) == ([], 0, False)
    assert dissect_stream(preface + bytes(9), 0) == ([], 0, True)


@pytest.mark.parametrize(("line", "path", "version"), [
    (b"GET /HTTP/1.1", "/HTTP/1.1", ""),       # a missing space: the target runs on
    (b"GET / HTTP/1.", "/", "HTTP/1."),        # a broken version
    (b"GET /", "/", ""),                        # HTTP/0.9
    (b"GET HTTP/1.1", "HTTP/1.1", ""),          # no target
    (b"CCM_POST /ccm_system/request HTTP/1.1", "/ccm_system/request", "HTTP/1.1"),
    (b"GET /x HTTP/1.1 extra", "/x", "HTTP/1.1 extra"),
])
def test_request_lines_read_as_tshark_reads_them(line: bytes, path: str, version: str) -> None:
    """Odd request lines from Zeek's HTTP method traces: tshark shows each as a request (method,
    target up to the next space, the rest as version), and so does the tap (tests/corpus)."""
    found, _, _ = dissect_stream(line + b"\r\nHost: h.example\r\n\r\n", 0)
    assert [(a["path"], a["version"], a["host"]) for _, a in found] == [(path, version, "h.example")]
