"""The broker's durable event log: SQLite in WAL mode under `--state-dir`.

The ingress answers 202 only after the transaction holding the event is committed
(`AsyncEventStore.append` returned). Next to each event the store keeps one row per
Trigger whose filter matched at ingest time (or per Subscription of the Channel the event
was posted to), with that delivery's state (pending, delivered, dead-lettered, failed),
its tries and the last status; on start the broker delivers every pending row again (at
least once: a kill between the subscriber's answer and the row's update means a
duplicate, never a loss).

Names: an event's `broker` column is the address path it came in at without the leading
slash, `<ns>/<broker>` for a Broker, `channels/<ns>/<channel>` for a Channel; a delivery's
`trigger_name` is `<ns>/<trigger>` or `subscriptions/<ns>/<subscription>`. Kubernetes
names hold no slash, so the two never collide (and the columns kept their first names:
stores written before Channels existed open unchanged).

Ingest commits are group commits: the appends of every request that arrived while the
previous transaction was on the disk share the next one. With durability "full" those
transactions are fsynced (PRAGMA synchronous=FULL: the 202 survives power loss); with
"normal" they survive a crash of the process (kill -9) but not of the machine. Delivery
updates and pruning never need the fsync (losing one only means a redelivery).

`EventStore` is blocking and runs on the store's own threads (one writer, one reader);
`AsyncEventStore` is what the event loop uses. One process owns a store at a time (a
lock file says so), as the detector's outbox does.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from testbed.broker.events import Event

log = logging.getLogger("testbed.broker")

STORE_FILE = "broker.db"        # in the state dir; namespaces (DNS labels) cannot contain a dot
CHANNEL_PREFIX = "channels/"    # events.broker of an event posted to a Channel
SUBSCRIPTION_PREFIX = "subscriptions/"  # deliveries.trigger_name of a Subscription's delivery
DURABILITY = ("full", "normal")
DEFAULT_RETAIN = 10_000         # finished events kept (for GET /_local/events)
PRUNE_INTERVAL = 5.0            # seconds between prunes
DATA_TEXT_MAX = 4096            # bytes of data shown by /_local/events

PENDING = "pending"
DELIVERED = "delivered"
DEAD_LETTERED = "dead-lettered"
FAILED = "failed"
STATES = (PENDING, DELIVERED, DEAD_LETTERED, FAILED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY,        -- ingest order (what GET /_local/events?since= counts)
  broker TEXT NOT NULL,           -- namespace/name of a Broker, or channels/namespace/name
  attrs TEXT NOT NULL,            -- JSON object: every attribute as the ingress stamped it
  data BLOB,                      -- the data bytes as received (NULL: no data)
  json_data INTEGER NOT NULL,     -- 1: structured-mode JSON data without datacontenttype
  accepted REAL NOT NULL          -- unix time
);
CREATE TABLE IF NOT EXISTS deliveries (
  seq INTEGER NOT NULL,           -- events.seq
  trigger_name TEXT NOT NULL,     -- namespace/name of a Trigger whose filter matched at ingest,
                                  -- or subscriptions/namespace/name of a Subscription of the Channel
  state TEXT NOT NULL,            -- pending | delivered | dead-lettered | failed
  attempts INTEGER NOT NULL,      -- tries at the subscriber, over every run of the broker
  last_status INTEGER,            -- HTTP status of the last try (-1: no answer; NULL: not tried)
  updated REAL NOT NULL,
  PRIMARY KEY (seq, trigger_name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(seq) WHERE state = 'pending';
"""

T = TypeVar("T")


class StoreError(RuntimeError):
    """The store cannot be opened, or refused a write (disk full, I/O error, closed)."""


@dataclass(slots=True)
class Accepted:
    """An event the ingress accepted: committed before its 202."""

    seq: int
    broker: str                   # namespace/name
    event: Event
    triggers: list[str]           # namespace/name of each Trigger that matched


@dataclass(slots=True)
class DeliveryUpdate:
    seq: int
    trigger: str
    state: str
    tries: int                    # added to the row's attempts
    status: int | None


@dataclass(slots=True)
class PendingDelivery:
    seq: int
    broker: str
    trigger: str
    event: Event
    attempts: int


def _event_row(a: Accepted, now: float) -> tuple[Any, ...]:
    attrs = json.dumps(a.event.attrs, separators=(",", ":"), ensure_ascii=False)
    return (a.seq, a.broker, attrs, a.event.data, int(a.event.json_data), now)


def _data_text(data: bytes | None) -> str | None:
    return None if data is None else bytes(data[:DATA_TEXT_MAX]).decode("utf-8", "replace")


def _address(column: str) -> dict[str, str]:
    """Where an event came in, as GET /_local/events names it: {"broker": ns/name} or {"channel": ns/name}."""
    if column.startswith(CHANNEL_PREFIX):
        return {"channel": column[len(CHANNEL_PREFIX):]}
    return {"broker": column}


