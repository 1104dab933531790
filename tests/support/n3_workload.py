"""Generate a large, realistic N3 capture: bulk TCP (``generate``) or a real UPF's mix (``generate_mixed``).

Frames are Ethernet/IPv4/UDP 2152/GTP-U (PDU Session Container with QFI)/IPv4 or IPv6/TCP or UDP,
written straight into a pcap with struct (scapy would take minutes for 300k packets).
Checksums are computed so that tools that verify them agree.

``generate`` (``--mix bulk``): one flow after another, mostly bulk TCP downloads, a few hundred
app events in 300k packets.

``generate_mixed`` (``--mix mixed``): what a UPF serving a few hundred phones sees, with
~130 flows in progress at any time and their packets interleaved: DNS lookups (A, AAAA, HTTPS,
a few PTR) and their answers, TLS 1.3 over TCP 443 (Chrome-like ClientHellos with SNI, some with
a post-quantum key share spanning two segments, the server's handshake flight, records of data,
close), QUIC v1 on UDP 443 (client Initials protected as RFC 9001 says, some split over two
datagrams or with CRYPTO frames out of order, the server's Initial and Handshake, 1-RTT data),
HTTP/1.1 on TCP 80 (keep-alive GETs and a few POSTs with Host, responses with bodies), and a
few bulk downloads and uploads over each; a third of the flows over IPv6. 300k packets hold
about 8.5k flows and 10.5k app events.

    python -m tests.support.n3_workload OUT.pcap [--mix bulk|mixed] [--packets 300000] [--ues 200] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import random
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.frames import csum, gtpu, varint

GNB = socket.inet_aton("192.168.100.10")
UPF = socket.inet_aton("192.168.100.20")
APP = socket.inet_aton("10.200.0.10")
DNS = socket.inet_aton("10.200.0.53")
ETH = bytes.fromhex("020000000002" "020000000001" "0800")
ETH_REV = bytes.fromhex("020000000001" "020000000002" "0800")
MSS = 1400


_csum = csum


def _ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, 0x4000, 64, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + payload


def _tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(hdr) + len(data))
    c = _csum(pseudo + hdr + data)
    return hdr[:16] + struct.pack("!H", c) + hdr[18:] + data


def _udp(src: bytes, dst: bytes, sport: int, dport: int, data: bytes, csum: bool = True) -> bytes:
    hdr = struct.pack("!HHHH", sport, dport, 8 + len(data), 0)
    if not csum:
        return hdr + data
    c = _csum(src + dst + struct.pack("!BBH", 0, 17, 8 + len(data)) + hdr + data) or 0xFFFF
    return hdr[:6] + struct.pack("!H", c) + data


class Writer:
    def __init__(self, path: Path) -> None:
        self.f = path.open("wb")
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        self.count = 0
        self.ts_us = 1_700_000_000_000_000

    def frame(self, ul: bool, teid: int, qfi: int, inner: bytes, gap_us: int = 7) -> None:
        self.ts_us += gap_us
        outer = _ipv4(GNB if ul else UPF, UPF if ul else GNB, 17,
                      _udp(GNB if ul else UPF, UPF if ul else GNB, 2152, 2152, gtpu(teid, inner, qfi=qfi, ul=ul), False),
                      self.count)
        frame = (ETH if ul else ETH_REV) + outer
        sec, usec = divmod(self.ts_us, 1_000_000)
        self.f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
        self.count += 1

    def close(self) -> None:
        self.f.close()


def _dns_query(qid: int, name: str, qtype: int) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def _client_hello(sni: str) -> bytes:
    name = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    alpn_list = b"\x02h2\x08http/1.1"
    alpn_ext = struct.pack("!HHH", 16, len(alpn_list) + 2, len(alpn_list)) + alpn_list
    exts = sni_ext + alpn_ext
    body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x04\x13\x01\x00\x2f" + b"\x01\x00"
            + struct.pack("!H", len(exts)) + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def generate(path: Path, packets: int, ues: int, seed: int) -> dict[str, int]:
    """Write the capture; return how many app events of each kind it holds."""
    rng = random.Random(seed)
    w = Writer(path)
    counts = {"http.request": 0, "tls.client_hello": 0, "dns.query": 0}
    ue_ips = [socket.inet_aton(f"10.45.{(i + 2) // 256}.{(i + 2) % 256}") for i in range(ues)]
    flow_no = 0
    while w.count < packets:
        u = rng.randrange(ues)
        ue, ul_teid, dl_teid, qfi = ue_ips[u], 0x10000 + u, 0x20000 + u, rng.choice((1, 5, 9))
        flow_no += 1
        sport = 20000 + flow_no % 40000
        kind = rng.random()
        if kind < 0.25:  # a DNS lookup
            name = f"svc{flow_no % 97}.mec.local"
            w.frame(True, ul_teid, qfi, _ipv4(ue, DNS, 17, _udp(ue, DNS, sport, 53, _dns_query(flow_no & 0xFFFF, name, 1))))
            counts["dns.query"] += 1
            continue
        tls = kind < 0.55
        dport = 443 if tls else 80
        isn_c, isn_s = rng.getrandbits(32), rng.getrandbits(32)
        w.frame(True, ul_teid, qfi, _ipv4(ue, APP, 6, _tcp(ue, APP, sport, dport, isn_c, 0, 0x02, b"")))
        w.frame(False, dl_teid, qfi, _ipv4(APP, ue, 6, _tcp(APP, ue, dport, sport, isn_s, isn_c + 1, 0x12, b"")))
        if tls:
            req = _client_hello(f"app{flow_no % 53}.mec.local")
            counts["tls.client_hello"] += 1
        else:
            req = (f"GET /video/{flow_no}.mp4 HTTP/1.1\r\nHost: cdn.mec.local\r\n"
                   "User-Agent: bench/1.0\r\n\r\n").encode()
            counts["http.request"] += 1
        w.frame(True, ul_teid, qfi, _ipv4(ue, APP, 6, _tcp(ue, APP, sport, dport, isn_c + 1, isn_s + 1, 0x18, req)))
        # bulk download: a few hundred segments, an ACK every other segment
        seq = isn_s + 1
        payload = bytes(rng.getrandbits(8) for _ in range(64)) * (MSS // 64)
        for i in range(rng.randrange(150, 600)):
            w.frame(False, dl_teid, qfi, _ipv4(APP, ue, 6, _tcp(APP, ue, dport, sport, seq, isn_c + 1 + len(req),
                                                                0x10, payload)), gap_us=2)
            seq += len(payload)
            if i % 2:
                w.frame(True, ul_teid, qfi, _ipv4(ue, APP, 6, _tcp(ue, APP, sport, dport, isn_c + 1 + len(req),
                                                                   seq, 0x10, b"")), gap_us=2)
            if w.count >= packets:
                break
        w.frame(True, ul_teid, qfi, _ipv4(ue, APP, 6, _tcp(ue, APP, sport, dport, isn_c + 1 + len(req), seq,
                                                           0x11, b"")))
        w.frame(False, dl_teid, qfi, _ipv4(APP, ue, 6, _tcp(APP, ue, dport, sport, seq, isn_c + 2 + len(req),
                                                            0x11, b"")))
    w.close()
    counts["packets"] = w.count
    return counts


# --- the mixed workload ------------------------------------------------------------------

UE6_PREFIX = "2001:db8:cafe"                      # inside the tap's default IPv6 UE pool
DNS6 = socket.inet_pton(socket.AF_INET6, "2001:db8:53::53")
CONCURRENT = 128                                  # flows in progress at once
V6_SHARE = 0.35                                   # flows over IPv6
TCP_MSS = 1360                                    # inner MTU 1400 under GTP-U
QUIC_MAX = 1350                                   # Google's servers' UDP payloads
GREASE = [0x0A0A + 0x1010 * i for i in range(16)]

# (DNS name, a few names under it): the hosts phones talk to, each with its own addresses
_SITES = {
    "google.com": ["www", "accounts", "mail", "play", "clients4"],
    "googleapis.com": ["www", "android", "firebaseinstallations", "fcm", "play", "youtubei"],
    "gstatic.com": ["www", "fonts", "ssl", "encrypted-tbn0", "csi", "connectivitycheck"],
    "googlevideo.com": [f"rr{i}---sn-4g5e{c}n7s" for i in range(1, 6) for c in "lrsz"],
    "youtube.com": ["www", "m", "i", "s", "youtubei"],
    "ytimg.com": ["i", "i9", "s"],
    "facebook.com": ["www", "graph", "m", "edge-mqtt", "b-graph"],
    "fbcdn.net": [f"scontent-{c}.xx" for c in ("fra3-1", "fra3-2", "ams2-1", "cdg4-1")] + ["static.xx"],
    "instagram.com": ["www", "i", "graph", "b.i"],
    "whatsapp.net": ["g", "mmg", "media-fra3-1.cdn", "static"],
    "apple.com": ["www", "gsp-ssl.ls", "init.itunes", "gs-loc", "configuration.ls"],
    "icloud.com": ["www", "p62-contacts", "gateway", "keyvalueservice"],
    "mzstatic.com": ["is1-ssl", "is2-ssl", "is3-ssl", "is4-ssl"],
    "microsoft.com": ["www", "login", "go", "settings-win.data"],
    "windowsupdate.com": ["au", "ctldl", "download"],
    "netflix.com": ["www", "api-global", "ichnaea-web", "assets"],
    "nflxvideo.net": [f"ipv4-c{n:03d}-fra002-ix.1.oca" for n in range(1, 9)],
    "amazon.com": ["www", "fls-eu", "images-eu.ssl-images"],
    "cloudfront.net": ["d1a2b3c4d5e6f7", "d2x9k3j4h5g6f7", "d3kq9w8e7r6t5y"],
    "akamaized.net": ["video", "assets", "img-prod"],
    "tiktokcdn.com": ["p16-sign-va", "v16m", "sf16-website-login.neutral"],
    "tiktokv.com": ["api16-normal-c-useast1a", "log16-normal-c-useast1a", "mon"],
    "spotify.com": ["api", "apresolve", "spclient.wg", "open"],
    "scdn.co": ["i", "audio-ak-spotify-com.akamaized", "mosaic"],
    "wikipedia.org": ["en", "de", "fr", "upload", "meta"],
    "reddit.com": ["www", "gql", "oauth", "gateway"],
    "redd.it": ["i", "preview", "v"],
    "github.com": ["www", "api", "codeload", "collector"],
    "twitter.com": ["api", "mobile", "abs"],
    "twimg.com": ["pbs", "video", "abs"],
    "doubleclick.net": ["googleads.g", "pubads.g", "securepubads.g"],
    "snapchat.com": ["app", "gcp.api", "aws.api", "cf-st.sc-cdn"],
    "telegram.org": ["web", "core", "venus"],
    "zoom.us": ["www", "us04web", "zoomcdn"],
    "bbc.co.uk": ["www", "static", "ichef", "emp"],
    "mec.local": ["video", "ar", "game", "cdn", "api"],
}
_UAS = [
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1",
    "Dalvik/2.1.0 (Linux; U; Android 13; SM-S911B Build/TP1A.220624.014)",
    "okhttp/4.12.0",
    "com.google.android.youtube/19.16.39 (Linux; U; Android 14) gzip",
]
_CT_API = ("application/json", "text/plain")
_PATHS = ("/", "/index.html", "/api/v1/config", "/api/v2/feed", "/generate_204", "/gen_204",
          "/static/js/app.{h}.js", "/img/{h}.webp", "/v1/track?ev={n}&sid={h}", "/hls/{h}/seg-{n}.ts",
          "/update/{h}.bin", "/favicon.ico", "/ocsp/{h}", "/search?q={h}&hl=en")


Pkt = tuple[bool, bytes, "str | None"]            # uplink?, inner IP packet, app event it completes


class _Host:
    __slots__ = ("cname", "name", "v4", "v6")

    def __init__(self, name: str, v4: bytes, v6: bytes, cname: str | None) -> None:
        self.name, self.v4, self.v6, self.cname = name, v4, v6, cname


class _Ue:
    __slots__ = ("dl_teid", "next_port", "qfi", "ul_teid", "v4", "v6")

    def __init__(self, u: int, rng: random.Random) -> None:
        self.v4 = socket.inet_aton(f"10.45.{(u + 2) // 256}.{(u + 2) % 256}")
        self.v6 = socket.inet_pton(socket.AF_INET6, f"{UE6_PREFIX}:{u:x}::{rng.getrandbits(16):x}")
        self.ul_teid, self.dl_teid = 0x10000 + u, 0x20000 + u
        self.qfi = rng.choice((9, 9, 9, 8, 6, 5))
        self.next_port = rng.randrange(32768, 50000)

    def port(self) -> int:
        self.next_port = self.next_port + 1 if self.next_port < 60999 else 32768
        return self.next_port


def _ipv6(src: bytes, dst: bytes, nh: int, payload: bytes, label: int = 0) -> bytes:
    return struct.pack("!IHBB", 0x60000000 | (label & 0xFFFFF), len(payload), nh, 64) + src + dst + payload


def _tcpo(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes,
          opts: bytes, win: int) -> bytes:
    """A TCP segment with options (a multiple of 4 bytes); the checksum over an IPv4 or IPv6 pseudo-header
    (the two sum alike: 0, proto, length)."""
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (5 + len(opts) // 4) << 4,
                      flags, win, 0, 0) + opts
    c = _csum(src + dst + struct.pack("!BBH", 0, 6, len(hdr) + len(data)) + hdr + data)
    return hdr[:16] + struct.pack("!H", c) + hdr[18:] + data


def _ext(etype: int, data: bytes) -> bytes:
    return struct.pack("!HH", etype, len(data)) + data


def _u16_list(values: list[int], width: int = 2) -> bytes:
    body = b"".join(struct.pack("!H", v) for v in values)
    return len(body).to_bytes(width, "big") + body


def chrome_client_hello(rng: random.Random, sni: str, *, quic_scid: bytes | None = None,
                        pq: bool = False, ech: bool = True) -> bytes:
    """A ClientHello handshake message (4-byte header included) shaped like Chrome's: GREASE,
    X25519 (and X25519MLKEM768 with ``pq``: 1.2 kB more), ECH GREASE; over TCP padded to 512 bytes
    (BoringSSL's rule), over QUIC (``quic_scid`` given) with transport parameters and ALPN h3."""
    g1, g2, g3, g4 = rng.sample(GREASE, 4)
    quic = quic_scid is not None
    name = sni.encode()
    groups = [g1, *([0x11EC] if pq else []), 0x001D, 0x0017, 0x0018]
    shares = struct.pack("!HH", g1, 1) + b"\0"
    if pq:
        shares += struct.pack("!HH", 0x11EC, 1216) + rng.randbytes(1216)
    shares += struct.pack("!HH", 0x001D, 32) + rng.randbytes(32)
    alpn = [b"h3"] if quic else [b"h2", b"http/1.1"]
    alpn_list = b"".join(bytes([len(a)]) + a for a in alpn)
    exts = [
        _ext(g2, b""),
        _ext(0x0000, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name),
        _ext(0x0017, b""),
        _ext(0x000A, _u16_list(groups)),
        _ext(0x0010, struct.pack("!H", len(alpn_list)) + alpn_list),
        _ext(0x0005, b"\x01\0\0\0\0"),
        _ext(0x000D, _u16_list([0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601])),
        _ext(0x0012, b""),
        _ext(0x0033, struct.pack("!H", len(shares)) + shares),
        _ext(0x002D, b"\x01\x01"),
        _ext(0x002B, _u16_list([g3, 0x0304, 0x0303], 1)),
        _ext(0x001B, b"\x02\x00\x02"),
        _ext(0x4469, b"\x00\x03\x02" + (b"h3" if quic else b"h2")),
    ]
    if quic_scid is None:
        exts += [_ext(0xFF01, b"\0"), _ext(0x000B, b"\x01\0"), _ext(0x0023, b"")]
    else:
        tp = b"".join(varint(k) + varint(len(v)) + v for k, v in (
            (0x01, varint(30000)), (0x03, varint(1472)), (0x04, varint(15728640)), (0x05, varint(6291456)),
            (0x06, varint(6291456)), (0x07, varint(6291456)), (0x08, varint(100)), (0x09, varint(103)),
            (0x0F, quic_scid), (31 * rng.randrange(1, 1000) + 27, rng.randbytes(rng.randrange(1, 16)))))
        exts.append(_ext(0x0039, tp))
    if ech:
        payload = rng.choice((144, 176, 208, 240))
        exts.append(_ext(0xFE0D, b"\0\x00\x01\x00\x01" + bytes([rng.getrandbits(8)]) + struct.pack("!H", 32)
                         + rng.randbytes(32) + struct.pack("!H", payload) + rng.randbytes(payload)))
    rng.shuffle(exts)                             # Chrome permutes its extensions
    exts.append(_ext(g4, b"\0"))
    suites = [g1, 0x1301, 0x1302, 0x1303] + ([] if quic else
                                               [0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014,
                                                0x009C, 0x009D, 0x002F, 0x0035])
    sid = b"" if quic else rng.randbytes(32)
    head = b"\x03\x03" + rng.randbytes(32) + bytes([len(sid)]) + sid + _u16_list(suites) + b"\x01\0"
    ext_bytes = b"".join(exts)
    length = 4 + len(head) + 2 + len(ext_bytes)
    if not quic and 0xFF <= length < 0x200:
        ext_bytes += _ext(0x0015, bytes(max(1, 0x200 - length - 4)))
    body = head + struct.pack("!H", len(ext_bytes)) + ext_bytes
    return b"\x01" + len(body).to_bytes(3, "big") + body


def server_hello(rng: random.Random, session_id: bytes) -> bytes:
    """A TLS 1.3 ServerHello handshake message (X25519 key share), echoing ``session_id``."""
    exts = _ext(0x002B, b"\x03\x04") + _ext(0x0033, struct.pack("!HH", 0x001D, 32) + rng.randbytes(32))
    body = (b"\x03\x03" + rng.randbytes(32) + bytes([len(session_id)]) + session_id + b"\x13\x01\x00"
            + struct.pack("!H", len(exts)) + exts)
    return b"\x02" + len(body).to_bytes(3, "big") + body


def _quic_keys(dcid: bytes, side: bytes) -> tuple[Any, bytes, Any]:
    import hashlib
    import hmac

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    def expand(secret: bytes, label: bytes, length: int) -> bytes:
        full = b"tls13 " + label
        info = struct.pack("!HB", length, len(full)) + full + b"\0"
        return hmac.new(secret, info + b"\x01", hashlib.sha256).digest()[:length]

    secret = expand(hmac.new(bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), dcid, hashlib.sha256).digest(),
                    side, 32)
    return (AESGCM(expand(secret, b"quic key", 16)), expand(secret, b"quic iv", 12),
            Cipher(algorithms.AES(expand(secret, b"quic hp", 16)), modes.ECB()))


