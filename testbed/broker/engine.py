"""The data plane: accept an event into a Broker (fan it out to the matching Triggers) or into a
Channel (fan it out to every Subscription: testbed/broker/channels.py).

What Knative's MT channel-based broker does, in one process:
- ingress: stamps `knativearrivaltime`, manages the TTL (`knativebrokerttl`: set to
  255 when absent, else decremented; 0 or less is refused with 400), then 202;
- per Trigger: filter, remove the TTL extension, deliver with the Trigger's `delivery`
  (or the Broker's when the Trigger has none; the Broker's defaults to retry 10,
  exponential, PT0.2S), dead-letter on final failure;
- a reply (a CloudEvent in a 2xx answer other than 202) gets the original TTL and goes
  back through the ingress, so the decrement stops reply loops; a reply the ingress
  refuses makes the original event go to the dead-letter sink.

Unlike the MT channel-based broker (whose InMemoryChannel holds events in memory), the
202 comes only once the event and one pending row per matching Trigger are committed to
the event store (testbed/broker/store.py); each row is updated when its delivery ends,
and on start every pending row is delivered again: at least once per Trigger across a
kill -9 of the broker. Channels use the same store, one pending row per Subscription.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from testbed.broker.channels import (
    ChannelCounters,
    SubscriptionRoute,
    channel_key,
    deliver,
    is_subscription_key,
    lab_address,
    subscription_routes,
)
from testbed.broker.delivery import (
    DEFAULT_BROKER_DELIVERY,
    Attempt,
    Outcome,
    dead_letter_event,
    send_with_retries,
)
from testbed.broker.events import Event
from testbed.broker.eventtypes import EventTypeRegistry
from testbed.broker.filters import Filter, passes, trigger_filter
from testbed.broker.manifests import (
    DEFAULT_CHANNEL_TEMPLATE,
    MESSAGING_V1,
    Broker,
    DeliverySpec,
    Destination,
    Manifests,
    Ref,
    Trigger,
)
from testbed.broker.store import (
    DEAD_LETTERED,
    DELIVERED,
    FAILED,
    PENDING,
    AsyncEventStore,
    DeliveryUpdate,
    StoreError,
)

log = logging.getLogger("testbed.broker")

TTL_ATTRIBUTE = "knativebrokerttl"
DEFAULT_TTL = 255
ARRIVAL_ATTRIBUTE = "knativearrivaltime"
HISTORY = 1000  # dispatch records kept for /_local/stats
STOP_GRACE = 3.0  # seconds `close` lets deliveries run before cancelling them (they stay pending)

Resolver = Callable[[Destination], str]


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def next_ttl(event: Event) -> int:
    """Knative's TTLDefaulter: default when absent or not an integer, else one less (not below 0)."""
    raw = event.attrs.get(TTL_ATTRIBUTE)
    if raw is None:
        return DEFAULT_TTL
    try:
        ttl = int(str(raw))
    except ValueError:
        return DEFAULT_TTL
    return max(ttl - 1, 0)


@dataclass
class Dispatch:
    """What happened to one event at one Trigger (or Subscription)."""

    trigger: str                 # namespace/name of a Trigger, or subscriptions/namespace/name
    event_id: str
    event_type: str
    outcome: str                 # delivered | dead-lettered | failed
    status: int
    tries: int
    reply_id: str | None = None
    seconds: float = 0.0


@dataclass
class _Route:
    trigger: Trigger
    flt: Filter
    url: str
    delivery: DeliverySpec | None
    dls_url: str | None
    structured: bool

    @property
    def key(self) -> str:
        """namespace/name: how the store names the Trigger."""
        return f"{self.trigger.namespace}/{self.trigger.name}"


@dataclass
class BrokerStats:
    accepted: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    dispatches: deque[Dispatch] = field(default_factory=lambda: deque(maxlen=HISTORY))
    outcomes: Counter[str] = field(default_factory=Counter)
    recovered: int = 0           # pending deliveries loaded from the store at start
    orphaned: int = 0            # pending deliveries whose Trigger/Subscription the manifests no longer have


