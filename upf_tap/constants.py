"""Protocol numbers, 3GPP ports and tap defaults (one place for all of them).

The product owns these; the lab's constants take the UE pools from here, never
the reverse.
"""

from __future__ import annotations

# 3GPP ports
GTPU_PORT = 2152          # TS 29.281
PFCP_PORT = 8805          # TS 29.244
NGAP_SCTP_PORT = 38412    # TS 38.412
NGAP_PPID = 60

# IP protocol numbers
IPPROTO_ICMP = 1
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41
IPPROTO_GRE = 47
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132

VXLAN_PORT = 4789         # RFC 7348: a tunnel inside the user's packet, decoded like IP in IP
GRE_UDP_PORT = 4754       # RFC 8086: GRE in UDP, the same
GENEVE_PORT = 6081        # RFC 8926: Geneve, the same
MAX_NESTED_TUNNELS = 4    # tunnels inside tunnels inside the user's packet, at most

# TCP flags
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

# Application ports are declared by each dissector (TCP_PORTS / UDP_PORTS in upf_tap/dissect/*.py).

# GTP-U message types (TS 29.281 §6.1)
GTPU_ECHO_REQUEST = 1
GTPU_ECHO_RESPONSE = 2
GTPU_ERROR_INDICATION = 26
GTPU_SUPPORTED_EXT_HEADERS = 31
GTPU_END_MARKER = 254
GTPU_GPDU = 255
GTPU_EXT_PDU_SESSION_CONTAINER = 0x85

# tap defaults
DEFAULT_TAP_ID = "upf1"
DEFAULT_STREAM_DEPTH = 16 * 1024      # bytes held per TCP direction for one unparsed message (tcp_stream.py)
DEFAULT_MAX_FLOWS = 262_144
DEFAULT_FLOW_IDLE_TIMEOUT = 120.0     # seconds without a packet
DEFAULT_FLOW_HARD_TIMEOUT = 3600.0    # seconds since the first packet
DEFAULT_MAX_FRAGMENT_SETS = 4096      # IP reassembly buffers kept at once
FRAGMENT_TIMEOUT = 30.0               # seconds (RFC 791 suggests up to 15 s to 2 min)
ACCEL_ENV = "UPF_TAP_ACCEL"         # 0: the Python walks even where the compiled one (upf_tap/_walk.c) is built
LRU_TOUCH_NS = 1_000_000_000         # a flow's place in the LRU order is kept to this precision
MAX_OOO_SEGMENTS = 64                 # out-of-order segments held per TCP direction
UDP_QUIET_DATAGRAMS = 8               # datagrams in a row no dissector takes before a UDP direction is skipped
# The user-plane decoder makes no reference cycles (tests/tap/test_no_cycles.py), but its dicts
# and tuples trip the cyclic collector's default threshold (700) every few hundred packets: a
# collection every this many allocations instead, after the start-up objects are frozen (the
# control plane's pycrate objects do make cycles; they are collected at this pace)
GC_THRESHOLD = 50_000
RESNIFF_SEGMENTS = 4                  # uplink segments offered to the stream sniffers when no dissector reads on
# UE address pools telling the UE end of a flow when the tunnel does not (--ue-pool replaces
# them); the lab's SMF hands out addresses from the same pools
UE_POOL_V4 = "10.45.0.0/16"
UE_POOL_V6 = "2001:db8:cafe::/48"
DEFAULT_UE_POOLS = (UE_POOL_V4, UE_POOL_V6)

# detector sender and its on-disk spool (upf_tap/live/sender.py, upf_tap/live/spool.py)
WARN_EVERY = 5.0                          # seconds between repeated warnings about lost or refused events
DEFAULT_SPOOL_MAX_BYTES = 1 << 30         # 1 GiB of segments on disk at most (--spool-max-bytes)
MIN_SPOOL_MAX_BYTES = 64 * 1024           # smaller spools would hold a few dozen events
DEFAULT_SPOOL_FSYNC = "batch"             # fsync each batch the spool writer appends (--spool-fsync)
SPOOL_SEGMENT_BYTES = 64 * 1024 * 1024    # largest segment file; a spool uses 1/16 of its bound, at least
MIN_SPOOL_SEGMENT_BYTES = 4096            # ...this much
