"""What every capture source shares (capture files and live AF_PACKET rings): the one
error they raise, and the link types the frames they hand on are tagged with."""

from __future__ import annotations

# Link types (https://www.tcpdump.org/linktypes.html); the tap's decoder switches on these.
LINKTYPE_NULL = 0          # BSD loopback: 4-byte address family in host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101         # raw IPv4 or IPv6, version nibble tells
LINKTYPE_LOOP = 108        # OpenBSD loopback: 4-byte address family, network byte order
LINKTYPE_LINUX_SLL = 113   # Linux "any" device, cooked header v1 (16 bytes)
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276  # cooked header v2 (20 bytes)


class CaptureError(Exception):
    """A capture source cannot be used at all: a file that cannot be read as a capture, or a
    capture socket that cannot be set up (bad interface, no privilege, no ring, ...).

    The message is one line naming the file or the interface.
    """
