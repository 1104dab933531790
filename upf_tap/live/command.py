"""`upf-tap live`: capture on UPF interfaces and stream AppEvents (stdout or a detector).

    upf-tap live --iface IF [--iface IF2 …] [--point n3|n6] [--duration S]
                 [--detector URL --token-file F [--detector-ca PEM] [--spool DIR]]
                 [--tap ID] [--workers N] [--metrics-port P]

One worker runs in this process; with --workers N > 1, N forked processes share the
user plane through PACKET_FANOUT and send event lines and counters back here,
where the output, the detector sender and the metrics live.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import queue
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from mec_common.cli import EXIT_BAD_INPUT, SubParsers
from upf_tap.capture.common import CaptureError
from upf_tap.capture.ring import DEFAULT_RING_MB, have_capture_privilege
from upf_tap.constants import DEFAULT_SPOOL_FSYNC, DEFAULT_SPOOL_MAX_BYTES, MIN_SPOOL_MAX_BYTES
from upf_tap.events import to_json_line
from upf_tap.live.metrics import MetricsServer, Snapshot
from upf_tap.live.sender import (
    DEFAULT_BATCH_MAX,
    DEFAULT_LINGER,
    DEFAULT_MAX_QUEUE,
    DetectorSender,
    SenderError,
    events_url,
    loss_reason,
    tls_context,
)
from upf_tap.live.spool import FSYNC_POLICIES, Spool, SpoolError
from upf_tap.live.worker import CaptureSpec, Worker, kept_sockets
from upf_tap.options import add_pipeline_options, print_counters, tap_config
from upf_tap.output import stdout_text
from upf_tap.pipeline import quiet_gc

if TYPE_CHECKING:
    import multiprocessing.process
    import multiprocessing.queues
    import multiprocessing.synchronize

    from upf_tap.pipeline import TapConfig

    # what a worker process tells the parent: (kind, worker id, data)
    WorkerQueue = multiprocessing.queues.Queue[tuple[str, int, Any]]

MAX_WORKERS = 64
READY_TIMEOUT = 15.0   # seconds for workers to open their rings
STOP_TIMEOUT = 15.0    # seconds for workers to drain after stop
TICK = 1.0             # seconds between counter snapshots
EVENT_FLUSH = 256      # a worker sends its event lines to the parent in batches of this many

# tap counters that are not drops
_NOT_DROPS = ("packets", "bytes", "flows.", "events.")


def _err(msg: str) -> None:
    print(f"upf-tap live: {msg}", file=sys.stderr, flush=True)


def add_live_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Add the `live` subcommand to upf-tap's subparsers (upf_tap.cli runs it with run_live)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "live", help="capture live on interfaces (AF_PACKET) and print or send AppEvents",
        description="Capture on one or more interfaces with AF_PACKET and a TPACKET_V3 ring, filter in "
                    "the kernel (classic BPF), decode exactly as `upf-tap read` does, and print AppEvents "
                    "as JSON lines or POST them to a detector. Needs root or CAP_NET_RAW "
                    "(+CAP_NET_ADMIN for --promisc). SIGINT/SIGTERM drain and exit 0.")
    p.add_argument("--iface", action="append", required=True, metavar="IF",
                   help="interface to capture on (repeat for several, e.g. N3 and N4)")
    p.add_argument("--netns", metavar="NAME",
                   help="open the capture sockets in this network namespace (an `ip netns` name), "
                        "e.g. the UPF's, while the tap itself stays here")
    p.add_argument("--duration", type=float, metavar="S", help="stop cleanly after S seconds")
    p.add_argument("--detector", metavar="URL",
                   help="POST NDJSON batches to this detector (base URL or full /v1/events URL)")
    p.add_argument("--token-file", metavar="F", help="file holding the detector's bearer token")
    p.add_argument("--detector-ca", metavar="PEM",
                   help="verify an https:// detector's certificate against this CA bundle (PEM) instead "
                        "of the system trust store; the host name is checked either way")
    p.add_argument("--spool", metavar="DIR",
                   help="keep events for the detector on disk in DIR until it acknowledges them: nothing "
                        "is lost while it is down or when the tap restarts (kill -9 included); a restart "
                        "with the same DIR sends what is left")
    p.add_argument("--spool-max-bytes", default=_size_text(DEFAULT_SPOOL_MAX_BYTES), metavar="SIZE",
                   help="most disk the spool takes, e.g. 512M, 4G; when full, new events are refused "
                        f"and counted (default {_size_text(DEFAULT_SPOOL_MAX_BYTES)})")
    p.add_argument("--spool-fsync", choices=FSYNC_POLICIES, default=DEFAULT_SPOOL_FSYNC,
                   help="batch: fsync every batch written to the spool before it is sent, survives a "
                        "power loss; never: leave it to the kernel, survives a crash of the tap only "
                        f"(default {DEFAULT_SPOOL_FSYNC})")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="capture processes sharing the traffic by PACKET_FANOUT (default 1)")
    p.add_argument("--metrics-port", type=int, metavar="P", help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-addr", default="0.0.0.0", metavar="ADDR",
                   help="address for --metrics-port (default 0.0.0.0)")
    p.add_argument("--ring-mb", type=int, default=DEFAULT_RING_MB, metavar="MB",
                   help=f"capture ring size per interface and worker (default {DEFAULT_RING_MB})")
    p.add_argument("--promisc", action="store_true", help="put the interfaces in promiscuous mode")
    p.add_argument("--report-every", type=float, default=5.0, metavar="S",
                   help="seconds between counter reports on stderr (default 5)")
    p.add_argument("--queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                   help=f"events held for the detector before the oldest are dropped (default {DEFAULT_MAX_QUEUE})")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH_MAX, metavar="N",
                   help=f"events per POST (default {DEFAULT_BATCH_MAX})")
    p.add_argument("--linger", type=float, default=DEFAULT_LINGER, metavar="S",
                   help=f"wait up to S seconds for a batch to fill (default {DEFAULT_LINGER})")
    add_pipeline_options(p)
    return p


_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of ``1073741824``, ``64K``, ``512M``, ``1G``, ``1GiB`` (binary units); ValueError."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a size: {text!r}")
    return int(m[1]) << (10 * " kmgt".index(m[2].lower() or " "))


def _size_text(n: int) -> str:
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _validate_detector(args: argparse.Namespace) -> str | None:
    """The detector and spool options' part of ``_validate``."""
    if args.detector and not args.token_file:
        return "--detector needs --token-file"
    if args.token_file and not args.detector:
        return "--token-file without --detector"
    for opt in ("detector_ca", "spool"):
        if getattr(args, opt) is not None and not args.detector:
            return f"--{opt.replace('_', '-')} needs --detector"
    if args.detector:
        try:
            url = events_url(args.detector)
        except SenderError as e:
            return str(e)
        if args.detector_ca is not None and url.scheme != "https":
            return "--detector-ca needs an https:// --detector URL"
    try:
        max_bytes = parse_size(args.spool_max_bytes)
    except ValueError:
        return f"--spool-max-bytes must be a size such as 512M or 4G: {args.spool_max_bytes!r}"
    if max_bytes < MIN_SPOOL_MAX_BYTES:
        return f"--spool-max-bytes must be at least {_size_text(MIN_SPOOL_MAX_BYTES)}"
    return None


