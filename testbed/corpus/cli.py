"""`testbed corpus tunnel|build|score|merge`: real captures as N3 traffic, judged against tshark.

    testbed corpus tunnel IN OUT              one capture into GTP-U (any pcap/pcapng, any link)
    testbed corpus build --out DIR            public test captures -> DIR (manifest, N3, tshark's view)
    testbed corpus score DIR [--min 0.99]     the tap against tshark on every capture of DIR
    testbed corpus merge DIR OUT              every capture of DIR in one file (the benchmark's input)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mec_common.cli import EXIT_FAILURE, Command, CommandError, SubParsers, add_commands


def add_corpus_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "corpus", help="real captures tunnelled into N3, and the tap scored against tshark on them",
        description="Tunnel any capture into GTP-U N3 traffic, build a corpus from public test captures "
                    "(git snapshots), and score the tap against tshark on it.")
    add_commands(p, COMMANDS, argv=[], dest="corpus_command", metavar="ACTION")
    return p


def _add_tunnel(sub: SubParsers) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "tunnel", help="put one capture into GTP-U",
        description="Every IP packet of IN (pcap or pcapng, Ethernet, raw IP, Linux cooked, loopback; gzip "
                    "too) into GTP-U between a gNB and a UPF: the side that opened each flow is the UE, a TEID "
                    "pair per UE, a PDU Session Container with the QFI. Writes a nanosecond pcap.")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--qfi", type=int, default=9, help="QoS flow identifier in every container (default 9)")
    return p


def _run_tunnel(args: argparse.Namespace) -> int:
    from testbed.corpus.tunnel import Tunneller, tunnel_file
    from upf_tap.capture.common import CaptureError

    if not 0 <= args.qfi <= 63:
        raise CommandError(f"--qfi {args.qfi}: a QFI is 0..63")
    out = Path(args.output)
    try:
        same = out.exists() and out.samefile(args.input)
    except OSError:
        same = False
    if same:  # opening OUT would empty IN before it is read
        raise CommandError(f"{args.output}: is the input; give another OUT")
    try:
        with out.open("wb") as f:
            stats, _first, _last = tunnel_file(args.input, f, Tunneller(args.qfi))
    except (CaptureError, OSError) as e:
        if out.is_file():  # no half-written capture left behind (but never a device or a pipe)
            out.unlink(missing_ok=True)
        if isinstance(e, CaptureError):
            raise CommandError(str(e)) from None
        raise CommandError(f"{args.output}: {e.strerror or e}") from None
    dropped = {k: v for k, v in sorted(stats.items()) if k.startswith("dropped.")}
    print(f"{args.output}: {stats['packets']} packets ({stats['uplink']} uplink, {stats['downlink']} downlink) "
          f"of {stats['frames']} frames, {stats['ues']} UEs" + (f"; left out: {dropped}" if dropped else ""),
          file=sys.stderr)
    return 0


def _add_build(sub: SubParsers) -> argparse.ArgumentParser:
    from testbed.corpus.build import DEFAULT_SOURCES, MAX_CAPTURE_BYTES

    p: argparse.ArgumentParser = sub.add_parser(
        "build", help="build a corpus from public test captures",
        description="Collect the captures under each SOURCE (OWNER/NAME[:FOLDER], a git snapshot under ROOT as "
                    "fetch leaves it: ROOT/OWNER+NAME/repo), tunnel each into N3, and run tshark on each once. "
                    "DIR gets manifest.json (repository, commit, path and SHA-256 of every capture), n3/, "
                    "oracle/ and all.pcap. Nothing is downloaded.")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--source", action="append", metavar="OWNER/NAME[:FOLDER]",
                   help="repeatable; default: " + ", ".join(DEFAULT_SOURCES))
    p.add_argument("--root", metavar="ROOT", help="where the snapshots are (default $MEC_UPSTREAM or /work/.mirror)")
    p.add_argument("--max-bytes", type=int, default=MAX_CAPTURE_BYTES,
                   help=f"leave out captures larger than this (default {MAX_CAPTURE_BYTES})")
    p.add_argument("--jobs", type=int, default=2, help="tshark processes at once (default 2)")
    return p


def _run_build(args: argparse.Namespace) -> int:
    from testbed.corpus.build import DEFAULT_SOURCES, CorpusError, build, default_root, stderr_progress
    from testbed.corpus.tshark import TSHARK

    if TSHARK is None:
        raise CommandError("tshark is not installed (apt-get install tshark): it is the corpus's oracle")
    root = Path(args.root) if args.root else default_root()
    try:
        m = build(Path(args.out), args.source or list(DEFAULT_SOURCES), root, args.max_bytes, stderr_progress,
                  args.jobs)
    except CorpusError as e:
        raise CommandError(str(e)) from None
    if not m["captures"]:
        raise CommandError(f"no capture found under {root} for {args.source or list(DEFAULT_SOURCES)}")
    return 0


def _add_score(sub: SubParsers) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "score", help="the tap against tshark on every capture of a corpus",
        description="Run the tap on every capture of DIR and compare its HTTP requests, DNS queries and "
                    "TLS/QUIC SNIs with tshark's (cached by build; recomputed for another tshark). Prints "
                    "recall and precision per kind and the captures that differ.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--show", type=int, default=20, metavar="N", help="differing captures to list (default 20)")
    p.add_argument("--min", type=float, default=0.0, metavar="RATIO",
                   help="exit 1 when any kind's recall or precision is below RATIO")
    p.add_argument("--json", metavar="FILE", help="also write the scores and every difference as JSON")
    return p


def _run_score(args: argparse.Namespace) -> int:
    from testbed.corpus.build import CorpusError, captures, load, oracle_of, refresh_oracle, stderr_progress
    from testbed.corpus.score import score_corpus
    from testbed.corpus.tshark import TSHARK

    out = Path(args.dir)
    try:
        manifest = load(out)
    except CorpusError as e:
        raise CommandError(str(e)) from None
    if TSHARK is None:
        stale = sum(1 for c in manifest["captures"] if oracle_of(out, c["name"]) is None)
        if stale:
            raise CommandError(f"tshark is not installed (apt-get install tshark): {stale} captures of {out} "
                               "have no oracle made by this tshark, filter and fields")
    refresh_oracle(out, manifest, stderr_progress)
    score = score_corpus(out, captures(out, manifest))
    print(score.table())
    shown = sorted(score.differences.items(), key=lambda kv: -sum(kv[1][0].values()) - sum(kv[1][1].values()))
    for name, (missed, extra) in shown[: args.show]:
        print(f"\n{name}:")
        for key, n in sorted(missed.items(), key=repr)[:5]:
            print(f"  missed {n}x {key}")
        for key, n in sorted(extra.items(), key=repr)[:5]:
            print(f"  extra  {n}x {key}")
    if len(shown) > args.show:
        print(f"\n... and {len(shown) - args.show} more captures with differences")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "scores": score.as_dict(),
            "differences": {name: {"missed": [[*k, n] for k, n in m.items()], "extra": [[*k, n] for k, n in x.items()]}
                            for name, (m, x) in score.differences.items()}}, indent=1) + "\n")
    worst = min(min(score.recall(k), score.precision(k)) for k in ("http.request", "dns.query", "sni"))
    return EXIT_FAILURE if worst < args.min else 0


def _add_merge(sub: SubParsers) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "merge", help="every capture of a corpus in one file",
        description="Lay every capture of DIR end to end, an hour apart (past every flow timeout), in one pcap.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("output", metavar="OUT")
    return p


def _run_merge(args: argparse.Namespace) -> int:
    from testbed.corpus.build import CorpusError, load, merge

    try:
        n = merge(Path(args.dir), load(Path(args.dir)), Path(args.output))
    except CorpusError as e:
        raise CommandError(str(e)) from None
    print(f"{args.output}: {n} packets", file=sys.stderr)
    return 0


COMMANDS = (
    Command("tunnel", _add_tunnel, _run_tunnel),
    Command("build", _add_build, _run_build),
    Command("score", _add_score, _run_score),
    Command("merge", _add_merge, _run_merge),
)


def run_corpus(args: argparse.Namespace) -> int:
    raise AssertionError("dispatched to the chosen action by mec_common.cli")  # pragma: no cover
