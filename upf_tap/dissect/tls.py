"""TLS ClientHello dissector (stream): SNI, ALPN and the version the client asks for.

Only the first handshake message of a stream matters. It may be split over several
TLS records (handshake fragmentation) and any number of TCP segments; the function is
stateless, so an incomplete ClientHello leaves ``pos`` where it was and is re-parsed
from the start of the stream when more bytes arrive (ClientHellos are a few KiB).

``parse_client_hello`` works on the handshake message body alone and is shared with
the QUIC dissector, whose ClientHello arrives in CRYPTO frames instead of records.
"""

from __future__ import annotations

import struct

from upf_tap.dissect import AppFields, Found, Malformed

KIND = "tls.client_hello"

# registration (upf_tap.dissect): streams to these server ports, and by content on any other
TCP_PORTS = frozenset({443, 8443, 853, 993, 995, 465, 5061, 8883})
SNIFF = True

CT_CHANGE_CIPHER_SPEC = 20
CT_ALERT = 21
CT_HANDSHAKE = 22
CT_APPLICATION_DATA = 23
HS_CLIENT_HELLO = 1

EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43

MAX_RECORD = 16384 + 2048          # TLSCiphertext limit (RFC 8446 §5.2)
MAX_CLIENT_HELLO = 64 * 1024       # far above real ones (PQ key shares: ~2 KiB)

_VERSION_NAMES = {
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
}
_u16 = struct.Struct("!H").unpack_from


def version_name(v: int) -> str:
    return _VERSION_NAMES.get(v) or f"0x{v:04x}"


def _is_grease(v: int) -> bool:
    # RFC 8701: 0x0a0a, 0x1a1a, ... 0xfafa
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def looks_like(buf: bytes) -> bool:
    """True if the first bytes can start a TLS stream opened by a ClientHello record."""
    n = len(buf)
    if n == 0:
        return False
    if buf[0] != CT_HANDSHAKE:
        return False
    if n >= 2 and buf[1] != 3:
        return False
    if n >= 3 and buf[2] > 4:
        return False
    return not (n >= 6 and buf[5] != HS_CLIENT_HELLO)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def _sni(ext: bytes) -> str | None:
    if len(ext) < 2:
        raise Malformed("tls: short server_name extension")
    (list_len,) = _u16(ext, 0)
    end = 2 + list_len
    if end > len(ext):
        raise Malformed("tls: server_name list overruns its extension")
    p = 2
    while p + 3 <= end:
        name_type = ext[p]
        (ln,) = _u16(ext, p + 1)
        p += 3
        if p + ln > end:
            raise Malformed("tls: server name overruns its list")
        if name_type == 0:
            return ext[p : p + ln].decode("ascii", "backslashreplace")
        p += ln
    return None


def _alpn(ext: bytes) -> list[str]:
    if len(ext) < 2:
        raise Malformed("tls: short ALPN extension")
    (list_len,) = _u16(ext, 0)
    end = 2 + list_len
    if end > len(ext):
        raise Malformed("tls: ALPN list overruns its extension")
    out: list[str] = []
    p = 2
    while p < end:
        ln = ext[p]
        p += 1
        if p + ln > end:
            raise Malformed("tls: ALPN protocol overruns its list")
        out.append(_text(ext[p : p + ln]))
        p += ln
    return out


def _highest_supported(ext: bytes) -> int | None:
    if not ext:
        raise Malformed("tls: empty supported_versions extension")
    ln = ext[0]
    if 1 + ln > len(ext) or ln % 2:
        raise Malformed("tls: bad supported_versions list")
    best = None
    for p in range(1, 1 + ln, 2):
        (v,) = _u16(ext, p)
        if not _is_grease(v) and (best is None or v > best):
            best = v
    return best


