"""Fixtures for live-capture tests: a throw-away network namespace with a veth pair."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the body with this thread in namespace ``name`` (sockets made here stay there)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
        yield
    finally:
        _libc.setns(home, CLONE_NEWNET)
        os.close(target)
        os.close(home)


@dataclass
class VethNs:
    ns: str
    tx: str = "tx0"  # tcpreplay sends here
    rx: str = "rx0"  # the tap listens here

    def inside(self) -> contextlib.AbstractContextManager[None]:
        return netns(self.ns)

    def exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *args, check=check)

    def replay(self, pcap: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.exec("tcpreplay", "-q", "-i", self.tx, *extra, pcap)


def make_veth_ns() -> VethNs:
    v = VethNs(ns=f"mectap-{secrets.token_hex(4)}")
    sh("ip", "netns", "add", v.ns)
    try:
        v.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")  # no ND/RS noise
        v.exec("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        v.exec("ip", "link", "add", v.tx, "mtu", "9000", "type", "veth", "peer", "name", v.rx, "mtu", "9000")
        v.exec("ip", "link", "set", v.tx, "up")
        v.exec("ip", "link", "set", v.rx, "up")
        v.exec("ip", "link", "set", "lo", "up")
    except BaseException:
        sh("ip", "netns", "del", v.ns, check=False)
        raise
    return v


@pytest.fixture
def veth_ns() -> Iterator[VethNs]:
    v = make_veth_ns()
    try:
        yield v
    finally:
        sh("ip", "netns", "del", v.ns, check=False)


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
READY = "capturing on"


def upf_tap(*args: str) -> list[str]:
    return [PYTHON, "-m", "upf_tap", *args]


class LiveProc:
    """`upf-tap live` running inside a namespace; stderr collected by a thread."""

    def __init__(self, v: VethNs, *args: str, drain_stdout: bool = True) -> None:
        import threading

        self.p = subprocess.Popen(["ip", "netns", "exec", v.ns, *upf_tap("live", *args)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err_lines: list[str] = []
        self.out_chunks: list[str] = []
        self._ready = threading.Event()
        self._t = threading.Thread(target=self._read_err, daemon=True)
        self._t.start()
        # stdout is read as it comes too: a test that scrapes metrics or waits must not let the
        # pipe fill (about 100 events fill its 64 KiB), which would block the tap in a write
        self._t_out = threading.Thread(target=self._read_out, daemon=True)
        if drain_stdout:
            self._t_out.start()

    def _read_out(self) -> None:
        assert self.p.stdout is not None
        while chunk := self.p.stdout.read(65536):
            self.out_chunks.append(chunk)

    def _read_err(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.err_lines.append(line)
            if READY in line:
                self._ready.set()
        self._ready.set()  # EOF: let a waiter see the failure

    def wait_ready(self, timeout: float = 30.0) -> LiveProc:
        if not self._ready.wait(timeout) or self.p.poll() is not None:
            self.p.kill()
            self.p.wait()
            raise AssertionError(f"upf-tap live did not start: {''.join(self.err_lines)}")
        return self

    def finish(self, timeout: float = 60.0) -> tuple[int, list[str], str]:
        """Wait for exit: (return code, stdout lines, stderr text)."""
        if self._t_out.ident is None:  # never started: a test that held the pipe full until now
            self._t_out.start()
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self._t_out.join(5)
        self._t.join(5)
        return self.p.returncode, "".join(self.out_chunks).splitlines(), "".join(self.err_lines)


def start_live(v: VethNs, *args: str, drain_stdout: bool = True) -> LiveProc:
    """Start `upf-tap live` inside the namespace; return once its rings are open. Its stdout is
    read as it comes unless ``drain_stdout`` is False (then by ``finish``)."""
    return LiveProc(v, *args, drain_stdout=drain_stdout).wait_ready()


def comparable(lines: list[str]) -> list[str]:
    """Events minus what must differ between live and offline (id and time derive from capture
    time, and the trace context from the id)."""
    import json

    out = []
    for line in lines:
        ev = json.loads(line)
        ev.pop("id", None)
        ev.pop("trace", None)
        ev.pop("time", None)
        out.append(json.dumps(ev, sort_keys=True))
    return out


TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(v: VethNs, name: str = "tun0") -> int:
    """Create TUN device ``name`` in the namespace, bring it up, return its fd.

    Writing an IP packet to the fd makes the kernel receive it on ``name``.
    """
    import fcntl
    import struct

    v.exec("ip", "tuntap", "add", "dev", name, "mode", "tun")
    v.exec("ip", "link", "set", name, "up")
    with v.inside():
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH14x", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd
