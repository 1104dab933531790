"""`testbed lab up | down | status | smoke | render`: the Docker Compose + kind/Knative lab.

The lead wires `add_lab_parser` and `run_lab` into testbed/cli.py; `python -m testbed.lab`
runs the same commands on its own.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from testbed.lab import doctor, plan, render
from testbed.lab import ingress as ING
from testbed.lab import layout as L
from testbed.lab.runner import run_plan
from testbed.lab.subscribers import Subscriber, SubscriberError, dump, generate, load
from testbed.lab.versions import VersionsError, read_versions


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {v}")
    return v


def _add_ingress(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ingress", choices=list(ING.INGRESSES), default=ING.DEFAULT.name,
                   help=f"Knative Serving's ingress {what} (default {ING.DEFAULT.name}, the lighter; istio is the "
                        "paper's: Istio ingress gateway + net-istio)")


def add_lab_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add `lab` and its sub-commands to an argparse sub-parser set; returns the `lab` parser."""
    lab = subparsers.add_parser(
        "lab", help="the Docker Compose (Open5GS + UERANSIM + tap) and kind + Knative lab",
        description="The full lab on a workstation with Docker: Open5GS 2.7 and UERANSIM 3.2 in Docker "
                    "Compose, kind with Knative Serving/Eventing 1.22, the tap and the detector. "
                    "See docs/lab.md.")
    sub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)

    doc = sub.add_parser("doctor", help="can this host run the lab? one line per check, with the fix",
                         description="Check the host before a lab run (and `lab up` runs the same checks): "
                                     "Docker engine, image store, Compose, kind, kubectl, the sctp module, "
                                     "/dev/net/tun, ip_forward, AVX where MongoDB needs it, the lab's networks "
                                     "against host routes and Docker networks, host ports, inotify limits, "
                                     "disk and memory. Exits 1 when the lab cannot work here.")
    doc.add_argument("--skip-k8s", action="store_true", help="only what the Compose lab needs")
    doc.add_argument("--skip-compose", action="store_true", help="only what kind + Knative need")
    _add_ingress(doc, "to check for (Istio needs more memory)")

    up = sub.add_parser("up", help="check the host (as `doctor`), create everything, wait until ready",
                        description="Create the kind cluster, install Knative (ingress: Kourier, or Istio with "
                                    "--ingress istio), deploy the Broker, Triggers, "
                                    "functions and detector, then bring up the Compose lab with the tap and "
                                    "wait for every UE's PDU session.")
    up.add_argument("--dry-run", action="store_true", help="print every command instead of running it")
    up.add_argument("--skip-k8s", action="store_true", help="only the Compose lab (no kind, no tap)")
    up.add_argument("--skip-compose", action="store_true", help="only kind + Knative + detector")
    up.add_argument("--timeout", type=_positive, default=300, metavar="S",
                    help="seconds to wait for each readiness check (default 300)")
    _add_ingress(up, "to install; one per cluster")

    down = sub.add_parser("down", help="remove the Compose lab and the kind cluster",
                          description="Stop and remove the Compose lab (volumes included) and delete the kind cluster.")
    down.add_argument("--dry-run", action="store_true", help="print every command instead of running it")
    down.add_argument("--keep-cluster", action="store_true", help="leave the kind cluster in place")

    status = sub.add_parser("status", help="show the Compose services and the Knative objects",
                            description="Show Compose services, kind nodes, Broker/Triggers/Services and the detector.")
    status.add_argument("--dry-run", action="store_true", help="print every command instead of running it")
    _add_ingress(status, "whose gateway to show")

    smoke = sub.add_parser("smoke", help="a UE clicks in the main application; a function must log it",
                           description="End to end: a UE resolves and POSTs to the main application through its "
                                       "PDU session, and a function's log must show the UE's SUPI.")
    smoke.add_argument("--dry-run", action="store_true", help="print every command instead of running it")
    smoke.add_argument("--ue", type=_positive, default=1, metavar="N", help="which UE acts (default 1)")
    smoke.add_argument("--timeout", type=_positive, default=120, metavar="S",
                       help="seconds to wait for the function's log (default 120)")
    smoke.add_argument("--scenario", type=Path, metavar="FILE",
                       help="then run this scenario file against the lab (`testbed scenario run --backend lab`)")

    chk = sub.add_parser("check", help="run the offline checks (schemas, CRDs, pinning, generated files)",
                         description="Validate the compose files against the Compose Specification, every "
                                     "Kubernetes/Knative object against its schema (Knative: the CRDs), image "
                                     "pinning, and that the generated files are up to date. No Docker needed.")
    chk.add_argument("--shared", type=Path, metavar="DIR",
                     help="the shared material with compose-spec/ and knative/ (default: $MEC_SHARED or ../shared)")

    rend = sub.add_parser("render", help="regenerate compose/ configs from the constants and subscribers",
                          description="Write the Open5GS, UERANSIM, provisioning, DNS and compose files from "
                                      "testbed/constants.py and compose/subscribers.yaml.")
    rend.add_argument("--ues", type=_positive, metavar="N",
                      help="first rewrite compose/subscribers.yaml with N subscribers from the constants")
    rend.add_argument("--network", action="append", default=[], metavar="NAME=CIDR",
                      help="first set a lab network's subnet in compose/networks.yaml (core, ran, n6; repeatable)")
    rend.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 if any generated file is out of date")
    return lab


