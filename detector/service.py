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
from typing import Any, TypeVar

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.v1.event import CloudEvent

from detector.cloudevent import EventBuilder, ordering_key, to_http, ue_key
from detector.config import Config
from detector.delivery import DeliveryClient
from detector.metrics import Metrics
from detector.outbox import Outbox, Row
from detector.rules import RuleSet
from detector.schema import check_app_event, parse_time
from detector.sources import Source, SourceTracker

log = logging.getLogger("detector")
CHECKPOINT_INTERVAL = 0.5  # seconds between WAL checkpoints
T = TypeVar("T")


class Batch:
    """What one request adds: outbox rows and source-table changes."""

    __slots__ = ("created", "deletes", "rows", "seen", "upserts")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.upserts: list[dict[str, Any]] = []
        self.deletes: list[str] = []
        self.seen: list[str] = []     # dedupe keys added (forgotten again if the commit fails)
        self.created: list[str] = []  # sources created (dropped again if the commit fails)


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
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._ckpt_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-checkpoint")
        self._seq = 0
        self._seen: OrderedDict[str, None] = OrderedDict()   # recent AppEvent ids, oldest first
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
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush_writes()
        await self._flush_acks()
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
            except asyncio.CancelledError:   # `stop` cancelled the acker: its final flush takes them
                self._acks[:0] = seqs
                raise

    async def _acker(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.ack_interval)
            try:
                await self._flush_acks()
            except Exception as e:  # a failed delete only means a redelivery later
                log.error("outbox ack failed: %s", e)

    async def _checkpointer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            if self.outbox is not None:
                try:
                    await loop.run_in_executor(self._ckpt_exec, self.outbox.checkpoint)
                except Exception as e:  # busy or failing: the backstop auto-checkpoint still runs
                    log.warning("outbox checkpoint: %s", e)

    async def _flush_writes(self) -> None:
        batch, self._wq = self._wq, []
        if not batch:
            return
        rows = [r for b, _ in batch for r in b.rows]
        ups = [u for b, _ in batch for u in b.upserts]
        dels = [d for b, _ in batch for d in b.deletes]
        assert self.outbox is not None
        try:
            await self.db(self.outbox.commit, rows, ups, dels)
        except Exception as e:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        self.delivery.enqueue(rows)
        self.metrics.emitted += len(rows)
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            await self._flush_writes()

    async def persist(self, batch: Batch) -> None:
        """Durably store a batch (group commit); raises if the database refused it."""
        if not (batch.rows or batch.upserts or batch.deletes):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wq.append((batch, fut))
        self._wake_writer.set()
        try:
            await fut
        except Exception:
            for k in batch.seen:
                self._seen.pop(k, None)
            for k in batch.created:
                self.sources.remove(k)
            raise

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
                self._expire(s, "idle", now, b)
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
            return False
        self._seen[key] = None
        b.seen.append(key)
        if len(self._seen) > self.cfg.dedupe_window:
            self._seen.popitem(last=False)
        return True

    def _add(self, b: Batch, key: str, ce: CloudEvent) -> None:
        headers, body = to_http(ce, self.cfg.structured)
        b.rows.append(Row(self._next_seq(), ce.get_id(), key, headers, body,
                          json.dumps(headers, separators=(",", ":"))))

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
        out = self.rules.evaluate(ev, key, ts)
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
                self._add(b, key, self.events.for_rule(ev, rule, ctx, t, uri))
        if src is not None and ev["kind"] == "session.down":
            self.sources.remove(key)
            self._expire(src, "session.down", now, b)
        return True

    def process_lines(self, body: bytes, b: Batch) -> tuple[int, int, list[dict[str, Any]]]:
        """NDJSON -> rows; returns (accepted, duplicates, rejected [{line, reason}])."""
        accepted = dup = 0
        rejected: list[dict[str, Any]] = []
        now = time.time()
        for i, line in enumerate(body.split(b"\n"), 1):
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except UnicodeDecodeError:
                rejected.append({"line": i, "reason": "not UTF-8"})
                continue
            except json.JSONDecodeError as e:
                rejected.append({"line": i, "reason": f"bad JSON: {e.msg} at column {e.colno}"})
                continue
            except (RecursionError, ValueError):
                rejected.append({"line": i, "reason": "bad JSON: nested too deeply or out of range"})
                continue
            reason = check_app_event(ev)
            if reason:
                rejected.append({"line": i, "reason": f"schema: {reason}"})
                continue
            marks = (len(b.rows), len(b.upserts), len(b.deletes), len(b.seen), len(b.created))
            try:
                if self.process(ev, b, now):
                    accepted += 1
                else:
                    dup += 1
            except Exception as e:  # a rule or the SDK refused the result: refuse the line, keep going
                self._undo(b, marks)
                rejected.append({"line": i, "reason": f"cannot build CloudEvent: {str(e).splitlines()[0]}"})
        return accepted, dup, rejected

    def _undo(self, b: Batch, marks: tuple[int, ...]) -> None:
        for k in b.seen[marks[3]:]:
            self._seen.pop(k, None)
        for k in b.created[marks[4]:]:
            self.sources.remove(k)
        del b.rows[marks[0]:], b.upserts[marks[1]:], b.deletes[marks[2]:], b.seen[marks[3]:], b.created[marks[4]:]

    def process_cloudevent(self, ce: BaseCloudEvent, b: Batch) -> bool:
        """A CloudEvent from another source: relayed as is (plus K_CE_OVERRIDES) through the outbox."""
        attrs = ce.get_attributes()
        if not self._remember(f"ce|{attrs['source']}|{attrs['id']}", b):
            self.metrics.ingest_duplicates += 1
            return False
        relayed = self.events.relay(ce)
        self._add(b, ordering_key(relayed), relayed)
        return True
