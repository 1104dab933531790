"""Replay a capture through ControlPlane in capture order (test helper, cached per capture)."""

from __future__ import annotations

import collections
import functools
import struct
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import CAPTURES
from tests.control.ctl_pcap import read_outer
from upf_tap.constants import GTPU_PORT, IPPROTO_SCTP, IPPROTO_UDP, PFCP_PORT
from upf_tap.control.correlator import ControlPlane


@dataclass
class Replay:
    events: list[dict[str, Any]] = field(default_factory=list)
    stats: collections.Counter[str] = field(default_factory=collections.Counter)
    # (frame, outer dst, TEID, what ue_for_teid said at that moment)
    gtp: list[tuple[int, str, int, dict | None]] = field(default_factory=list)
    control: ControlPlane | None = None
    n2_ips: set[str] = field(default_factory=set)     # every UE IP the N2 side learnt, over time

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


def feed(cp: ControlPlane, name: str, on_gtp: Any = None, on_sctp: Any = None, until: int | None = None) -> None:
    """The capture's frames (those before ``until``), in order, to the control plane."""
    for o in read_outer(CAPTURES / name):
        if until is not None and o.frame >= until:
            return
        if o.proto == IPPROTO_UDP and len(o.l4) >= 8:
            if PFCP_PORT in (o.sport, o.dport):
                cp.on_pfcp(o.ts_ns, o.src, o.sport, o.dst, o.dport, o.udp_payload)
            elif GTPU_PORT in (o.sport, o.dport) and on_gtp is not None and len(o.l4) >= 16:
                on_gtp(o, struct.unpack_from("!I", o.l4, 12)[0])
        elif o.proto == IPPROTO_SCTP:
            cp.on_sctp(o.ts_ns, o.src, o.dst, o.l4)
            if on_sctp is not None:
                on_sctp()


@functools.cache
def replay(name: str) -> Replay:
    r = Replay()
    cp = ControlPlane("test", r.events.append, r.stats)
    r.control = cp

    def on_gtp(o: Any, teid: int) -> None:
        r.gtp.append((o.frame, o.dst, teid, cp.ue_for_teid(teid, o.dst)))

    feed(cp, name, on_gtp, lambda: r.n2_ips.update(cp.n2.by_ue_ip))
    cp.flush(0)
    return r
