"""DetectorSender: batches AppEvents as NDJSON POSTs to the detector's /v1/events.

Capture must never wait for the network, so ``put`` only appends to a bounded
in-memory queue; a background thread POSTs batches over one keep-alive
connection with ``Authorization: Bearer``. While the detector is down (connection
errors, or the answers ``mec_common.http.is_retryable`` names: 404/408/409/429/5xx)
the same batch is retried with exponential backoff (honouring Retry-After) and new
events queue up; when the queue is full the *oldest* event is dropped and counted,
with a rate-limited warning on stderr. Other 4xx answers mean the batch itself is bad:
it is dropped, counted, warned.

With a ``Spool`` (``upf-tap live --spool DIR``, see ``upf_tap/live/spool.py``) nothing
waits in memory for the detector: a writer thread appends what ``put`` queued to the
spool on disk, and the sending thread reads batches from the spool in order, POSTs
them and commits each one only after a 2xx. A detector down for long makes the spool
grow (to its bound; then new events are refused, counted and warned about) while
memory stays bounded, and what is not acknowledged at exit, or at a crash, is sent by
the next start with the same spool. Re-sending the batch that was in flight is fine:
AppEvent ids are stable and the detector dedupes them.

TLS: an https URL is verified against the CA bundle given (``ca_file``, PEM) or the
system trust store, host name checked (``tls_context``). A failed handshake (a
certificate not signed by that CA, a name mismatch) is counted in ``tls_errors``,
warned about and retried like a connection error: a certificate fixed on the
detector's side is picked up without restarting the tap.
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from mec_common.http import is_retryable
from upf_tap.constants import WARN_EVERY
from upf_tap.live.spool import LOSSES as SPOOL_LOSSES
from upf_tap.live.spool import Batch, Spool

DEFAULT_MAX_QUEUE = 100_000
DEFAULT_BATCH_MAX = 500
DEFAULT_LINGER = 0.002         # seconds to wait for a batch to fill once one event is queued:
                               # short, as each event may start a function; under load batches
                               # fill anyway while the previous POST is in flight
DEFAULT_BACKOFF_INITIAL = 0.1
DEFAULT_BACKOFF_MAX = 5.0
DEFAULT_TIMEOUT = 10.0
EVENTS_PATH = "/v1/events"
WRITE_BATCH = 4096             # most lines the spool writer appends at once
IDLE_WAIT = 0.5                # seconds the spool reader sleeps when idle (the writer wakes it sooner)
SYNC_TIMEOUT = 1.0             # seconds sync() waits for the spool writer before the capture moves on
SPOOL_ERROR_WAIT = 1.0         # seconds before the spool reader tries again after an I/O error

# DetectorSender.stats keys, all present from the start (read by the main thread while the
# sender threads write); with a spool, counters() adds the spool's as "spool.<name>"
COUNTERS = ("queued", "sent", "posts", "retries", "tls_errors",
            "dropped_queue_full", "dropped_rejected", "dropped_shutdown")


class SenderError(ValueError):
    pass


def events_url(base: str) -> urllib.parse.SplitResult:
    """The detector URL, with /v1/events appended when only a base URL is given."""
    u = urllib.parse.urlsplit(base)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise SenderError(f"detector URL must be http(s)://host[:port][/path]: {base!r}")
    try:
        u.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise SenderError(f"bad port in detector URL: {base!r}") from e
    if u.path in ("", "/"):
        u = u._replace(path=EVENTS_PATH)
    return u


def loss_reason(counter: str) -> str | None:
    """The drop reason (``sender.…``) a key of ``counters()`` counts lost events under, or None."""
    if counter.startswith("dropped_"):
        return f"sender.{counter[8:]}"
    if counter.startswith("spool.") and counter[6:] in SPOOL_LOSSES:
        return f"sender.{counter}"
    return None


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """How the detector's certificate is checked: against ``ca_file`` (a PEM bundle) or, without
    one, the system trust store; the host name must match. SenderError if the file is unusable."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except OSError as e:  # ssl.SSLError too: not PEM, no certificate in it
        raise SenderError(f"cannot load the detector CA file {ca_file}: {e}") from e
    # create_default_context's defaults, spelled out so that nobody relaxes them by accident
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    return ctx


