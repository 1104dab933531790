"""The detector's core: AppEvents -> rules -> CloudEvents -> outbox -> delivery.

The delivery client is given to the detector (as Knative adapters take their client): the real
one is `detector.delivery.Delivery`; anything with the `DeliveryClient` interface will do.

Everything runs on one asyncio loop; SQLite runs on one extra thread. Writes are group
committed: concurrent ingest requests share one transaction, and each request is answered
only after the transaction holding its events is durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.v1.event import CloudEvent

from detector.cloudevent import EventBuilder, ordering_key, to_http, ue_key
from detector.config import Config
from detector.delivery import DeliveryClient
from detector.metrics import Metrics
from detector.mobility import Journal as MobilityJournal
from detector.mobility import Mobility, Move, PeerHint, Peers
from detector.outbox import Outbox, Row
from detector.rules import Journal, RuleSet
from detector.schema import check_app_event, parse_time
from detector.sources import Source, SourceTracker

if TYPE_CHECKING:
    from detector.exposure.service import ExposureService

log = logging.getLogger("detector")
CHECKPOINT_INTERVAL = 0.5  # seconds between WAL checkpoints
T = TypeVar("T")
Rejected = list[dict[str, Any]]   # [{"line": n, "reason": …}] (NDJSON) or [{"index": i, "reason": …}] (JSON)


class StoreError(RuntimeError):
    """The events of a request are not durable: the outbox refused the write (disk full, I/O error, closed),
    or an earlier copy of some of them, still being committed, was refused."""


class _NotJSON(ValueError):
    pass


def _no_constants(name: str) -> Any:
    # json.loads accepts NaN and Infinity; JSON does not, and the sink's parser would refuse the CloudEvent
    raise _NotJSON(f"{name} is not JSON")


def first_line(e: BaseException) -> str:
    """An exception as one short line (its type when it has no message)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def parse_json(data: bytes) -> Any:
    """Strict JSON (no NaN / Infinity); raises ValueError (with UnicodeDecodeError) or RecursionError."""
    return json.loads(data, parse_constant=_no_constants)


def _bad_json_reason(e: BaseException) -> str:
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8"
    if isinstance(e, json.JSONDecodeError):
        return f"bad JSON: {e.msg} at column {e.colno}"
    if isinstance(e, _NotJSON):
        return f"bad JSON: {e}"
    return "bad JSON: nested too deeply or out of range"


class Batch:
    """What one request adds: outbox rows and source-table changes, and how to take back the
    in-memory changes made for them if they cannot be stored."""

    __slots__ = ("created", "deletes", "exposed", "hints", "limiter", "locations", "mobility", "removed", "rows",
                 "seen", "upserts", "waits")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.upserts: list[dict[str, Any]] = []
        self.deletes: list[str] = []
        self.seen: list[str] = []         # dedupe keys added (forgotten again if the commit fails)
        self.created: list[str] = []      # sources created (dropped again if the commit fails)
        self.removed: list[Source] = []   # sources removed (put back if the commit fails)
        self.limiter: Journal = []        # debounce / rate-limit changes (taken back if the commit fails)
        # commits in flight that hold the first copy of this batch's duplicates: a duplicate is only
        # answered 2xx once its first copy is durable
        self.waits: list[asyncio.Future[None]] = []
        self.exposed: list[dict[str, Any]] = []   # accepted AppEvents for Nupf_EventExposure, offered once durable
        self.mobility: MobilityJournal = []   # UE location states before each event (taken back if not stored)
        self.hints: dict[str, PeerHint] = {}  # what the peers said about UEs whose session.up is in here
        self.locations: list[tuple[str, str | None]] = []   # UE location rows to store with the batch

    def marks(self) -> tuple[int, ...]:
        return (len(self.rows), len(self.upserts), len(self.deletes), len(self.seen), len(self.created),
                len(self.removed), len(self.limiter), len(self.mobility))


