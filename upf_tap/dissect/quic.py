"""QUIC client Initial dissector (datagram): SNI and ALPN from the encrypted ClientHello.

Initial packets are protected with keys anyone can derive from the Destination
Connection ID (RFC 9001 §5.2), so a passive tap can read the ClientHello: derive the
client keys with HKDF, remove header protection (AES-ECB mask over a payload sample),
open the payload (AES-128-GCM), collect CRYPTO frames by offset and hand the
ClientHello body to :func:`upf_tap.dissect.tls.parse_client_hello`.

``dissect_datagram`` is stateless: it sees only one datagram (with its coalesced
packets). A ClientHello spread over two Initial packets sent in separate datagrams
(Chrome's post-quantum key shares) needs :class:`QuicInitialAssembler`, kept per flow.

HMAC/SHA-256 (OpenSSL) and AES (``cryptography``) are imported on the first Initial
opened, not with this module: the tap registers every dissector at start.
"""

from __future__ import annotations

import re
import struct
from collections import OrderedDict
from functools import lru_cache
from typing import TYPE_CHECKING

from upf_tap.dissect import AppFields, Found, Malformed
from upf_tap.dissect.tls import HS_CLIENT_HELLO, MAX_CLIENT_HELLO, parse_client_hello

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KIND = "quic.initial"

# registration (upf_tap.dissect): datagrams to these server ports, through datagram_state();
# on any other port, a long-header Initial of a version it can open (tshark's QUIC heuristic)
UDP_PORTS = frozenset({443, 8443, 4433})
UDP_SNIFF = True

V1 = 0x00000001
V2 = 0x6B3343CF            # RFC 9369
DRAFT29 = 0xFF00001D

# Initial salts (RFC 9001 §5.2, RFC 9369 §3.3.1, and the drafts and Google's T05x that
# tshark also opens); a version's draft number picks one, as in Wireshark and nDPI.
SALT_DRAFT22 = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")
SALT_DRAFT23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")  # drafts 23-28
SALT_DRAFT29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")  # drafts 29-32
SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")       # drafts 33-34, v1
SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
SALT_T050 = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")
SALT_T051 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")
MVFST = {0xFACEB001: 22, 0xFACEB002: 27, 0xFACEB00E: 27}  # Facebook's mvfst drafts (number each follows)
T050, T051 = 0x54303530, 0x54303531

# (initial salt, HKDF label prefix, long-header type of Initial, long-header type of Retry, name)
VersionSpec = tuple[bytes, bytes, int, int, str]


@lru_cache(maxsize=64)
def version_spec(version: int) -> VersionSpec | None:
    """How to open a version's client Initials, or None for one without TLS (gQUIC) or unknown."""
    if version == V2:
        return SALT_V2, b"quicv2 ", 1, 0, "2"
    if version == T050:
        return SALT_T050, b"quic ", 0, 3, "T050"
    if version == T051:
        return SALT_T051, b"quic ", 0, 3, "T051"
    if version == V1:
        draft, name = 34, "1"
    elif version >> 8 == 0xFF0000:
        draft = version & 0xFF
        name = f"draft-{draft}"
    elif version in MVFST:
        draft, name = MVFST[version], f"mvfst-{version & 0xFF:x}"
    elif version & 0x0F0F0F0F == 0x0A0A0A0A:
        # reserved to force version negotiation (RFC 9000 §15): no real version, yet clients
        # protect such Initials with the draft-29 salt, and tshark opens them so
        draft, name = 29, f"0x{version:08x}"
    else:
        return None
    if draft < 22 or draft > 34:
        return None
    salt = SALT_DRAFT22 if draft == 22 else SALT_DRAFT23 if draft <= 28 else SALT_DRAFT29 if draft <= 32 else SALT_V1
    return salt, b"quic ", 0, 3, name


MAX_CID = 20
SAMPLE_LEN = 16
TAG_LEN = 16

FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CLOSE = 0x1C

_u32 = struct.Struct("!I").unpack_from
_NONZERO: re.Pattern[bytes] | None = None  # rb"[^\x00]", compiled on first use (start-up time)


def _nonzero() -> re.Pattern[bytes]:
    global _NONZERO
    if _NONZERO is None:
        _NONZERO = re.compile(rb"[^\x00]")
    return _NONZERO


