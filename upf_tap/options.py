"""What `upf-tap read` and `upf-tap live` share on the command line: the decoding options,
the TapConfig made from them, and the counters printout at the end.

Both commands import this (and neither imports the other, nor upf_tap.cli).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

from upf_tap.constants import (
    DEFAULT_FLOW_HARD_TIMEOUT,
    DEFAULT_FLOW_IDLE_TIMEOUT,
    DEFAULT_MAX_FLOWS,
    DEFAULT_STREAM_DEPTH,
    DEFAULT_TAP_ID,
    GTPU_PORT,
)

if TYPE_CHECKING:
    from upf_tap.pipeline import TapConfig


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """Decoding options shared by ``read`` and ``live``."""
    p.add_argument("--point", choices=("n3", "n6"), default="n3",
                   help="n3: GTP-U tunnels between gNB and UPF (default); n6: plain IP between UPF and DN")
    p.add_argument("--tap", default=DEFAULT_TAP_ID, metavar="ID", help=f"tap id in events (default {DEFAULT_TAP_ID})")
    p.add_argument("--gtpu-port", type=int, action="append", metavar="N",
                   help=f"UDP port(s) carrying GTP-U (default {GTPU_PORT}); repeat for several")
    p.add_argument("--ue-pool", action="append", metavar="CIDR",
                   help="UE address pool(s) for telling the UE side (default 10.45.0.0/16 and 2001:db8:cafe::/48)")
    p.add_argument("--flows", action="store_true", help="also emit flow.start / flow.end events")
    p.add_argument("--depth", type=int, default=DEFAULT_STREAM_DEPTH, metavar="BYTES",
                   help=f"most bytes held for one unparsed message per TCP direction; a longer message "
                        f"ends its direction (default {DEFAULT_STREAM_DEPTH})")
    p.add_argument("--max-flows", type=int, default=DEFAULT_MAX_FLOWS, metavar="N",
                   help=f"flow table cap, least recently used evicted first (default {DEFAULT_MAX_FLOWS})")
    p.add_argument("--idle-timeout", type=float, default=DEFAULT_FLOW_IDLE_TIMEOUT, metavar="S",
                   help=f"end a flow after S seconds without packets (default {DEFAULT_FLOW_IDLE_TIMEOUT:g})")
    p.add_argument("--hard-timeout", type=float, default=DEFAULT_FLOW_HARD_TIMEOUT, metavar="S",
                   help=f"end a flow S seconds after its first packet (default {DEFAULT_FLOW_HARD_TIMEOUT:g})")
    p.add_argument("--identity", metavar="FILE",
                   help="static identity file (YAML: supi, ip or pool, dnn, snssai) for labs without N2/N4")
    p.add_argument("--no-control", action="store_true", help="ignore PFCP and NGAP (no subscriber identity)")
    p.add_argument("--stats", action="store_true", help="print counters (drops by reason) to stderr at the end")


def tap_config(args: argparse.Namespace) -> TapConfig:
    """The TapConfig of parsed pipeline options; ValueError with a one-line reason when unusable."""
    from upf_tap.pipeline import TapConfig  # deferred: keeps --help fast

    for name in ("depth", "max_flows"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    cfg = TapConfig(point=args.point, tap_id=args.tap, flows=args.flows, stream_depth=args.depth,
                    max_flows=args.max_flows, idle_timeout=args.idle_timeout, hard_timeout=args.hard_timeout,
                    identity_file=args.identity, control_plane=not args.no_control)
    if args.gtpu_port:
        if not all(0 < p < 65536 for p in args.gtpu_port):
            raise ValueError("--gtpu-port must be a UDP port number (1-65535)")
        cfg.gtpu_ports = tuple(args.gtpu_port)
    if args.ue_pool:
        import ipaddress

        for cidr in args.ue_pool:
            ipaddress.ip_network(cidr, strict=False)
        cfg.ue_pools = tuple(args.ue_pool)
    return cfg


def print_counters(counters: Mapping[str, int], out: TextIO = sys.stderr) -> None:
    """One ``  name  value`` line per counter, names aligned."""
    width = max((len(k) for k in counters), default=0)
    for k, v in counters.items():
        print(f"  {k:<{width}}  {v}", file=out)
