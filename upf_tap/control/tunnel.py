"""The one GTP-U tunnel endpoint type that N4 and N2 both name, and the join keys on.

A ``Tunnel`` is where a GTP-U packet is sent and the TEID it carries: the UPF's
address and UL TEID, or the gNB's address and DL TEID. PFCP carries the UL one as a
PDI's F-TEID and the DL one as a FAR's Outer Header Creation (n4.py); NGAP carries
both as a GTPTunnel in UP Transport Layer Information (ngap.py). It is a plain
tuple underneath, so it hashes and compares as ``(address, TEID)``.
"""

from __future__ import annotations

from typing import NamedTuple


class Tunnel(NamedTuple):
    addr: str    # IPv4 or IPv6 address, as text
    teid: int
