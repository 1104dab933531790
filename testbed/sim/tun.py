"""TUN attach and network-namespace switching for the sim processes.

A TUN device belongs to the namespace the /dev/net/tun fd was opened in, and the fd
keeps working after the process moves elsewhere. So the gNB, which lives in the gNB
namespace, briefly enters each UE namespace to attach that UE's `uesimtun` device:
the UE keeps a normal network stack, the gNB holds its "radio" end.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside /run/netns/<name>, then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def open_tun(name: str) -> int:
    """Attach to the (persistent) TUN `name` in the current namespace; non-blocking fd, no PI header."""
    try:
        socket.if_nametoindex(name)   # TUNSETIFF would silently create a new device: refuse instead
    except OSError as e:
        raise OSError(errno.ENODEV, f"no TUN device {name!r} in this namespace") from e
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd
