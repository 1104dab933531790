"""Kernel filters: matching and non-matching packets sent through a real veth pair.

The expected verdicts follow `tcpdump -d 'udp port 2152 or udp port 8805 or sctp'`
(plus later IPv4 fragments, which we keep on purpose) and `ip or ip6` for N6.
"""

from __future__ import annotations

import socket
import time

import live_frames as F
import pytest

from upf_tap.capture import bpf, fanout
from upf_tap.capture.ring import LINKTYPE_ETHERNET, Ring
from upf_tap.flows import owner

pytestmark = pytest.mark.root

UE, SRV = "10.45.0.2", "10.200.0.10"
GNB, UPF = "192.168.100.10", "192.168.100.20"

# (name, frame, kept by the n3 filter for ports 2152+8805 with SCTP)
N3_CASES = [
    ("gtpu dport", F.eth(F.ipv4(GNB, UPF, 17, F.udp(40000, 2152, b"x" * 8))), True),
    ("gtpu sport", F.eth(F.ipv4(UPF, GNB, 17, F.udp(2152, 40000, b"x" * 8))), True),
    ("pfcp", F.eth(F.ipv4(GNB, UPF, 17, F.udp(8805, 8805, b"\x21\x01\x00\x04\0\0\0\0"))), True),
    ("sctp", F.eth(F.ipv4(GNB, UPF, 132, b"\0" * 28)), True),
    ("ipv4 options + gtpu", F.eth(F.ipv4(GNB, UPF, 17, F.udp(1, 2152, b"y"), options=b"\x01\x01\x01\x00")), True),
    ("later udp fragment", F.eth(F.ipv4(GNB, UPF, 17, b"z" * 16, frag=185)), True),
    ("dns", F.eth(F.ipv4(UE, SRV, 17, F.udp(5353, 53, b"q"))), False),
    ("first fragment, dns port", F.eth(F.ipv4(GNB, UPF, 17, F.udp(1, 53, b"q" * 16), frag=0x2000)), False),
    ("tcp to 2152", F.eth(F.ipv4(GNB, UPF, 6, F.tcp(1, 2152))), False),
    ("later tcp fragment", F.eth(F.ipv4(GNB, UPF, 6, b"z" * 16, frag=185)), False),
    ("icmp", F.eth(F.ipv4(GNB, UPF, 1, b"\x08\0\0\0\0\0\0\0")), False),
    ("gtpu other port", F.eth(F.ipv4(GNB, UPF, 17, F.udp(3386, 3386, b"x"))), False),
    ("ipv6 gtpu", F.eth(F.ipv6("fd00::1", "fd00::2", 17, F.udp(2152, 2152, b"x")), 0x86DD), True),
    ("ipv6 pfcp dport", F.eth(F.ipv6("fd00::1", "fd00::2", 17, F.udp(1000, 8805, b"x")), 0x86DD), True),
    ("ipv6 sctp", F.eth(F.ipv6("fd00::1", "fd00::2", 132, b"\0" * 28), 0x86DD), True),
    ("ipv6 fragment", F.eth(F.ipv6("fd00::1", "fd00::2", 44, b"\x11\0\0\x08\0\0\0\1" + b"z" * 8), 0x86DD), True),
    ("ipv6 dns", F.eth(F.ipv6("fd00::1", "fd00::2", 17, F.udp(1000, 53, b"x")), 0x86DD), False),
    ("ipv6 tcp", F.eth(F.ipv6("fd00::1", "fd00::2", 6, F.tcp(2152, 2152)), 0x86DD), False),
    ("arp", F.eth(b"\0\1\x08\0\6\4\0\1" + b"\0" * 20, 0x0806), False),
]


def _sender(v) -> socket.socket:
    with v.inside():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((v.tx, 0))
    return s


def _collect(ring: Ring, want: int, timeout: float = 2.0) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ring.drain(lambda ts, lt, f: got.append(f))
        if len(got) >= want:
            # also wait one retire period: anything extra would show up now
            time.sleep(0.05)
            ring.drain(lambda ts, lt, f: got.append(f))
            break
        time.sleep(0.02)
    return got


def _ring(v, program: list[bpf.Insn]) -> Ring:
    with v.inside():
        r = Ring(v.rx, ring_mb=2, block_size=1 << 16)
        bpf.attach(r.sock, program)
        r.start()
    return r


def test_n3_filter_keeps_exactly_gtpu_pfcp_sctp(veth_ns) -> None:
    ring = _ring(veth_ns, bpf.capture_program("n3", 14, (2152, 8805)))
    tx = _sender(veth_ns)
    try:
        for _name, frame, _keep in N3_CASES:
            tx.send(frame)
        want = [f for _n, f, keep in N3_CASES if keep]
        got = _collect(ring, len(want))
        assert ring.linktype == LINKTYPE_ETHERNET
        missing = [n for n, f, keep in N3_CASES if keep and f not in got]
        extra = [n for n, f, keep in N3_CASES if not keep and f in got]
        assert (missing, extra) == ([], [])
        assert got == want  # and in order, byte for byte
    finally:
        tx.close()
        ring.close()


