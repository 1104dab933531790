"""`testbed sim up / down / status / handover / relocate`: the sim lab from the command line.

The lead wires `add_sim_parser` into testbed/cli.py; `python -m testbed.sim` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from testbed.sim.lab import STATE_ROOT, SimLab, SimLabError
from testbed.sim.topology import TopologyError, check_lab_id, lab_netns

DEFAULT_LAB_ID = "0"
DEFAULT_UES = 2


def _lab_id(text: str) -> str:
    try:
        return check_lab_id(text)
    except TopologyError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _ues(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"bad UE count {text!r}: use 1..1000")
    return int(text)


def add_sim_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add `sim` with its up/down/status sub-commands; dispatch with `run_sim(args)`."""
    sim = subparsers.add_parser("sim", help="the sim lab in network namespaces (root)",
                                description="The sim lab: UEs, gNB, SMF, UPF and DN in Linux network namespaces "
                                            "(one or two MEC sites).")
    sub = sim.add_subparsers(dest="sim_cmd", required=True)
    up = sub.add_parser("up", help="build the lab and start one PDU session per UE")
    up.add_argument("--ues", type=_ues, default=DEFAULT_UES, help="number of UEs (default %(default)s)")
    up.add_argument("--qfi", type=int, default=1, choices=range(1, 64), metavar="QFI",
                    help="QFI of every UE's default QoS flow (default %(default)s)")
    up.add_argument("--capture", type=Path, help="also write N3+N4+N6 at the UPF (both UPFs with 2 sites) to this pcapng")
    up.add_argument("--sites", type=int, default=1, choices=(1, 2),
                    help="MEC sites: a gNB and a UPF each, one SMF (default %(default)s; docs/sim-sites.md)")
    down = sub.add_parser("down", help="delete the sessions (PFCP) and remove everything")
    down.add_argument("--keep-state", action="store_true", help="keep logs in the state directory")
    st = sub.add_parser("status", help="what is up (exit 0 when the lab is up)")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    ho = sub.add_parser("handover", help="Xn/N2 handover of a UE to another gNB (two-site lab; same UPF)")
    ho.add_argument("ue", type=_ues, help="UE number")
    ho.add_argument("gnb", type=int, choices=(1, 2), help="target gNB")
    rl = sub.add_parser("relocate", help="SSC mode 3 move of a UE to another site's UPF (new address)")
    rl.add_argument("ue", type=_ues, help="UE number")
    rl.add_argument("site", type=int, choices=(1, 2), help="target site")
    rl.add_argument("--hold", type=float, default=0.0, help="seconds both sessions live (default %(default)s)")
    for p in (ho, rl):
        p.add_argument("--json", action="store_true", help="print the result as JSON")
    for p in (up, down, st, ho, rl):
        p.add_argument("--lab-id", type=_lab_id, default=DEFAULT_LAB_ID,
                       help="lab id, prefixes namespaces as mec<id>-… (default %(default)s)")
        p.add_argument("--state-root", type=Path, default=STATE_ROOT, help=argparse.SUPPRESS)
    return sim


