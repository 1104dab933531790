"""Channels and Subscriptions: Knative's topology-based routing, one delivery per Subscription.

What Knative does, and where it says so:
- a Channel is Addressable (channel.yaml CRD: status.address "exposes the endpoint as an URI
  to get events delivered into the Channel mesh"); an event posted there goes to every
  Subscription whose spec.channel names the Channel, with no filter (subscription.yaml CRD:
  a Subscription has channel, subscriber, reply and delivery, nothing else), at least once
  each (knative/specs, specs/eventing/control-plane.md, "Topology Based Routing");
- the subscriber's reply goes to spec.reply, never back into the Channel; without a reply
  destination it is dropped (control-plane.md, "Event Delivery"; subscription.yaml CRD:
  "replies are sent to a Destination as specified by the Reply"). A Subscription with only
  a reply delivers the event to the reply destination as if it were the subscriber
  (control-plane.md, "Subscription Lifecycle");
- delivery: the Subscription's spec.delivery, else the Channel's ("Each subscription
  delivery spec, if any, overrides this global delivery spec", channel.yaml CRD; "If a
  Subscription specifies _any_ delivery options, this field MUST be ignored",
  control-plane.md): the whole spec, never field by field. Without either: one try and no
  dead-letter sink (Brokers have config-br-defaults; a default install's default-ch-webhook
  template carries no delivery: my reading);
- the dispatcher (pkg/kncloudevents/event_dispatcher.go `send`, my reading of the 1.22
  code): the reply is sent with the same retry settings; when the subscriber or the reply
  destination fails for good, the *original* event goes to the dead-letter sink with
  knativeerrordest naming the one that failed; a CloudEvent in any 2xx answer is the reply,
  any other body is discarded (delivery.CHANNEL_DISPATCHER);
- a Channel without Subscriptions accepts the event and drops it (fanout_event_handler.go:
  "if len(subs) == 0 { // Nothing to do here; return nil }", then 202).

Unlike the InMemoryChannel (no persistence), the local broker keeps the event and one row
per Subscription in its store before the 202 (store.py), as control-plane.md asks of any
Channel ("MUST durably enqueue the event"), and delivers pending rows again on restart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from testbed.broker.delivery import (
    CHANNEL_DISPATCHER,
    NO_RESPONSE,
    Attempt,
    OnRetry,
    Outcome,
    dead_letter_event,
    send_with_retries,
)
from testbed.broker.events import Event
from testbed.broker.manifests import Channel, DeliverySpec, Destination, Manifests, Subscription
from testbed.broker.store import CHANNEL_PREFIX, DEAD_LETTERED, DELIVERED, FAILED, SUBSCRIPTION_PREFIX

Resolver = Callable[[Destination], str]


def channel_key(namespace: str, name: str) -> str:
    """How the store names a Channel: its address path without the leading slash."""
    return f"{CHANNEL_PREFIX}{namespace}/{name}"


def subscription_key(namespace: str, name: str) -> str:
    return f"{SUBSCRIPTION_PREFIX}{namespace}/{name}"


def is_subscription_key(key: str) -> bool:
    return key.startswith(SUBSCRIPTION_PREFIX)


def lab_address(channel: Channel) -> str:
    """The status.address.url an InMemoryChannel gets in a cluster (its reconciler's Service
    `<name>-kn-channel`, MakeChannelServiceName in eventing; my reading)."""
    return f"http://{channel.name}-kn-channel.{channel.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class SubscriptionRoute:
    """A Subscription with its destinations resolved (its status.physicalSubscription)."""

    subscription: Subscription
    subscriber_url: str          # the reply destination when the Subscription has only a reply
    reply_url: str | None
    delivery: DeliverySpec | None
    dls_url: str | None

    @property
    def key(self) -> str:
        return subscription_key(self.subscription.namespace, self.subscription.name)

    @property
    def structured(self) -> bool:
        return bool(self.delivery and self.delivery.format == "json")

    def physical(self) -> dict[str, str | None]:
        """The Subscription's status.physicalSubscription, as /_local/stats shows it."""
        return {"subscriberUri": self.subscriber_url, "replyUri": self.reply_url, "deadLetterSinkUri": self.dls_url}


