"""PACKET_FANOUT: spread one interface's packets over N worker sockets, flow-stable.

All sockets that join the same group id (per network namespace) share the
interface's packets; the kernel picks one socket per packet. Two selectors:
  hash  the kernel's symmetric flow hash (addresses + ports): right for N6;
  cbpf  our own classic BPF program (bpf.fanout_n3_program): hashes the *inner*
        addresses of GTP-U so a UE flow stays on one worker on N3, where every
        packet shares the same outer gNB<->UPF 5-tuple and `hash` would put all
        traffic on one worker.
DEFRAG makes the kernel reassemble IPv4 fragments before choosing, so the
fragments of one outer datagram cannot be split across workers.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Sequence

from upf_tap.capture.bpf import Insn, Program
from upf_tap.capture.common import CaptureError
from upf_tap.capture.ring import PACKET_FANOUT, SOL_PACKET

PACKET_FANOUT_DATA = 22
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_DEFRAG = 0x8000

MODES = {"hash": PACKET_FANOUT_HASH, "cbpf": PACKET_FANOUT_CBPF}


class FanoutError(CaptureError):
    """A socket could not join its fanout group (bad mode or id, no privilege, kernel refusal)."""


def new_group_id() -> int:
    """A group id unlikely to collide with another capture in this namespace."""
    return (os.getpid() ^ (os.getppid() << 4)) & 0xFFFF


def fanout_arg(group_id: int, mode: str, defrag: bool = True) -> int:
    if mode not in MODES:
        raise FanoutError(f"unknown fanout mode {mode!r} (hash or cbpf)")
    if not 0 <= group_id <= 0xFFFF:
        raise FanoutError(f"fanout group id out of range: {group_id}")
    flags = PACKET_FANOUT_FLAG_DEFRAG if defrag else 0
    return group_id | ((MODES[mode] | flags) << 16)


def join(sock: socket.socket, group_id: int, mode: str = "hash",
         program: Sequence[Insn] | None = None, defrag: bool = True) -> None:
    """Join ``sock`` (already bound to its interface) to fanout group ``group_id``.

    For mode 'cbpf' the selector ``program`` is set on the group (any member may
    set it; each worker sets the same one).
    """
    try:
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("<I", fanout_arg(group_id, mode, defrag)))
        if mode == "cbpf":
            if not program:
                raise FanoutError("cbpf fanout needs a selector program")
            prog = Program(program)
            sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, prog.fprog)
    except PermissionError as e:
        raise FanoutError("fanout needs CAP_NET_RAW") from e
    except OSError as e:
        raise FanoutError(f"cannot join fanout group {group_id} ({mode}): {e}") from e