def parse_client_hello(body: bytes) -> AppFields:
    """Fields of a ClientHello handshake body (without the 4-byte handshake header).

    Returns ``sni`` (only when a host_name is present), ``alpn`` (list, maybe empty),
    ``version`` (highest non-GREASE supported_versions entry, else legacy_version, as
    "TLS 1.3"...) and ``legacy_version``. Raises Malformed on inconsistent lengths.
    """
    n = len(body)
    if n < 2 + 32 + 1:
        raise Malformed("tls: ClientHello too short")
    (legacy,) = _u16(body, 0)
    p = 34
    sid_len = body[p]
    p += 1 + sid_len
    if sid_len > 32 or p + 2 > n:
        raise Malformed("tls: bad session id")
    (cs_len,) = _u16(body, p)
    p += 2 + cs_len
    if cs_len % 2 or p + 1 > n:
        raise Malformed("tls: bad cipher suites")
    comp_len = body[p]
    p += 1 + comp_len
    if p > n:
        raise Malformed("tls: bad compression methods")
    app: AppFields = {}
    alpn: list[str] = []
    version = legacy
    if p + 2 <= n:  # extensions are optional (SSL 3.0 style hellos)
        (ext_total,) = _u16(body, p)
        p += 2
        end = p + ext_total
        if end > n:
            raise Malformed("tls: extensions overrun the ClientHello")
        seen: set[int] = set()
        while p + 4 <= end:
            etype, elen = struct.unpack_from("!HH", body, p)
            p += 4
            if p + elen > end:
                raise Malformed("tls: extension overruns the extension block")
            if etype not in seen:  # duplicates are illegal; first one wins
                seen.add(etype)
                ext = body[p : p + elen]
                if etype == EXT_SERVER_NAME:
                    sni = _sni(ext)
                    if sni is not None:
                        app["sni"] = sni
                elif etype == EXT_ALPN:
                    alpn = _alpn(ext)
                elif etype == EXT_SUPPORTED_VERSIONS:
                    best = _highest_supported(ext)
                    if best is not None:
                        version = best
            p += elen
        if p != end:
            raise Malformed("tls: trailing bytes in the extension block")
    elif p != n:
        raise Malformed("tls: trailing bytes after compression methods")
    app["alpn"] = alpn
    app["version"] = version_name(version)
    app["legacy_version"] = version_name(legacy)
    return app


def dissect_stream(buf: bytes, pos: int) -> tuple[Found, int, bool]:
    """The ClientHellos at the start of a TLS stream (see the package docstring).

    Returns ``([], pos, False)`` while incomplete. A whole ClientHello with a host_name SNI
    gives one ``tls.client_hello`` event, and reading goes on at the next record: after a
    HelloRetryRequest the client sends a second ClientHello (after a ChangeCipherSpec, which
    is skipped), as tshark shows too. Anything else (a server's stream, a ClientKeyExchange,
    encrypted records) ends the stream: ``done``.
    """
    n = len(buf)
    p = pos
    hs = bytearray()
    record_version = None
    need = -1  # total handshake bytes of the first message, once its header is in
    while True:
        if p + 5 > n:
            return [], pos, False
        ctype = buf[p]
        rmajor, rminor = buf[p + 1], buf[p + 2]
        (rlen,) = _u16(buf, p + 3)
        if rmajor != 3 or rminor > 4 or rlen > MAX_RECORD:
            raise Malformed("tls: not a TLS record header")
        if ctype != CT_HANDSHAKE:
            if ctype == CT_CHANGE_CIPHER_SPEC and not hs:
                if p + 5 + rlen > n:
                    return [], pos, False
                p += 5 + rlen  # TLS 1.3's compatibility CCS before a second ClientHello
                pos = p
                continue
            if ctype in (CT_CHANGE_CIPHER_SPEC, CT_ALERT, CT_APPLICATION_DATA):
                return [], p, True  # encrypted from here, or not a stream opened by a ClientHello
            raise Malformed(f"tls: bad record content type {ctype}")
        if rlen == 0:
            raise Malformed("tls: empty handshake record")
        if record_version is None:
            record_version = (rmajor << 8) | rminor
        if p + 5 + rlen > n:
            # we can still tell a server stream early if its first byte is in
            if not hs and p + 5 < n and buf[p + 5] != HS_CLIENT_HELLO:
                return [], pos, True
            return [], pos, False
        hs += buf[p + 5 : p + 5 + rlen]
        p += 5 + rlen
        if need < 0 and len(hs) >= 4:
            if hs[0] != HS_CLIENT_HELLO:
                return [], p, True
            need = 4 + int.from_bytes(hs[1:4], "big")
            if need > MAX_CLIENT_HELLO:
                raise Malformed("tls: ClientHello length beyond the limit")
        if need >= 0 and len(hs) >= need:
            break
    if len(hs) > need:
        return [], p, True  # another handshake message in the same record: not a retried hello
    app = parse_client_hello(bytes(hs[4:need]))
    if "sni" not in app:
        return [], p, False
    app["record_version"] = version_name(record_version)
    return [(KIND, app)], p, False