def effective_delivery(sub: Subscription, channel: Channel) -> DeliverySpec | None:
    """The Subscription's delivery if it has one, else its Channel's (whole specs, never merged)."""
    return sub.delivery if sub.delivery is not None else channel.delivery


def subscription_routes(manifests: Manifests, resolve: Resolver) -> dict[tuple[str, str], list[SubscriptionRoute]]:
    """(namespace, channel) -> the routes of its Subscriptions; every Channel has an entry."""
    routes: dict[tuple[str, str], list[SubscriptionRoute]] = {key: [] for key in manifests.channels}
    for sub in manifests.subscriptions:
        channel = manifests.channels[(sub.namespace, sub.channel)]
        delivery = effective_delivery(sub, channel)
        dls = delivery.dead_letter_sink if delivery else None
        if sub.subscriber is not None:
            target, reply = resolve(sub.subscriber), resolve(sub.reply) if sub.reply else None
        else:  # only a reply: it takes the subscriber's place, and nothing follows it
            assert sub.reply is not None
            target, reply = resolve(sub.reply), None
        routes[(sub.namespace, sub.channel)].append(
            SubscriptionRoute(sub, target, reply, delivery, resolve(dls) if dls else None))
    return routes


@dataclass
class SubscriptionResult:
    state: str                   # delivered | dead-lettered | failed
    outcome: Outcome             # at the subscriber
    reply_id: str | None = None  # the reply sent on to spec.reply
    failed_at: str | None = None  # the URL that failed for good (subscriber or reply destination)


async def deliver(session: aiohttp.ClientSession, route: SubscriptionRoute, event: Event, *,
                  on_retry: OnRetry | None = None) -> SubscriptionResult:
    """One event to one Subscription: subscriber (with retries), then its reply to spec.reply (with
    the same retries), then, if either failed for good, the original event to the dead-letter sink."""
    outcome = await send_with_retries(session, route.subscriber_url, event, route.delivery,
                                      structured=route.structured, on_retry=on_retry, rules=CHANNEL_DISPATCHER)
    answer = outcome.attempt
    if not answer.ok:
        return await _failed(session, route, event, outcome, route.subscriber_url, answer)
    if route.reply_url is None or (answer.reply is None and answer.error is None):
        return SubscriptionResult(DELIVERED, outcome)  # no reply, or nowhere to send it: dropped
    if answer.reply is None:  # the answer held a malformed event: it cannot be sent on
        bad = Attempt(NO_RESPONSE, (answer.error or "").encode(), error=answer.error)
        return await _failed(session, route, event, outcome, route.reply_url, bad)
    sent = await send_with_retries(session, route.reply_url, answer.reply, route.delivery,
                                   structured=route.structured, rules=CHANNEL_DISPATCHER)
    reply_id = str(answer.reply.get("id"))
    if not sent.attempt.ok:
        result = await _failed(session, route, event, outcome, route.reply_url, sent.attempt)
        result.reply_id = reply_id
        return result
    return SubscriptionResult(DELIVERED, outcome, reply_id)


async def _failed(session: aiohttp.ClientSession, route: SubscriptionRoute, event: Event, outcome: Outcome,
                  dest: str, failed: Attempt) -> SubscriptionResult:
    if route.dls_url is None:
        return SubscriptionResult(FAILED, outcome, failed_at=dest)
    dl = await send_with_retries(session, route.dls_url, dead_letter_event(event, dest, failed), route.delivery,
                                 structured=route.structured, rules=CHANNEL_DISPATCHER)
    return SubscriptionResult(DEAD_LETTERED if dl.attempt.ok else FAILED, outcome, failed_at=dest)


@dataclass
class ChannelCounters:
    """What /_local/stats shows per Channel."""

    accepted: int = 0
    dropped: int = 0             # accepted while the Channel had no Subscription (as Knative: gone)
    refused: Counter[str] = field(default_factory=Counter)
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)  # per Subscription key