def _varint(b: bytes, p: int) -> tuple[int, int]:
    """RFC 9000 §16 variable-length integer at ``p``: (value, next position)."""
    if p >= len(b):
        raise Malformed("quic: truncated varint")
    first = b[p]
    ln = 1 << (first >> 6)
    if p + ln > len(b):
        raise Malformed("quic: truncated varint")
    v = first & 0x3F
    for i in range(1, ln):
        v = (v << 8) | b[p + i]
    return v, p + ln


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    # HKDF-Expand-Label (RFC 8446 §7.1) with an empty context; length <= 32 so one block.
    # hmac.digest is the one-shot C path: a quarter of hmac.new's cost, and every new DCID needs four
    import hmac

    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", "sha256")[:length]


@lru_cache(maxsize=1024)
def client_initial_keys(dcid: bytes, version: int = V1) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) protecting the client's Initial packets for this DCID (RFC 9001 §5.2)."""
    import hmac

    spec = version_spec(version)
    assert spec is not None, f"no Initial keys for QUIC version 0x{version:08x}"
    salt, prefix = spec[0], spec[1]
    initial_secret = hmac.digest(salt, dcid, "sha256")  # HKDF-Extract
    client_secret = _expand_label(initial_secret, b"client in", 32)
    return (
        _expand_label(client_secret, prefix + b"key", 16),
        _expand_label(client_secret, prefix + b"iv", 12),
        _expand_label(client_secret, prefix + b"hp", 16),
    )


@lru_cache(maxsize=1024)
def _hp_encrypt(hp: bytes) -> Callable[[bytes], bytes]:
    """AES-ECB under ``hp``, one context per key: ECB chains nothing between blocks, so one
    context serves every sample (making one costs more than the encryption)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    return Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update


@lru_cache(maxsize=1024)
def _aead(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _hp_mask(hp: bytes, sample: bytes) -> bytes:
    if len(sample) != SAMPLE_LEN:  # a short block would stay buffered in the shared context
        raise Malformed("quic: Initial too short for a header-protection sample")
    return _hp_encrypt(hp)(sample)


def looks_like_datagram(data: bytes) -> bool:
    """True if the datagram starts with a long-header Initial of a known QUIC version."""
    if len(data) < 7 or (data[0] & 0xC0) != 0xC0:
        return False
    (version,) = _u32(data, 1)
    spec = version_spec(version)
    return spec is not None and ((data[0] >> 4) & 3) == spec[2]


def claims_datagram(data: bytes) -> bool:
    """On a QUIC port, whether a datagram is QUIC's to read: a long header of a version it knows
    (or Version Negotiation). Anything else there (a short header, gQUIC, DNS to port 443 as
    DNSCrypt sends it) is offered to the UDP sniffers."""
    if len(data) < 7 or not data[0] & 0x80:
        return False
    (version,) = _u32(data, 1)
    return version == 0 or version_spec(version) is not None


def _open_initial(pkt: bytes, pn_offset: int, end: int, key_dcid: bytes, version: int) -> bytes | None:
    """Decrypted payload of the Initial ``pkt[:end]``, or None if these keys don't open it."""
    from cryptography.exceptions import InvalidTag

    if pn_offset + 4 + SAMPLE_LEN > end:
        raise Malformed("quic: Initial too short for a header-protection sample")
    key, iv, hp = client_initial_keys(key_dcid, version)
    mask = _hp_mask(hp, pkt[pn_offset + 4 : pn_offset + 4 + SAMPLE_LEN])
    first = pkt[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 3) + 1
    pn_bytes = bytes(pkt[pn_offset + i] ^ mask[1 + i] for i in range(pn_len))
    header = bytes([first]) + pkt[1:pn_offset] + pn_bytes
    # a client's first Initials carry small packet numbers: the truncated value is the value
    nonce = (int.from_bytes(iv, "big") ^ int.from_bytes(pn_bytes, "big")).to_bytes(12, "big")
    ciphertext = pkt[pn_offset + pn_len : end]
    if len(ciphertext) < TAG_LEN:
        raise Malformed("quic: Initial payload shorter than its AEAD tag")
    try:
        return _aead(key).decrypt(nonce, ciphertext, header)
    except InvalidTag:
        return None


