"""The on-disk spool between the tap and the detector: order, torn tails, bounds, restarts.

The Spool is used for real (files in tmp_path); the sender's tests POST to a real HTTP
server on loopback that can be stopped and started again on the same port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mec_common.ports import free_port
from upf_tap.live.metrics import Snapshot, render
from upf_tap.live.sender import DetectorSender, loss_reason
from upf_tap.live.spool import FRAME, HEADER, MAGIC, Position, Spool, SpoolError, frame

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")
TOKEN = "spool-token"


# -- helpers shared with test_spool_kill.py and test_sender_tls.py -------------------------
class Receiver:
    """A /v1/events endpoint on a fixed port that records every line it accepts, in arrival
    order; ``stop`` also cuts kept-alive connections, so a stopped receiver is really down."""

    def __init__(self, port: int, *, delay: float = 0.0, ssl_context: Any = None) -> None:
        self.port = port
        self.delay = delay
        self.ssl_context = ssl_context
        self.lines: list[str] = []
        self.auth: set[str] = set()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def ids(self) -> list[str]:
        with self._lock:
            return [json.loads(x)["id"] for x in self.lines]

    def start(self) -> Receiver:
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with rx._lock:
                    rx._conns.add(self.connection)

            def finish(self) -> None:
                with rx._lock:
                    rx._conns.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if rx.delay:
                    time.sleep(rx.delay)
                with rx._lock:
                    rx.auth.add(self.headers.get("Authorization", ""))
                    rx.lines.extend(body.decode().splitlines())
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        if self.ssl_context is not None:
            httpd.socket = self.ssl_context.wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._httpd = httpd
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd = None
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def line(i: int) -> bytes:
    """Event line i: the same length for every i < 10**6, so byte bounds are exact."""
    ev = {"id": f"ev-{i:06d}", "kind": "dns.query", "seq": i, "pad": "-" * (6 - len(str(i)))}
    return json.dumps(ev, separators=(",", ":")).encode() + b"\n"


REC = FRAME + len(line(0))  # bytes one record takes


def seqs(lines: list[bytes] | list[str]) -> list[int]:
    return [json.loads(x)["seq"] for x in lines]


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def drain(sp: Spool, chunk: int = 7) -> list[bytes]:
    """Read and commit everything readable, ``chunk`` lines at a time."""
    out: list[bytes] = []
    while True:
        b = sp.read(chunk)
        if not b.lines and b.end == b.start:
            return out
        out.extend(b.lines)
        sp.commit(b.end)


# -- order ---------------------------------------------------------------------------------
def test_order_across_segments_and_restarts(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    sp = Spool(d, segment_bytes=HEADER + 5 * REC)  # five records a segment
    assert sp.append([line(i) for i in range(12)]) == 12
    assert sp.append([line(i) for i in range(12, 23)]) == 11
    assert len(segments(d)) == 5
    got = drain_n(sp, 8)  # part of the way, into the second segment
    sp.close()

    sp = Spool(d, segment_bytes=HEADER + 5 * REC)  # a restart resumes after what was committed
    sp.append([line(i) for i in range(23, 40)])
    got += drain_n(sp, 13)
    sp.close()

    sp = Spool(d, segment_bytes=HEADER + 5 * REC)
    got += drain(sp)
    assert seqs(got) == list(range(40))  # each once, in order
    assert sp.counters()["pending_bytes"] == 0
    assert len(segments(d)) == 1  # acknowledged segments are deleted; the head stays
    sp.close()


def drain_n(sp: Spool, n: int) -> list[bytes]:
    b = sp.read(n)
    assert len(b.lines) == n
    sp.commit(b.end)
    return b.lines


def test_uncommitted_batch_is_read_again_after_a_restart(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append([line(i) for i in range(10)])
    sp.commit(sp.read(4).end)
    assert seqs(sp.read(3).lines) == [4, 5, 6]  # read, never acknowledged
    sp.close()
    sp = Spool(tmp_path)
    assert seqs(sp.read(100).lines) == list(range(4, 10))
    sp.close()


# -- torn tails and corruption ----------------------------------------------------------------
def _ten_records(d: Path) -> Path:
    sp = Spool(d)
    sp.append([line(i) for i in range(10)])
    sp.close()
    (seg,) = segments(d)
    assert seg.stat().st_size == HEADER + 10 * REC
    return seg


@pytest.mark.parametrize("tear", ["short_payload", "bad_checksum", "half_header", "zeros"])
def test_torn_tail_is_cut_counted_and_earlier_records_kept(tmp_path: Path, tear: str) -> None:
    seg = _ten_records(tmp_path)
    data = bytearray(seg.read_bytes())
    if tear == "short_payload":  # the last write cut short by a crash
        data = data[:-3]
        cut = REC - 3
    elif tear == "bad_checksum":  # the last record's bytes not all on disk
        data[-5] ^= 0xFF
        cut = REC
    elif tear == "half_header":  # an eleventh record begun
        data += frame(line(10))[:5]
        cut = 5
    else:  # a power loss can leave zeros where the last block was
        data += bytes(300)
        cut = 300
    seg.write_bytes(bytes(data))
    warnings: list[str] = []
    sp = Spool(tmp_path, warn=warnings.append)
    c = sp.counters()
    assert (c["torn_tails"], c["torn_bytes"]) == (1, cut)
    assert any("torn record" in w for w in warnings)
    kept = 10 if tear in ("half_header", "zeros") else 9
    assert seg.stat().st_size == HEADER + kept * REC  # truncated at the last whole record
    sp.append([line(99)])  # appends go on after the cut
    assert seqs(sp.read(100).lines) == [*range(kept), 99]
    sp.close()


def test_torn_tail_of_an_older_segment_is_skipped_and_reading_goes_on(tmp_path: Path) -> None:
    sp = Spool(tmp_path, segment_bytes=HEADER + 4 * REC)
    sp.append([line(i) for i in range(10)])  # segments of 4, 4 and 2 records
    sp.close()
    first = segments(tmp_path)[0]
    first.write_bytes(first.read_bytes()[:-10])  # as a power loss with fsync "never" can leave it
    sp = Spool(tmp_path, segment_bytes=HEADER + 4 * REC)
    got = drain(sp)
    assert seqs(got) == [0, 1, 2, *range(4, 10)]
    assert (sp.stats["torn_tails"], sp.stats["torn_bytes"], sp.stats["corrupt"]) == (1, REC - 10, 0)
    sp.close()


def test_corrupt_record_in_an_older_segment_skips_the_rest_of_it(tmp_path: Path) -> None:
    sp = Spool(tmp_path, segment_bytes=HEADER + 4 * REC)
    sp.append([line(i) for i in range(10)])
    sp.close()
    first = segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[HEADER + REC + FRAME + 3] ^= 0x01  # a flipped bit in record 1's payload
    first.write_bytes(bytes(data))
    warnings: list[str] = []
    sp = Spool(tmp_path, segment_bytes=HEADER + 4 * REC, warn=warnings.append)
    assert seqs(drain(sp)) == [0, *range(4, 10)]
    assert sp.stats["corrupt"] == 1 and sp.stats["torn_tails"] == 0
    assert any("fails its checksum" in w for w in warnings)
    sp.close()


def test_a_segment_cut_in_its_header_is_restarted(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append([line(0)])
    sp.close()
    (tmp_path / "0000000000000002.seg").write_bytes(MAGIC[:3])  # a crash right after creating it
    sp = Spool(tmp_path)
    assert sp.stats["torn_tails"] == 1
    sp.append([line(1)])
    assert seqs(drain(sp)) == [0, 1]
    sp.close()


def test_a_foreign_file_is_refused_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "0000000000000001.seg").write_bytes(b"not a spool at all\n")
    with pytest.raises(SpoolError, match="not a spool segment"):
        Spool(tmp_path)
    assert (tmp_path / "0000000000000001.seg").read_bytes() == b"not a spool at all\n"


def test_one_process_at_a_time(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    with pytest.raises(SpoolError, match="in use by another process"):
        Spool(tmp_path)
    sp.close()
    Spool(tmp_path).close()  # free again once closed


# -- bounds --------------------------------------------------------------------------------
def test_full_spool_refuses_and_counts_each_event(tmp_path: Path) -> None:
    warnings: list[str] = []
    sp = Spool(tmp_path, max_bytes=HEADER + 10 * REC, warn=warnings.append)
    assert sp.append([line(i) for i in range(6)]) == 6
    assert sp.append([line(i) for i in range(6, 25)]) == 4
    assert sp.append([line(i) for i in range(25, 28)]) == 0
    assert sp.stats["refused"] == 15 + 3 and sp.stats["spooled"] == 10
    assert sp.bytes_on_disk() == HEADER + 10 * REC <= sp.max_bytes
    assert sum(p.stat().st_size for p in segments(tmp_path)) == sp.bytes_on_disk()
    assert len(warnings) == 1 and "is full" in warnings[0] and "refusing new events" in warnings[0]
    assert seqs(drain(sp)) == list(range(10))  # the oldest stay; what did not fit was refused
    # once all is acknowledged the room is reused, even in a spool of one segment
    assert sp.append([line(i) for i in range(100, 110)]) == 10
    assert seqs(drain(sp)) == list(range(100, 110))
    assert sp.stats["refused"] == 18
    sp.close()


def test_bound_holds_across_segments(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=3 * (HEADER + 4 * REC), segment_bytes=HEADER + 4 * REC)
    assert sp.append([line(i) for i in range(20)]) == 12
    assert sp.stats["refused"] == 8 and len(segments(tmp_path)) == 3
    sp.commit(sp.read(4).end)  # the first segment acknowledged: deleted, room for one more
    assert len(segments(tmp_path)) == 2
    assert sp.append([line(i) for i in range(20, 26)]) == 4
    assert seqs(drain(sp)) == [*range(4, 12), *range(20, 24)]
    sp.close()


def test_metrics_show_the_sender_and_the_spool() -> None:
    text = render(Snapshot(sender={"sent": 7, "posts": 2, "retries": 1, "tls_errors": 3, "spool.spooled": 9,
                                   "spool.torn_tails": 1, "spool.corrupt": 0, "spool.bytes": 4096,
                                   "spool.pending_bytes": 120}))
    for sample in ("upf_tap_sender_events_sent_total 7", "upf_tap_sender_tls_errors_total 3",
                   "upf_tap_spool_events_total 9", "upf_tap_spool_torn_tails_total 1", "upf_tap_spool_bytes 4096",
                   "upf_tap_spool_pending_bytes 120", "# TYPE upf_tap_spool_bytes gauge"):
        assert sample in text
    assert "upf_tap_spool" not in render(Snapshot())  # no sender, no sender families
    assert loss_reason("spool.refused") == "sender.spool.refused"
    assert loss_reason("dropped_queue_full") == "sender.queue_full"
    assert loss_reason("spool.spooled") is None and loss_reason("sent") is None


# -- the sender with a spool, against a real HTTP server ----------------------------------------
def spooled_sender(port: int, d: Path, warn: Callable[[str], None] = lambda m: None, **spool_kw: Any) -> DetectorSender:
    return DetectorSender(f"http://127.0.0.1:{port}", TOKEN, batch_max=100, backoff_initial=0.02,
                          backoff_max=0.1, spool=Spool(d, warn=warn, **spool_kw), warn=warn).start()


def test_detector_down_long_events_go_to_disk_not_memory(tmp_path: Path) -> None:
    port = free_port()
    s = spooled_sender(port, tmp_path)
    n = 20_000
    for i in range(n):
        s.put_line(line(i))
    wait_for(lambda: s.counters()["spool.spooled"] == n, what="everything spooled")
    c = s.counters()
    assert s.queued() == 0  # nothing waits in memory
    assert c["spool.bytes"] == c["spool.segments"] * HEADER + n * REC
    assert c["sent"] == 0 and c["retries"] >= 1 and c["dropped_queue_full"] == 0
    rx = Receiver(port).start()
    try:
        wait_for(lambda: len(rx.lines) >= n, what="everything delivered")
        s.close(5.0)
    finally:
        rx.stop()
    assert seqs(rx.lines) == list(range(n))  # each once, in order
    assert rx.auth == {f"Bearer {TOKEN}"}
    assert c["spool.refused"] == 0 and s.counters()["sent"] == n


def test_full_spool_through_the_sender_counts_refused_exactly(tmp_path: Path) -> None:
    port = free_port()
    warnings: list[str] = []
    s = spooled_sender(port, tmp_path, warnings.append, max_bytes=HEADER + 10 * REC)
    for i in range(25):
        s.put_line(line(i))
    wait_for(lambda: s.counters()["spool.spooled"] + s.counters()["spool.refused"] == 25, what="spooled")
    assert (s.counters()["spool.spooled"], s.counters()["spool.refused"]) == (10, 15)
    assert any("is full" in w for w in warnings)
    rx = Receiver(port).start()
    try:
        wait_for(lambda: len(rx.lines) == 10, what="delivery")
        s.close(5.0)
    finally:
        rx.stop()
    assert seqs(rx.lines) == list(range(10))


def test_close_keeps_what_is_not_acknowledged_for_the_next_start(tmp_path: Path) -> None:
    port = free_port()
    warnings: list[str] = []
    s = spooled_sender(port, tmp_path, warnings.append)
    for i in range(300):
        s.put_line(line(i))
    s.close(0.3)  # the detector never came up
    c = s.counters()
    assert c["dropped_shutdown"] == 0 and c["spool.spooled"] == 300 and c["spool.pending_bytes"] == 300 * REC
    assert any("stay in the spool" in w for w in warnings)
    rx = Receiver(port).start()
    try:
        s2 = spooled_sender(port, tmp_path)
        for i in range(300, 350):
            s2.put_line(line(i))
        wait_for(lambda: len(rx.lines) >= 350, what="delivery after the restart")
        s2.close(5.0)
    finally:
        rx.stop()
    assert seqs(rx.lines) == list(range(350))
    assert s2.counters()["spool.pending_bytes"] == 0


# -- the command line -----------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "msg"), [
    (["--spool", "/tmp/x"], "--spool needs --detector"),
    (["--detector", "http://127.0.0.1:1", "--token-file", "TOKEN", "--spool-max-bytes", "12Q"],
     "--spool-max-bytes must be a size"),
    (["--detector", "http://127.0.0.1:1", "--token-file", "TOKEN", "--spool-max-bytes", "1K"],
     "--spool-max-bytes must be at least 64K"),
    (["--detector", "http://127.0.0.1:1", "--token-file", "TOKEN", "--spool-fsync", "sometimes"],
     "invalid choice"),
])
def test_bad_spool_options_exit_2(tmp_path: Path, args: list[str], msg: str) -> None:
    token = tmp_path / "token"
    token.write_text("tok\n")
    args = [str(token) if a == "TOKEN" else a for a in args]
    res = subprocess.run([PYTHON, "-m", "upf_tap", "live", "--iface", "lo", *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 2
    assert msg in res.stderr.strip().splitlines()[-1], res.stderr


@pytest.mark.root
def test_spool_in_use_exit_2(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok\n")
    held = Spool(tmp_path / "spool")
    try:
        res = subprocess.run([PYTHON, "-m", "upf_tap", "live", "--iface", "lo", "--no-control", "--detector",
                              "http://127.0.0.1:1", "--token-file", str(token), "--spool", str(tmp_path / "spool")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        held.close()
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"upf-tap live: spool {tmp_path / 'spool'} is in use by another process"]


def test_parse_size() -> None:
    from upf_tap.live.command import parse_size

    assert parse_size("1G") == parse_size("1GiB") == parse_size("1gb") == 1 << 30
    assert parse_size("512M") == 512 << 20 and parse_size("65536") == 65536 and parse_size("64k") == 65536
    for bad in ("", "1.5G", "G", "-1", "1X"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_position_order() -> None:
    assert Position(1, 500) < Position(2, HEADER) < Position(2, HEADER + 1)