def run_sim(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("testbed sim: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    try:
        if args.sim_cmd == "up":
            return _up(args)
        if args.sim_cmd == "down":
            return _down(args)
        if args.sim_cmd in ("handover", "relocate"):
            return _move(args)
        return _status(args)
    except (SimLabError, TopologyError) as e:
        print(f"testbed sim {args.sim_cmd}: {e}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace) -> int:
    lab = SimLab(args.lab_id, args.ues, qfi=args.qfi, state_root=args.state_root, capture=args.capture,
                 sites=args.sites)
    lab.up()
    sites = f", {args.sites} sites" if args.sites > 1 else ""
    print(f"sim lab {args.lab_id} up: {args.ues} UE(s){sites}, state in {lab.state_dir}")
    for n, s in sorted(lab.sessions.items()):
        at = f"  site {s['site']} gNB {s['gnb']}" if args.sites > 1 else ""
        print(f"  UE {n}: {s['supi']} {s['ue_ip']} on {lab.ue_netns(n)}/{lab.ue_tun(n)}  "
              f"UL TEID 0x{s['ul_teid']:x} DL TEID 0x{s['dl_teid']:x} QFI {s['qfi']} SEID {s['cp_seid']}/{s['up_seid']}"
              f"{at}")
    for k in range(1, args.sites + 1):
        tap = lab.tap_interfaces(k)
        where = f" site {k}" if args.sites > 1 else ""
        print(f"  tap{where}: ip netns exec {tap['netns']} … on {tap['n3']} (N3), {tap['n4']} (N4), {tap['n6']} (N6)"
              + (f", UE pool {lab.ue_pool(k)}" if args.sites > 1 else ""))
    return 0


def _down(args: argparse.Namespace) -> int:
    state = args.state_root / args.lab_id
    if not state.exists() and not lab_netns(args.lab_id):
        print(f"sim lab {args.lab_id}: nothing to tear down")
        return 0
    lab = SimLab.attach(args.lab_id, args.state_root)
    problems = lab.down(keep_state=args.keep_state)
    for w in lab.warnings:
        print(f"testbed sim down: warning: {w}", file=sys.stderr)
    for p in problems:
        print(f"testbed sim down: {p}", file=sys.stderr)
    if not problems:
        print(f"sim lab {args.lab_id} down")
    return 1 if problems else 0


def _move(args: argparse.Namespace) -> int:
    if not (args.state_root / args.lab_id / "lab.json").exists():
        print(f"testbed sim {args.sim_cmd}: sim lab {args.lab_id} is not up", file=sys.stderr)
        return 1
    lab = SimLab.attach(args.lab_id, args.state_root)
    if args.sim_cmd == "handover":
        res = lab.handover(args.ue, to_gnb=args.gnb)
        text = (f"UE {args.ue}: gNB {res['from_gnb']} -> {res['gnb']}, DL TEID 0x{res['old_dl_teid']:x} -> "
                f"0x{res['dl_teid']:x}, End Marker {'counted' if res['end_marker'] else 'NOT seen'} at gNB "
                f"{res['from_gnb']}")
    else:
        res = lab.relocate(args.ue, to_site=args.site, hold=args.hold)
        text = (f"UE {args.ue}: site {res['old']['site']} -> {res['site']}, {res['old']['ue_ip']} -> {res['ue_ip']}, "
                f"PDU session {res['old']['pdu_session_id']} -> {res['pdu_session_id']}")
    print(json.dumps(res, indent=1) if args.json else text)
    return 0


def _status(args: argparse.Namespace) -> int:
    st = SimLab.attach(args.lab_id, args.state_root).status()
    if args.json:
        print(json.dumps(st, indent=1))
        return 0 if st["up"] else 1
    if not st["namespaces"] and not st["processes"]:
        print(f"sim lab {args.lab_id}: down")
        return 1
    print(f"sim lab {args.lab_id}: {'up' if st['up'] else 'DEGRADED'}, {st['ues']} UE(s), state {st['state_dir']}")
    print(f"  namespaces: {' '.join(sorted(st['namespaces']))}")
    for name, p in sorted(st["processes"].items()):
        print(f"  {name:<10} pid {p['pid']:<8} {'running' if p['alive'] else 'DEAD'}")
    for s in st["sessions"] or []:
        at = f" site {s['site']}" if (st.get("sites") or 1) > 1 and "site" in s else ""
        print(f"  session UE {s['ue']} {s['ue_ip']} UL TEID 0x{s['ul_teid']:x} DL TEID 0x{s['dl_teid']:x} QFI {s['qfi']}"
              f"{at}")
    return 0 if st["up"] else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="testbed", description="The sim lab on its own (python -m testbed.sim).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_sim_parser(sub)
    return run_sim(ap.parse_args(["sim", *(sys.argv[1:] if argv is None else argv)]))