def _fail(msg: str) -> int:
    print(f"testbed lab: {msg}", file=sys.stderr)
    return 2


def _prereqs(command: str, *, k8s: bool, compose: bool, dry_run: bool, kind_min: str,
             ingress: ING.Ingress = ING.DEFAULT) -> bool:
    checks = doctor.checks_for(command, k8s=k8s, compose=compose, kind_min=kind_min, ingress=ingress)
    if dry_run:
        for c in checks:
            state = {"ok": "ok", "warn": "warn", "fail": "MISSING"}[c.level]
            print(f"# prerequisite {c.name}: {state} ({c.message}{'; fix: ' + c.fix if c.fix else ''})")
        return True
    for c in checks:
        if c.level != "ok":
            print(f"testbed lab: {c.line()}", file=sys.stderr)
    bad = [c for c in checks if not c.ok]
    if bad:
        print(f"testbed lab: {len(bad)} check(s) failed; `testbed lab doctor` shows them all", file=sys.stderr)
    return not bad


def _doctor(args: argparse.Namespace, kind_min: str) -> int:
    if args.skip_k8s and args.skip_compose:
        return _fail("--skip-k8s and --skip-compose leave nothing to check")
    checks = doctor.checks_for("doctor", k8s=not args.skip_k8s, compose=not args.skip_compose, kind_min=kind_min,
                               ingress=ING.get(args.ingress))
    for c in checks:
        print(c.line())
    bad = sum(not c.ok for c in checks)
    warn = sum(c.level == "warn" for c in checks)
    print(f"{len(checks)} checks: {len(checks) - bad - warn} ok, {warn} warnings, {bad} failed"
          + ("" if bad else " — the lab can run here"))
    return 1 if bad else 0


def _set_networks(specs: list[str]) -> None:
    """Apply NAME=CIDR overrides to compose/networks.yaml and reload the layout from it."""
    import importlib

    nets = dict(L.NETWORKS)
    for spec in specs:
        name, sep, cidr = spec.partition("=")
        if not sep or name not in L.NETWORK_NAMES:
            raise L.LayoutError(f"--network {spec!r}: expected NAME=CIDR with NAME one of {', '.join(L.NETWORK_NAMES)}")
        nets[name] = cidr
    nets = L.parse_networks(nets, "--network")
    L.NETWORKS_FILE.write_text(L.networks_yaml(nets))
    print(f"wrote {L.NETWORKS_FILE.relative_to(L.REPO)} ({', '.join(f'{k} {v}' for k, v in nets.items())})")
    importlib.reload(L)