def quic_initial(dcid: bytes, scid: bytes, frames: bytes, pn: int, *, key_dcid: bytes | None = None,
                 server: bool = False, pad_to: int = 0) -> bytes:
    """A QUIC v1 Initial packet protected as RFC 9001 §5 says (keys from ``key_dcid`` or ``dcid``),
    padded with PADDING frames to ``pad_to`` bytes; a 2-byte packet number."""
    aead, iv, hp = _quic_keys(key_dcid or dcid, b"server in" if server else b"client in")
    head = b"\xc1" + struct.pack("!I", 1) + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + b"\0"
    fill = pad_to - (len(head) + 2 + 2 + len(frames) + 16)
    payload = frames + bytes(max(0, fill))
    header = head + struct.pack("!H", 0x4000 | (2 + len(payload) + 16)) + struct.pack("!H", pn)
    sealed = aead.encrypt((int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big"), payload, header)
    enc = hp.encryptor()
    mask = enc.update(sealed[2:18]) + enc.finalize()
    out = bytearray(header + sealed)
    out[0] ^= mask[0] & 0x0F
    out[len(header) - 2] ^= mask[1]
    out[len(header) - 1] ^= mask[2]
    return bytes(out)


def _dns_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"


def _dns_message(qid: int, name: str, qtype: int, rng: random.Random, answers: list[tuple[int, bytes]] | None,
                 cname: str | None = None) -> bytes:
    """A query (``answers`` None, with an EDNS OPT record) or its response: a CNAME then ``answers``
    ((type, rdata), all of the CNAME's target when there is one), compressed as servers do."""
    q = _dns_name(name) + struct.pack("!HH", qtype, 1)
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)
    if answers is None:
        return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1) + q + opt
    body, owner, n = b"", 0xC00C, 0
    if cname is not None:
        target = _dns_name(cname)
        body += struct.pack("!HHHIH", owner, 5, 1, rng.randrange(30, 3600), len(target)) + target
        owner = 0xC000 | (12 + len(q) + 12)
        n += 1
    for rtype, rdata in answers:
        body += struct.pack("!HHHIH", owner, rtype, 1, rng.randrange(30, 300), len(rdata)) + rdata
        n += 1
    rcode = 0 if n else 3 if rng.random() < 0.5 else 0  # an empty answer: NXDOMAIN or NODATA
    return struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, n, 0, 1) + q + body + opt