def _crypto_frames(payload: bytes, out: list[tuple[int, bytes]]) -> None:
    """Append (offset, data) of every CRYPTO frame; stop at a frame an Initial can't hold."""
    p, n = 0, len(payload)
    while p < n:
        ftype = payload[p]
        if ftype == FRAME_PADDING:
            m = _nonzero().search(payload, p)  # Initials carry ~1 KiB of padding: skip it at once
            p = m.start() if m else n
        elif ftype == FRAME_PING:
            p += 1
        elif ftype in (FRAME_ACK, FRAME_ACK_ECN):
            p += 1
            _, p = _varint(payload, p)            # largest acknowledged
            _, p = _varint(payload, p)            # ack delay
            count, p = _varint(payload, p)
            _, p = _varint(payload, p)            # first range
            if count > n:
                raise Malformed("quic: ACK range count beyond the packet")
            for _ in range(count):
                _, p = _varint(payload, p)
                _, p = _varint(payload, p)
            if ftype == FRAME_ACK_ECN:
                for _ in range(3):
                    _, p = _varint(payload, p)
        elif ftype == FRAME_CRYPTO:
            off, p = _varint(payload, p + 1)
            ln, p = _varint(payload, p)
            if p + ln > n:
                raise Malformed("quic: CRYPTO frame overruns the packet")
            out.append((off, payload[p : p + ln]))
            p += ln
        elif ftype == FRAME_CLOSE:
            return
        else:
            raise Malformed(f"quic: frame type 0x{ftype:x} not allowed in an Initial")


def _initials(data: bytes) -> list[tuple[int, bytes, bytes, int, int]]:
    """Client-protected Initial packets in a datagram: (version, dcid, packet, pn_offset, end)."""
    found = []
    p, n = 0, len(data)
    while p < n:
        first = data[p]
        if not first & 0x80:
            break  # short header: the rest of the datagram is one 1-RTT packet
        if p + 7 > n:
            raise Malformed("quic: truncated long header")
        (version,) = _u32(data, p + 1)
        if version == 0:
            break  # Version Negotiation (server-sent)
        spec = version_spec(version)
        if spec is None or not first & 0x40:
            break  # a version we can't read (gQUIC, drafts), or a greased fixed bit
        q = p + 5
        dcid_len = data[q]
        if dcid_len > MAX_CID or q + 1 + dcid_len >= n:
            raise Malformed("quic: bad destination connection id")
        dcid = data[q + 1 : q + 1 + dcid_len]
        q += 1 + dcid_len
        scid_len = data[q]
        q += 1 + scid_len
        if scid_len > MAX_CID or q > n:
            raise Malformed("quic: bad source connection id")
        ptype = (first >> 4) & 3
        if ptype == spec[3]:
            break
        if ptype == spec[2]:
            token_len, q = _varint(data, q)
            q += token_len
            if q > n:
                raise Malformed("quic: token overruns the datagram")
        length, q = _varint(data, q)
        end = q + length
        if end > n:
            raise Malformed("quic: packet length overruns the datagram")
        if ptype == spec[2]:
            found.append((version, dcid, data[p:end], q - p, end - p))
        p = end
    return found


def _hello_from(frags: list[tuple[int, bytes]]) -> tuple[AppFields | None, bool]:
    """Reassemble CRYPTO data from offset 0; (fields, finished). Fields None: no SNI."""
    frags = sorted(frags, key=lambda f: f[0])
    stream = bytearray()
    for off, chunk in frags:
        if off > len(stream):
            break  # a gap: wait for the missing piece
        if off + len(chunk) > len(stream):
            stream += chunk[len(stream) - off :]
        if len(stream) > MAX_CLIENT_HELLO:
            raise Malformed("quic: CRYPTO stream beyond the ClientHello limit")
    if len(stream) < 4:
        return None, False
    if stream[0] != HS_CLIENT_HELLO:
        return None, True  # a server's Initial that happened to open with client keys
    need = 4 + int.from_bytes(stream[1:4], "big")
    if need > MAX_CLIENT_HELLO:
        raise Malformed("quic: ClientHello length beyond the limit")
    if len(stream) < need:
        return None, False
    app = parse_client_hello(bytes(stream[4:need]))
    return (app if "sni" in app else None), True


