"""Delivery to the sink: a keep-alive pool of POSTs, per-UE order, retries, dead letters.

Each UE (ordering key) has a queue; a key is in exactly one place at a time: the ready queue,
a worker, or a retry timer. So one UE has at most one POST in flight (its events reach the
sink in ingest order, which is capture order) while up to `concurrency` UEs go in parallel.
Retried: connection errors, timeouts and the answers `mec_common.http.is_retryable` names
(404, 408, 409, 429, 5xx: Knative's rule), with exponential backoff and jitter, or after
`Retry-After` when the sink sends one. Other answers below 200 or from 300 up go to the
dead-letter table with the status and body.

`DeliveryClient` is the interface the detector is given (`Delivery` is the real one; tests may
pass another): it reports each outcome through the `ack` and `dead` callbacks of `start`.
`SiteDelivery` (mobility, two MEC sites) is one `Delivery` per site's sink behind the same
interface: each row goes to the queue its `dest` names, so a site whose broker is down holds its
own rows back (retried as ever) while the others flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol

import aiohttp

from detector.config import Config
from detector.metrics import Metrics
from detector.outbox import Row
from mec_common.http import is_retryable

__all__ = ["Delivery", "DeliveryClient", "SiteDelivery", "backoff_delay", "is_retryable", "retry_after_seconds"]

log = logging.getLogger("detector.delivery")
RESPONSE_CAP = 2048


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: a delay in seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, base: float, cap: float, rnd: Callable[[], float] = random.random) -> float:
    """attempt 1, 2, 3…: base·2^(n-1) capped, times a jitter in [0.5, 1)."""
    d = min(cap, base * (2 ** min(attempt - 1, 30)))
    return d * (0.5 + 0.5 * rnd())


@dataclass(slots=True)
class Item:
    row: Row
    t0: float          # monotonic time it became pending (for the latency histogram)
    attempts: int = 0


AckFn = Callable[[int], None]   # ack(seq): the sink accepted row `seq` (delete it from the outbox)
# dead(row, status, body, reason): the row goes to the dead-letter table (status None: no HTTP answer)
DeadFn = Callable[[Row, "int | None", bytes, str], Awaitable[None]]


async def _no_dead(row: Row, status: int | None, body: bytes, reason: str) -> None:
    raise RuntimeError("Delivery.start was not called")


class DeliveryClient(Protocol):
    """What the detector needs from a delivery client (read-only: plain attributes will do)."""

    @property
    def pending(self) -> int:
        """Rows enqueued and not yet acked or dead-lettered."""

    @property
    def inflight(self) -> int:
        """POSTs in flight."""

    @property
    def attempted(self) -> bool:
        """Any POST tried yet."""

    @property
    def sink_answered(self) -> bool:
        """The sink gave an HTTP answer at least once."""

    async def start(self, ack: AckFn, dead: DeadFn) -> None:
        """Start delivering; report each row's outcome through `ack` or `dead`."""

    def enqueue(self, rows: list[Row], t0: float | None = None) -> None:
        """Rows now durable in the outbox, in ingest order (`t0`: monotonic time they became pending)."""

    async def stop(self, drain_timeout: float) -> None:
        """Let work in flight finish (up to drain_timeout), start none; the rest stays pending."""