class _Flow:
    """One connection's endpoints and addressing; ``c()``/``s()`` build the client's/server's IP packets."""

    __slots__ = ("dport", "dst", "label", "sport", "src", "ue", "v6")

    def __init__(self, ue: _Ue, v6: bool, server: bytes, dport: int) -> None:
        self.ue, self.v6 = ue, v6
        self.src = ue.v6 if v6 else ue.v4
        self.dst, self.sport, self.dport = server, ue.port(), dport
        self.label = ue.next_port * 2654435761

    def ip(self, ul: bool, proto: int, l4: bytes) -> bytes:
        a, b = (self.src, self.dst) if ul else (self.dst, self.src)
        if self.v6:
            return _ipv6(a, b, proto, l4, self.label if ul else self.label >> 7)
        return _ipv4(a, b, proto, l4, self.label + len(l4))

    def udp(self, ul: bool, data: bytes) -> bytes:
        a, b = (self.src, self.dst) if ul else (self.dst, self.src)
        return self.ip(ul, 17, _udp(a, b, self.sport, self.dport, data) if ul else
                       _udp(a, b, self.dport, self.sport, data))


class _Tcp:
    """A TCP connection's sequence numbers, windows and timestamp options (as Linux and iOS send them)."""

    def __init__(self, f: _Flow, rng: random.Random) -> None:
        self.f = f
        self.cseq, self.sseq = rng.getrandbits(32), rng.getrandbits(32)
        self.ts = rng.random() < 0.85
        self.cts, self.sts = rng.getrandbits(31), rng.getrandbits(31)
        self.cwin, self.swin = rng.choice((502, 1026, 2053, 4096)), rng.choice((83, 501, 1040, 65535))
        self.mss = TCP_MSS - (12 if self.ts else 0)   # payload of a full segment

    def _opts(self, ul: bool, syn: bool) -> bytes:
        if ul:
            self.cts += 1
        else:
            self.sts += 1
        val, ecr = (self.cts, self.sts) if ul else (self.sts, self.cts)
        tsopt = struct.pack("!BBII", 8, 10, val & 0xFFFFFFFF, 0 if syn and ul else ecr & 0xFFFFFFFF)
        if syn:
            mss = struct.pack("!BBH", 2, 4, TCP_MSS)
            return mss + (b"\x04\x02" + tsopt if self.ts else b"\x01\x01\x04\x02") + b"\x01\x03\x03\x08"
        return b"\x01\x01" + tsopt if self.ts else b""

    def seg(self, ul: bool, flags: int, data: bytes = b"") -> bytes:
        f, syn = self.f, bool(flags & 0x02)
        if ul:
            seq, ack, win = self.cseq, self.sseq, 65535 if syn else self.cwin
            self.cseq += len(data) + (1 if flags & 0x03 else 0)
            a, b, sp, dp = f.src, f.dst, f.sport, f.dport
        else:
            seq, ack, win = self.sseq, self.cseq, 65535 if syn else self.swin
            self.sseq += len(data) + (1 if flags & 0x03 else 0)
            a, b, sp, dp = f.dst, f.src, f.dport, f.sport
        if not flags & 0x10:
            ack = 0
        return f.ip(ul, 6, _tcpo(a, b, sp, dp, seq, ack, flags, data, self._opts(ul, syn), win))

    def handshake(self) -> Iterator[Pkt]:
        yield True, self.seg(True, 0x02), None
        yield False, self.seg(False, 0x12), None
        yield True, self.seg(True, 0x10), None

    def send(self, ul: bool, data: bytes, acks_every: int = 2, ev: str | None = None) -> Iterator[Pkt]:
        """``data`` in full segments (PSH on the last), the peer ACKing every ``acks_every``; ``ev``
        counted on the last segment."""
        n = (len(data) + self.mss - 1) // self.mss
        for i in range(n):
            last = i == n - 1
            yield ul, self.seg(ul, 0x18 if last else 0x10, data[i * self.mss:(i + 1) * self.mss]), ev if last else None
            if acks_every and ((i + 1) % acks_every == 0 or last):
                yield not ul, self.seg(not ul, 0x10), None

    def close(self, rng: random.Random) -> Iterator[Pkt]:
        first = rng.random() < 0.6       # the client closes first, mostly
        yield first, self.seg(first, 0x11), None
        yield not first, self.seg(not first, 0x11), None
        yield first, self.seg(first, 0x10), None