def _render(args: argparse.Namespace) -> int:
    try:
        if args.network:
            if args.check:
                return _fail("--check and --network do not go together (--network rewrites compose/networks.yaml)")
            _set_networks(args.network)
        elif L.NETWORKS_ERROR:
            return _fail(L.NETWORKS_ERROR)
        if args.ues:
            subs = generate(args.ues)
            if args.check:
                return _fail("--check and --ues do not go together (--ues rewrites the subscriber list)")
            L.SUBSCRIBERS_FILE.write_text(dump(subs))
            print(f"wrote {L.SUBSCRIBERS_FILE.relative_to(L.REPO)} ({len(subs)} subscribers)")
        else:
            subs = load(L.SUBSCRIBERS_FILE)
    except (SubscriberError, L.LayoutError) as e:
        return _fail(str(e))
    if args.check:
        stale = render.stale_files(L.REPO, subs) + [str(p.relative_to(L.REPO))
                                                     for p in render.stray_ue_configs(L.REPO, subs)]
        if stale:
            print("testbed lab: out of date, run `testbed lab render`: " + ", ".join(stale), file=sys.stderr)
            return 1
        print("generated files are up to date")
        return 0
    for rel in render.write_all(L.REPO, subs):
        print(f"wrote {rel}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from testbed.lab.checks import offline_problems

    shared = args.shared or Path(os.environ.get("MEC_SHARED", L.REPO.parent / "shared"))
    problems = offline_problems(shared.resolve())
    for p in problems:
        print(p)
    if problems:
        print(f"testbed lab: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("lab files: all offline checks pass")
    return 0


def run_lab(args: argparse.Namespace) -> int:
    """Run a parsed `lab` command; returns the process exit code."""
    cmd = args.lab_command
    if cmd == "render":
        return _render(args)
    if cmd == "check":
        return _check(args)
    try:
        versions = read_versions()
    except VersionsError as e:
        return _fail(str(e))
    if cmd == "doctor":
        return _doctor(args, versions["KIND_MIN_VERSION"])
    if L.NETWORKS_ERROR:
        return _fail(L.NETWORKS_ERROR)
    try:
        subs = load(L.SUBSCRIBERS_FILE)
    except SubscriberError as e:
        return _fail(str(e))
    dry = args.dry_run
    if cmd == "up":
        if args.skip_k8s and args.skip_compose:
            return _fail("--skip-k8s and --skip-compose leave nothing to do")
        k8s, compose = not args.skip_k8s, not args.skip_compose
        stale = render.stale_files(L.REPO, subs)
        if stale:
            return _fail(f"compose files disagree with testbed/constants.py or compose/subscribers.yaml "
                         f"({stale[0]}{' …' if len(stale) > 1 else ''}): run `testbed lab render`")
        ingress = ING.get(args.ingress)
        if not _prereqs("up", k8s=k8s, compose=compose, dry_run=dry, kind_min=versions["KIND_MIN_VERSION"],
                        ingress=ingress):
            return 2
        steps = plan.up_plan(versions, subs, k8s=k8s, compose=compose, timeout=args.timeout, ingress=ingress)
    elif cmd == "down":
        if not _prereqs("down", k8s=not args.keep_cluster, compose=True, dry_run=dry,
                        kind_min=versions["KIND_MIN_VERSION"]):
            return 2
        steps = plan.down_plan(keep_cluster=args.keep_cluster)
    elif cmd == "status":
        if not _prereqs("status", k8s=False, compose=True, dry_run=dry, kind_min=versions["KIND_MIN_VERSION"]):
            return 2
        steps = plan.status_plan(ING.get(args.ingress))
    elif cmd == "smoke":
        if args.ue > len(subs):
            return _fail(f"--ue {args.ue}: the lab has {len(subs)} UE(s) (compose/subscribers.yaml)")
        if not _prereqs("smoke", k8s=True, compose=True, dry_run=dry, kind_min=versions["KIND_MIN_VERSION"]):
            return 2
        steps = plan.smoke_plan(subs[args.ue - 1], timeout=args.timeout, scenario=args.scenario)
    else:  # argparse keeps this unreachable
        return _fail(f"unknown command {cmd!r}")
    rc = run_plan(steps, dry_run=dry)
    if rc == 0 and not dry and cmd == "up":
        print(summary(subs, k8s=not args.skip_k8s, ingress=ING.get(args.ingress)))
    return rc


def summary(subs: list[Subscriber], *, k8s: bool, ingress: ING.Ingress = ING.DEFAULT) -> str:
    lines = [
        "lab is up:",
        f"  Open5GS WebUI      http://127.0.0.1:{L.WEBUI_PORT} (admin / 1423)",
        f"  main application   http://{L.ADDR['app']['n6']} ({L.APP_HOST}) on N6",
        f"  UEs                {', '.join(f'ue{s.n}={s.ip}' for s in subs)} "
        f"(docker compose -f compose/docker-compose.yaml exec ue1 ...)",
    ]
    if k8s:
        lines += [
            f"  Broker ingress     http://127.0.0.1:{L.BROKER_HOSTPORT}/{L.NAMESPACE}/{L.BROKER}",
            f"  detector ingest    http://127.0.0.1:{L.DETECTOR_HOSTPORT}/v1/events",
            f"  Knative Services   http://<name>.{L.NAMESPACE}.127.0.0.1.sslip.io:{L.INGRESS_HOSTPORT} "
            f"(through {ingress.title})",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # same parser as under `testbed`, so help and errors read `testbed lab ...`
    ap = argparse.ArgumentParser(prog="testbed", description="The MEC testbed's Docker/kind lab.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_lab_parser(sub)
    args = ap.parse_args(["lab", *(sys.argv[1:] if argv is None else argv)])
    return run_lab(args)