class LocalBroker:
    """All Brokers and Channels of a manifest set; `ingest` and `ingest_channel` are what the HTTP
    ingress calls.

    Lifecycle: `start` (open the store), `resume` once the ingress listens (deliver what
    the store still has pending: a Trigger's subscriber may be a local function behind
    that very listener), `drain` (wait for every delivery), `close` (let deliveries run for
    a grace period, cancel the rest: their rows stay pending for the next start; then close
    the store).
    """

    def __init__(self, manifests: Manifests, resolve: Resolver, ingress_url: Callable[[str, str], str],
                 store: AsyncEventStore) -> None:
        self.manifests = manifests
        self.ingress_url = ingress_url
        self.store = store
        self.stats = BrokerStats()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._routes: dict[tuple[str, str], list[_Route]] = {key: [] for key in manifests.brokers}
        for t in manifests.triggers:
            broker = manifests.brokers[(t.namespace, t.broker)]
            delivery = t.delivery if t.delivery is not None else _broker_delivery(broker)
            dls = delivery.dead_letter_sink if delivery else None
            self._routes[(t.namespace, t.broker)].append(_Route(
                t, trigger_filter(t), resolve(t.subscriber), delivery,
                resolve(dls) if dls else None, bool(delivery and delivery.format == "json"),
            ))
        self._by_trigger = {r.key: r for routes in self._routes.values() for r in routes}
        self._resolve = resolve
        self._channel_routes = subscription_routes(manifests, resolve)
        self._by_subscription = {r.key: r for routes in self._channel_routes.values() for r in routes}
        self.channel_stats = {key: ChannelCounters() for key in manifests.channels}
        self.eventtypes = EventTypeRegistry(manifests.eventtypes.values())  # warns about undeclared types

    async def start(self) -> None:
        await self.store.open()  # first: nothing to clean up if it cannot open
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    async def resume(self) -> None:
        """Deliver again what was accepted but not finished when the broker last stopped."""
        orphans: Counter[str] = Counter()
        for p in await self.store.pending():
            if is_subscription_key(p.trigger):
                sub_route = self._by_subscription.get(p.trigger)
                if sub_route is not None:
                    self.stats.recovered += 1
                    self._spawn(self._dispatch_subscription(sub_route, p.seq, p.event))
                    continue
            elif (route := self._by_trigger.get(p.trigger)) is not None:
                self.stats.recovered += 1
                self._spawn(self._dispatch(route, p.seq, p.event))
                continue
            orphans[p.trigger] += 1  # kept pending: the Trigger or Subscription may come back with the manifests
        self.stats.orphaned = sum(orphans.values())
        if self.stats.recovered:
            log.info("resuming %d pending deliveries from %s", self.stats.recovered, self.store.path)
        for trigger, n in sorted(orphans.items()):
            log.warning("%d pending deliveries for %s, which the manifests no longer have: kept", n, trigger)

    async def close(self, grace: float = STOP_GRACE) -> None:
        try:
            await self.drain(grace)
        except TimeoutError:
            log.info("stopping with %d deliveries in flight: they stay pending in the store", len(self._tasks))
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.store.close()

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every accepted event (and the replies it caused) is fully dispatched."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._tasks:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("broker still dispatching")
            await asyncio.wait(set(self._tasks), timeout=left)
        await self.store.sync()  # and their outcomes are in the store, not only queued for it

    def has_broker(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.manifests.brokers

    async def ingest(self, namespace: str, name: str, event: Event) -> int:
        """Accept an event into a Broker: 202 once stored, or 404 (unknown broker), 400 (TTL
        exhausted), 503 (the store refused the write: nothing was accepted)."""
        key = (namespace, name)
        if key not in self.manifests.brokers:
            self.stats.refused["unknown-broker"] += 1
            return 404
        event = event.copy()
        event.attrs[ARRIVAL_ATTRIBUTE] = _now_rfc3339()
        ttl = next_ttl(event)
        event.attrs[TTL_ATTRIBUTE] = str(ttl)
        if ttl <= 0:
            self.stats.refused["ttl-exhausted"] += 1
            log.debug("dropping event %s: TTL exhausted", event.get("id"))
            return 400
        routes = [r for r in self._routes[key] if self._matches(r, event)]
        try:
            seq = await self.store.append(f"{namespace}/{name}", event, [r.key for r in routes])
        except StoreError as exc:
            self.stats.refused["store-unavailable"] += 1
            log.warning("refusing event %s (503): %s", event.get("id"), exc)
            return 503
        self.stats.accepted[f"{namespace}/{name}"] += 1
        self.eventtypes.check(namespace, "Broker", name, str(event.get("type")))
        for route in routes:
            self._spawn(self._dispatch(route, seq, event))
        return 202

    def has_channel(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.manifests.channels

    def channel_url(self, namespace: str, name: str) -> str:
        """The Channel's address on this broker (what status.address.url is in a cluster)."""
        return self._resolve(Destination(Ref("Channel", name, namespace, MESSAGING_V1)))

    async def ingest_channel(self, namespace: str, name: str, event: Event) -> int:
        """Accept an event into a Channel: 202 once stored with one pending row per Subscription (also
        with none: then it is dropped, as Knative does), 404 unknown channel, 503 the store refused."""
        counters = self.channel_stats.get((namespace, name))
        if counters is None:
            self.stats.refused["unknown-channel"] += 1
            return 404
        event = event.copy()  # stored as received: a Channel stamps no arrival time and keeps no TTL
        routes = self._channel_routes[(namespace, name)]
        try:
            seq = await self.store.append(channel_key(namespace, name), event, [r.key for r in routes])
        except StoreError as exc:
            counters.refused["store-unavailable"] += 1
            log.warning("refusing event %s for channel %s/%s (503): %s", event.get("id"), namespace, name, exc)
            return 503
        counters.accepted += 1
        self.eventtypes.check(namespace, self.manifests.channels[(namespace, name)].kind, name, str(event.get("type")))
        if not routes:
            counters.dropped += 1
            log.debug("channel %s/%s has no Subscription: event %s dropped", namespace, name, event.get("id"))
        for route in routes:
            self._spawn(self._dispatch_subscription(route, seq, event))
        return 202

    async def _dispatch_subscription(self, route: SubscriptionRoute, seq: int, event: Event) -> None:
        try:
            await self._deliver_subscription(route, seq, event)
        except Exception:  # as _dispatch: logged, counted, and the row stays pending
            log.exception("subscription %s: dispatch of event %s failed", route.key, event.get("id"))
            self.stats.outcomes["failed"] += 1

    async def _deliver_subscription(self, route: SubscriptionRoute, seq: int, event: Event) -> None:
        assert self._session is not None, "LocalBroker.start() was not awaited"
        started = time.monotonic()

        def note_retry(attempt: Attempt) -> None:
            self.store.update(DeliveryUpdate(seq, route.key, PENDING, 1, attempt.status))

        result = await deliver(self._session, route, event, on_retry=note_retry)
        if result.failed_at is not None:
            log.warning("subscription %s: event %s failed at %s (%s): %s", route.key, event.get("id"),
                        result.failed_at, result.outcome.attempt.status, result.state)
        self.store.update(DeliveryUpdate(seq, route.key, result.state, 1, result.outcome.attempt.status))
        sub = route.subscription
        per_sub = self.channel_stats[(sub.namespace, sub.channel)].outcomes
        per_sub.setdefault(route.key, Counter())[result.state] += 1
        self._record(route.key, event, result.state, result.outcome, result.reply_id, time.monotonic() - started)

    def _matches(self, route: _Route, event: Event) -> bool:
        try:
            return passes(route.flt, event.attrs)
        except Exception:  # a filter bug must not refuse the event for the other Triggers
            log.exception("trigger %s: filter failed on event %s", route.key, event.get("id"))
            return False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, route: _Route, seq: int, event: Event) -> None:
        try:
            await self._deliver(route, seq, event)
        except Exception:  # one bad dispatch must not go unnoticed nor stop the others; it stays pending
            log.exception("trigger %s: dispatch of event %s failed", route.key, event.get("id"))
            self.stats.outcomes["failed"] += 1

    async def _deliver(self, route: _Route, seq: int, event: Event) -> None:
        assert self._session is not None, "LocalBroker.start() was not awaited"
        started = time.monotonic()
        ttl = _stamped_ttl(event)
        out = event.copy()
        out.attrs.pop(TTL_ATTRIBUTE, None)  # the broker's own extension is not for subscribers
        t = route.trigger

        def note_retry(attempt: Attempt) -> None:
            self.store.update(DeliveryUpdate(seq, route.key, PENDING, 1, attempt.status))

        outcome = await send_with_retries(self._session, route.url, out, route.delivery,
                                          structured=route.structured, on_retry=note_retry)
        failed: Attempt | None = None
        failed_dest = route.url
        reply_id = None
        if outcome.attempt.ok and outcome.attempt.reply is not None:
            reply = outcome.attempt.reply
            reply.attrs[TTL_ATTRIBUTE] = str(ttl)
            reply_id = str(reply.get("id"))
            code = await self.ingest(t.namespace, t.broker, reply)  # stored before the original is done
            if code != 202:
                failed = Attempt(code, b"")
                failed_dest = self.ingress_url(t.namespace, t.broker)
        elif not outcome.attempt.ok:
            failed = outcome.attempt
        result = DELIVERED
        if failed is not None:
            result = await self._dead_letter(route, out, failed_dest, failed)
        self.store.update(DeliveryUpdate(seq, route.key, result, 1, outcome.attempt.status))
        self._record(route.key, event, result, outcome, reply_id, time.monotonic() - started)

    async def _dead_letter(self, route: _Route, event: Event, dest: str, failed: Attempt) -> str:
        t = route.trigger
        if route.dls_url is None:
            log.warning("trigger %s/%s: event %s failed (%s) and there is no dead-letter sink",
                        t.namespace, t.name, event.get("id"), failed.status)
            return FAILED
        assert self._session is not None
        dl = await send_with_retries(self._session, route.dls_url, dead_letter_event(event, dest, failed),
                                     route.delivery, structured=route.structured)
        if dl.attempt.ok:
            return DEAD_LETTERED
        log.warning("trigger %s/%s: event %s could not reach the dead-letter sink either (%s)",
                    t.namespace, t.name, event.get("id"), dl.attempt.status)
        return FAILED

    def _record(self, name: str, event: Event, result: str, outcome: Outcome, reply_id: str | None,
                seconds: float) -> None:
        self.stats.outcomes[result] += 1
        self.stats.dispatches.append(Dispatch(
            name, str(event.get("id")), str(event.get("type")), result,
            outcome.attempt.status, outcome.tries, reply_id, seconds,
        ))

    async def accepted_since(self, seq: int) -> list[dict[str, Any]]:
        """Accepted events with a sequence number above ``seq``, oldest first, from the store
        (so across restarts, up to the store's retention)."""
        return await self.store.events_since(seq)

    async def snapshot(self) -> dict[str, Any]:
        s = self.stats
        store = self.store
        return {
            "accepted": dict(s.accepted),
            "refused": dict(s.refused),
            "outcomes": dict(s.outcomes),
            "in_flight": len(self._tasks),
            "recent": [d.__dict__ for d in list(s.dispatches)[-50:]],
            "store": {"path": str(store.path), "durability": store.durability, "write_errors": store.write_errors,
                      "transactions": store.transactions, "events_committed": store.events_committed,
                      "recovered": s.recovered, "orphaned": s.orphaned, **await store.counts()},
        }


    def channels_snapshot(self) -> dict[str, Any]:
        """Per Channel (namespace/name): its address here and in a cluster, what it accepted and
        dropped, and per Subscription the resolved destinations and the delivery outcomes."""
        out: dict[str, Any] = {}
        for (ns, name), channel in sorted(self.manifests.channels.items()):
            counters = self.channel_stats[(ns, name)]
            template = channel.template or (DEFAULT_CHANNEL_TEMPLATE if channel.kind == "Channel" else None)
            out[f"{ns}/{name}"] = {
                "kind": channel.kind,
                "channelTemplate": template,
                "address": self.channel_url(ns, name),
                "lab_address": lab_address(channel),
                "accepted": counters.accepted,
                "dropped": counters.dropped,
                "refused": dict(counters.refused),
                "subscriptions": {r.key.split("/", 1)[1]: {**r.physical(), "outcomes": dict(counters.outcomes.get(r.key, {}))}
                                  for r in self._channel_routes[(ns, name)]},
            }
        return out


def _stamped_ttl(event: Event) -> int:
    """The TTL the ingress stamped on an accepted event."""
    try:
        return int(str(event.attrs.get(TTL_ATTRIBUTE)))
    except ValueError:
        return DEFAULT_TTL


def _broker_delivery(broker: Broker) -> DeliverySpec:
    return broker.delivery if broker.delivery is not None else DEFAULT_BROKER_DELIVERY
