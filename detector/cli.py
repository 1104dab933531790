"""`detector serve`: a Knative event source turning AppEvents into CloudEvents.

Also `detector check-rules FILE` to validate a rules file before deploying it, and `detector
eventtypes [--write | --check]` for k8s/knative/eventtypes.yaml (detector/eventtypes.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence

from detector.config import DEFAULT_LISTEN, Config, ConfigError, apply_file, finish, read_token_file
from detector.outbox import OutboxError
from detector.rules import load_rules
from mec_common import cli
from mec_common.cli import Command


def add_serve_parser(subparsers: cli.SubParsers) -> argparse.ArgumentParser:
    s: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="ingest AppEvents, emit CloudEvents to the sink",
        description="Ingest AppEvents (NDJSON on POST /v1/events) and deliver CloudEvents to the "
                    "sink. Environment: K_SINK, K_CE_OVERRIDES, DETECTOR_TOKEN, DETECTOR_ID, "
                    "DETECTOR_STATE_DIR, DETECTOR_TLS_CERT, DETECTOR_TLS_KEY; two MEC sites: DETECTOR_MOBILITY, "
                    "DETECTOR_SITE, DETECTOR_PEERS (or `mobility:` in --config).")
    s.add_argument("--listen", metavar="HOST:PORT", help=f"where to listen (default {DEFAULT_LISTEN})")
    s.add_argument("--sink", metavar="URL", help="where CloudEvents go (default: $K_SINK)")
    s.add_argument("--outbox", metavar="PATH",
                   help="SQLite outbox (default: $DETECTOR_STATE_DIR/outbox.db or /var/lib/detector/outbox.db)")
    s.add_argument("--rules", metavar="FILE", help="rules YAML (default: every AppEvent -> mec.upf.<kind>)")
    s.add_argument("--config", metavar="FILE", help="settings YAML (see docs/detector.md)")
    s.add_argument("--token-file", metavar="F", help="file holding the ingest bearer token (else $DETECTOR_TOKEN)")
    s.add_argument("--tls-cert", metavar="FILE",
                   help="serve ingest over HTTPS (TLS 1.2+) with this PEM certificate chain (else $DETECTOR_TLS_CERT)")
    s.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert (else $DETECTOR_TLS_KEY)")
    s.add_argument("--insecure-no-token", action="store_true", help="accept ingest without a token (tests, demos)")
    s.add_argument("--structured", action="store_true", help="structured content mode (default: binary)")
    s.add_argument("--ingest-time", action="store_true",
                   help="add the extension mecingesttime (when the detector took the event) for latency studies")
    s.add_argument("--detector-id", metavar="ID", help="names this detector in `source` (default: $DETECTOR_ID, "
                                                       "$POD_NAME or the host name)")
    s.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                   help="event loop: uvloop when installed (auto, about a third less CPU per event) or asyncio")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return s


def add_check_rules_parser(subparsers: cli.SubParsers) -> argparse.ArgumentParser:
    c: argparse.ArgumentParser = subparsers.add_parser(
        "check-rules", help="validate a rules file and summarise it",
        description="Validate a rules YAML file; prints one line per rule, exit 1 on error.")
    c.add_argument("file")
    return c


def _config(args: argparse.Namespace) -> Config:
    cfg = Config()
    if args.config:
        apply_file(cfg, args.config)
    for name in ("listen", "sink", "outbox", "rules", "detector_id", "tls_cert", "tls_key"):
        v = getattr(args, name)
        if v:
            setattr(cfg, name, v)
    if args.token_file:
        cfg.token = read_token_file(args.token_file)
    if args.insecure_no_token:
        cfg.insecure_no_token = True
    if args.structured:
        cfg.structured = True
    if args.ingest_time:
        cfg.ingest_time = True
    return finish(cfg, dict(os.environ))


def run_check_rules(args: argparse.Namespace) -> int:
    rs = load_rules(args.file)
    for r in rs.rules:
        what = "drop" if r.emit is None else f"emit {r.emit.type.text}"
        extra = []
        if r.debounce:
            extra.append(f"debounce {r.debounce:g}s")
        if r.rate_count:
            extra.append(f"rate {r.rate_count}/{r.rate_per:g}s")
        if r.name in rs.create_on:
            extra.append("creates source")
        print(f"{r.name}: {what}" + (f" ({', '.join(extra)})" if extra else ""))
    print(f"unmatched: {rs.unmatched}; sources idle timeout {rs.idle_timeout:g}s")
    if rs.prewarm is not None:
        print(f"prewarm: {'on' if rs.prewarm.enabled else 'off'}, window {rs.prewarm.window:g}s "
              "(overrides the config's mobility.prewarm)")
    return 0


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("--loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = _config(args)
    rules = load_rules(cfg.rules)
    from detector.server import serve
    with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
        runner.run(serve(cfg, rules))
    return 0


COMMANDS = (
    Command("serve", add_serve_parser, run_serve),
    Command("check-rules", add_check_rules_parser, run_check_rules, error_exit=cli.EXIT_FAILURE),
    Command("eventtypes", cli.lazy("detector.eventtypes", "add_parser"), cli.lazy("detector.eventtypes", "run"),
            summary="print the Knative EventTypes of every CloudEvent type (k8s/knative/eventtypes.yaml)"),
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detector", description=(__doc__ or "").splitlines()[0])
    return cli.add_commands(parser, COMMANDS, argv, dest="cmd", metavar=None)


def main(argv: Sequence[str] | None = None) -> int:
    # every error a start or a rules file can meet is one line: "detector: error: ..."
    return cli.main(build_parser(argv), argv, errors=(ConfigError, OutboxError, OSError))


if __name__ == "__main__":
    sys.exit(main())