def _validate(args: argparse.Namespace) -> str | None:
    """One-line reason the arguments are unusable, or None."""
    if not 1 <= args.workers <= MAX_WORKERS:
        return f"--workers must be 1..{MAX_WORKERS}"
    if args.duration is not None and not args.duration > 0:
        return "--duration must be positive"
    if args.ring_mb < 2:
        return "--ring-mb must be at least 2"
    if not args.report_every > 0:
        return "--report-every must be positive"
    if args.queue < 1 or args.batch < 1:
        return "--queue and --batch must be positive"
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        return "--metrics-port must be 0..65535"
    if len(set(args.iface)) != len(args.iface):
        return "an interface is given twice"
    return _validate_detector(args)


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SenderError(f"cannot read token file {path}: {e}") from e
    if not token or any(c.isspace() for c in token):
        raise SenderError(f"token file {path} must hold one token")
    return token


class Totals:
    """The latest counters of every worker, summed for reports and metrics."""

    def __init__(self, workers: int) -> None:
        self.per_worker: list[dict[str, Any]] = [{} for _ in range(workers)]
        self.snapshot = Snapshot(workers=workers)  # replaced whole on each update (read by the metrics thread)

    def update(self, wid: int, counters: dict[str, Any], sender: DetectorSender | None) -> None:
        self.per_worker[wid] = counters
        s = Snapshot(workers=len(self.per_worker))
        for c in self.per_worker:
            for iface, (frames, nbytes, kpk, kdr) in c.get("ifaces", {}).items():
                s.packets[iface] += frames
                s.bytes[iface] += nbytes
                s.kernel_packets[iface] += kpk
                s.kernel_drops[iface] += kdr
            for k, v in c.get("tap", {}).items():
                if k.startswith("events."):
                    s.events[k[7:]] += v
                elif k == "flows.active":
                    s.flows += v
                elif not k.startswith(_NOT_DROPS):
                    s.drops[k] += v
        if sender is not None:
            s.sender = sender.counters()
            for k, v in s.sender.items():
                reason = loss_reason(k)
                if reason is not None:
                    s.drops[reason] += v
        s.sessions = max(0, s.events["session.up"] - s.events["session.down"])
        self.snapshot = s

    def tap_counters(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for c in self.per_worker:
            out.update(c.get("tap", {}))
        return out

    def line(self, elapsed: float) -> str:
        s = self.snapshot
        pk = sum(s.packets.values())
        line = (f"{pk} packets ({pk / elapsed if elapsed > 0 else 0:,.0f}/s), "
                f"{sum(s.bytes.values())} bytes, kernel drops {sum(s.kernel_drops.values())}, "
                f"events {sum(s.events.values())}, tap drops {sum(s.drops.values())}")
        if s.sender:
            line += f", sent {s.sender.get('sent', 0)}"
        if "spool.spooled" in s.sender:
            line += (f", spooled {s.sender['spool.spooled']} ({s.sender['spool.pending_bytes']} bytes "
                     f"unacknowledged)")
        return line


class _Stop:
    """Set by SIGINT/SIGTERM or the --duration deadline."""

    def __init__(self, duration: float | None) -> None:
        self.flag = False
        self.deadline = time.monotonic() + duration if duration else float("inf")

    def __call__(self) -> bool:
        if not self.flag and time.monotonic() >= self.deadline:
            self.flag = True
        return self.flag

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.flag = True


def run_live(args: argparse.Namespace) -> int:
    reason = _validate(args)
    if reason:
        _err(reason)
        return EXIT_BAD_INPUT
    kept_sockets()  # ring sockets a supervisor kept for us (LISTEN_FDS): read before any worker forks
    quiet_gc()
    try:
        cfg = tap_config(args)
        token = _read_token(args.token_file) if args.detector else ""
        if args.detector_ca is not None:
            tls_context(args.detector_ca)  # a bad CA file fails here, in one line, before any capture
    except (ValueError, SenderError) as e:
        _err(str(e))
        return EXIT_BAD_INPUT
    try:
        from upf_tap.pipeline import Tap

        # A throw-away tap: a bad identity file fails here, in one line, and the decoders
        # (pycrate's NGAP takes about a second) are imported once, before workers fork.
        Tap(cfg, lambda ev: None).start_control()
    except ValueError as e:
        _err(str(e))
        return EXIT_BAD_INPUT
    if not have_capture_privilege():
        _err("capturing needs root or CAP_NET_RAW (e.g. setcap cap_net_raw,cap_net_admin+ep on the python binary)")
        return EXIT_BAD_INPUT
    spec = CaptureSpec(ifaces=tuple(args.iface), point=cfg.point, gtpu_ports=tuple(cfg.gtpu_ports),
                       control_plane=cfg.control_plane, workers=args.workers,
                       group_id=(os.getpid() * 7 + 0x4D45) & 0xFFFF, ring_mb=args.ring_mb,
                       promisc=args.promisc, netns=args.netns)
    stop = _Stop(args.duration)
    old = {s: signal.signal(s, stop.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.workers == 1:
            return _run_inline(args, spec, cfg, token, stop)
        return _run_workers(args, spec, cfg, token, stop)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _make_sender(args: argparse.Namespace, token: str) -> DetectorSender | None:
    """The detector sender (not started) with its spool if asked; SenderError/SpoolError."""
    if not args.detector:
        return None
    spool = Spool(args.spool, max_bytes=parse_size(args.spool_max_bytes), fsync=args.spool_fsync,
                  warn=_err) if args.spool else None
    try:
        return DetectorSender(args.detector, token, max_queue=args.queue, batch_max=args.batch,
                              linger=args.linger, ca_file=args.detector_ca, spool=spool, warn=_err)
    except BaseException:
        if spool is not None:
            spool.close()
        raise


class _Output:
    """Where event lines go: stdout (JSON lines) or the detector sender."""

    def __init__(self, sender: DetectorSender | None) -> None:
        self.sender = sender
        self.out: TextIO | None = None
        self.broken = False
        if sender is None:
            self.out = stdout_text()

    def start(self) -> None:
        if self.sender is not None:
            self.sender.start()

    def line(self, text: str) -> None:
        if self.sender is not None:
            self.sender.put_line(text.encode() + b"\n")
        elif self.out is not None and not self.broken:
            try:
                self.out.write(text + "\n")
            except BrokenPipeError:
                self.broken = True

    def event(self, ev: dict[str, Any]) -> None:
        self.line(to_json_line(ev))

    def flush(self) -> None:
        if self.out is not None and not self.broken:
            try:
                self.out.flush()
            except BrokenPipeError:
                self.broken = True

    def close(self) -> None:
        self.flush()
        if self.sender is not None:
            self.sender.close()
        if isinstance(self.out, io.TextIOWrapper) and not self.broken:
            try:
                inner = self.out.detach()  # leave sys.stdout's buffer open for whoever called us
                if isinstance(inner, io.BufferedWriter) and inner is not getattr(sys.stdout, "buffer", None):
                    inner.detach()  # ours (see upf_tap.output): flushed, and the raw stdout left open
            except (BrokenPipeError, ValueError):
                pass


def _start_metrics(args: argparse.Namespace, totals: Totals) -> MetricsServer | None:
    if args.metrics_port is None:
        return None
    try:
        m = MetricsServer(args.metrics_addr, args.metrics_port, lambda: totals.snapshot).start()
    except OSError as e:
        raise CaptureError(f"cannot serve metrics on {args.metrics_addr}:{args.metrics_port}: {e}") from e
    _err(f"metrics on http://{args.metrics_addr}:{m.port}/metrics")
    return m


def _final_report(totals: Totals, elapsed: float, out: _Output) -> None:
    _err(f"done in {elapsed:.1f} s: {totals.line(elapsed)}")
    if len(totals.per_worker) > 1:
        _err("packets per worker: " + ", ".join(str(c.get("tap", {}).get("packets", 0))
                                               for c in totals.per_worker))
    c = dict(sorted(totals.tap_counters().items()))
    s = totals.snapshot
    c["kernel.packets"] = sum(s.kernel_packets.values())
    c["kernel.drops"] = sum(s.kernel_drops.values())
    if out.sender is not None:
        for k, v in sorted(out.sender.counters().items()):
            c[f"sender.{k}"] = v
    print_counters(c)
    sys.stderr.flush()


def _describe(spec: CaptureSpec) -> str:
    return (f"capturing on {','.join(spec.ifaces)} (point {spec.point}, {spec.workers} worker"
            f"{'s' if spec.workers > 1 else ''}, ring {spec.ring_mb} MiB)")


def _run_inline(args: argparse.Namespace, spec: CaptureSpec, cfg: TapConfig, token: str, stop: _Stop) -> int:
    try:
        out = _Output(_make_sender(args, token))
    except (SenderError, SpoolError) as e:
        _err(str(e))
        return EXIT_BAD_INPUT
    totals = Totals(1)
    try:
        worker = Worker(spec, 0, cfg, out.event)
    except CaptureError as e:
        out.close()
        _err(str(e))
        return EXIT_BAD_INPUT
    metrics = None
    t0 = time.monotonic()
    try:
        try:
            metrics = _start_metrics(args, totals)
        except CaptureError as e:
            _err(str(e))
            return EXIT_BAD_INPUT
        out.start()
        _err(_describe(spec))
        next_report = t0 + args.report_every

        def tick() -> None:
            nonlocal next_report
            totals.update(0, worker.counters(), out.sender)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + args.report_every
                _err(totals.line(time.monotonic() - t0))

        def after_round() -> None:
            out.flush()
            if out.broken:
                stop.flag = True  # nobody reads stdout any more

        if out.sender is not None and out.sender.spool is not None:
            worker.hold_until_durable(out.sender.sync)  # ring blocks back only once their events are spooled
        worker.run(stop, tick, TICK, after_round)
        totals.update(0, worker.counters(), out.sender)
    finally:
        out.close()
        if metrics is not None:
            metrics.close()
        worker.close()
    if out.sender is not None:
        totals.update(0, totals.per_worker[0], out.sender)
    _final_report(totals, time.monotonic() - t0, out)
    return 0


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """End this worker when its parent dies, kill -9 included: nobody is left to take its events,
    and an orphan would go on capturing and keep the parent's pipes open."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the parent stops its workers itself
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def _worker_main(spec: CaptureSpec, wid: int, cfg: TapConfig, q: WorkerQueue,
                 stop_ev: multiprocessing.synchronize.Event, parent: int) -> None:
    """Entry of a forked worker: capture, send event lines and counters to the parent."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, lambda *_: stop_ev.set())
    batch: list[str] = []

    def emit(ev: dict[str, Any]) -> None:
        batch.append(to_json_line(ev))
        if len(batch) >= EVENT_FLUSH:
            flush()

    def flush() -> None:
        if batch:
            q.put(("ev", wid, batch.copy()))
            batch.clear()

    try:
        worker = Worker(spec, wid, cfg, emit)
    except CaptureError as e:
        q.put(("error", wid, str(e)))
        return
    except Exception as e:  # a broken worker must say so, not hang the parent
        q.put(("error", wid, f"{type(e).__name__}: {e}"))
        return
    q.put(("ready", wid, None))
    try:
        worker.run(stop_ev.is_set, lambda: q.put(("stats", wid, worker.counters())), TICK, flush)
        flush()
        q.put(("done", wid, worker.counters()))
    except Exception as e:
        q.put(("error", wid, f"{type(e).__name__}: {e}"))
    finally:
        worker.close()
        q.close()
        q.join_thread()


def _stop_workers(procs: Sequence[multiprocessing.process.BaseProcess],
                  stop_ev: multiprocessing.synchronize.Event) -> None:
    stop_ev.set()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=2)


def _run_workers(args: argparse.Namespace, spec: CaptureSpec, cfg: TapConfig, token: str, stop: _Stop) -> int:
    ctx = mp.get_context("fork")
    q: WorkerQueue = ctx.Queue()
    stop_ev = ctx.Event()
    procs = [ctx.Process(target=_worker_main, args=(spec, wid, cfg, q, stop_ev, os.getpid()),
                         name=f"upf-tap-w{wid}", daemon=True) for wid in range(spec.workers)]
    for p in procs:
        p.start()  # fork before any thread of ours exists (sender, metrics), and before the spool is open
    try:
        out = _Output(_make_sender(args, token))
    except (SenderError, SpoolError) as e:
        _stop_workers(procs, stop_ev)
        _err(str(e))
        return EXIT_BAD_INPUT
    totals = Totals(spec.workers)
    metrics = None
    ready: set[int] = set()
    done: set[int] = set()
    failed: str | None = None
    t0 = time.monotonic()
    try:
        # wait for every worker to open its rings
        limit = time.monotonic() + READY_TIMEOUT
        while len(ready) < spec.workers and failed is None:
            try:
                kind, wid, data = q.get(timeout=max(0.05, limit - time.monotonic()))
            except queue.Empty:
                failed = "workers did not start in time"
                break
            if kind == "ready":
                ready.add(wid)
            elif kind == "error":
                failed = data
        if failed is not None:
            _err(failed)
            return EXIT_BAD_INPUT
        try:
            metrics = _start_metrics(args, totals)
        except CaptureError as e:
            _err(str(e))
            return EXIT_BAD_INPUT
        out.start()
        _err(_describe(spec))
        next_report = time.monotonic() + args.report_every
        stop_limit = float("inf")
        while len(done) < spec.workers:
            if stop() and not stop_ev.is_set():
                stop_ev.set()
                stop_limit = time.monotonic() + STOP_TIMEOUT
            if time.monotonic() > stop_limit:
                _err(f"{spec.workers - len(done)} worker(s) did not finish in time")
                break
            try:
                kind, wid, data = q.get(timeout=0.2)
            except queue.Empty:
                if not stop_ev.is_set() and not all(p.is_alive() for p in procs):
                    _err("a worker died; stopping")
                    stop.flag = True
                continue
            if kind == "ev":
                for line in data:
                    out.line(line)
                out.flush()
                if out.broken:
                    stop.flag = True
            elif kind in ("stats", "done"):
                totals.update(wid, data, out.sender)
                if kind == "done":
                    done.add(wid)
            elif kind == "error":
                _err(f"worker {wid}: {data}")
                done.add(wid)
                stop.flag = True
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + args.report_every
                _err(totals.line(time.monotonic() - t0))
    finally:
        _stop_workers(procs, stop_ev)
        out.close()
        if metrics is not None:
            metrics.close()
    totals.update(0, totals.per_worker[0], out.sender)
    _final_report(totals, time.monotonic() - t0, out)
    return 0
