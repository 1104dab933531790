"""Helpers of the corpus tests: pcap files written byte by byte, the corpus CLI in a subprocess,
and our own walk of the N3 frames the tunnel writes (independent of testbed/corpus)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

T0_NS = 1_700_000_000_123_456_789
LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL = 1, 101, 113


def write_pcap(path: Path, frames: list[bytes], linktype: int, nano: bool = True, t0_ns: int = T0_NS,
               step_ns: int = 1_000_003) -> list[int]:
    """A pcap of ``frames``, ``step_ns`` apart (an odd number of nanoseconds); returns the
    timestamps written (microseconds, in nanoseconds, when not ``nano``)."""
    stamps = []
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        for i, frame in enumerate(frames):
            ts = t0_ns + i * step_ns
            if not nano:
                ts -= ts % 1000
            sec, frac = divmod(ts, 1_000_000_000)
            f.write(struct.pack("<IIII", sec, frac if nano else frac // 1000, len(frame), len(frame)) + frame)
            stamps.append(ts)
    return stamps


def run_testbed(*args: str | Path, timeout: float = 120,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``testbed ARGS`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "testbed", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that failed with exit 2."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert len(lines) == 1 and "error" in lines[0], res.stderr
    return lines[0]


def walk_n3(frame: bytes) -> dict[str, Any]:
    """Our own read of one N3 frame as the tunnel must write it (Ethernet, IPv4, UDP 2152, a GTP-U
    G-PDU with the sequence-number octets and one PDU Session Container), every length checked."""
    assert frame[12:14] == b"\x08\x00"
    ip = frame[14:34]
    assert ip[0] == 0x45 and ip[9] == 17
    assert struct.unpack("!H", ip[2:4])[0] == len(frame) - 14
    s = sum(struct.unpack("!10H", ip))
    assert (s & 0xFFFF) + (s >> 16) == 0xFFFF, "outer IPv4 header checksum"
    sport, dport, ulen = struct.unpack("!HHH", frame[34:40])
    assert (sport, dport, ulen) == (2152, 2152, len(frame) - 34)
    flags, mtype, glen, teid = struct.unpack("!BBHI", frame[42:50])
    assert (flags, mtype, glen) == (0x34, 0xFF, len(frame) - 50)
    assert frame[53] == 0x85, "next extension header: PDU Session Container"
    clen, b1, b2, nxt = frame[54:58]
    assert (clen, b1 & 0x0F, b2 & 0xC0, nxt) == (1, 0, 0, 0)
    return {"src": ".".join(map(str, ip[12:16])), "dst": ".".join(map(str, ip[16:20])), "teid": teid,
            "pdu_type": b1 >> 4, "qfi": b2 & 0x3F, "inner": frame[58:]}


def ip_packet(frame: bytes, offset: int) -> bytes:
    """The IP packet in a frame from ``offset`` on, to the length its header gives."""
    pkt = frame[offset:]
    if pkt[0] >> 4 == 4:
        return pkt[: struct.unpack("!H", pkt[2:4])[0]]
    return pkt[: 40 + struct.unpack("!H", pkt[4:6])[0]]
