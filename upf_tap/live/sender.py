"""DetectorSender: batches AppEvents as NDJSON POSTs to the detector's /v1/events.

Capture must never wait for the network, so ``put`` only appends to a bounded
in-memory queue; a background thread POSTs batches over one keep-alive
connection with ``Authorization: Bearer``. While the detector is down (connection
errors, or the answers ``mec_common.http.is_retryable`` names: 404/408/409/429/5xx)
the same batch is retried with exponential backoff (honouring Retry-After) and new
events queue up; when the queue is full the *oldest* event is dropped and counted,
with a rate-limited warning on stderr. Other 4xx answers mean the batch itself is bad:
it is dropped, counted, warned.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from mec_common.http import is_retryable

DEFAULT_MAX_QUEUE = 100_000
DEFAULT_BATCH_MAX = 500
DEFAULT_LINGER = 0.002         # seconds to wait for a batch to fill once one event is queued:
                               # short, as each event may start a function; under load batches
                               # fill anyway while the previous POST is in flight
DEFAULT_BACKOFF_INITIAL = 0.1
DEFAULT_BACKOFF_MAX = 5.0
DEFAULT_TIMEOUT = 10.0
WARN_EVERY = 5.0               # seconds between repeated drop warnings
EVENTS_PATH = "/v1/events"


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


def _warn(msg: str) -> None:
    print(f"upf-tap live: {msg}", file=sys.stderr, flush=True)


class DetectorSender:
    def __init__(self, url: str, token: str, *, max_queue: int = DEFAULT_MAX_QUEUE,
                 batch_max: int = DEFAULT_BATCH_MAX, linger: float = DEFAULT_LINGER,
                 backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
                 backoff_max: float = DEFAULT_BACKOFF_MAX, timeout: float = DEFAULT_TIMEOUT,
                 warn: Callable[[str], None] = _warn) -> None:
        if max_queue < 1 or batch_max < 1:
            raise SenderError("queue and batch sizes must be positive")
        self.url = events_url(url)
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
        self.stats: Counter[str] = Counter()
        self._q: deque[bytes] = deque()
        self._cv = threading.Condition()
        self._stop = False
        self._deadline = float("inf")  # drain deadline once close() is called
        self._last_warn = 0.0
        self._wake = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="detector-sender", daemon=True)

    # -- capture side -----------------------------------------------------------
    def start(self) -> DetectorSender:
        self._thread.start()
        return self

    def put(self, event: dict[str, Any]) -> None:
        """Queue one AppEvent; never blocks on the network."""
        self.put_line(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")

    def put_line(self, line: bytes) -> None:
        """Queue one AppEvent already serialised as a JSON line (ending in a newline)."""
        with self._cv:
            if len(self._q) >= self.max_queue:
                self._q.popleft()
                self.stats["dropped_queue_full"] += 1
                now = time.monotonic()
                if now - self._last_warn >= WARN_EVERY:
                    self._last_warn = now
                    self.warn(f"detector queue full ({self.max_queue} events): dropping the oldest "
                              f"({self.stats['dropped_queue_full']} dropped so far)")
            self._q.append(line)
            self.stats["queued"] += 1
            self._cv.notify()

    def queued(self) -> int:
        with self._cv:
            return len(self._q)

    def close(self, drain_timeout: float = 5.0) -> None:
        """Send what is queued (for at most ``drain_timeout`` s), then stop."""
        with self._cv:
            self._stop = True
            self._deadline = time.monotonic() + drain_timeout
            self._cv.notify_all()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(drain_timeout + self.timeout + 1.0)
        with self._cv:
            left = len(self._q)
            self._q.clear()
        if left:
            self.stats["dropped_shutdown"] += left
            self.warn(f"detector unreachable at exit: {left} queued events dropped")

    # -- sender thread ------------------------------------------------------------
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

    def _deliver(self, batch: list[bytes]) -> bool:
        """POST until accepted or rejected; False when stopping gave up on it."""
        body = b"".join(batch)
        backoff = self.backoff_initial
        while True:
            status, retry_after, err = self._post(body)
            if status is not None and 200 <= status < 300:
                self.stats["sent"] += len(batch)
                self.stats["posts"] += 1
                return True
            if status is not None and 400 <= status < 500 and not is_retryable(status):
                self.stats["dropped_rejected"] += len(batch)
                self.warn(f"detector rejected a batch of {len(batch)} events: HTTP {status} {err}")
                return True
            self.stats["retries"] += 1
            if self.stats["retries"] == 1 or self.stats["retries"] % 100 == 0:
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

    def _post(self, body: bytes) -> tuple[int | None, float | None, str]:
        """One POST: (status, Retry-After seconds, description); status None on I/O error."""
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            try:
                if self._conn is None:
                    cls = (http.client.HTTPSConnection if self.url.scheme == "https"
                           else http.client.HTTPConnection)
                    self._conn = cls(self.url.hostname or "", self.url.port, timeout=self.timeout)
                self._conn.request("POST", self.target, body=body, headers=self.headers)
                resp = self._conn.getresponse()
                text = resp.read(512).decode("utf-8", "replace").strip()
                resp.read()
                if resp.will_close:
                    self._conn.close()
                    self._conn = None
                ra = resp.getheader("Retry-After")
                retry_after = float(ra) if ra and ra.strip().isdigit() else None
                return resp.status, retry_after, text[:200] or resp.reason
            except (OSError, http.client.HTTPException) as e:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                stale = isinstance(e, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError)
                if attempt == 0 and stale:
                    continue
                return None, None, f"{type(e).__name__}: {e}"
        return None, None, "unreachable"