class Detector:
    """The core. `delivery` takes the CloudEvents once durable (started and stopped by `start`
    and `stop`); `metrics` is shared with it."""

    def __init__(self, cfg: Config, rules: RuleSet, delivery: DeliveryClient, metrics: Metrics) -> None:
        self.cfg = cfg
        self.rules = rules
        self.metrics = metrics
        self.events = EventBuilder(cfg.overrides, ingest_time=cfg.ingest_time)
        self.sources = SourceTracker(cfg.detector_id, rules.idle_timeout)
        self.outbox: Outbox | None = None
        self.delivery = delivery
        self.draining = False
        self.exposure: ExposureService | None = None   # Nupf_EventExposure (detector/exposure), set by the app
        # two MEC sites (detector/mobility.py): the UE location table and the other sites' detectors
        self.mobility: Mobility | None = None
        self.peers: Peers | None = None
        mob = cfg.mobility
        if mob is not None:
            self.mobility = Mobility(mob, rules.prewarm or mob.prewarm)
            self.peers = Peers(mob.peers, cfg.token, mob.peer_timeout)
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._ckpt_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-checkpoint")
        self._seq = 0
        self._seen: OrderedDict[str, None] = OrderedDict()   # recent AppEvent ids, oldest first
        self._uncommitted: dict[str, asyncio.Future[None]] = {}  # dedupe key -> the commit in flight holding it
        self._acks: list[int] = []
        self._wq: list[tuple[Batch, asyncio.Future[None]]] = []
        self._wake_writer = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._max_ts = 0.0
        self._window = max([r.debounce for r in rules.rules] + [r.rate_per for r in rules.rules] + [0.0])
        m = self.metrics
        m.gauge("detector_outbox_pending", "CloudEvents waiting for delivery", lambda: self.delivery.pending)
        m.gauge("detector_inflight", "POSTs to the sink in flight", lambda: self.delivery.inflight)
        m.gauge("detector_sources", "UE sources alive", lambda: len(self.sources.by_key))
        m.gauge("detector_sink_up", "1 once the sink has answered", lambda: int(self.delivery.sink_answered))
        m.gauge("detector_ready", "1 when ready", lambda: int(self.ready()))
        if self.mobility is not None:
            mobility = self.mobility
            m.gauge("detector_mobility_ues", "UEs in the mobility location table", lambda: len(mobility.ues))
            site_pending = getattr(delivery, "site_pending", None)
            if site_pending is not None:
                m.labelled_gauge("detector_site_pending", "CloudEvents waiting for a site's sink", "site", site_pending)

    # ---- life cycle ----
    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the database thread."""
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    async def start(self) -> None:
        assert self.cfg.outbox
        self.outbox = outbox = await self.db(Outbox, self.cfg.outbox, self.cfg.durability)
        self._seq = await self.db(outbox.max_seq)
        pending = await self.db(outbox.pending)
        self.sources.load(await self.db(outbox.sources))
        if self.mobility is not None:
            self.mobility.load(await self.db(outbox.locations))
        if self.peers is not None:
            await self.peers.start()
        await self.delivery.start(self._on_ack, self._on_dead)
        self.delivery.enqueue(pending)
        if pending:
            log.info("resuming %d pending CloudEvents from %s", len(pending), self.cfg.outbox)
        self._tasks = [asyncio.create_task(self._writer(), name="writer"),
                       asyncio.create_task(self._acker(), name="acker"),
                       asyncio.create_task(self._sweeper(), name="sweeper"),
                       asyncio.create_task(self._checkpointer(), name="checkpointer")]

    async def stop(self) -> None:
        """Stop delivering (in-flight POSTs finish), flush acks and source times, close the outbox."""
        self.draining = True
        await self.delivery.stop(self.cfg.drain_timeout)
        await self._flush_dirty_sources()
        if self.peers is not None:
            await self.peers.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush_writes()
        try:
            await self._flush_acks()
        except Exception as e:   # e.g. disk full: those rows are delivered again after the restart
            log.error("outbox acks not stored at stop (%d CloudEvents will be redelivered): %s", len(self._acks), e)
        self._ckpt_exec.shutdown(wait=True)
        if self.outbox is not None:
            await self.db(self.outbox.close)
            self.outbox = None
        self._exec.shutdown(wait=True)

    def ready(self) -> bool:
        return (not self.draining and self.outbox is not None
                and (not self.delivery.attempted or self.delivery.sink_answered))

    def overloaded(self) -> bool:
        return self.delivery.pending >= self.cfg.max_pending

    # ---- background tasks ----
    def _on_ack(self, seq: int) -> None:
        self._acks.append(seq)

    async def _on_dead(self, row: Row, status: int | None, body: bytes, reason: str) -> None:
        assert self.outbox is not None
        await self.db(self.outbox.dead_letter, row, status, body, reason)

    async def _flush_acks(self) -> None:
        if self._acks and self.outbox is not None:
            seqs, self._acks = self._acks, []
            try:
                await self.db(self.outbox.ack, seqs)
            except BaseException:   # cancelled (stop's final flush takes them) or failed (disk full): kept
                self._acks[:0] = seqs
                raise

    async def _acker(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.cfg.ack_interval)
            try:
                await self._flush_acks()
            except Exception as e:  # e.g. disk full: the rows to delete are kept for the next try (logged once)
                if not failing:
                    log.error("outbox ack failed (retrying): %s", e)
                failing = True
            else:
                if failing:
                    log.info("outbox acks stored again")
                failing = False

    async def _checkpointer(self) -> None:
        loop = asyncio.get_running_loop()
        last_error = ""
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            if self.outbox is not None:
                try:
                    await loop.run_in_executor(self._ckpt_exec, self.outbox.checkpoint)
                    last_error = ""
                except Exception as e:  # busy or failing: the backstop auto-checkpoint still runs
                    if str(e) != last_error:   # once per kind of failure, not twice a second while the disk is full
                        log.warning("outbox checkpoint: %s", e)
                    last_error = str(e)

    async def _flush_writes(self) -> None:
        batch, self._wq = self._wq, []
        if not batch:
            return
        rows = [r for b, _ in batch for r in b.rows]
        ups = [u for b, _ in batch for u in b.upserts]
        dels = [d for b, _ in batch for d in b.deletes]
        locs = [loc for b, _ in batch for loc in b.locations]
        try:
            if self.outbox is None:
                raise StoreError("outbox closed")
            await self.db(self.outbox.commit, rows, ups, dels, locs)
        except Exception as e:
            log.warning("outbox refused %d CloudEvents: %s", len(rows), e)
            for b, _ in reversed(batch):   # newest first: each journal holds the state before its batch
                self.rules.undo(b.limiter)
                if self.mobility is not None:
                    self.mobility.undo(b.mobility)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        self.delivery.enqueue(rows)
        self.metrics.emitted += len(rows)
        if self.mobility is not None:
            for r in rows:
                self.metrics.inc(self.metrics.routed, r.dest)
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            await self._flush_writes()

    async def persist(self, batch: Batch) -> None:
        """Durably store a batch (group commit), and wait for the first copies of its duplicates;
        raises (the database's error, or StoreError) if any of it is not stored."""
        if self.mobility is not None and batch.mobility:
            # the states as of now (this batch's changes included) go into the same transaction
            batch.locations = self.mobility.rows({k for k, _ in batch.mobility})
        if batch.rows or batch.upserts or batch.deletes or batch.locations:
            await self._commit(batch)
        for fut in batch.waits:
            try:
                await asyncio.shield(fut)   # shielded: our request going away must not cancel theirs
            except Exception as e:
                raise StoreError(f"the first copy of a re-sent event was not stored: {first_line(e)}") from e
        if batch.exposed and self.exposure is not None:
            self.exposure.offer(batch.exposed)   # durable now: measured for Nupf_EventExposure

    async def _commit(self, batch: Batch) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wq.append((batch, fut))
        for k in batch.seen:
            self._uncommitted[k] = fut
        self._wake_writer.set()
        try:
            await fut
        except Exception:   # not on cancellation: the writer may still commit the batch
            self._forget(batch)
            raise
        finally:
            for k in batch.seen:
                if self._uncommitted.get(k) is fut:
                    del self._uncommitted[k]

    def _forget(self, b: Batch) -> None:
        """The in-memory traces of a batch that was not stored (its limiter changes are undone by
        the writer, in commit order)."""
        for k in b.seen:
            self._seen.pop(k, None)
        for s in reversed(b.removed):   # before dropping created ones: created and removed in `b` stays gone
            self.sources.put_back(s)
        for k in b.created:
            self.sources.remove(k)

    async def _flush_dirty_sources(self) -> None:
        dirty = self.sources.take_dirty()
        if dirty and self.outbox is not None:
            b = Batch()
            b.upserts = [s.as_dict() for s in dirty]
            try:
                await self.persist(b)
            except Exception as e:
                log.error("saving source times failed: %s", e)

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.sweep_interval)
            now = time.time()
            b = Batch()
            for s in self.sources.idle(now):
                b.removed.append(s)
                self._expire(s, "idle", now, b)
            if self.mobility is not None and self._max_ts:
                self.mobility.prune(self._max_ts, b.mobility)
            try:
                await self.persist(b)
            except Exception as e:
                log.error("source expiry not saved: %s", e)
            await self._flush_dirty_sources()
            if self._window:
                self.rules.prune(self._max_ts - self._window - 1.0)

    # ---- AppEvents -> rows ----
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _remember(self, key: str, b: Batch) -> bool:
        """False if `key` was seen recently (a re-sent event); else remember it."""
        if self.cfg.dedupe_window <= 0:
            return True
        if key in self._seen:
            first = self._uncommitted.get(key)
            if first is not None and first not in b.waits:
                b.waits.append(first)
            return False
        self._seen[key] = None
        b.seen.append(key)
        if len(self._seen) > self.cfg.dedupe_window:
            self._seen.popitem(last=False)
        return True

    def _add(self, b: Batch, key: str, ce: CloudEvent, dest: str | None = None) -> None:
        """`ce` into the batch, for the sink of site `dest` (default: the UE's serving site with
        mobility, else the one sink)."""
        headers, body = to_http(ce, self.cfg.structured)
        if dest is None:
            dest = self.mobility.dest(key) if self.mobility is not None else ""
        b.rows.append(Row(self._next_seq(), ce.get_id(), key, headers, body,
                          json.dumps(headers, separators=(",", ":")), dest))

    def _expire(self, s: Source, reason: str, now: float, b: Batch) -> None:
        self._add(b, s.key, self.events.source_expired(s, reason, now))
        b.deletes.append(s.key)
        self.metrics.sources_expired += 1

    def process(self, ev: dict[str, Any], b: Batch, now: float) -> bool:
        """Turn one valid AppEvent into rows of `b`; False if it was a duplicate."""
        if not self._remember(ev["id"], b):
            self.metrics.ingest_duplicates += 1
            return False
        key = ue_key(ev)
        t = parse_time(ev["time"])
        assert t is not None
        ts = t.timestamp()
        if ts > self._max_ts:
            self._max_ts = ts
        mob = self.mobility
        mkey = ""
        if mob is not None and key:
            mkey = mob.key(ev, key)
            mob.begin(mkey, b.mobility)
            move = mob.observe(ev, mkey, ts, b.hints)
            if move is not None:   # before the rules: this event's own CloudEvents go to the new site
                self._moved(ev, key, t, move, b)
        out = self.rules.evaluate(ev, key, ts, b.limiter)
        self.metrics.suppressed += out.suppressed
        uri = self.sources.uri(key)
        src = self.sources.by_key.get(key) if key else None
        if key and src is None and self.rules.create_on:
            first = next((n for n in out.matched if n in self.rules.create_on), None)
            if first is not None:
                src = self.sources.create(key, ev.get("ue") or {}, first, now)
                assert src is not None
                self._add(b, key, self.events.source_created(src, ev["id"], t))
                b.upserts.append(src.as_dict())
                b.created.append(key)
                self.metrics.sources_created += 1
        if src is not None:
            self.sources.touch(key, now)
        if out.dropped or (self.rules.required and src is None and out.emissions):
            self.metrics.dropped += 1
        else:
            ctx = {**ev, "detector": self.cfg.detector_id, "source": uri, "uekey": key}
            for rule in out.emissions:
                ce = self.events.for_rule(ev, rule, ctx, t, uri)
                self._add(b, key, ce)
                if mob is not None and mkey:
                    mob.record(mkey, ce, ts)
        if src is not None and ev["kind"] == "session.down":
            self.sources.remove(key)
            b.removed.append(src)
            self._expire(src, "session.down", now, b)
        exposure = self.exposure
        if exposure is not None and exposure.active:   # only while there are Nupf_EventExposure subscriptions
            b.exposed.append(ev)
        return True

    def _moved(self, ev: dict[str, Any], key: str, t: datetime, move: Move, b: Batch) -> None:
        """One mec.ue.moved for the target site, and its warm-ups when pre-warm is on."""
        mob = self.mobility
        assert mob is not None
        uri = self.sources.uri(key)
        dest = mob.site_dest(move.to.get("site"))
        self._add(b, key, self.events.ue_moved(move, ev, t, uri), dest)
        self.metrics.inc(self.metrics.moved, move.procedure)
        if move.frm is None:
            self.metrics.moved_from_unknown += 1
        for type_, recent in mob.warmups(move):
            self._add(b, key, self.events.warmup(move, type_, recent, ev, t, uri), dest)
            self.metrics.inc(self.metrics.prewarm_sent, dest)

    async def prefetch(self, body: bytes, as_json: bool, b: Batch) -> None:
        """Before an ingest body is processed: ask the peers about the UEs whose session.up it holds
        and this detector does not serve (relocation), so the move is decided, and stored, with the
        session.up itself. Costs nothing for bodies without a session.up."""
        mob, peers = self.mobility, self.peers
        if mob is None or peers is None or not peers.urls or b"session.up" not in body:
            return
        evs: list[Any] = []
        try:
            doc = parse_json(body) if as_json else None
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, list):
            evs = doc
        elif isinstance(doc, dict):
            evs = [doc]
        else:
            for line in body.split(b"\n"):
                if b"session.up" in line:
                    try:
                        evs.append(parse_json(line))
                    except (ValueError, RecursionError):
                        continue   # refused with its reason when the body is processed
        keys = {k for k in (mob.needs_lookup(ev) for ev in evs) if k}
        if not keys:
            return
        ordered = sorted(keys)
        hints = await asyncio.gather(*(peers.lookup(k) for k in ordered))
        for k, hint in zip(ordered, hints, strict=True):
            b.hints[k] = hint
            outcome = "found" if hint.views else "unanswered" if hint.unanswered else "unknown"
            self.metrics.inc(self.metrics.peer_lookups, outcome)

    def process_lines(self, body: bytes, b: Batch) -> tuple[int, int, Rejected]:
        """NDJSON -> rows; returns (accepted, duplicates, rejected [{line, reason}]); lines count from 1."""
        accepted = dup = 0
        rejected: Rejected = []
        now = time.time()
        for i, line in enumerate(body.split(b"\n"), 1):
            line = line.strip()
            if not line:
                continue
            try:
                ev = parse_json(line)
            except (ValueError, RecursionError) as e:
                rejected.append({"line": i, "reason": _bad_json_reason(e)})
                continue
            taken = self._take(ev, b, now)
            if isinstance(taken, str):
                rejected.append({"line": i, "reason": taken})
            elif taken:
                accepted += 1
            else:
                dup += 1
        return accepted, dup, rejected

    def process_json(self, body: bytes, b: Batch) -> tuple[int, int, Rejected]:
        """A JSON body: one AppEvent, or an array of them -> rows; returns (accepted, duplicates,
        rejected [{index, reason}]), the index counting from 0 (0 for a single event). A body that
        is not one JSON document is read as NDJSON (which a one-line JSON object also is)."""
        try:
            doc = parse_json(body)
        except (ValueError, RecursionError):
            return self.process_lines(body, b)
        accepted = dup = 0
        rejected: Rejected = []
        now = time.time()
        for i, ev in enumerate(doc if isinstance(doc, list) else [doc]):
            taken = self._take(ev, b, now)
            if isinstance(taken, str):
                rejected.append({"index": i, "reason": taken})
            elif taken:
                accepted += 1
            else:
                dup += 1
        return accepted, dup, rejected

    def _take(self, ev: Any, b: Batch, now: float) -> bool | str:
        """One parsed AppEvent into `b`: True (accepted), False (a duplicate) or why it is refused."""
        reason = check_app_event(ev)
        if reason:
            return f"schema: {reason}"
        marks = b.marks()
        try:
            return self.process(ev, b, now)
        except Exception as e:  # a rule or the SDK refused the result: refuse the event, keep going
            self._undo(b, marks)
            return f"cannot build CloudEvent: {first_line(e)}"

    def _undo(self, b: Batch, marks: tuple[int, ...]) -> None:
        rows, upserts, deletes, seen, created, removed, limiter, mobility = marks
        for k in b.seen[seen:]:
            self._seen.pop(k, None)
        for s in reversed(b.removed[removed:]):
            self.sources.put_back(s)
        for k in b.created[created:]:
            self.sources.remove(k)
        self.rules.undo(b.limiter, limiter)
        if self.mobility is not None:
            self.mobility.undo(b.mobility, mobility)
        del b.rows[rows:], b.upserts[upserts:], b.deletes[deletes:], b.seen[seen:], b.created[created:]
        del b.removed[removed:]

    def process_cloudevent(self, ce: BaseCloudEvent, b: Batch) -> bool:
        """A CloudEvent from another source: relayed as is (plus K_CE_OVERRIDES) through the outbox."""
        attrs = ce.get_attributes()
        if not self._remember(f"ce|{attrs['source']}|{attrs['id']}", b):
            self.metrics.ingest_duplicates += 1
            return False
        relayed = self.events.relay(ce)
        self._add(b, ordering_key(relayed), relayed)
        return True
