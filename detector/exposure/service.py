"""The Nupf_EventExposure service of the detector: subscriptions and their life cycle.

- Create / modify / delete are stored (SQLite, `store.py`) before they are answered, on the
  service's own database thread; the subscriptions are reloaded on start (expired ones deleted).
- Accepted AppEvents come in through `offer` (called by the detector once they are durable, and
  only while `active`, i.e. there are subscriptions); the reporter measures them.
- ONE_TIME: the first AppEvent that gives something asked for is reported, and the subscription
  ends. PERIODIC: every repPeriod seconds (wall clock, from creation; after a restart, from the
  restart) what was measured in the period is reported; a period with nothing measured sends
  nothing. maxReports ends the subscription after that many notifications; expiry ends it at
  that time, whatever the mode. Modification keeps what was measured unless it changes what is
  measured (eventList, the target).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from detector.config import Config
from detector.exposure import jsonpatch, spec
from detector.exposure.models import NOT_FOUND, Plan, Problem, bad_request, check_create, check_subscription
from detector.exposure.notifier import Notifier
from detector.exposure.reporter import Reporter
from detector.exposure.store import StoredSubscription, SubscriptionStore, store_path
from detector.metrics import Metrics

log = logging.getLogger("detector.exposure")
T = TypeVar("T")
MAX_SUBSCRIPTIONS = 1000
TICK = 0.1                      # seconds between checks of PERIODIC reports and expiry
STORE_RETRY_AFTER = 5           # seconds, in the 503 answered when the store cannot write
# what changes the measurements: a modification of these starts them afresh
_MEASURED = ("eventList", "anyUe", "supi", "ueIpAddress", "dnn", "snssai")


@dataclass(slots=True)
class Subscription:
    id: str
    body: dict[str, Any]            # the UpfEventSubscription as stored
    plan: Plan
    created: float
    reports: int = 0
    next_due: float | None = None   # PERIODIC: when the next report is due (Unix time)

    def stored(self) -> StoredSubscription:
        return StoredSubscription(self.id, self.body, self.created, self.reports)


def store_problem(e: BaseException) -> Problem:
    return Problem(503, "Service Unavailable", f"the subscription store cannot write: {e}",
                   retry_after=STORE_RETRY_AFTER)


def not_found(sub_id: str) -> Problem:
    return Problem(404, "Not Found", f"no subscription {sub_id!r} (never created, deleted, or ended)", NOT_FOUND)


class ExposureService:
    def __init__(self, cfg: Config, metrics: Metrics | None = None) -> None:
        assert cfg.outbox
        self.path = store_path(cfg.outbox)
        self.max_body_bytes = cfg.max_body_bytes
        self.subs: dict[str, Subscription] = {}
        self.active = False            # there are subscriptions: the detector offers its AppEvents
        self.reporter = Reporter()
        self.notifier = Notifier(timeout=cfg.request_timeout, backoff_base=cfg.backoff_base,
                                 backoff_cap=cfg.backoff_cap, retry_after_cap=cfg.retry_after_cap,
                                 max_attempts=cfg.max_attempts)
        self._store: SubscriptionStore | None = None
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exposure-store")
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._warned_no_flows = False
        if metrics is not None:
            metrics.gauge("detector_exposure_subscriptions", "Nupf_EventExposure subscriptions", lambda: len(self.subs))
            metrics.gauge("detector_exposure_notifications_pending", "Nupf_EventExposure notifications not yet "
                          "delivered", lambda: self.notifier.pending)

    # ---- life cycle ----
    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    async def start(self) -> None:
        self._store = await self._db(SubscriptionStore, self.path)
        await self.notifier.start()
        now = time.time()
        for stored in await self._db(self._store.load):
            await self._resume(stored, now)
        if self.subs:
            log.info("resumed %d Nupf_EventExposure subscriptions from %s", len(self.subs), self.path)
        self._ticker = asyncio.create_task(self._tick(), name="exposure-ticker")

    async def _resume(self, stored: StoredSubscription, now: float) -> None:
        try:
            plan = check_subscription(stored.body, path=(), now=now)
        except Problem as p:   # expired while the detector was down, or no longer supported
            log.info("subscription %s not resumed (%s): deleted", stored.id, p.invalid_params or p.detail)
            await self._db(self._store_or_fail().delete, stored.id)
            return
        if plan.max_reports is not None and stored.reports >= plan.max_reports:
            await self._db(self._store_or_fail().delete, stored.id)
            return
        sub = Subscription(stored.id, stored.body, plan, stored.created, stored.reports)
        self._add(sub, now)

    async def stop(self) -> None:
        self.active = False            # nothing more is offered
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.notifier.stop()
        if self._store is not None:
            await self._db(self._store.close)
            self._store = None
        self._exec.shutdown(wait=True)

    def _store_or_fail(self) -> SubscriptionStore:
        if self._store is None:
            raise RuntimeError("the subscription store is closed")
        return self._store

    # ---- the operations ----
    async def create(self, body: Any) -> Subscription:
        """CreateEventSubscription -> the stored Subscription; raises Problem."""
        doc, plan = check_create(body)
        if len(self.subs) >= MAX_SUBSCRIPTIONS:
            raise Problem(403, "Forbidden", f"this UPF holds at most {MAX_SUBSCRIPTIONS} subscriptions")
        now = time.time()
        sub = Subscription(str(uuid.uuid4()), doc, plan, now)
        try:
            await self._db(self._store_or_fail().put, sub.stored())
        except Exception as e:
            raise store_problem(e) from e
        self._add(sub, now)
        log.info("subscription %s created: %s for %s, notifications to %s", sub.id, plan.trigger,
                 "any UE" if plan.target.any_ue else (plan.target.supi or plan.target.address or plan.target.prefix),
                 plan.notify_uri)
        return sub

    async def modify(self, sub_id: str, ops: Any) -> Subscription:
        """Apply a JSON Patch to a subscription; raises Problem (nothing changes then)."""
        sub = self.subs.get(sub_id)
        if sub is None:
            raise not_found(sub_id)
        try:
            patched = jsonpatch.apply(sub.body, ops)
        except jsonpatch.PatchError as e:
            raise bad_request("the JSON Patch cannot be applied", [{"param": e.path, "reason": str(e)}],
                              "UpfEventSubscription") from e
        now = time.time()
        plan = check_subscription(patched, path=(), now=now)
        old = sub.body
        try:
            await self._db(self._store_or_fail().put, StoredSubscription(sub.id, patched, sub.created, sub.reports))
        except Exception as e:
            raise store_problem(e) from e
        if self.subs.get(sub_id) is not sub:    # ended while it was being stored
            raise not_found(sub_id)
        sub.body, sub.plan = patched, plan
        keep = all(old.get(k) == patched.get(k) for k in _MEASURED)
        self.reporter.replan(sub.id, plan, keep, now)
        old_period = (old.get("eventReportingMode") or {}).get("repPeriod")
        if plan.rep_period is None:
            sub.next_due = None
        elif sub.next_due is None or old_period != plan.rep_period:
            sub.next_due = now + plan.rep_period
        if plan.max_reports is not None and sub.reports >= plan.max_reports:
            self._end(sub, "maxReports reached")
        return sub

    async def delete(self, sub_id: str) -> None:
        """Unsubscribe; raises Problem (404, or 503 when the store cannot write)."""
        sub = self.subs.get(sub_id)
        if sub is None:
            raise not_found(sub_id)
        try:
            await self._db(self._store_or_fail().delete, sub_id)
        except Exception as e:
            raise store_problem(e) from e
        self._forget(sub_id)
        self.notifier.cancel(sub_id)
        log.info("subscription %s deleted", sub_id)

    # ---- measuring and reporting ----
    def offer(self, events: list[dict[str, Any]]) -> None:
        """Accepted (durable) AppEvents; ONE_TIME subscriptions they complete are reported and end."""
        if self._store is None:
            return
        for sub_id, data in self.reporter.offer(events, time.time()):
            sub = self.subs.get(sub_id)
            if sub is not None:
                self._notify(sub, data)
                self._end(sub, "ONE_TIME report sent")

    def _add(self, sub: Subscription, now: float) -> None:
        self.subs[sub.id] = sub
        if sub.plan.rep_period is not None:
            sub.next_due = now + sub.plan.rep_period
        self.reporter.watch(sub.id, sub.plan, now)
        self.active = True

    def _forget(self, sub_id: str) -> None:
        self.subs.pop(sub_id, None)
        self.reporter.unwatch(sub_id)
        self.active = bool(self.subs)

    def _end(self, sub: Subscription, why: str) -> None:
        """The subscription is over (ONE_TIME sent, maxReports, expiry): forget it, delete it from the store.
        Notifications already queued are still delivered."""
        self._forget(sub.id)
        log.info("subscription %s ended: %s", sub.id, why)
        self._store_later(f"deleting subscription {sub.id}", "delete", sub.id)

    def _store_later(self, what: str, method: str, *args: Any) -> None:
        """Run a store method in the background (its failure is logged)."""
        store = self._store
        if store is None:
            log.error("%s: the subscription store is closed", what)
            return
        self._in_background(self._db(getattr(store, method), *args), what)

    def _in_background(self, aw: Any, what: str) -> None:
        async def run() -> None:
            try:
                await aw
            except Exception as e:
                log.error("%s failed: %s", what, e)
        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _notify(self, sub: Subscription, data: dict[str, Any]) -> None:
        self._warn_without_flows(sub.plan)
        self.notifier.send(sub.id, sub.plan.notify_uri, data)
        sub.reports += 1

    def _warn_without_flows(self, plan: Plan) -> None:
        wants_volume = any(spec.VOLUME in e.measurements or spec.THROUGHPUT in e.measurements for e in plan.events)
        if wants_volume and not self.reporter.saw_flow_end and not self._warned_no_flows:
            self._warned_no_flows = True
            log.warning("no flow.end AppEvents seen: VOLUME_MEASUREMENT and THROUGHPUT_MEASUREMENT need the tap "
                        "to run with --flows; reporting APPLICATION_RELATED_INFO only")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.check_due(time.time())

    def check_due(self, now: float) -> None:
        """End expired subscriptions; send the PERIODIC reports that are due."""
        for sub in list(self.subs.values()):
            plan = sub.plan
            if plan.expiry is not None and now >= plan.expiry:
                self._end(sub, "expiry reached")
            elif sub.next_due is not None and plan.rep_period is not None and now >= sub.next_due:
                while sub.next_due <= now:     # after a stall, skip the periods missed
                    sub.next_due += plan.rep_period
                self._report_period(sub, now)

    def _report_period(self, sub: Subscription, now: float) -> None:
        data = self.reporter.take(sub.id, now)
        if data is None:
            return
        self._notify(sub, data)
        if sub.plan.max_reports is not None and sub.reports >= sub.plan.max_reports:
            self._end(sub, "maxReports reached")
        else:
            self._store_later(f"storing the report count of {sub.id}", "set_reports", sub.id, sub.reports)
