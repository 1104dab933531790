"""HTTP/1.x request dissector (stream): one ``http.request`` per request head.

Requests may be pipelined and split anywhere; bodies are skipped by Content-Length
or by chunked transfer coding so the next request is found. The function is
stateless, so a body that runs past the bytes held is handled through ``pos``:

* Content-Length: ``pos`` becomes the end of the body, even beyond ``len(buf)``.
* chunked: ``pos`` stops at the start of the chunk-size line (or just past the chunk
  data) that is not in yet; a later call that finds a chunk-size line at ``pos`` (a
  bare hex number, never a request line) resumes walking the chunks.
"""

from __future__ import annotations

import re

from upf_tap.dissect import HANDOFF, AppFields, Found, Malformed

KIND = "http.request"

# registration (upf_tap.dissect): streams to these server ports, and by content on any other
TCP_PORTS = frozenset({80, 8000, 8008, 8080, 8081, 8888})
SNIFF = True

MAX_HEAD = 32 * 1024        # request line + headers; real ones are < 8 KiB
MAX_LINE = 8 * 1024         # chunk-size / trailer line

_METHOD_NAMES = (
    # RFC 9110 + PATCH (RFC 5789)
    "GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH "
    # WebDAV, versioning, CalDAV, UPnP and friends
    "PROPFIND PROPPATCH MKCOL COPY MOVE LOCK UNLOCK SEARCH REPORT MKACTIVITY CHECKOUT "
    "CHECKIN UNCHECKOUT MERGE VERSION-CONTROL MKWORKSPACE UPDATE LABEL BASELINE-CONTROL "
    "ORDERPATCH ACL MKCALENDAR MKREDIRECTREF UPDATEREDIRECTREF BIND UNBIND REBIND "
    "LINK UNLINK M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PURGE QUERY "
    # the others tshark knows: Exchange's WebDAV batch methods, RPC over HTTP, SCCM's CCM_POST
    "BCOPY BMOVE BDELETE BPROPFIND BPROPPATCH POLL M-POST RPC_CONNECT RPC_IN_DATA RPC_OUT_DATA CCM_POST"
)
METHODS = frozenset(m.encode() for m in _METHOD_NAMES.split(" "))
_MAX_METHOD = max(len(m) for m in METHODS)
_METHOD_PREFIXES = frozenset(m[:i] for m in METHODS for i in range(1, len(m) + 1))

# As tshark reads a request line: a known method, a space, the target up to the next space
# (maybe empty), then whatever version there is (maybe none: HTTP/0.9, or a broken one)
_REQUEST_LINE = re.compile(rb"([A-Z][A-Z_-]*) ([^ \r\n]*)(?: ([^\r\n]*?))?\r?\Z")
_OTHER_PROTOCOLS = (b"RTSP/", b"SIP/")  # their requests look like HTTP's, with their own version
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\Z")
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")


def looks_like(buf: bytes) -> bool:
    """True if the first bytes can start an HTTP/1.x request (a known method and a space)."""
    sp = buf.find(b" ", 0, _MAX_METHOD + 1)
    if sp < 0:
        # too short to hold the space yet: accept a prefix of a known method
        return buf in _METHOD_PREFIXES
    return buf[:sp] in METHODS


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def _head_end(buf: bytes, p: int) -> int:
    """Index just past the blank line ending the head starting at ``p``, or -1."""
    crlf = buf.find(b"\n\r\n", p)
    lf = buf.find(b"\n\n", p)
    if crlf < 0 and lf < 0:
        return -1
    if lf < 0 or (0 <= crlf < lf):
        return crlf + 3
    return lf + 2


def _check_start(buf: bytes, p: int) -> None:
    """Fail fast on a stream that can't be requests (a response, binary data)."""
    head = buf[p : p + _MAX_METHOD + 1]
    if head.startswith(b"HTTP/"):
        raise Malformed("http: a response, not a request stream")
    sp = head.find(b" ")
    if sp < 0:
        if head not in _METHOD_PREFIXES:
            raise Malformed("http: not a request method")
    elif head[:sp] not in METHODS:
        raise Malformed("http: not a request method")


def _headers(lines: list[bytes]) -> dict[bytes, bytes]:
    """Lower-cased name -> value (repeats joined with ", "), obs-fold unfolded."""
    out: dict[bytes, bytes] = {}
    last: bytes | None = None
    for raw in lines:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        if line[0] in b" \t":
            if last is None:
                raise Malformed("http: continuation line before any header")
            out[last] = out[last] + b" " + line.strip(b" \t")
            continue
        colon = line.find(b":")
        if colon <= 0:
            raise Malformed("http: header line without a name")
        name = line[:colon].lower()
        if name != name.strip():
            raise Malformed("http: whitespace in a header name")
        value = line[colon + 1 :].strip(b" \t")
        out[name] = out[name] + b", " + value if name in out else value
        last = name
    return out


def _content_length(value: bytes) -> int:
    # "5, 5" (a list of equal values) is tolerated, anything else is a framing error
    parts = {v.strip() for v in value.split(b",")}
    if len(parts) != 1:
        raise Malformed("http: conflicting Content-Length values")
    v = parts.pop()
    if not v.isdigit() or len(v) > 18:
        raise Malformed("http: bad Content-Length")
    return int(v)


