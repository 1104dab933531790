"""TUN attach and network-namespace switching for the sim processes.

A TUN device belongs to the namespace the /dev/net/tun fd was opened in, and the fd
keeps working after the process moves elsewhere. So the gNB, which lives in the gNB
namespace, briefly enters each UE namespace to attach that UE's `uesimtun` device:
the UE keeps a normal network stack, the gNB holds its "radio" end.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from upf_tap.capture.netns import in_netns

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

# one implementation of namespace switching for the project: the tap's (a thread enters
# /run/netns/<name> and comes back)
__all__ = ["in_netns", "open_tun"]


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
