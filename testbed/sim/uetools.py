"""Small UE-side probes (ping, DNS lookup) for machines without iputils/dnsutils.

Run inside a UE namespace, where the default route is the UE's `uesimtun`:
``ip netns exec mec<id>-ue1 python -m testbed.sim.uetools ping 10.200.0.10``.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import socket
import struct
import sys
import time
from pathlib import Path

from mec_common.net import internet_checksum

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
DNS_TYPE_A = 1
IP_MTU_DISCOVER = 10     # linux/in.h (not exported by Python 3.11's socket module)
IP_PMTUDISC_DO = 2       # always set DF, fail locally with EMSGSIZE above the path MTU


def echo_request(ident: int, seq: int, size: int) -> bytes:
    payload = (b"mec-sim-" * (size // 8 + 1))[:size]
    hdr = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, internet_checksum(hdr + payload), ident, seq) + payload


def ping(host: str, count: int, timeout: float, size: int, dont_fragment: bool) -> int:
    """Send `count` echo requests; print one line per reply; return how many came back."""
    dst = socket.gethostbyname(host)
    ident = os.getpid() & 0xFFFF
    got = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        if dont_fragment:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        for seq in range(1, count + 1):
            sent = time.monotonic()
            s.sendto(echo_request(ident, seq, size), (dst, 0))
            deadline = sent + timeout
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([s], [], [], left)[0]:
                    break
                data, addr = s.recvfrom(65535)
                ihl = (data[0] & 0x0F) * 4
                if len(data) < ihl + 8:
                    continue
                typ, _code, _ck, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
                if typ == ICMP_ECHO_REPLY and rid == ident and rseq == seq and addr[0] == dst:
                    got += 1
                    print(f"{len(data) - ihl} bytes from {dst}: icmp_seq={seq} "
                          f"time={(time.monotonic() - sent) * 1000:.2f} ms", flush=True)
                    break
    print(f"{count} sent, {got} received", flush=True)
    return got


def dns_query(qname: str, qtype: int = DNS_TYPE_A) -> tuple[int, bytes]:
    qid = random.randrange(1 << 16)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in qname.rstrip(".").split("."))
    return qid, struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def _skip_name(msg: bytes, off: int) -> int:
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += n + 1


def parse_a_answers(msg: bytes, qid: int) -> list[str]:
    """A records of a DNS response (raises ValueError on a malformed or foreign answer)."""
    if len(msg) < 12:
        raise ValueError("short DNS answer")
    rid, flags, qd, an, _ns, _ar = struct.unpack_from("!HHHHHH", msg, 0)
    if rid != qid or not flags & 0x8000:
        raise ValueError("not the answer to our query")
    if flags & 0x000F:
        raise ValueError(f"DNS rcode {flags & 0x000F}")
    off = 12
    for _ in range(qd):
        off = _skip_name(msg, off) + 4
    out = []
    for _ in range(an):
        off = _skip_name(msg, off)
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", msg, off)
        off += 10
        if rtype == DNS_TYPE_A and rdlen == 4:
            out.append(socket.inet_ntoa(msg[off:off + 4]))
        off += rdlen
    return out


def default_nameserver() -> str:
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1]
    except OSError:
        pass
    return "127.0.0.1"


def lookup(qname: str, server: str, timeout: float) -> list[str]:
    qid, query = dns_query(qname)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, (server, 53))
        data, _ = s.recvfrom(4096)
    return parse_a_answers(data, qid)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.sim.uetools", description="UE-side probes for the sim lab.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ping", help="ICMP echo (exit 0 when every request got a reply)")
    p.add_argument("host")
    p.add_argument("-c", "--count", type=int, default=3)
    p.add_argument("-W", "--timeout", type=float, default=2.0, help="seconds to wait for each reply")
    p.add_argument("-s", "--size", type=int, default=56, help="ICMP payload bytes")
    p.add_argument("--df", action="store_true", help="set Don't Fragment (MTU checks)")
    d = sub.add_parser("dns", help="DNS A lookup over UDP (exit 0 when there is an answer)")
    d.add_argument("name")
    d.add_argument("--server", help="DNS server (default: from /etc/resolv.conf)")
    d.add_argument("-W", "--timeout", type=float, default=3.0)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "ping":
            return 0 if ping(args.host, args.count, args.timeout, args.size, args.df) == args.count else 1
        addrs = lookup(args.name, args.server or default_nameserver(), args.timeout)
    except (OSError, ValueError) as e:
        print(f"uetools {args.cmd}: {e}", file=sys.stderr)
        return 1
    for a in addrs:
        print(f"{args.name} A {a}")
    return 0 if addrs else 1


if __name__ == "__main__":
    sys.exit(main())