class _Mixed:
    def __init__(self, rng: random.Random, ues: int) -> None:
        self.rng = rng
        self.ues = [_Ue(u, rng) for u in range(ues)]
        self.pool = rng.randbytes(1 << 20)       # "encrypted" bytes: slices of one random block
        self.hosts: list[_Host] = []
        for site, subs in _SITES.items():
            net4 = bytes([rng.choice((23, 31, 104, 142, 151, 157, 172, 185, 199, 216)), rng.randrange(256)])
            net6 = struct.pack("!HHH", 0x2A00 + rng.randrange(0x400), rng.getrandbits(16), rng.getrandbits(16))
            for sub in subs:
                name = f"{sub}.{site}"
                cname = f"{name}.cdn.{rng.choice(('akamaiedge.net', 'fastly.net', 'edgekey.net'))}" \
                    if rng.random() < 0.3 else None
                self.hosts.append(_Host(name, net4 + rng.randbytes(2),
                                        net6 + rng.randbytes(10), cname))
        # a few hosts get most of the lookups and connections (Zipf-like)
        self.weights = [1 / (i + 1) ** 0.8 for i in range(len(self.hosts))]
        rng.shuffle(self.weights)

    def noise(self, n: int) -> bytes:
        o = self.rng.randrange(len(self.pool) - n)
        return self.pool[o:o + n]

    def tls_records(self, total: int, ctype: int = 0x17) -> bytes:
        out, left = [], total
        while left > 0:
            n = min(left, 16401)
            out.append(struct.pack("!BHH", ctype, 0x0303, n) + self.noise(n))
            left -= n
        return b"".join(out)

    def size(self, bulk: bool) -> int:
        """Bytes a server sends: a web object, or (bulk) a video segment or an app update."""
        rng = self.rng
        if bulk:
            return int(math.exp(rng.uniform(math.log(170_000), math.log(1_300_000))))
        return int(math.exp(rng.uniform(math.log(400), math.log(30_000))))

    def host(self) -> _Host:
        return self.rng.choices(self.hosts, self.weights)[0]

    def flow(self) -> tuple[_Ue, Iterator[Pkt]]:
        rng = self.rng
        ue = rng.choice(self.ues)
        h = self.host()
        v6 = rng.random() < V6_SHARE
        k = rng.random()
        if k < 0.43:
            return ue, self.dns(_Flow(ue, v6, DNS6 if v6 else DNS, 53), h)
        server = h.v6 if v6 else h.v4
        if k < 0.70:
            return ue, self.tls(_Flow(ue, v6, server, 443), h, rng.random() < 0.07)
        if k < 0.85:
            return ue, self.quic(_Flow(ue, v6, server, 443), h, rng.random() < 0.12)
        return ue, self.http(_Flow(ue, v6, server, 80), h, rng.random() < 0.04)

    def dns(self, f: _Flow, h: _Host) -> Iterator[Pkt]:
        rng = self.rng
        r = rng.random()
        if r < 0.03:
            ip = rng.choice(self.hosts).v4
            qs = [(".".join(str(b) for b in reversed(ip)) + ".in-addr.arpa", 12)]
        else:
            qs = [(h.name, 1)] + ([(h.name, 28)] if r < 0.36 else []) + ([(h.name, 65)] if r < 0.12 else [])
        for name, qtype in qs:
            qid = rng.getrandbits(16)
            yield True, f.udp(True, _dns_message(qid, name, qtype, rng, None)), "dns.query"
            if qtype == 12:
                answers = [(12, _dns_name(rng.choice(self.hosts).name))]
            elif qtype == 65:
                answers = [(65, b"\0\x01\0" + struct.pack("!HH", 1, 6) + b"\x02h3\x02h2")]
            elif rng.random() < 0.03:
                answers = []
            else:
                base = h.v4 if qtype == 1 else h.v6
                answers = [(qtype, base[:-1] + bytes([(base[-1] + i) & 0xFF])) for i in range(rng.randrange(1, 5))]
            yield False, f.udp(False, _dns_message(qid, name, qtype, rng, answers,
                                                   h.cname if answers and qtype != 12 else None)), None

    def tls(self, f: _Flow, h: _Host, bulk: bool) -> Iterator[Pkt]:
        rng = self.rng
        t = _Tcp(f, rng)
        yield from t.handshake()
        hello = chrome_client_hello(rng, h.name, pq=rng.random() < 0.3, ech=rng.random() < 0.6)
        yield from t.send(True, struct.pack("!BHH", 22, 0x0301, len(hello)) + hello, 0, "tls.client_hello")
        # ServerHello, ChangeCipherSpec and the encrypted rest of the server's flight
        sh = server_hello(rng, hello[39:71])
        flight = (struct.pack("!BHH", 22, 0x0303, len(sh)) + sh
                  + b"\x14\x03\x03\x00\x01\x01" + self.tls_records(rng.randrange(2500, 5200)))
        yield from t.send(False, flight, 2)
        yield from t.send(True, b"\x14\x03\x03\x00\x01\x01" + self.tls_records(53)
                          + self.tls_records(rng.randrange(90, 700)), 0)
        upload = bulk and rng.random() < 0.2
        for _ in range(1 if bulk else rng.choice((1, 1, 1, 2, 3))):
            yield from t.send(True, self.tls_records(rng.randrange(60, 500)), 0)
            yield from t.send(False, self.tls_records(self.size(bulk and not upload)), 2)
        if upload:
            yield from t.send(True, self.tls_records(self.size(True)), 2)
            yield from t.send(False, self.tls_records(rng.randrange(100, 400)), 1)
        yield from t.send(True, self.tls_records(19), 0)        # close_notify
        yield from t.close(rng)

    def quic(self, f: _Flow, h: _Host, bulk: bool) -> Iterator[Pkt]:
        rng = self.rng
        dcid = rng.randbytes(8)
        cscid = rng.randbytes(8) if rng.random() < 0.3 else b""
        sscid = rng.randbytes(8)
        hello = chrome_client_hello(rng, h.name, quic_scid=cscid, pq=rng.random() < 0.3, ech=rng.random() < 0.6)
        cpn = spn = 0
        if len(hello) > 1100:                      # two Initials, as Chrome sends a post-quantum hello
            cut = rng.randrange(900, 1100)
            parts = [[(0, hello[:cut])], [(cut, hello[cut:])]]
        elif rng.random() < 0.4:                   # Chrome's chaos protection: CRYPTO frames out of order
            a, b = sorted(rng.sample(range(50, len(hello) - 50), 2))
            pieces = [(0, hello[:a]), (a, hello[a:b]), (b, hello[b:])]
            rng.shuffle(pieces)
            parts = [pieces]
        else:
            parts = [[(0, hello)]]
        for i, part in enumerate(parts):
            frames = b"".join((b"\x01" * rng.randrange(0, 3)) + b"\x06" + varint(off) + varint(len(d)) + d
                              + bytes(rng.randrange(0, 8)) for off, d in part)
            yield True, f.udp(True, quic_initial(dcid, cscid, frames, cpn, pad_to=1250)), \
                "quic.initial" if i == len(parts) - 1 else None
            cpn += 1
        # the server's Initial (ServerHello) coalesced with its first Handshake packet, then more Handshake
        sh = server_hello(rng, b"")
        ack = b"\x02" + varint(cpn - 1) + b"\0\0\0"
        init = quic_initial(cscid, sscid, ack + b"\x06\0" + varint(len(sh)) + sh, spn, key_dcid=dcid, server=True)
        spn += 1
        for n in range(rng.randrange(2, 5)):
            size = QUIC_MAX - (len(init) if n == 0 else 0)
            hs = (b"\xe1" + struct.pack("!I", 1) + bytes([len(cscid)]) + cscid + bytes([len(sscid)]) + sscid
                  + struct.pack("!H", 0x4000 | (size - 9 - len(cscid) - len(sscid))))
            hs += self.noise(size - len(hs))
            yield False, f.udp(False, (init if n == 0 else b"") + hs), None
        # the client's Initial ACK (keys of the first DCID) with its Handshake Finished, then requests
        chs = (b"\xe1" + struct.pack("!I", 1) + bytes([8]) + sscid + bytes([len(cscid)]) + cscid
               + struct.pack("!H", 0x4000 | 70) + self.noise(70))
        cack = quic_initial(sscid, cscid, b"\x02\0\0\0\0", cpn, key_dcid=dcid, pad_to=1250 - len(chs))
        cpn += 1
        yield True, f.udp(True, cack + chs), None

        def short(ul: bool, n: int) -> bytes:
            cid = sscid if ul else cscid
            return bytes([0x40 | rng.getrandbits(6)]) + cid + self.noise(n - 1 - len(cid))

        yield True, f.udp(True, short(True, rng.randrange(120, 600))), None
        for _ in range(1 if bulk else rng.choice((1, 1, 2, 3))):
            left = self.size(bulk)
            i = 0
            while left > 0:
                n = min(QUIC_MAX, left + 30)
                left -= n - 30
                i += 1
                yield False, f.udp(False, short(False, n)), None
                if i % rng.choice((2, 2, 3, 4)) == 0 or left <= 0:
                    yield True, f.udp(True, short(True, rng.randrange(35, 60))), None
            yield True, f.udp(True, short(True, rng.randrange(60, 300))), None
        yield True, f.udp(True, short(True, rng.randrange(35, 50))), None     # CONNECTION_CLOSE

    def http(self, f: _Flow, h: _Host, bulk: bool) -> Iterator[Pkt]:
        rng = self.rng
        t = _Tcp(f, rng)
        yield from t.handshake()
        ua = rng.choice(_UAS)
        for r in range(1 if bulk else rng.choice((1, 1, 1, 1, 2, 2, 3))):
            path = rng.choice(_PATHS).format(h=self.noise(6).hex(), n=rng.randrange(1, 5000))
            post = not bulk and rng.random() < 0.1
            body = (b'{"id":%d,"ev":"view","ts":%d}' % (rng.randrange(10**6), 1700000000 + r)) if post else b""
            req = (f"{'POST' if post else 'GET'} {path} HTTP/1.1\r\nHost: {h.name}\r\nUser-Agent: {ua}\r\n"
                   "Accept: */*\r\nAccept-Language: en-US,en;q=0.9\r\nAccept-Encoding: identity\r\n"
                   + (f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if post else "")
                   + "Connection: keep-alive\r\n\r\n").encode() + body
            yield from t.send(True, req, 0, "http.request")
            k = rng.random()
            if path.endswith("204") or k < 0.1:
                resp = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT\r\n\r\n"
            elif bulk or k < 0.5:
                payload = self.noise(min(self.size(bulk), len(self.pool) - 1))
                resp = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/octet-stream\r\n"
                        b"Content-Length: %d\r\nCache-Control: max-age=86400\r\nConnection: keep-alive\r\n\r\n"
                        % len(payload)) + payload
            else:
                text = b'{"ok":true,"items":[' + b",".join(b'"%s"' % self.noise(8).hex().encode()
                                                            for _ in range(rng.randrange(1, 200))) + b"]}"
                resp = (b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                        % (rng.choice(_CT_API).encode(), len(text))) + text
            yield from t.send(False, resp, 2)
        yield from t.close(rng)


