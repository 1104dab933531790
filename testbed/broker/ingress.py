"""The HTTP side of the local broker (aiohttp), as Knative's broker-ingress answers.

- `POST /<namespace>/<broker>`: a CloudEvent in binary or structured mode; 202
  accepted (committed to the event store), 400 not a valid CloudEvent 1.0 (or TTL
  exhausted), 404 unknown broker, 503 with Retry-After when the store cannot write
  (nothing was accepted); `OPTIONS` 200 with the webhook headers; any other method 405
  (Allow: POST, OPTIONS); a path that is not /<namespace>/<broker> is 400 (404 for `/`).
- `POST /channels/<namespace>/<channel>`: a Channel's address (a cluster's
  `http://<channel>-kn-channel.<ns>.svc.cluster.local`): the same content modes and
  answers, 202 once the event and one pending delivery per Subscription are stored
  (testbed/broker/channels.py), 404 naming the unknown channel, 405 (Allow: POST) for
  other methods.
- `/_fn/<namespace>/<service>/...`: the activator in front of the local functions
  (the address a Trigger's `ref` to a Knative Service resolves to).
- `GET /_local/healthz`: always (a liveness probe tells nothing about the events).
- `GET /_local/stats` (broker counters, store counts, recent dispatches, per Channel
  its address and Subscriptions, function cold/warm latencies) and
  `GET /_local/events?since=N` (accepted events) and `GET /_local/eventtypes` (the manifests'
  EventTypes and the counts of undeclared types, also in stats): only with `local_api` (`testbed broker
  --local-api`), since Knative's broker ingress has no such debug API; otherwise every
  other `/_local/...` path is 404.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from testbed.broker.engine import LocalBroker
from testbed.broker.events import Event, EventError, parse_http
from testbed.broker.manifests import (
    CHANNEL_KINDS,
    Destination,
    ManifestError,
    Manifests,
    Ref,
    subscription_destinations,
)
from testbed.broker.runner import FunctionRunner
from testbed.broker.store import DEFAULT_RETAIN, STORE_FILE, AsyncEventStore

log = logging.getLogger("testbed.broker")
MAX_EVENT_BYTES = 4 * 1024 * 1024
RETRY_AFTER = 2  # seconds a sender should wait after a 503 (the store could not write)

BROKER_KEY = web.AppKey("broker", LocalBroker)
RUNNER_KEY = web.AppKey("runner", FunctionRunner)


def _resolver(base_url: str, runner: FunctionRunner) -> Callable[[Destination], str]:
    """A destination's URL, as Knative resolves a ref to its status.address.url: a Channel or a
    Broker to its address on this listener, a Knative Service to its activator path."""
    def resolve(dest: Destination) -> str:
        if dest.ref is None:
            assert dest.uri is not None
            return dest.uri
        ref = dest.ref
        if ref.kind in CHANNEL_KINDS:
            return f"{base_url}/channels/{ref.namespace}/{ref.name}"
        if ref.kind == "Broker":
            return f"{base_url}/{ref.namespace}/{ref.name}"
        return _service_url(base_url, runner, ref, dest.uri)
    return resolve


def _service_url(base_url: str, runner: FunctionRunner, ref: Ref, uri: str | None) -> str:
    if not runner.can_run(ref.namespace, ref.name):
        image = runner.unrunnable.get((ref.namespace, ref.name), "?")
        raise ManifestError(
            f"Service {ref.namespace}/{ref.name}: image {image!r} is not one of the sample functions "
            "(…/fn-<name>:<tag> with testbed/functions/<name>.py), so it cannot run locally"
        )
    url = f"{base_url}/_fn/{ref.namespace}/{ref.name}"
    if uri:  # with a ref, uri is a path relative to it
        url += "/" + uri.lstrip("/")
    return url


def check_runnable(manifests: Manifests) -> None:
    """Every Service a Trigger, a Subscription or a dead-letter sink refers to must be a sample function."""
    runner = FunctionRunner(manifests.services, Path("."))
    resolve = _resolver("http://check", runner)
    named: list[tuple[str, Destination | None]] = []
    for t in manifests.triggers:
        who = f"{t.origin}: Trigger {t.namespace}/{t.name}"
        named += [(who, t.subscriber), (who, t.delivery.dead_letter_sink if t.delivery else None)]
    for b in manifests.brokers.values():
        named.append((f"{b.origin}: Broker {b.namespace}/{b.name}", b.delivery.dead_letter_sink if b.delivery else None))
    for c in manifests.channels.values():
        named.append((f"{c.origin}: {c.kind} {c.namespace}/{c.name}",
                      c.delivery.dead_letter_sink if c.delivery else None))
    for s in manifests.subscriptions:
        named += [(f"{s.origin}: Subscription {s.namespace}/{s.name}", d) for _, d in subscription_destinations(s)]
    for who, dest in named:
        if dest is not None:
            try:
                resolve(dest)
            except ManifestError as exc:
                raise ManifestError(f"{who}: {exc}") from None


def build_app(manifests: Manifests, base_url: str, state_dir: Path, *,
              idle_override: float | None = None, grace: float | None = None, local_api: bool = False,
              durability: str = "full", retain: int = DEFAULT_RETAIN) -> web.Application:
    """The whole local broker as one aiohttp application listening at `base_url`; its event
    store is `<state_dir>/broker.db`."""
    runner = (FunctionRunner(manifests.services, state_dir, idle_override=idle_override) if grace is None
              else FunctionRunner(manifests.services, state_dir, idle_override=idle_override, grace=grace))
    store = AsyncEventStore(Path(state_dir) / STORE_FILE, durability, retain)
    broker = LocalBroker(manifests, _resolver(base_url.rstrip("/"), runner),
                         lambda ns, name: f"{base_url.rstrip('/')}/{ns}/{name}", store)
    app = web.Application(client_max_size=MAX_EVENT_BYTES)
    app[BROKER_KEY] = broker
    app[RUNNER_KEY] = runner

    async def on_startup(app: web.Application) -> None:  # the caller awaits broker.resume() once listening
        await broker.start()  # first: a store that cannot open stops everything before any function starts
        await runner.start()

    async def on_cleanup(app: web.Application) -> None:
        await broker.close()
        await runner.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/_local/healthz", _healthz)
    if local_api:
        app.router.add_get("/_local/stats", _stats)
        app.router.add_get("/_local/events", _events)
        app.router.add_get("/_local/eventtypes", _eventtypes)
    app.router.add_route("*", "/_local/{tail:.*}", _local_off)  # never a Broker: "_local" is no namespace
    app.router.add_route("*", "/channels/{namespace}/{name}", _channel_ingress)
    app.router.add_route("*", "/channels/{namespace}/{name}/", _channel_ingress)
    app.router.add_route("*", "/_fn/{namespace}/{name}", runner.handle)
    app.router.add_route("*", "/_fn/{namespace}/{name}/{tail:.*}", runner.handle)
    app.router.add_route("*", "/{path:.*}", _ingress)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _local_off(request: web.Request) -> web.Response:
    return web.Response(status=404, text="not found (the /_local debug API is served with --local-api)\n")


async def _stats(request: web.Request) -> web.Response:
    broker = request.app[BROKER_KEY]
    stats: dict[str, Any] = {
        "broker": await broker.snapshot(),
        "channels": broker.channels_snapshot(),
        "functions": request.app[RUNNER_KEY].snapshot(),
        **broker.eventtypes.snapshot(),
    }
    return web.json_response(stats)


async def _eventtypes(request: web.Request) -> web.Response:
    """The EventTypes of the manifests, and how many events of undeclared types came in, per type."""
    return web.json_response(request.app[BROKER_KEY].eventtypes.snapshot())


async def _events(request: web.Request) -> web.Response:
    """Accepted events after ``?since=N`` (a sequence number), oldest first."""
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return web.Response(status=400, text="since must be an integer\n")
    return web.json_response(await request.app[BROKER_KEY].accepted_since(since))


async def _ingress(request: web.Request) -> web.Response:
    allow = {"Allow": "POST, OPTIONS"}
    if request.method == "OPTIONS":
        return web.Response(status=200, headers={**allow, "WebHook-Allowed-Origin": "*", "WebHook-Allowed-Rate": "*"})
    if request.method != "POST":
        return web.Response(status=405, headers=allow)
    path = request.path.rstrip("/")
    if path == "":
        return web.Response(status=404)
    parts = path.split("/")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return web.Response(status=400, text="expected /<namespace>/<broker>\n")
    namespace, name = parts[1], parts[2]
    broker = request.app[BROKER_KEY]
    event = await _read_event(request)
    if isinstance(event, web.Response):
        if event.status == 400:
            broker.stats.refused["invalid"] += 1
        return event
    status = await broker.ingest(namespace, name, event)
    if status == 404:
        return web.Response(status=404, text=f"broker {namespace}/{name} not found\n")
    if status == 400:
        return web.Response(status=400, text="TTL exhausted\n")
    if status == 503:
        return _store_unavailable()
    return web.Response(status=status)


async def _channel_ingress(request: web.Request) -> web.Response:
    """A Channel's address: POST only (the channel receiver answers other methods 405)."""
    if request.method != "POST":
        return web.Response(status=405, headers={"Allow": "POST"})
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    broker = request.app[BROKER_KEY]
    event = await _read_event(request)
    if isinstance(event, web.Response):
        if event.status == 400:
            counters = broker.channel_stats.get((namespace, name))
            (counters.refused if counters else broker.stats.refused)["invalid"] += 1
        return event
    status = await broker.ingest_channel(namespace, name, event)
    if status == 404:
        return web.Response(status=404, text=f"channel {namespace}/{name} not found (no Channel or InMemoryChannel "
                                             "of that name in the manifests)\n")
    if status == 503:
        return _store_unavailable()
    return web.Response(status=status)


async def _read_event(request: web.Request) -> Event | web.Response:
    """The request's CloudEvent, or the answer refusing it (413 too large, 400 not a valid event)."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return web.Response(status=413, text="event too large\n")
    try:
        return parse_http(dict(request.headers), body)
    except EventError as exc:
        log.debug("refused event: %s", exc)
        return web.Response(status=400, text=f"{exc}\n")


def _store_unavailable() -> web.Response:
    return web.Response(status=503, headers={"Retry-After": str(RETRY_AFTER)},
                        text="the event store cannot write: event not accepted, retry later\n")