class EventStore:
    """Blocking SQLite access. Writes from one thread, reads from one other thread."""

    def __init__(self, path: Path, durability: str = "full") -> None:
        if durability not in DURABILITY:
            raise StoreError(f"durability {durability!r}: expected full or normal")
        self.path = Path(path)
        self._full = durability == "full"
        self._synced_full: bool | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock_fd = self._lock(self.path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            os.close(self._lock_fd)
            raise StoreError(f"event store {self.path}: {e}") from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            self.db.close()
            os.close(self._lock_fd)
            raise StoreError(f"event store {self.path}: {e}") from None

    @staticmethod
    def _lock(path: Path) -> int:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot open event store {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"event store {path} is in use by another broker") from None
        return fd

    def close(self) -> None:
        try:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            self.db.close()
        finally:
            os.close(self._lock_fd)

    # --- writer thread ---------------------------------------------------------------

    def _sync(self, full: bool) -> None:
        """fsync the transactions that make a 202 true; the others need not wait for the disk."""
        want = full and self._full
        if want != self._synced_full:
            self.db.execute(f"PRAGMA synchronous={'FULL' if want else 'NORMAL'}")
            self._synced_full = want

    def last_seq(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def commit(self, accepted: list[Accepted], updates: list[DeliveryUpdate]) -> None:
        """One transaction: new events with their pending deliveries, then delivery updates."""
        now = time.time()
        self._sync(bool(accepted))
        self._transaction(lambda db: self._write(db, accepted, updates, now))

    @staticmethod
    def _write(db: sqlite3.Connection, accepted: list[Accepted], updates: list[DeliveryUpdate], now: float) -> None:
        db.executemany("INSERT INTO events(seq, broker, attrs, data, json_data, accepted) VALUES (?,?,?,?,?,?)",
                       [_event_row(a, now) for a in accepted])
        db.executemany(
            "INSERT INTO deliveries(seq, trigger_name, state, attempts, last_status, updated) "
            "VALUES (?, ?, 'pending', 0, NULL, ?)",
            [(a.seq, t, now) for a in accepted for t in a.triggers])
        db.executemany(
            "UPDATE deliveries SET state=?, attempts=attempts+?, last_status=?, updated=? "
            "WHERE seq=? AND trigger_name=?",
            [(u.state, u.tries, u.status, now, u.seq, u.trigger) for u in updates])

    def prune(self, keep: int) -> int:
        """Forget finished events older than the newest `keep` (never one with a pending delivery)."""
        self._sync(False)
        cutoff = self.last_seq() - max(keep, 1)  # the newest event stays: seq numbers never go back
        if cutoff <= 0:
            return 0
        unfinished = "SELECT seq FROM deliveries WHERE state = 'pending'"
        removed: list[int] = []

        def delete(db: sqlite3.Connection) -> None:
            db.execute(f"DELETE FROM deliveries WHERE seq <= ? AND seq NOT IN ({unfinished})", (cutoff,))
            removed.append(db.execute(f"DELETE FROM events WHERE seq <= ? AND seq NOT IN ({unfinished})",
                                      (cutoff,)).rowcount)

        self._transaction(delete)
        return removed[0]

    def _transaction(self, body: Callable[[sqlite3.Connection], None]) -> None:
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            body(db)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            # SQLite may already have rolled back by itself (SQLITE_FULL, SQLITE_IOERR)
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise StoreError(f"event store {self.path}: {e}") from None

    def pending(self) -> list[PendingDelivery]:
        """Every delivery not finished yet, oldest event first."""
        cur = self.db.execute(
            "SELECT d.seq, e.broker, d.trigger_name, e.attrs, e.data, e.json_data, d.attempts "
            "FROM deliveries d JOIN events e ON e.seq = d.seq WHERE d.state = 'pending' ORDER BY d.seq")
        return [PendingDelivery(seq, broker, trig, Event(json.loads(attrs), None if data is None else bytes(data),
                                                         bool(jd)), attempts)
                for seq, broker, trig, attrs, data, jd, attempts in cur]

    # --- reader thread (WAL: reads never wait for the writer) ------------------------

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        return self._reader

    def events_since(self, seq: int) -> list[dict[str, Any]]:
        """Accepted events after `seq`, oldest first, as GET /_local/events shows them (`accepted`: the
        unix time of the commit; an event posted to a Channel carries no knativearrivaltime)."""
        cur = self._read().execute(
            "SELECT seq, broker, attrs, data, accepted FROM events WHERE seq > ? ORDER BY seq", (seq,))
        return [{"seq": s, **_address(b), "attributes": json.loads(a), "data": _data_text(d), "accepted": t}
                for s, b, a, d, t in cur]

    def counts(self) -> dict[str, int]:
        """Deliveries by state, and the number of events kept."""
        db = self._read()
        out = {state: 0 for state in STATES}
        out.update({state: n for state, n in db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state")})
        out["events"] = int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return out


class AsyncEventStore:
    """The store for the event loop: group-committed appends, batched delivery updates.

    Lifecycle: `open` (creates the file, loads the last sequence number, starts the writer
    and the pruner), `append`/`update` while running, `close` (commits what is queued,
    stops, closes). `write_errors` counts transactions the disk refused.
    """

    def __init__(self, path: Path, durability: str = "full", retain: int = DEFAULT_RETAIN) -> None:
        self.path = Path(path)
        self.durability = durability
        self.retain = retain
        self.write_errors = 0
        self.updates_lost = 0
        self.transactions = 0           # committed; with `events_committed`, how well commits group
        self.events_committed = 0
        self._store: EventStore | None = None
        self._writer_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-store")
        self._reader_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-store-read")
        self._seq = 0
        self._appends: list[tuple[Accepted, asyncio.Future[int]]] = []
        self._closing = False
        self._updates: list[DeliveryUpdate] = []
        self._wake = asyncio.Event()
        self._in_flight = False  # a transaction is on the disk (what it took is out of the queues)
        self._writer_task: asyncio.Task[None] | None = None
        self._pruner_task: asyncio.Task[None] | None = None

    async def _on(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def open(self) -> None:
        self._store = store = await self._on(self._writer_exec, EventStore, self.path, self.durability)
        self._seq = await self._on(self._writer_exec, store.last_seq)
        self._writer_task = asyncio.create_task(self._writer(), name="broker-store-writer")
        self._pruner_task = asyncio.create_task(self._pruner(), name="broker-store-pruner")

    async def close(self) -> None:
        self._closing = True
        if self._pruner_task is not None:
            self._pruner_task.cancel()
        self._wake.set()  # the writer commits what is queued, then ends
        await asyncio.gather(*filter(None, (self._pruner_task, self._writer_task)), return_exceptions=True)
        self._pruner_task = self._writer_task = None
        self._reader_exec.shutdown(wait=True)  # no read may run while the connections close
        if self._store is not None:
            if self._updates:
                self.updates_lost += len(self._updates)
                log.warning("event store: %d delivery update(s) not saved; those deliveries will be made "
                            "again on the next start", len(self._updates))
                self._updates = []
            await self._on(self._writer_exec, self._store.close)
            self._store = None
        self._writer_exec.shutdown(wait=True)

    async def append(self, broker: str, event: Event, triggers: list[str]) -> int:
        """Store an accepted event and its pending deliveries; its sequence number once committed.
        Raises StoreError if it was not stored."""
        if self._writer_task is None or self._closing:
            raise StoreError("event store is not open")
        self._seq += 1  # a failed commit leaves a gap: readers of `since` do not mind
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._appends.append((Accepted(self._seq, broker, event, triggers), fut))
        self._wake.set()
        return await fut

    def update(self, upd: DeliveryUpdate) -> None:
        """Queue a delivery's new state; committed with the next transaction (not waited for)."""
        self._updates.append(upd)
        self._wake.set()

    async def sync(self, poll: float = 0.005) -> None:
        """Wait until everything queued so far (events and delivery updates) is committed, or a
        transaction failed (what it held then waits for a later one: see _flush)."""
        errors = self.write_errors
        while (self._appends or self._updates or self._in_flight) and self._writer_task is not None:
            if self.write_errors != errors:
                return
            self._wake.set()
            await asyncio.sleep(poll)

    async def pending(self) -> list[PendingDelivery]:
        assert self._store is not None, "AsyncEventStore.open() was not awaited"
        return await self._on(self._writer_exec, self._store.pending)

    async def events_since(self, seq: int) -> list[dict[str, Any]]:
        assert self._store is not None, "AsyncEventStore.open() was not awaited"
        return await self._on(self._reader_exec, self._store.events_since, seq)

    async def counts(self) -> dict[str, int]:
        assert self._store is not None, "AsyncEventStore.open() was not awaited"
        return await self._on(self._reader_exec, self._store.counts)

    # --- background tasks --------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()
            if self._closing:
                while self._appends:  # arrived while the last commit was on the disk
                    await self._flush()
                return

    async def _flush(self) -> None:
        """Commit everything queued in one transaction; answer each waiting append."""
        appends, self._appends = self._appends, []
        updates, self._updates = self._updates, []
        if not (appends or updates):
            return
        assert self._store is not None
        self._in_flight = True
        try:
            await self._on(self._writer_exec, self._store.commit, [a for a, _ in appends], updates)
        except Exception as e:  # StoreError, or anything else: the writer must live on
            self.write_errors += 1
            log.error("%s (%d event(s) refused)", e, len(appends))
            self._updates[:0] = updates  # kept for the next transaction: they are small and still true
            for _, fut in appends:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, StoreError) else StoreError(str(e)))
            return
        finally:
            self._in_flight = False
        self.transactions += 1
        self.events_committed += len(appends)
        for a, fut in appends:
            if not fut.done():
                fut.set_result(a.seq)

    async def _pruner(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            assert self._store is not None
            try:
                await self._on(self._writer_exec, self._store.prune, self.retain)
            except StoreError as e:  # not pruning only means a bigger file
                log.warning("event store prune: %s", e)