def generate_mixed(path: Path, packets: int, ues: int = 200, seed: int = 1) -> dict[str, int]:
    """Write the mixed capture; return how many packets, flows (that sent a packet) and app events
    of each kind it holds."""
    rng = random.Random(seed)
    mix = _Mixed(rng, ues)
    w = Writer(path)
    counts = {"packets": 0, "flows": 0, "http.request": 0, "tls.client_hello": 0, "quic.initial": 0,
              "dns.query": 0}
    active: list[tuple[_Ue, Iterator[Pkt], list[bool]]] = []
    while w.count < packets:
        while len(active) < CONCURRENT:
            ue, it = mix.flow()
            active.append((ue, it, [False]))
        i = rng.randrange(len(active))
        ue, it, started = active[i]
        for _ in range(rng.choice((1, 1, 2, 3, 4, 6))):   # a flight of packets, then another flow's
            pkt = next(it, None)
            if pkt is None:
                active[i] = active[-1]
                active.pop()
                break
            if not started[0]:
                started[0] = True
                counts["flows"] += 1
            ul, inner, ev = pkt
            w.frame(ul, ue.ul_teid if ul else ue.dl_teid, ue.qfi, inner, gap_us=rng.randrange(1, 7))
            if ev:
                counts[ev] += 1
            if w.count >= packets:
                break
    w.close()
    counts["packets"] = w.count
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--mix", choices=("bulk", "mixed"), default="bulk",
                    help="bulk: mostly bulk TCP, one flow after another (default); mixed: a real UPF's mix")
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--ues", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    counts = (generate_mixed if args.mix == "mixed" else generate)(args.out, args.packets, args.ues, args.seed)
    print(f"wrote {args.out}: {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