def test_n3_filter_port_list_and_no_sctp(veth_ns) -> None:
    ring = _ring(veth_ns, bpf.capture_program("n3", 14, (3386, 2152), sctp=False, udp_fragments=False))
    tx = _sender(veth_ns)
    cases = [
        (F.eth(F.ipv4(GNB, UPF, 17, F.udp(3386, 3386, b"a"))), True),
        (F.eth(F.ipv4(GNB, UPF, 17, F.udp(9, 2152, b"b"))), True),
        (F.eth(F.ipv4(GNB, UPF, 17, F.udp(8805, 8805, b"c"))), False),
        (F.eth(F.ipv4(GNB, UPF, 132, b"\0" * 28)), False),
        (F.eth(F.ipv4(GNB, UPF, 17, b"z" * 16, frag=185)), False),
    ]
    try:
        for frame, _ in cases:
            tx.send(frame)
        assert _collect(ring, 2) == [f for f, keep in cases if keep]
    finally:
        tx.close()
        ring.close()


def test_n6_filter_keeps_all_ip(veth_ns) -> None:
    ring = _ring(veth_ns, bpf.capture_program("n6", 14))
    tx = _sender(veth_ns)
    try:
        for _name, frame, _keep in N3_CASES:
            tx.send(frame)
        want = [f for n, f, _k in N3_CASES if n != "arp"]
        assert _collect(ring, len(want)) == want
    finally:
        tx.close()
        ring.close()


def test_fanout_keeps_each_inner_flow_on_one_socket(veth_ns) -> None:
    """cbpf fanout on inner addresses: both directions of a UE flow go to one socket, the one
    flows.owner names: `read --workers` splits a capture as the kernel splits live traffic."""
    group = fanout.new_group_id()
    rings = []
    with veth_ns.inside():
        for _ in range(2):
            r = Ring(veth_ns.rx, ring_mb=2, block_size=1 << 16)
            bpf.attach(r.sock, [(bpf.RET | bpf.K, 0, 0, 0)])
            r.start()
            fanout.join(r.sock, group, "cbpf", bpf.fanout_n3_program())  # socket i: the i-th to join
            bpf.attach(r.sock, bpf.capture_program("n3", 14, (2152,), sctp=False))
            rings.append(r)
    tx = _sender(veth_ns)
    sent = {}
    # every byte of the addresses varies, so a split on the low bits alone would disagree
    ues = [(f"10.{45 + ue % 3}.{ue % 5}.{2 + ue}", SRV, F.ipv4) for ue in range(32)]
    ues += [(f"2001:db8:{ue:x}::{ue % 7:x}:{2 + ue:x}", "2001:db8:ffff::10", F.ipv6) for ue in range(16)]
    try:
        for ue, (ue_ip, srv, ip) in enumerate(ues):
            for i, qfi in enumerate((None, 1)):  # with and without the PDU Session Container
                ul = F.eth(F.ipv4(GNB, UPF, 17, F.udp(2152, 2152, F.gtpu(ue, ip(ue_ip, srv, 17, F.udp(
                    1000 + i, 53, b"u")), qfi))))
                dl = F.eth(F.ipv4(UPF, GNB, 17, F.udp(2152, 2152, F.gtpu(ue + 100, ip(srv, ue_ip, 17, F.udp(
                    53, 1000 + i, b"d")), qfi, ul=False))))
                tx.send(ul)
                tx.send(dl)
                sent[ul] = sent[dl] = ue_ip
        per_socket: list[list[bytes]] = [[], []]
        end = time.monotonic() + 2
        while sum(map(len, per_socket)) < len(sent) and time.monotonic() < end:
            for r, got in zip(rings, per_socket, strict=True):
                r.drain(lambda ts, lt, f, a=got.append: a(f))
            time.sleep(0.02)
        assert sorted(per_socket[0] + per_socket[1]) == sorted(sent)  # each packet once
        where = {}
        for idx, got in enumerate(per_socket):
            for f in got:
                assert where.setdefault(sent[f], idx) == idx, f"UE {sent[f]} split across workers"
        assert set(where.values()) == {0, 1}  # and the UEs are spread over both
        for ue_ip, srv, ip in ues:
            family = socket.AF_INET if ip is F.ipv4 else socket.AF_INET6
            want = owner(socket.inet_pton(family, ue_ip), socket.inet_pton(family, srv), 2)
            assert where[ue_ip] == want, f"the kernel put UE {ue_ip} on socket {where[ue_ip]}, owner() says {want}"
    finally:
        tx.close()
        for r in rings:
            r.close()


def test_assembler_rejects_bad_programs() -> None:
    a = bpf.Asm()
    a.jeq(1, "nowhere", None)
    a.ret(0)
    with pytest.raises(bpf.BpfError, match="undefined label"):
        a.assemble()
    a = bpf.Asm()
    a.op(bpf.LD | bpf.H | bpf.ABS, 12)
    with pytest.raises(bpf.BpfError, match="must end with a return"):
        a.assemble()
    with pytest.raises(bpf.BpfError):
        bpf.capture_program("n3", 14, (), sctp=False)
    with pytest.raises(bpf.BpfError):
        bpf.capture_program("n3", 14, (70000,))


def test_dump_lists_one_instruction_per_line() -> None:
    prog = bpf.capture_program("n6", 0)
    assert bpf.dump(prog).count("\n") == len(prog) - 1
    assert prog[-1] == (bpf.RET | bpf.K, 0, 0, 0) and prog[-2] == (bpf.RET | bpf.K, 0, 0, bpf.ACCEPT)
