"""mec_common.ports.free_port: ports the kernel never hands to a bind(0) or an outgoing connection.

The demo once lost its events to a function server: the stack picked the detector's port with
bind(0)-and-close, and a function server binding port 0 got the same port before the detector
started. These tests hold the picker to what prevents that.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mec_common import ports


def test_ports_lie_outside_the_kernels_ephemeral_range_and_are_free_for_every_kind() -> None:
    lo, hi = ports.ephemeral_range()
    given = [ports.free_port((socket.SOCK_STREAM, socket.SOCK_DGRAM)) for _ in range(300)]
    assert len(set(given)) == len(given), "a port given twice in one process"
    for port in given[:20]:
        assert not lo <= port <= hi
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))  # raises if the port was not free


def test_bind_zero_never_lands_on_a_given_port() -> None:
    """What the race needs: many bind(0) sockets held open at once never take a port given out."""
    given = {ports.free_port() for _ in range(50)}
    held = []
    try:
        for _ in range(2000):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
    finally:
        for s in held:
            s.close()
    assert not given & taken


def test_a_port_in_use_is_never_given(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        picks = iter([port, port, port + 1 if port < 65535 else port - 1])
        monkeypatch.setattr(ports, "_pick", lambda a, b: next(picks))
        monkeypatch.setattr(ports, "ephemeral_range", lambda: (60000, 60999))
        got = ports.free_port()
        assert got != port


@pytest.mark.parametrize(("range_text", "expect"), [
    ("32768 60999\n", "below"),   # Linux's default: the ports come from [10000, 32768)
    ("10500 60999\n", "above"),   # little room below: they come from above the range
    ("1024 65535\n", "kernel"),   # no room anywhere: the kernel's choice, still free and not repeated
    ("garbage\n", "below"),       # unreadable: Linux's default range is assumed
])
def test_the_span_follows_the_range_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, range_text: str,
                                         expect: str) -> None:
    real_lo, real_hi = ports.ephemeral_range()  # what bind(0) really uses, whatever the file says
    f = tmp_path / "ip_local_port_range"
    f.write_text(range_text)
    monkeypatch.setattr(ports, "_PORT_RANGE_FILE", f)
    got = [ports.free_port() for _ in range(20)]
    assert len(set(got)) == 20
    if expect == "below":
        assert all(10_000 <= p < 32768 for p in got)
    elif expect == "above":
        assert all(p > 60999 for p in got)
    else:
        assert all(real_lo <= p <= real_hi for p in got)  # the kernel's own choice
