"""`testbed broker --manifests DIR [--listen HOST:PORT] [--state-dir DIR] [--local-api]`: the local
Knative-compatible broker. Accepted events are kept in `<state-dir>/broker.db` (SQLite WAL) until
every matching Trigger (or every Subscription of the Channel) has them, so a restart on the same
state dir delivers what a kill left.

The lead's testbed/cli.py calls `add_broker_parser(subparsers)` and dispatches to
`run_broker(args)`; `python -m testbed.broker` runs the same command on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from mec_common.net import parse_host_port
from testbed.broker.ingress import BROKER_KEY, build_app, check_runnable
from testbed.broker.manifests import ManifestError, Manifests, load_manifests
from testbed.broker.store import DEFAULT_RETAIN, DURABILITY, STORE_FILE, StoreError

DEFAULT_LISTEN = "127.0.0.1:8090"  # local stand-in for broker-ingress.knative-eventing.svc:80
DEFAULT_MANIFESTS = "k8s/knative"


def parse_listen(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def add_broker_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add the `broker` subcommand to a parent parser's subparsers."""
    p = subparsers.add_parser(
        "broker",
        help="run the local Knative-compatible Broker and function runner",
        description="Serve the Brokers, Triggers, Channels, Subscriptions and Knative Services found in the YAML "
                    "manifests under DIR: Broker ingress at /<namespace>/<broker>, Channels at "
                    "/channels/<namespace>/<channel>, sample functions scaled from zero.",
    )
    add_broker_arguments(p)
    p.set_defaults(func=run_broker)
    return p


def add_broker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifests", default=DEFAULT_MANIFESTS, metavar="DIR",
                   help=f"directory (or file) of Broker/Trigger/Channel/Subscription/Service YAML (default {DEFAULT_MANIFESTS})")
    p.add_argument("--listen", default=DEFAULT_LISTEN, type=parse_listen, metavar="HOST:PORT",
                   help=f"where the ingress listens (default {DEFAULT_LISTEN})")
    p.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                   help=f"where the broker keeps accepted events ({STORE_FILE}) and functions their records "
                        "and logs; restart on the same DIR to deliver what was pending (default: a new "
                        "temporary directory, removed on exit)")
    p.add_argument("--durability", choices=DURABILITY, default="full",
                   help="SQLite synchronous setting for the commits behind a 202: full (fsync: survives "
                        "power loss) or normal (survives a crash of the broker, not of the machine); "
                        "default full")
    p.add_argument("--retain-events", type=_at_least_one, default=DEFAULT_RETAIN, metavar="N",
                   help=f"finished events kept in the store for /_local/events (default {DEFAULT_RETAIN}); "
                        "pending ones are always kept")
    p.add_argument("--local-api", action="store_true",
                   help="serve the debug API GET /_local/stats, /_local/events and /_local/eventtypes (off by default, as "
                        "Knative's broker ingress has none; /_local/healthz is always served)")
    p.add_argument("--idle-window", type=_positive, default=None, metavar="SECONDS",
                   help="scale a function to zero after this idle time, overriding the "
                        "autoscaling.knative.dev annotations")
    p.add_argument("--scale-to-zero-grace", type=_positive, default=None, metavar="SECONDS",
                   help="the cluster's scale-to-zero grace period added to the window (default 30)")
    p.add_argument("--check", action="store_true", help="only load and check the manifests, then exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log every dispatch")


def run_broker(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; 0 on a clean stop, 2 on bad manifests, 1 if it cannot listen."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        manifests = load_manifests(args.manifests)
        check_runnable(manifests)
    except ManifestError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 2
    host, port = args.listen
    if args.check:
        print(f"{args.manifests}: {_counts(manifests)}; ok")
        return 0
    try:
        return asyncio.run(_serve(manifests, host, port, args))
    except ManifestError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"broker: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1


async def _serve(manifests: Manifests, host: str, port: int, args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        state = args.state_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mec-broker-")))
        shown = f"[{host}]" if ":" in host else host
        app = build_app(manifests, f"http://{shown}:{port}", state,
                        idle_override=args.idle_window, grace=args.scale_to_zero_grace,
                        local_api=args.local_api, durability=args.durability, retain=args.retain_events)
        web_runner = web.AppRunner(app, access_log=None)
        try:
            await web_runner.setup()  # opens the event store
            await web.TCPSite(web_runner, host, port).start()
            await app[BROKER_KEY].resume()
            print(f"broker: listening on http://{shown}:{port} ({_counts(manifests)}); state in {state}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await web_runner.cleanup()
    return 0


def _counts(m: Manifests) -> str:
    return (f"{len(m.brokers)} broker(s), {len(m.triggers)} trigger(s), {len(m.channels)} channel(s), "
            f"{len(m.subscriptions)} subscription(s), {len(m.services)} service(s), {len(m.eventtypes)} eventtype(s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.broker", description=(
        "Local Knative-compatible Broker and function runner (dev/test stand-in; production is Knative)."))
    add_broker_arguments(p)
    return run_broker(p.parse_args(argv))