class Delivery:
    """The real client: POSTs to the sink over a keep-alive aiohttp session."""

    def __init__(self, sink: str, metrics: Metrics, *, concurrency: int = 64, timeout: float = 10.0,
                 backoff_base: float = 0.2, backoff_cap: float = 30.0, retry_after_cap: float = 300.0,
                 max_attempts: int = 0) -> None:
        self.sink = sink
        self.metrics = metrics
        self._ack: AckFn = lambda seq: None
        self._dead: DeadFn = _no_dead
        self.concurrency = concurrency
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_after_cap = retry_after_cap
        self.max_attempts = max_attempts
        self._queues: dict[str, deque[Item]] = {}
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None
        self.pending = 0
        self.inflight = 0
        self.attempted = False       # any POST tried yet
        self.sink_answered = False   # the sink gave an HTTP answer at least once

    @classmethod
    def from_config(cls, cfg: Config, metrics: Metrics) -> Delivery:
        return cls(cfg.sink or "", metrics, concurrency=cfg.concurrency, timeout=cfg.request_timeout,
                   backoff_base=cfg.backoff_base, backoff_cap=cfg.backoff_cap,
                   retry_after_cap=cfg.retry_after_cap, max_attempts=cfg.max_attempts)

    async def start(self, ack: AckFn, dead: DeadFn) -> None:
        self._ack, self._dead = ack, dead
        conn = aiohttp.TCPConnector(limit=self.concurrency, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=self.timeout), auto_decompress=False)
        self._workers = [asyncio.create_task(self._worker(), name=f"delivery-{i}") for i in range(self.concurrency)]

    def enqueue(self, rows: list[Row], t0: float | None = None) -> None:
        t0 = time.monotonic() if t0 is None else t0
        for row in rows:
            q = self._queues.get(row.ue)
            if q is None:
                q = self._queues[row.ue] = deque()
                self._ready.put_nowait(row.ue)
            q.append(Item(row, t0))
        self.pending += len(rows)

    async def stop(self, drain_timeout: float) -> None:
        """Finish the POSTs in flight (up to drain_timeout), start no new ones; the rest stays pending."""
        self._stopping = True
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        busy = [t for t in self._workers if t in self._busy]
        for t in self._workers:
            if t not in self._busy:
                t.cancel()
        if busy:
            _, late = await asyncio.wait(busy, timeout=drain_timeout)
            for t in late:
                t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._workers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _wake(self, key: str) -> None:
        self._timers.pop(key, None)
        if not self._stopping:
            self._ready.put_nowait(key)

    async def _worker(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self._stopping:
            key = await self._ready.get()
            self._busy.add(me)
            try:
                await self._serve(key)
            except Exception as e:  # e.g. the dead-letter write failed: keep the event, try later
                log.error("delivery of %r failed: %s", key, e)
                if not self._stopping:
                    self._timers[key] = asyncio.get_running_loop().call_later(self.backoff_cap, self._wake, key)
            finally:
                self._busy.discard(me)

    async def _serve(self, key: str) -> None:
        q = self._queues[key]
        item = q[0]
        status, body, retry_after, reason = await self._post(item)
        item.attempts += 1
        if status is not None and 200 <= status <= 299:
            q.popleft()
            self.pending -= 1
            self.metrics.delivered += 1
            self.metrics.latency.observe(time.monotonic() - item.t0)
            self._ack(item.row.seq)
        elif (status is None or is_retryable(status)) and not (
                self.max_attempts and item.attempts >= self.max_attempts):
            self.metrics.retried += 1
            if retry_after is not None:
                delay = min(retry_after, self.retry_after_cap)
            else:
                delay = backoff_delay(item.attempts, self.backoff_base, self.backoff_cap)
            if not self._stopping:
                self._timers[key] = asyncio.get_running_loop().call_later(delay, self._wake, key)
            return
        else:
            if status is None or is_retryable(status):
                reason = f"gave up after {item.attempts} attempts: {reason}"
            await self._dead(item.row, status, body, reason)
            q.popleft()
            self.pending -= 1
            self.metrics.dead_lettered += 1
        if q:
            if not self._stopping:
                self._ready.put_nowait(key)
        else:
            del self._queues[key]

    async def _post(self, item: Item) -> tuple[int | None, bytes, float | None, str]:
        assert self._session is not None
        self.attempted = True
        self.inflight += 1
        try:
            async with self._session.post(self.sink, data=item.row.body, headers=item.row.headers,
                                          allow_redirects=False) as resp:
                body = await resp.content.read(RESPONSE_CAP)
                self.sink_answered = True
                ra = retry_after_seconds(resp.headers.get("Retry-After")) if resp.status >= 400 else None
                return resp.status, body, ra, f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return None, b"", None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        finally:
            self.inflight -= 1


class SiteDelivery:
    """One `Delivery` per MEC site's sink (mobility): rows go to the client their `dest` names
    ("" or an unknown site: the default one). Readiness follows the default sink only: a peer
    site's broker being down must not stop this site's ingest; its rows wait, durable, and are
    retried."""

    def __init__(self, clients: dict[str, Delivery], default: str) -> None:
        self.clients = clients
        self.default = default
        self._unknown: set[str] = set()

    @classmethod
    def from_config(cls, cfg: Config, metrics: Metrics) -> SiteDelivery:
        assert cfg.mobility is not None and cfg.sink
        clients = {}
        for site, url in cfg.mobility.sinks(cfg.sink).items():
            one = Delivery.from_config(cfg, metrics)
            one.sink = url
            clients[site] = one
        return cls(clients, cfg.mobility.site)

    def site_pending(self) -> dict[str, float]:
        return {site: float(c.pending) for site, c in self.clients.items()}

    @property
    def pending(self) -> int:
        return sum(c.pending for c in self.clients.values())

    @property
    def inflight(self) -> int:
        return sum(c.inflight for c in self.clients.values())

    @property
    def attempted(self) -> bool:
        return self.clients[self.default].attempted

    @property
    def sink_answered(self) -> bool:
        return self.clients[self.default].sink_answered

    async def start(self, ack: AckFn, dead: DeadFn) -> None:
        for c in self.clients.values():
            await c.start(ack, dead)

    def enqueue(self, rows: list[Row], t0: float | None = None) -> None:
        by_dest: dict[str, list[Row]] = {}
        for row in rows:
            dest = row.dest or self.default
            if dest not in self.clients:
                if dest not in self._unknown:   # e.g. a site renamed across a restart: not lost, sent home
                    log.warning("CloudEvents for unknown site %r go to the default sink", dest)
                    self._unknown.add(dest)
                dest = self.default
            by_dest.setdefault(dest, []).append(row)
        for dest, part in by_dest.items():
            self.clients[dest].enqueue(part, t0)

    async def stop(self, drain_timeout: float) -> None:
        await asyncio.gather(*(c.stop(drain_timeout) for c in self.clients.values()))