def _event(app: AppFields, version: int) -> tuple[str, AppFields]:
    app["tls_version"] = app.pop("version")
    spec = version_spec(version)
    app["version"] = spec[4] if spec else f"0x{version:08x}"
    app.pop("legacy_version", None)
    return KIND, app


def dissect_datagram(data: bytes) -> Found:
    """``quic.initial`` for a client Initial datagram whose ClientHello is whole in it."""
    if len(data) < 7 or (data[0] & 0xC0) != 0xC0:
        return []  # not a long header: nothing to read without keys
    per_dcid: dict[tuple[int, bytes], list[tuple[int, bytes]]] = {}
    for version, dcid, pkt, pn_offset, end in _initials(data):
        payload = _open_initial(pkt, pn_offset, end, dcid, version)
        if payload is not None:
            _crypto_frames(payload, per_dcid.setdefault((version, dcid), []))
    found: Found = []
    for (version, _), frags in per_dcid.items():
        app, _ = _hello_from(frags)
        if app is not None:
            found.append(_event(app, version))
    return found


class QuicInitialAssembler:
    """Per-flow CRYPTO reassembly across Initial datagrams, keyed by the original DCID.

    ``feed(datagram)`` returns what :func:`dissect_datagram` would, but also finishes a
    ClientHello whose CRYPTO data spans several datagrams. Memory is bounded: at most
    ``max_dcids`` connection ids (least recently used dropped) and ``max_bytes`` of
    CRYPTO data each; a DCID whose ClientHello is finished is remembered as done.
    A client's later Initials (after the server picked a new DCID) are still opened
    with the keys of the first DCID seen, as RFC 9001 §5.2 prescribes.
    """

    def __init__(self, max_dcids: int = 8, max_bytes: int = 16 * 1024) -> None:
        self.max_dcids = max_dcids
        self.max_bytes = max_bytes
        self._frags: OrderedDict[tuple[int, bytes], list[tuple[int, bytes]]] = OrderedDict()
        self._size: dict[tuple[int, bytes], int] = {}
        self._done: set[tuple[int, bytes]] = set()
        self._first: tuple[int, bytes] | None = None

    def feed(self, data: bytes) -> Found:
        if len(data) < 7 or (data[0] & 0xC0) != 0xC0:
            return []
        touched: list[tuple[int, bytes]] = []
        for version, dcid, pkt, pn_offset, end in _initials(data):
            key = (version, dcid)
            payload = _open_initial(pkt, pn_offset, end, dcid, version)
            if payload is None and self._first is not None and self._first[0] == version:
                key = self._first
                payload = _open_initial(pkt, pn_offset, end, key[1], version)
            if payload is None or key in self._done:
                continue
            if self._first is None:
                self._first = key
            frags: list[tuple[int, bytes]] = []
            _crypto_frames(payload, frags)
            if not frags:
                continue
            held = self._frags.setdefault(key, [])
            self._frags.move_to_end(key)
            size = self._size.get(key, 0) + sum(len(c) for _, c in frags)
            if size > self.max_bytes:
                self._forget(key)
                self._done.add(key)  # too big to be a ClientHello we can read: give up on it
                continue
            self._size[key] = size
            held.extend(frags)
            if key not in touched:
                touched.append(key)
            while len(self._frags) > self.max_dcids:
                self._forget(next(iter(self._frags)))
        found: Found = []
        for key in touched:
            app, finished = _hello_from(self._frags[key])
            if finished:
                self._forget(key)
                self._done.add(key)
                if len(self._done) > 4 * self.max_dcids:
                    self._done.clear()
                if app is not None:
                    found.append(_event(app, key[0]))
        return found

    @property
    def client(self) -> bool:
        """Whether an Initial opened with client keys here: this direction is the client's."""
        return self._first is not None

    def _forget(self, key: tuple[int, bytes]) -> None:
        self._frags.pop(key, None)
        self._size.pop(key, None)

    def pending(self) -> int:
        """Bytes of CRYPTO data held (for the tap's memory accounting)."""
        return sum(self._size.values())


def datagram_state() -> QuicInitialAssembler:
    """The tap's per-direction state (see upf_tap.dissect): a ClientHello may span datagrams."""
    return QuicInitialAssembler()
