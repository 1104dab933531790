"""Generate a large, realistic N3 capture: mostly bulk TCP, with a few thousand app events.

Frames are Ethernet/IPv4/UDP 2152/GTP-U (PDU Session Container with QFI)/IPv4/TCP or UDP,
written straight into a pcap with struct (scapy would take minutes for 300k packets).
Checksums are computed so that tools that verify them agree.

    python -m tests.support.n3_workload OUT.pcap [--packets 300000] [--ues 200] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
from pathlib import Path

from tests.support.frames import csum, gtpu

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--ues", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    counts = generate(args.out, args.packets, args.ues, args.seed)
    print(f"wrote {args.out}: {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