def _skip_chunks(buf: bytes, p: int) -> tuple[int, bool]:
    """Walk chunked body from a chunk-size line at ``p``: (next pos, body finished)."""
    n = len(buf)
    while True:
        eol = buf.find(b"\n", p, p + MAX_LINE)
        if eol < 0:
            if n - p >= MAX_LINE:
                raise Malformed("http: chunk-size line too long")
            return p, False
        m = _CHUNK_LINE.match(buf, p, eol)
        if m is None:
            raise Malformed("http: bad chunk-size line")
        size = int(m.group(1), 16)
        if size == 0:
            # trailer section: header lines until a blank line
            q = eol + 1
            while True:
                e = buf.find(b"\n", q, q + MAX_LINE)
                if e < 0:
                    if n - q >= MAX_LINE:
                        raise Malformed("http: trailer line too long")
                    return p, False  # retry from the last-chunk line
                if e == q or (e == q + 1 and buf[q] == 0x0D):
                    return e + 1, True
                q = e + 1
        data_end = eol + 1 + size
        if data_end + 2 > n:
            # chunk data runs past what we hold: resume after it (its CRLF is skipped then)
            return (data_end if data_end >= n else p), False
        if buf[data_end] == 0x0D:
            data_end += 1
        if buf[data_end] != 0x0A:
            raise Malformed("http: chunk data not followed by CRLF")
        p = data_end + 1


def _skip_blank_lines(buf: bytes, p: int) -> int:
    # RFC 9112 §2.2: a server ignores empty lines before a request line; we also land
    # here after chunk data that ran past the buffer, with its CRLF still to skip
    n = len(buf)
    while p < n and buf[p] in b"\r\n":
        p += 1
    return p


def _request(line: bytes, hdrs: dict[bytes, bytes]) -> AppFields:
    m = _REQUEST_LINE.match(line)
    if m is None:
        raise Malformed("http: bad request line")
    method, target, version = m.groups()
    if method not in METHODS:
        raise Malformed("http: not a request method")
    if version and version.startswith(_OTHER_PROTOCOLS):
        raise Malformed("http: an RTSP or SIP request")
    app: AppFields = {"method": method.decode(), "path": _text(target), "version": _text(version or b"")}
    host = hdrs.get(b"host")
    if host is None:
        a = _ABSOLUTE.match(target)
        host = a.group(1).rpartition(b"@")[2] if a else b""  # drop userinfo
    app["host"] = _text(host)
    if b"user-agent" in hdrs:
        app["user_agent"] = _text(hdrs[b"user-agent"])
    if b"content-type" in hdrs:
        app["content_type"] = _text(hdrs[b"content-type"])
    return app


def _resume_chunks(buf: bytes, p: int) -> str | None:
    """Where a previous call stopped: "chunk" if a chunk-size line is at ``p``, "wait"
    for an unfinished line that may be one, None for anything else (a request)."""
    if buf[p] not in _HEX:
        return None
    eol = buf.find(b"\n", p, p + MAX_LINE)
    if eol < 0:
        return "wait" if len(buf) - p < MAX_LINE else None
    return "chunk" if _CHUNK_LINE.match(buf, p, eol) else None


def dissect_stream(buf: bytes, pos: int) -> tuple[Found, int, int]:
    """Every complete request head from ``pos`` (see the module docstring for bodies).

    ``done`` is True after a CONNECT or an Upgrade request, and on an HTTP/2 preface.
    """
    found: Found = []
    n = len(buf)
    p = pos
    while p < n:
        start = p
        p = _skip_blank_lines(buf, p)
        if p >= n:
            return found, start, False
        if start == pos > 0:  # only where a previous call stopped: never open on a number
            r = _resume_chunks(buf, p)
            if r == "wait":
                return found, start, False
            if r == "chunk":
                p, finished = _skip_chunks(buf, p)
                if not finished:
                    return found, p, False
                continue
        if buf.startswith(_H2_PREFACE[: n - p], p) and n - p >= 3:
            if n - p < len(_H2_PREFACE):
                return found, start, False
            return found, p, True  # HTTP/2 with prior knowledge: no HTTP/1 requests follow
        _check_start(buf, p)
        end = _head_end(buf, p)
        if end < 0:
            if n - p > MAX_HEAD:
                raise Malformed("http: request head beyond the limit")
            return found, p, False
        lines = buf[p:end].split(b"\n")
        hdrs = _headers(lines[1:])
        app = _request(lines[0], hdrs)
        chunked = False
        if b"transfer-encoding" in hdrs:
            chunked = hdrs[b"transfer-encoding"].lower().rsplit(b",", 1)[-1].strip() == b"chunked"
        body_len = 0
        if b"content-length" in hdrs:
            body_len = _content_length(hdrs[b"content-length"])
            app["content_length"] = body_len
        found.append((KIND, app))
        p = end
        if app["method"] == "CONNECT":
            return found, p, HANDOFF  # a tunnel: TLS, most often, whose ClientHello tshark reads too
        if b"upgrade" in hdrs:
            return found, p, True  # a protocol switch (WebSocket, h2c): what follows is not HTTP/1
        if chunked:  # Transfer-Encoding wins over Content-Length (RFC 9112 §6.3)
            p, finished = _skip_chunks(buf, p)
            if not finished:
                return found, p, False
        else:
            p += body_len
    return found, p, False
