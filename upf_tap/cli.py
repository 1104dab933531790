"""upf-tap: pull application events out of 5G user-plane traffic.

    upf-tap read FILE… [--point n3|n6] [--tap ID] [--gtpu-port N] [--flows] [--stats]
    upf-tap live --iface IF… (see ``upf-tap live --help``)
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Sequence

from upf_tap import __version__
from upf_tap.constants import (
    DEFAULT_FLOW_HARD_TIMEOUT,
    DEFAULT_FLOW_IDLE_TIMEOUT,
    DEFAULT_MAX_FLOWS,
    DEFAULT_STREAM_DEPTH,
    DEFAULT_TAP_ID,
    GTPU_PORT,
)
from upf_tap.events import to_json_line

EXIT_BAD_INPUT = 2


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
                   help=f"bytes inspected per TCP direction (default {DEFAULT_STREAM_DEPTH})")
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


def tap_config(args: argparse.Namespace):  # -> TapConfig (import deferred: keeps --help fast)
    from upf_tap.pipeline import TapConfig

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


def print_counters(counters: dict[str, int], out=sys.stderr) -> None:
    width = max((len(k) for k in counters), default=0)
    for k, v in counters.items():
        print(f"  {k:<{width}}  {v}", file=out)


def cmd_read(args: argparse.Namespace) -> int:
    from upf_tap.capture.pcapfile import CaptureError, merge_captures, read_batches
    from upf_tap.pipeline import Tap

    try:
        cfg = tap_config(args)
    except ValueError as e:
        print(f"upf-tap: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n", write_through=False) \
        if hasattr(sys.stdout, "buffer") else sys.stdout
    write = out.write

    def emit(ev: dict) -> None:
        write(to_json_line(ev))
        write("\n")

    try:
        tap = Tap(cfg, emit)
    except ValueError as e:  # a bad identity file (IdentityError)
        print(f"upf-tap: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    t0 = time.perf_counter()
    try:
        if len(args.files) == 1:
            tap.consume_batches(read_batches(args.files[0], tap.stats, runs=True))
        else:
            tap.consume(merge_captures(args.files, tap.stats))
    except CaptureError as e:
        out.flush()
        print(f"upf-tap: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return 0
    tap.finish()
    try:
        out.flush()
    except BrokenPipeError:
        return 0
    if args.stats:
        dt = time.perf_counter() - t0
        print(f"upf-tap: {tap.packets} packets in {dt:.3f} s "
              f"({tap.packets / dt if dt else 0:,.0f} packets/s)", file=sys.stderr)
        print_counters(tap.counters())
    return 0


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upf-tap", description="GTP-U/N6 traffic tap: application events (AppEvent JSON lines) "
                                    "from 5G user-plane traffic, tied to subscribers via PFCP and NGAP.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rd = sub.add_parser("read", help="decode capture files (pcap/pcapng) and print AppEvents",
                        description="Decode pcap/pcapng captures and print AppEvents as JSON lines, in capture "
                                    "order. Several files are merged by timestamp (e.g. N2, N3 and N4 taps).")
    rd.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng file(s)")
    add_pipeline_options(rd)
    rd.set_defaults(func=cmd_read)
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["live"]:
        from upf_tap.live.command import add_live_parser  # capture, fanout, metrics: only when used

        add_live_parser(sub)
    else:
        sub.add_parser("live", help="capture live on interfaces (AF_PACKET) and print or send AppEvents "
                                    "(`upf-tap live --help`)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
