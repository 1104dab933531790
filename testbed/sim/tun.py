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
IFF_MULTI_QUEUE = 0x0100

# one implementation of namespace switching for the project: the tap's (a thread enters
# /run/netns/<name> and comes back)
__all__ = ["in_netns", "open_tun"]


def open_tun(name: str) -> int:
    """Attach to the (persistent) TUN `name` in the current namespace; non-blocking fd, no PI header.

    A multi-queue TUN (a two-site lab's UE devices) takes one fd per queue: the target gNB of
    a handover attaches before the source detaches. The kernel refuses (EINVAL) a request whose
    multi-queue flag differs from the device's, so a refusal is retried with the other flag.
    """
    try:
        socket.if_nametoindex(name)   # TUNSETIFF would silently create a new device: refuse instead
    except OSError as e:
        raise OSError(errno.ENODEV, f"no TUN device {name!r} in this namespace") from e
    for flags in (IFF_TUN | IFF_NO_PI, IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        except OSError as e:
            os.close(fd)
            if e.errno != errno.EINVAL or flags & IFF_MULTI_QUEUE:
                raise
            continue
        return fd
    raise AssertionError("unreachable")
