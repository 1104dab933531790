"""Classic BPF programs, assembled here, attached in the kernel with SO_ATTACH_FILTER.

Two capture filters (what a worker's socket accepts):
  n3: IPv4/IPv6 UDP with a GTP-U or PFCP port as source or destination, any SCTP
      (NGAP), and IPv4 UDP fragments after the first (they carry no ports; the
      tap reassembles outer fragments) and IPv6 fragments;
  n6: every IPv4 and IPv6 packet.
and one fanout program (fanout_n3_program) that returns a hash of the *inner*
addresses of a GTP-U packet, so both directions of a UE's flow land on the same
worker even though all tunnelled traffic shares one outer gNB<->UPF address pair.

Semantics follow tcpdump's `udp port P or sctp` except that non-first IPv4
fragments of UDP are kept (tcpdump drops them), and VLAN tags are not parsed
(AF_PACKET hands us frames with the tag already stripped on offloading NICs).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SO_ATTACH_FILTER = 26

# opcode pieces (linux/filter.h, linux/bpf_common.h)
LD, LDX, ST, STX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, MSH = 0x00, 0x20, 0x40, 0x60, 0xA0
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
ADD, AND, LSH, RSH, XOR = 0x00, 0x50, 0x60, 0x70, 0xA0
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80

ACCEPT = 0x40000  # snap length returned for an accepted packet (tcpdump uses 262144)
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
IPPROTO_UDP = 17
IPPROTO_SCTP = 132
IPV6_FRAGMENT = 44
SKF_NET_OFF = -0x100000  # linux/filter.h: loads relative to the network header

Insn = tuple[int, int, int, int]  # code, jt, jf, k


class BpfError(ValueError):
    pass


@dataclass
class _Op:
    code: int
    k: int = 0
    jt: str | None = None  # label names for conditional jumps (None = next insn)
    jf: str | None = None


class Asm:
    """A tiny assembler: instructions with named jump targets, resolved to offsets."""

    def __init__(self) -> None:
        self.ops: list[_Op] = []
        self.labels: dict[str, int] = {}
        self._pending: list[str] = []

    def label(self, name: str) -> None:
        if name in self.labels or name in self._pending:
            raise BpfError(f"label {name!r} defined twice")
        self._pending.append(name)

    def op(self, code: int, k: int = 0, jt: str | None = None, jf: str | None = None) -> None:
        self.ops.append(_Op(code, k, jt, jf))
        for name in self._pending:
            self.labels[name] = len(self.ops) - 1
        self._pending.clear()

    def jeq(self, k: int, jt: str | None, jf: str | None) -> None:
        self.op(JMP | JEQ | K, k, jt, jf)

    def jset(self, k: int, jt: str | None, jf: str | None) -> None:
        self.op(JMP | JSET | K, k, jt, jf)

    def ja(self, target: str) -> None:
        self.op(JMP | JA, 0, target, None)

    def ret(self, k: int) -> None:
        self.op(RET | K, k)

    def assemble(self) -> list[Insn]:
        if self._pending:
            raise BpfError(f"label(s) {self._pending} at end of program")
        labels = self.labels
        out: list[Insn] = []
        for i, o in enumerate(self.ops):
            def off(name: str | None, i: int = i) -> int:
                if name is None:
                    return 0
                if name not in labels:
                    raise BpfError(f"undefined label {name!r}")
                d = labels[name] - (i + 1)
                if d < 0:
                    raise BpfError(f"backward jump to {name!r} (classic BPF jumps only forward)")
                return d
            if o.code == JMP | JA:
                out.append((o.code, 0, 0, off(o.jt)))
                continue
            jt, jf = off(o.jt), off(o.jf)
            if jt > 255 or jf > 255:
                raise BpfError("conditional jump longer than 255 instructions")
            out.append((o.code, jt, jf, o.k))
        if not out or out[-1][0] & 0x07 != RET:
            raise BpfError("program must end with a return")
        return out


def _l3_dispatch(a: Asm, l2: int) -> None:
    """Jump to 'v4' or 'v6' by the packet's IP version, else to 'drop'."""
    if l2:  # Ethernet: the ethertype says
        a.op(LD | H | ABS, 12)
        a.jeq(ETHERTYPE_IPV4, "v4", None)
        a.jeq(ETHERTYPE_IPV6, "v6", "drop")
    else:  # raw IP (TUN): the version nibble says
        a.op(LD | B | ABS, 0)
        a.op(ALU | AND | K, 0xF0)
        a.jeq(0x40, "v4", None)
        a.jeq(0x60, "v6", "drop")


