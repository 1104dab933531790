"""CoAP request dissector (datagram, RFC 7252 §3): method, Uri-Host, Uri-Path.

Responses, empty messages (ping/ACK/RST) and reserved code classes give nothing.
"""

from __future__ import annotations

from upf_tap.dissect import AppFields, Found, Malformed

KIND = "coap.request"

# registration (upf_tap.dissect): datagrams to these server ports
UDP_PORTS = frozenset({5683})

VERSION = 1
TYPES = ("CON", "NON", "ACK", "RST")
# request codes 0.01-0.07 (RFC 7252 §12.1.1, RFC 8132 for FETCH/PATCH/iPATCH)
METHODS = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE", 5: "FETCH", 6: "PATCH", 7: "iPATCH"}

OPT_URI_HOST = 3
OPT_URI_PORT = 7
OPT_URI_PATH = 11
OPT_URI_QUERY = 15


def looks_like(data: bytes) -> bool:
    """True for a version-1 CON/NON message carrying a request code."""
    return (
        len(data) >= 4
        and data[0] >> 6 == VERSION
        and (data[0] >> 4) & 3 in (0, 1)
        and data[0] & 0x0F <= 8
        and data[1] in METHODS
    )


def _ext(data: bytes, p: int, nibble: int) -> tuple[int, int]:
    """Option delta/length with its extended bytes (13: +1 byte, 14: +2 bytes)."""
    if nibble < 13:
        return nibble, p
    if nibble == 13:
        if p + 1 > len(data):
            raise Malformed("coap: truncated extended option field")
        return data[p] + 13, p + 1
    if nibble == 14:
        if p + 2 > len(data):
            raise Malformed("coap: truncated extended option field")
        return ((data[p] << 8) | data[p + 1]) + 269, p + 2
    raise Malformed("coap: reserved option nibble 15")


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def dissect_datagram(data: bytes) -> Found:
    """One ``coap.request`` for a CON/NON request; ``[]`` for anything else CoAP."""
    n = len(data)
    if n < 4:
        raise Malformed("coap: shorter than the fixed header")
    b0, code = data[0], data[1]
    if b0 >> 6 != VERSION:
        raise Malformed("coap: unknown version")
    mtype = (b0 >> 4) & 3
    tkl = b0 & 0x0F
    if tkl > 8:
        raise Malformed("coap: reserved token length")
    p = 4 + tkl
    if p > n:
        raise Malformed("coap: token runs past the datagram")
    if code == 0:
        if n != 4:
            raise Malformed("coap: empty message with a body")
        return []
    if code >> 5 != 0 or mtype > 1:
        return []  # a response (or reserved class), or a request code in an ACK/RST
    token = data[4:p]
    host: str | None = None
    port: int | None = None
    path: list[str] = []
    query: list[str] = []
    opt = 0
    while p < n:
        if data[p] == 0xFF:
            if p + 1 == n:
                raise Malformed("coap: payload marker with no payload")
            break
        b = data[p]
        delta, p = _ext(data, p + 1, b >> 4)
        length, p = _ext(data, p, b & 0x0F)
        if p + length > n:
            raise Malformed("coap: option value runs past the datagram")
        opt += delta
        value = data[p : p + length]
        p += length
        if opt == OPT_URI_HOST:
            host = _text(value)
        elif opt == OPT_URI_PORT:
            port = int.from_bytes(value, "big")
        elif opt == OPT_URI_PATH:
            path.append(_text(value))
        elif opt == OPT_URI_QUERY:
            query.append(_text(value))
    app: AppFields = {"method": METHODS.get(code & 0x1F, f"0.{code & 0x1F:02d}")}
    if host is not None:
        app["uri_host"] = host
    if port is not None:
        app["uri_port"] = port
    app["uri_path"] = "/" + "/".join(path)
    if query:
        app["uri_query"] = "&".join(query)
    app["type"] = TYPES[mtype]
    app["token"] = token.hex()
    return [(KIND, app)]