def _warn(msg: str) -> None:
    print(f"upf-tap live: {msg}", file=sys.stderr, flush=True)


class DetectorSender:
    def __init__(self, url: str, token: str, *, max_queue: int = DEFAULT_MAX_QUEUE,
                 batch_max: int = DEFAULT_BATCH_MAX, linger: float = DEFAULT_LINGER,
                 backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
                 backoff_max: float = DEFAULT_BACKOFF_MAX, timeout: float = DEFAULT_TIMEOUT,
                 ca_file: str | None = None, spool: Spool | None = None,
                 warn: Callable[[str], None] = _warn) -> None:
        if max_queue < 1 or batch_max < 1:
            raise SenderError("queue and batch sizes must be positive")
        self.url = events_url(url)
        if ca_file is not None and self.url.scheme != "https":
            raise SenderError(f"a detector CA file is for https:// URLs, not {url!r}")
        self.ssl_context = tls_context(ca_file) if self.url.scheme == "https" else None
        self.target = self.url.path + (f"?{self.url.query}" if self.url.query else "")
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/x-ndjson",
            "Connection": "keep-alive",
        }
        self.max_queue = max_queue
        self.batch_max = batch_max
        self.linger = linger
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.warn = warn
        self.spool = spool  # owned: closed by close()
        self.stats: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self._q: deque[bytes] = deque()
        self._lines_in = 0    # lines put, and lines written to the spool (or dropped): sync() compares them
        self._lines_done = 0
        self._cv = threading.Condition()
        self._stop = False
        self._deadline = float("inf")  # drain deadline once close() is called
        self._last_warn = 0.0
        self._last_tls_warn = -WARN_EVERY
        self._wake = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._started = False
        self._writer: threading.Thread | None = None
        if spool is None:
            self._thread = threading.Thread(target=self._run, name="detector-sender", daemon=True)
        else:
            self._spool_ready = threading.Event()  # set by the writer when it made more lines readable
            self._writer_done = threading.Event()
            self._writer = threading.Thread(target=self._run_writer, args=(spool,), name="spool-writer",
                                            daemon=True)
            self._thread = threading.Thread(target=self._run_spooled, args=(spool,), name="detector-sender",
                                            daemon=True)

    # -- capture side -----------------------------------------------------------
    def start(self) -> DetectorSender:
        self._started = True
        if self._writer is not None:
            self._writer.start()
        self._thread.start()
        return self

    def put(self, event: dict[str, Any]) -> None:
        """Queue one AppEvent; never blocks on the network."""
        self.put_line(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")

    def put_line(self, line: bytes) -> None:
        """Queue one AppEvent already serialised as a JSON line (ending in a newline)."""
        with self._cv:
            self._lines_in += 1
            if len(self._q) >= self.max_queue:
                self._q.popleft()
                self._lines_done += 1  # dropped (counted): nothing left to wait for in sync()
                self.stats["dropped_queue_full"] += 1
                now = time.monotonic()
                if now - self._last_warn >= WARN_EVERY:
                    self._last_warn = now
                    self.warn(f"detector queue full ({self.max_queue} events): dropping the oldest "
                              f"({self.stats['dropped_queue_full']} dropped so far)")
            self._q.append(line)
            self.stats["queued"] += 1
            self._cv.notify()

    def sync(self, timeout: float = SYNC_TIMEOUT) -> bool:
        """Wait until every event put so far is in the spool (written and, with fsync 'batch',
        synced): True then, False after ``timeout`` s or without a spool. The live capture gives
        its ring blocks back only after this, so a kill -9 replays them from a kept ring
        instead of losing the events that were still in memory."""
        if self.spool is None:
            return False
        deadline = time.monotonic() + timeout
        with self._cv:
            target = self._lines_in
            while self._lines_done < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._writer_done.is_set():
                    return self._lines_done >= target
                self._cv.wait(left)
        return True

    def queued(self) -> int:
        """Events waiting in memory (with a spool: not yet written to it)."""
        with self._cv:
            return len(self._q)

    def counters(self) -> dict[str, int]:
        """The sender's counters, and with a spool its counters and gauges as ``spool.<name>``."""
        out = dict(self.stats)
        if self.spool is not None:
            out.update({f"spool.{k}": v for k, v in self.spool.counters().items()})
        return out

    def close(self, drain_timeout: float = 5.0) -> None:
        """Send what is queued (for at most ``drain_timeout`` s), then stop. With a spool, what
        is not sent by then stays in it for the next start."""
        with self._cv:
            self._stop = True
            self._deadline = time.monotonic() + drain_timeout
            self._cv.notify_all()
        self._wake.set()
        if self._writer is not None:
            self._spool_ready.set()
            if self._writer.is_alive():
                self._writer.join(drain_timeout + 1.0)
        if self._thread.is_alive():
            self._thread.join(drain_timeout + self.timeout + 1.0)
        with self._cv:
            left = len(self._q)
            self._q.clear()
        if left:
            self.stats["dropped_shutdown"] += left
            self.warn(f"detector unreachable at exit: {left} queued events dropped")
        if self.spool is not None:
            self._close_spool(self.spool)

    def _close_spool(self, spool: Spool) -> None:
        pending = spool.pending_bytes()
        spool.close()
        if pending and self._started:
            self.warn(f"{pending} bytes of events the detector has not acknowledged stay in the spool "
                      f"{spool.dir}: the next start with this spool sends them")

    # -- sender thread (in memory) --------------------------------------------------
    def _take_batch(self) -> list[bytes] | None:
        with self._cv:
            while not self._q and not self._stop:
                self._cv.wait()
            if not self._q:
                return None
            if len(self._q) < self.batch_max and not self._stop:
                self._cv.wait(self.linger)  # let a burst fill the batch
            n = min(len(self._q), self.batch_max)
            return [self._q.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                break
            if not self._deliver(batch):
                self.stats["dropped_shutdown"] += len(batch)
                break
        if self._conn is not None:
            self._conn.close()

    # -- writer and sender threads (with a spool) -------------------------------------
    def _run_writer(self, spool: Spool) -> None:
        """Move queued lines to the spool, in order, as fast as the disk takes them."""
        try:
            while True:
                with self._cv:
                    while not self._q and not self._stop:
                        self._cv.wait()
                    if not self._q:
                        return
                    lines = [self._q.popleft() for _ in range(min(len(self._q), WRITE_BATCH))]
                spool.append(lines)  # counts what it refuses or cannot write
                with self._cv:
                    self._lines_done += len(lines)
                    self._cv.notify_all()  # sync() waits for this
                self._spool_ready.set()
        finally:
            self._writer_done.set()
            self._spool_ready.set()

    def _run_spooled(self, spool: Spool) -> None:
        """Read batches from the spool in order; POST each; commit it after a 2xx (or a final 4xx)."""
        try:
            while True:
                try:
                    batch = self._next_spooled_batch(spool)
                    if batch is None:
                        break
                    if batch.lines and not self._deliver(batch.lines):
                        break  # stopping gave up on it: it stays in the spool
                    spool.commit(batch.end)
                except OSError as e:  # the spool's disk: say so and try again (a resend at worst)
                    with self._cv:
                        stopping = self._stop
                    self.warn(f"spool {spool.dir}: {type(e).__name__}: {e}"
                              f"{'' if stopping else '; retrying'}")
                    if stopping:
                        break  # what is left stays in the spool
                    self._wake.wait(SPOOL_ERROR_WAIT)
        finally:
            if self._conn is not None:
                self._conn.close()

    def _stopping_now(self) -> bool:
        """close() was called and its drain deadline has passed."""
        with self._cv:
            return self._stop and time.monotonic() >= self._deadline

    def _next_spooled_batch(self, spool: Spool) -> Batch | None:
        """The next batch to send (maybe no lines but a position to commit); None to stop."""
        while True:
            self._spool_ready.clear()
            batch = spool.read(self.batch_max)
            with self._cv:
                stopping = self._stop
            if self._stopping_now():
                return None  # what is left stays on disk
            if batch.lines:
                return batch if stopping else self._fill(spool, batch)
            if batch.end != batch.start:
                return batch  # past a finished segment or a bad record: commit that
            if stopping and self._writer_done.is_set():
                last = spool.read(self.batch_max)  # the writer's final append may follow our read
                return last if last.lines or last.end != last.start else None
            self._spool_ready.wait(IDLE_WAIT)

    def _fill(self, spool: Spool, batch: Batch) -> Batch:
        """Let a burst fill the batch: read on for up to ``linger`` seconds."""
        deadline = time.monotonic() + self.linger
        while len(batch.lines) < self.batch_max:
            left = deadline - time.monotonic()
            if left <= 0 or not self._spool_ready.wait(left):
                break
            self._spool_ready.clear()
            more = spool.read(self.batch_max - len(batch.lines), start=batch.end)
            batch = Batch(batch.lines + more.lines, batch.start, more.end)
        return batch

    # -- both ---------------------------------------------------------------------
    def _deliver(self, batch: list[bytes]) -> bool:
        """POST until accepted or rejected; False when stopping gave up on it."""
        body = b"".join(batch)
        backoff = self.backoff_initial
        while True:
            status, retry_after, err, tls_failed = self._post(body)
            if status is not None and 200 <= status < 300:
                self.stats["sent"] += len(batch)
                self.stats["posts"] += 1
                return True
            if status is not None and 400 <= status < 500 and not is_retryable(status):
                self.stats["dropped_rejected"] += len(batch)
                self.warn(f"detector rejected a batch of {len(batch)} events: HTTP {status} {err}")
                return True
            self.stats["retries"] += 1
            if not tls_failed and (self.stats["retries"] == 1 or self.stats["retries"] % 100 == 0):
                self.warn(f"detector not accepting events ({err}); retrying with backoff")
            delay = min(max(backoff, retry_after or 0.0), self.backoff_max)
            backoff = min(backoff * 2, self.backoff_max)
            with self._cv:
                stopping, deadline = self._stop, self._deadline
            if time.monotonic() + delay > deadline:
                return False
            if stopping:
                time.sleep(delay)
            else:
                self._wake.wait(delay)  # close() wakes us to re-check against its deadline

    def _connect(self) -> http.client.HTTPConnection:
        """A new connection, TLS handshake done (so that its failures are told apart)."""
        conn: http.client.HTTPConnection
        if self.url.scheme == "https":
            conn = http.client.HTTPSConnection(self.url.hostname or "", self.url.port, timeout=self.timeout,
                                               context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(self.url.hostname or "", self.url.port, timeout=self.timeout)
        try:
            conn.connect()
        except BaseException:
            conn.close()
            raise
        return conn

    def _tls_failed(self, e: ssl.SSLError) -> str:
        self.stats["tls_errors"] += 1
        if isinstance(e, ssl.SSLCertVerificationError):
            what = (f"cannot verify the detector's TLS certificate ({e.verify_message}): is it signed by "
                    f"the --detector-ca bundle, for the host name {self.url.hostname}?")
        else:
            what = f"TLS handshake with the detector failed ({e.reason or e})"
        now = time.monotonic()
        if now - self._last_tls_warn >= WARN_EVERY:
            self._last_tls_warn = now
            self.warn(f"{what}; retrying ({self.stats['tls_errors']} TLS failures so far)")
        return what

    def _post(self, body: bytes) -> tuple[int | None, float | None, str, bool]:
        """One POST: (status, Retry-After seconds, description, whether the TLS handshake failed
        (warned about already)); status None on I/O error."""
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            try:
                if self._conn is None:
                    try:
                        self._conn = self._connect()
                    except ssl.SSLError as e:
                        return None, None, self._tls_failed(e), True
                self._conn.request("POST", self.target, body=body, headers=self.headers)
                resp = self._conn.getresponse()
                text = resp.read(512).decode("utf-8", "replace").strip()
                resp.read()
                if resp.will_close:
                    self._conn.close()
                    self._conn = None
                ra = resp.getheader("Retry-After")
                retry_after = float(ra) if ra and ra.strip().isdigit() else None
                return resp.status, retry_after, text[:200] or resp.reason, False
            except (OSError, http.client.HTTPException) as e:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                stale = isinstance(e, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
                                   | ssl.SSLEOFError)
                if attempt == 0 and stale:
                    continue
                return None, None, f"{type(e).__name__}: {e}", False
        return None, None, "unreachable", False