def _port_match(a: Asm, ports: Sequence[int], hit: str, miss: str | None) -> None:
    for i, p in enumerate(ports):
        a.jeq(p, hit, miss if i == len(ports) - 1 else None)


def capture_program(point: str, l2: int, udp_ports: Iterable[int] = (), sctp: bool = True,
                    udp_fragments: bool = True) -> list[Insn]:
    """The capture filter: point 'n6' keeps all IP; 'n3' keeps UDP ``udp_ports`` (+SCTP).

    ``l2`` is the link-layer header length: 14 for Ethernet, 0 for raw IP.
    """
    a = Asm()
    _l3_dispatch(a, l2)
    if point == "n6":
        a.label("v4")
        a.label("v6")
        a.ret(ACCEPT)
        a.label("drop")
        a.ret(0)
        return a.assemble()
    ports = sorted(set(udp_ports))
    if not ports and not sctp:
        raise BpfError("an n3 filter needs at least one UDP port or SCTP")
    for p in ports:
        if not 0 < p < 65536:
            raise BpfError(f"bad UDP port {p}")
    # IPv4
    a.label("v4")
    a.op(LD | B | ABS, l2 + 9)  # protocol
    if sctp:
        a.jeq(IPPROTO_SCTP, "accept", None)
    a.jeq(IPPROTO_UDP, None, "drop")
    if not ports:
        a.ja("drop")
    else:
        a.op(LD | H | ABS, l2 + 6)  # flags + fragment offset
        a.jset(0x1FFF, "accept" if udp_fragments else "drop", None)  # later fragment: no ports
        a.op(LDX | B | MSH, l2)  # X = IPv4 header length
        a.op(LD | H | IND, l2)  # source port
        _port_match(a, ports, "accept", None)
        a.op(LD | H | IND, l2 + 2)  # destination port
        _port_match(a, ports, "accept", "drop")
    # IPv6 (no extension-header walk, like tcpdump's `udp port`; fragments are kept)
    a.label("v6")
    a.op(LD | B | ABS, l2 + 6)  # next header
    if sctp:
        a.jeq(IPPROTO_SCTP, "accept", None)
    if udp_fragments:
        a.jeq(IPV6_FRAGMENT, "accept", None)
    a.jeq(IPPROTO_UDP, None, "drop")
    if ports:
        a.op(LD | H | ABS, l2 + 40)
        _port_match(a, ports, "accept", None)
        a.op(LD | H | ABS, l2 + 42)
        _port_match(a, ports, "accept", "drop")
    else:
        a.ja("drop")
    a.label("accept")
    a.ret(ACCEPT)
    a.label("drop")
    a.ret(0)
    return a.assemble()


def _net(off: int) -> int:
    """k for a load relative to the network header (SKF_NET_OFF), as the u32 the kernel wants."""
    return (SKF_NET_OFF + off) & 0xFFFFFFFF


