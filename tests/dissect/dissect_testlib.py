"""Test-side builders: real encodings made with scapy, and QUIC Initial protection.

The QUIC side derives its keys with ``cryptography``'s HKDF (not the dissector's own
HMAC code), so a round trip checks the two against each other; RFC 9001 Appendix A
checks both against the published values.
"""

from __future__ import annotations

import collections
import struct
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from scapy.layers.tls.extensions import (
    ProtocolName,
    ServerName,
    TLS_Ext_ALPN,
    TLS_Ext_ServerName,
    TLS_Ext_SupportedVersion_CH,
)
from scapy.layers.tls.handshake import TLSClientHello

from tests.support.frames import varint

HERE = Path(__file__).resolve().parent
RFC9001_DCID = bytes.fromhex("8394c8f03e515708")
# initial salts by version: RFC 9001, RFC 9369, draft-ietf-quic-tls-29 (also what clients use
# with a version-negotiation-forcing version), -23 (also Facebook's mvfst draft-27)
_DRAFT29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
_DRAFT23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")
SALTS = {
    1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    0x6B3343CF: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
    0xFF00001D: _DRAFT29, 0x0A0A0A0A: _DRAFT29, 0xFF000018: _DRAFT23, 0xFACEB002: _DRAFT23,
}
PREFIX = collections.defaultdict(lambda: b"quic ", {0x6B3343CF: b"quicv2 "})
INITIAL_TYPE = collections.defaultdict(int, {0x6B3343CF: 1})


def rfc9001_a2_packet() -> bytes:
    """The 1200-byte protected client Initial of RFC 9001 Appendix A.2."""
    return bytes.fromhex((HERE / "rfc9001_a2_client_initial.hex").read_text().replace("\n", ""))


def client_hello(
    sni: str | None = "svc.mec.local",
    alpn: list[str] | None = None,
    versions: list[int] | None = None,
    pad_ext: int = 0,
) -> bytes:
    """A ClientHello handshake message (4-byte header included), built by scapy."""
    ext: list = []
    if sni is not None:
        ext.append(TLS_Ext_ServerName(servernames=[ServerName(servername=sni.encode())]))
    if alpn:
        ext.append(TLS_Ext_ALPN(protocols=[ProtocolName(protocol=a.encode()) for a in alpn]))
    if versions:
        ext.append(TLS_Ext_SupportedVersion_CH(versions=versions))
    body = bytes(TLSClientHello(ciphers=[0x1301, 0x1302, 0xC02F], ext=ext or None))
    if pad_ext:
        # grow the hello with a padding extension (type 21), as big key shares would
        inner = body[4:]
        p = 34 + 1 + inner[34]
        (cs,) = struct.unpack_from("!H", inner, p)
        p += 2 + cs
        p += 1 + inner[p]
        (ext_total,) = struct.unpack_from("!H", inner, p)
        pad = struct.pack("!HH", 21, pad_ext) + bytes(pad_ext)
        inner = inner[:p] + struct.pack("!H", ext_total + len(pad)) + inner[p + 2 :] + pad
        body = b"\x01" + len(inner).to_bytes(3, "big") + inner
    return body


def tls_records(handshake: bytes, sizes: list[int] | None = None, version: int = 0x0301) -> bytes:
    """Wrap handshake bytes in handshake records, fragmenting at ``sizes`` if given."""
    out = b""
    p = 0
    for size in (sizes or []) + [len(handshake)]:
        chunk = handshake[p : p + size]
        if not chunk:
            break
        out += struct.pack("!BHH", 22, version, len(chunk)) + chunk
        p += len(chunk)
    return out


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def initial_keys(dcid: bytes, version: int = 1, side: bytes = b"client in") -> tuple[bytes, bytes, bytes]:
    import hmac

    initial = hmac.new(SALTS[version], dcid, "sha256").digest()
    secret = _expand_label(initial, side, 32)
    pre = PREFIX[version]
    return (
        _expand_label(secret, pre + b"key", 16),
        _expand_label(secret, pre + b"iv", 12),
        _expand_label(secret, pre + b"hp", 16),
    )


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def protect_initial(
    dcid: bytes,
    frames: bytes,
    *,
    scid: bytes = b"\x01\x02\x03\x04",
    pn: int = 0,
    pn_len: int = 2,
    version: int = 1,
    token: bytes = b"",
    pad_to: int = 1200,
    side: bytes = b"client in",
    key_dcid: bytes | None = None,
) -> bytes:
    """An Initial packet protected as RFC 9001 §5 says (padded with PADDING frames).

    ``key_dcid``: derive the keys from this DCID instead (a client's later Initials).
    """
    key, iv, hp = initial_keys(key_dcid or dcid, version, side)
    first_plain = 0xC0 | (INITIAL_TYPE[version] << 4) | (pn_len - 1)
    head_wo_len = (
        bytes([first_plain]) + struct.pack("!I", version)
        + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
        + varint(len(token)) + token
    )
    # fill to pad_to bytes in total (length varint taken as 2 bytes)
    payload = frames
    fill = pad_to - (len(head_wo_len) + 2 + pn_len + len(payload) + 16)
    if fill > 0:
        payload += bytes(fill)
    length = pn_len + len(payload) + 16
    header = head_wo_len + struct.pack("!H", 0x4000 | length) + pn.to_bytes(pn_len, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, payload, header)
    pn_offset = len(header) - pn_len
    sample = sealed[4 - pn_len : 4 - pn_len + 16]
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    out = bytearray(header + sealed)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_offset + i] ^= mask[1 + i]
    return bytes(out)


def tshark_fields(pcap: Path, fields: list[str], extra: list[str] | None = None) -> list[list[str]]:
    """One row per frame: the listed fields (multi-valued fields joined by ',')."""
    cmd = ["tshark", "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=\t", "-E", "aggregator=,"]
    cmd += extra or []
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in out.splitlines()]
