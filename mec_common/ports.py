"""Loopback ports for servers whose address must be known before they start.

A port found free with ``bind(port 0)`` and then closed is free only until the next ``bind(0)``
or outgoing connection takes it: the kernel hands those out from the same ephemeral range. A
function server binding port 0 once took a detector's port between the pick and the detector's
bind, and the tap's events went to the function. So the ports given here come from below the
ephemeral range (net.ipv4.ip_local_port_range), where the kernel assigns nothing by itself, and
one process never gives the same port twice.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default range
_LOWEST = 10_000                     # below this, ports that well-known services listen on
_TRIES = 200

_given: set[int] = set()
_pick = random.SystemRandom().randrange  # not the random module's state, which tests may seed


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ``bind(0)`` and outgoing connections."""
    try:
        lo, hi = (int(x) for x in _PORT_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return lo, hi


def _free(port: int, kinds: tuple[int, ...], host: str) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(kinds: tuple[int, ...] = (socket.SOCK_STREAM,), host: str = "127.0.0.1") -> int:
    """A port free on ``host`` for every socket type in ``kinds`` (TCP by default; add
    ``socket.SOCK_DGRAM`` for a server that takes both), outside the ephemeral range."""
    lo, hi = ephemeral_range()
    if lo - _LOWEST >= 1000:
        span = (_LOWEST, lo)
    elif 65535 - hi >= 1000:
        span = (hi + 1, 65536)
    else:
        span = None
    if span is not None:
        for _ in range(_TRIES):
            port = _pick(*span)
            if port not in _given and _free(port, kinds, host):
                _given.add(port)
                return port
    for _ in range(_TRIES):  # a machine whose ephemeral range leaves no room: the kernel's choice
        with socket.socket(socket.AF_INET, kinds[0]) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _given and _free(port, kinds, host):
            _given.add(port)
            return port
    raise OSError(f"no free port on {host}")