def fanout_n3_program() -> list[Insn]:
    """Fanout selector: fold the inner IP source and destination of a GTP-U packet.

    XOR is symmetric, so uplink and downlink of one flow get the same value; the
    kernel takes it modulo the number of sockets in the group. Loads are relative
    to the network header (SKF_NET_OFF) because the fanout program runs before the
    link header is pushed back for received frames, and after it for sent ones.
    Non-GTP packets (and GTP-U over IPv6) return 0. One extension header (the
    PDU Session Container) is followed; longer chains also return 0.
    """
    a = Asm()
    a.op(LD | B | ABS, _net(0))
    a.op(ALU | AND | K, 0xF0)
    a.jeq(0x40, None, "zero")
    a.op(LD | B | ABS, _net(9))
    a.jeq(IPPROTO_UDP, None, "zero")
    a.op(LD | B | ABS, _net(0))  # X = outer IPv4 header length (BPF_MSH takes no negative k)
    a.op(ALU | AND | K, 0x0F)
    a.op(ALU | LSH | K, 2)
    a.op(MISC | TAX)
    g = 8  # GTP-U header at X + 8
    a.op(LD | B | IND, _net(g))  # GTP flags
    a.jset(0x07, "opt", None)  # E, S or PN: 4 more header bytes
    a.op(MISC | TXA)
    a.op(ALU | ADD | K, 8)
    a.ja("inner")
    a.label("opt")
    a.op(LD | B | IND, _net(g + 11))  # next extension header type
    a.jeq(0, None, "ext")
    a.op(MISC | TXA)
    a.op(ALU | ADD | K, 12)
    a.ja("inner")
    a.label("ext")
    a.op(LD | B | IND, _net(g + 12))  # extension length, 4-byte units
    a.op(ALU | LSH | K, 2)
    a.op(ALU | ADD | X, 0)
    a.op(ALU | ADD | K, 12)
    a.op(ST, 1)  # M[1] = ihl + GTP header length
    a.op(MISC | TAX)
    a.op(LD | B | IND, _net(g - 1))  # last byte of the extension header: next type
    a.jeq(0, None, "zero")
    a.op(LD | MEM, 1)
    a.label("inner")  # A = ihl + GTP header length
    a.op(MISC | TAX)
    a.op(LD | B | IND, _net(g))  # inner version
    a.op(ALU | AND | K, 0xF0)
    a.jeq(0x40, None, "in6")
    a.op(LD | W | IND, _net(g + 12))
    a.op(ST, 0)
    a.op(LD | W | IND, _net(g + 16))
    a.ja("fold")
    a.label("in6")
    a.jeq(0x60, None, "zero")
    a.op(LD | W | IND, _net(g + 20))  # last word of the source
    a.op(ST, 0)
    a.op(LD | W | IND, _net(g + 36))  # last word of the destination
    a.label("fold")
    a.op(LDX | W | MEM, 0)
    a.op(ALU | XOR | X, 0)
    a.op(MISC | TAX)
    a.op(ALU | RSH | K, 16)
    a.op(ALU | XOR | X, 0)
    a.op(MISC | TAX)
    a.op(ALU | RSH | K, 8)
    a.op(ALU | XOR | X, 0)
    a.op(RET | RET_A)
    a.label("zero")
    a.ret(0)
    return a.assemble()


class Program:
    """A struct sock_fprog over a ctypes copy of the instructions (kept alive here)."""

    def __init__(self, insns: Sequence[Insn]) -> None:
        if not 0 < len(insns) <= 4096:
            raise BpfError("a classic BPF program has 1..4096 instructions")
        self.insns = list(insns)
        raw = b"".join(struct.pack("<HBBI", *i) for i in insns)
        self._buf = ctypes.create_string_buffer(raw, len(raw))
        # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (64-bit: 16 bytes)
        self.fprog = struct.pack("@HxxxxxxQ" if ctypes.sizeof(ctypes.c_void_p) == 8 else "@HxxI",
                                 len(insns), ctypes.addressof(self._buf))


def attach(sock: socket.socket, insns: Sequence[Insn]) -> None:
    """Attach a filter to a socket (SO_ATTACH_FILTER); the kernel copies it."""
    prog = Program(insns)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog.fprog)


def dump(insns: Sequence[Insn]) -> str:
    """`tcpdump -dd`-style listing, one `{ code, jt, jf, k }` per line."""
    return "\n".join(f"{{ 0x{c:02x}, {jt}, {jf}, 0x{k:08x} }}," for c, jt, jf, k in insns)
