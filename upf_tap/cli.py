"""upf-tap: pull application events out of 5G user-plane traffic.

    upf-tap read FILE… [--point n3|n6] [--tap ID] [--gtpu-port N] [--flows] [--stats]
    upf-tap live --iface IF… (see ``upf-tap live --help``)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, TextIO

from mec_common import cli
from mec_common.cli import Command, CommandError
from upf_tap import __version__
from upf_tap.capture.common import CaptureError
from upf_tap.events import flush_spans, to_json_bytes, to_json_line
from upf_tap.options import add_pipeline_options, print_counters, tap_config
from upf_tap.output import stdout_bytes, stdout_text

LIVE_SUMMARY = ("capture live on interfaces (AF_PACKET) and print or send AppEvents "
                "(`upf-tap live --help`)")


def add_read_parser(subparsers: cli.SubParsers) -> argparse.ArgumentParser:
    rd: argparse.ArgumentParser = subparsers.add_parser(
        "read", help="decode capture files (pcap/pcapng) and print AppEvents",
        description="Decode pcap/pcapng captures and print AppEvents as JSON lines, in capture "
                    "order. Several files are merged by timestamp (e.g. N2, N3 and N4 taps).")
    rd.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng file(s)")
    rd.add_argument("--workers", type=int, default=1, metavar="N",
                    help="decode in N processes, each reading the file and taking the flows whose inner "
                         "addresses it owns (as `live --workers` splits them); events merged in time order "
                         "(default 1)")
    add_pipeline_options(rd)
    return rd


def run_read(args: argparse.Namespace) -> int:
    from upf_tap.capture.pcapfile import merge_captures, read_batches
    from upf_tap.pipeline import Tap, quiet_gc

    quiet_gc()

    try:
        cfg = tap_config(args)
    except ValueError as e:
        raise CommandError(str(e)) from e
    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    if args.workers > 1:
        if len(args.files) > 1:
            raise CommandError("--workers takes one file (merge captures with mergecap first)")
        bout = stdout_bytes()
        return _read_shared(args, cfg, bout if bout is not None else stdout_text())
    # whole lines even on a raw stdout (python -u) that takes part of a write; bytes straight
    # from orjson where stdout has a binary side (no decode and re-encode per event)
    out: TextIO | BinaryIO
    bout = stdout_bytes()
    if bout is not None:
        out, bwrite = bout, bout.write

        def emit(ev: dict[str, Any]) -> None:
            bwrite(to_json_bytes(ev))
    else:
        out = tout = stdout_text()

        def emit(ev: dict[str, Any]) -> None:
            tout.write(to_json_line(ev))
            tout.write("\n")

    try:
        tap = Tap(cfg, emit)
    except ValueError as e:  # a bad identity file (IdentityError)
        raise CommandError(str(e)) from e
    t0 = time.perf_counter()
    try:
        if len(args.files) == 1:
            tap.consume_batches(read_batches(args.files[0], tap.stats, runs=True))
        else:
            tap.consume(merge_captures(args.files, tap.stats))
    except CaptureError:
        out.flush()  # the events before the damage, then main() names it
        raise
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


def _text_writer(out: TextIO) -> Callable[[bytes], object]:
    """Bytes written to a text stream (a test's StringIO in place of stdout)."""
    return lambda b: out.write(b.decode())


def _read_shared(args: argparse.Namespace, cfg: Any, out: TextIO | BinaryIO) -> int:
    """``read --workers N``: N forked taps on one file, each its share of the flows; their
    events merged by capture time (then worker, then order: the same events as one process,
    in time order), counters summed. Lines stay bytes from orjson to ``out`` where it is binary."""
    import heapq
    import io
    import json
    import os
    import tempfile

    from upf_tap.capture.pcapfile import read_batches
    from upf_tap.pipeline import Tap

    t0 = time.perf_counter()
    n = args.workers
    with tempfile.TemporaryDirectory(prefix="upf-tap-read-") as tmp:
        pids = []
        for k in range(n):
            pid = os.fork()
            if pid == 0:  # a worker: its events as "<ts_ns> <json>" lines, its counters at the end
                code = 0
                try:
                    cfg.worker, cfg.workers = k, n
                    with open(os.path.join(tmp, f"{k}.events"), "wb") as evf:
                        def emit(ev: dict[str, Any], w: Any = evf.write) -> None:
                            w(ev["time"].encode() + b" " + to_json_bytes(ev))  # RFC 3339, fixed width: sorts as time

                        tap = Tap(cfg, emit)
                        tap.consume_batches(read_batches(args.files[0], tap.stats, runs=True))
                        tap.finish()
                    flush_spans()  # os._exit below skips the exit handler that would send them
                    with open(os.path.join(tmp, f"{k}.counters"), "w", encoding="utf-8") as cf:
                        json.dump(tap.counters(), cf)
                except (CaptureError, ValueError) as e:  # an unreadable capture, a bad identity file
                    print(f"upf-tap: error: {e}", file=sys.stderr)
                    code = 2
                except BaseException:  # a worker must never return into the parent's code
                    import traceback

                    traceback.print_exc()
                    code = 1
                os._exit(code)
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        if any(codes):
            raise CommandError(f"a worker failed (exit codes {codes})", code=max(codes))
        files = [open(os.path.join(tmp, f"{k}.events"), "rb") for k in range(n)]  # noqa: SIM115
        try:
            def keyed(k: int) -> Any:
                for i, line in enumerate(files[k]):
                    ts, _, rest = line.partition(b" ")
                    yield ts, k, i, rest

            write = out.write if isinstance(out, io.BufferedIOBase) else _text_writer(out)  # type: ignore[arg-type]  # out is TextIO here
            try:
                for _ts, _k, _i, line in heapq.merge(*(keyed(k) for k in range(n))):
                    write(line)
                out.flush()
            except BrokenPipeError:
                return 0
        finally:
            for f in files:
                f.close()
        if args.stats:
            total: dict[str, int] = {}
            for k in range(n):
                with open(os.path.join(tmp, f"{k}.counters"), encoding="utf-8") as cf:
                    for name, v in json.load(cf).items():
                        # every worker reads every packet: those counts are worker 0's
                        if k == 0 or not (name in ("packets", "bytes") or name.startswith("capture.")):
                            total[name] = total.get(name, 0) + v
            dt = time.perf_counter() - t0
            print(f"upf-tap: {total.get('packets', 0)} packets in {dt:.3f} s with {n} workers "
                  f"({total.get('packets', 0) / dt if dt else 0:,.0f} packets/s)", file=sys.stderr)
            print_counters(dict(sorted(total.items())))
    return 0


COMMANDS = (
    Command("read", add_read_parser, run_read),
    # capture, fanout, metrics: imported only when `live` is the command
    Command("live", cli.lazy("upf_tap.live.command", "add_live_parser"),
            cli.lazy("upf_tap.live.command", "run_live"), summary=LIVE_SUMMARY),
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upf-tap", description="GTP-U/N6 traffic tap: application events (AppEvent JSON lines) "
                                    "from 5G user-plane traffic, tied to subscribers via PFCP and NGAP.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return cli.add_commands(parser, COMMANDS, argv)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(build_parser(argv), argv, errors=(CaptureError,), prefix="upf-tap: ")


if __name__ == "__main__":
    sys.exit(main())
