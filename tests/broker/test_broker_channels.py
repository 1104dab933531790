"""Channels and Subscriptions over real loopback HTTP: the Channel's address, fan-out to every
Subscription, replies to `reply` (a uri, a Broker, a Channel; never back into the channel),
Knative's delivery rules, a channel without Subscriptions, unknown channels, kill -9 and a
restart, the Broker ingress alongside, and the project's own k8s/knative/channel.yaml."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from brokerlib import (
    REPO,
    BrokerProcess,
    Received,
    assert_manifest_error,
    broker_with_trigger,
    free_port,
    running_broker,
    subscriber,
    wait_for,
    write_manifests,
)

from testbed.broker.manifests import load_manifests

EVENT = {"specversion": "1.0", "id": "c-1", "source": "/detector/ue/1", "type": "mec.app.buy"}
CHANNEL_PATH = "/channels/mec/events"


def channel(name: str = "events", delivery: str = "") -> str:
    return f"""\
apiVersion: messaging.knative.dev/v1
kind: Channel
metadata: {{name: {name}, namespace: mec}}
spec: {{{delivery}}}
---
"""


def subscription(name: str, spec: str, channel_name: str = "events") -> str:
    return f"""\
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {{name: {name}, namespace: mec}}
spec:
  channel: {{apiVersion: messaging.knative.dev/v1, kind: Channel, name: {channel_name}}}
{spec}
---
"""


def reply_to(rec: Received, reply_id: str = "r-1") -> tuple[int, dict[str, str], bytes]:
    """A subscriber's answer carrying a reply event (binary mode, 200)."""
    headers = {"ce-specversion": "1.0", "ce-id": reply_id, "ce-source": "/test/fn",
               "ce-type": "mec.reply", "Content-Type": "application/json"}
    return 200, headers, json.dumps({"for": rec.attrs["id"]}).encode()


def event(i: int, **extra: str) -> dict[str, str]:
    return {**EVENT, "id": f"c-{i}", **extra}


# ------------------------------------------------------------------ fan-out, content modes, stats

async def test_every_subscription_gets_every_event_unchanged(manifest_dir: Path, state_dir: Path) -> None:
    async with subscriber() as sub:
        write_manifests(manifest_dir, channel() + subscription("a", f'  subscriber: {{uri: "{sub.url}/a"}}')
                        + subscription("b", f'  subscriber: {{uri: "{sub.url}/b"}}'))
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.send({**event(1), "supi": "imsi-999700000000001"}, {"item": 3},
                                     path=CHANNEL_PATH) == 202
            structured = json.dumps({**event(2), "type": "mec.upf.flow.start", "data": {"n": 2}}).encode()
            assert await broker.post(CHANNEL_PATH, {"Content-Type": "application/cloudevents+json"}, structured) == 202
            await broker.settle()
            stats = await broker.stats()
            async with broker.session.get(broker.url + "/_local/events") as resp:
                events = await resp.json()
    for path in ("/a", "/b"):
        assert sorted(sub.ids(path)) == ["c-1", "c-2"]  # no filter: every event, to every Subscription
        first = next(r for r in sub.at(path) if r.attrs["id"] == "c-1")
        assert first.data == {"item": 3} and first.attrs["supi"] == "imsi-999700000000001"
        # a Channel stamps nothing: no arrival time, no broker TTL
        assert "knativearrivaltime" not in first.attrs and "knativebrokerttl" not in first.attrs
        assert first.headers.get("Prefer") == "reply"
    ch = stats["channels"]["mec/events"]
    assert ch["address"] == broker.url + CHANNEL_PATH
    assert ch["lab_address"] == "http://events-kn-channel.mec.svc.cluster.local"
    assert ch["channelTemplate"] == {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel"}
    assert (ch["accepted"], ch["dropped"]) == (2, 0)
    assert ch["subscriptions"]["mec/a"]["subscriberUri"] == f"{sub.url}/a"
    assert ch["subscriptions"]["mec/b"]["outcomes"] == {"delivered": 2}
    assert [(e.get("channel"), "broker" in e) for e in events] == [("mec/events", False)] * 2
    assert all(isinstance(e["accepted"], float) for e in events)


async def test_a_channel_without_subscriptions_accepts_and_drops(manifest_dir: Path, state_dir: Path) -> None:
    # Knative's fanout handler: no subscriptions, "Nothing to do here", and the receiver answers 202
    write_manifests(manifest_dir, channel("quiet"))
    async with running_broker(manifest_dir, state_dir) as broker:
        assert await broker.send(event(1), path="/channels/mec/quiet") == 202
        await broker.settle()
        stats = await broker.stats()
    quiet = stats["channels"]["mec/quiet"]
    assert (quiet["accepted"], quiet["dropped"], quiet["subscriptions"]) == (1, 1, {})
    assert stats["broker"]["store"]["pending"] == 0 and stats["broker"]["store"]["events"] == 1


async def test_unknown_channel_wrong_method_and_bad_event(manifest_dir: Path, state_dir: Path) -> None:
    write_manifests(manifest_dir, channel())
    async with running_broker(manifest_dir, state_dir) as broker:
        async with broker.session.post(broker.url + "/channels/mec/nope", headers={
                f"ce-{k}": v for k, v in EVENT.items()}) as resp:
            assert resp.status == 404
            assert "channel mec/nope not found" in await resp.text()
        async with broker.session.get(broker.url + CHANNEL_PATH) as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST"
        assert await broker.post(CHANNEL_PATH, {"ce-specversion": "1.0", "ce-id": "x"}) == 400  # no source, type
        assert await broker.send(event(1), path=CHANNEL_PATH + "/") == 202  # a trailing slash is the same address
        stats = await broker.stats()
    assert stats["broker"]["refused"]["unknown-channel"] == 1
    assert stats["channels"]["mec/events"]["refused"] == {"invalid": 1}


# ------------------------------------------------------------------ replies

async def test_a_reply_goes_to_the_reply_destination_never_back_into_the_channel(
        manifest_dir: Path, state_dir: Path) -> None:
    async with subscriber() as sub:
        sub.behaviours["/fn"] = reply_to
        sub.behaviours["/fn-no-reply-dest"] = lambda r: reply_to(r, "r-dropped")
        write_manifests(manifest_dir, channel()
                        + subscription("with-reply", f'  subscriber: {{uri: "{sub.url}/fn"}}\n'
                                                     f'  reply: {{uri: "{sub.url}/replies"}}')
                        + subscription("without", f'  subscriber: {{uri: "{sub.url}/fn-no-reply-dest"}}')
                        + subscription("audit", f'  subscriber: {{uri: "{sub.url}/audit"}}')
                        + subscription("reply-only", f'  reply: {{uri: "{sub.url}/reply-only"}}'))
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.send(event(1), {"n": 1}, path=CHANNEL_PATH) == 202
            await broker.settle()
            stats = await broker.stats()
    [reply] = sub.at("/replies")
    assert (reply.attrs["id"], reply.attrs["type"], reply.data) == ("r-1", "mec.reply", {"for": "c-1"})
    assert sub.ids("/audit") == ["c-1"]  # the reply did not come back through the channel
    assert "r-dropped" not in {r.attrs["id"] for r in sub.got}  # no spec.reply: the reply is dropped
    # only a reply: the event goes there as if it were the subscriber (knative/specs control-plane.md)
    assert sub.ids("/reply-only") == ["c-1"]
    subs = stats["channels"]["mec/events"]["subscriptions"]
    assert subs["mec/with-reply"]["replyUri"] == f"{sub.url}/replies"
    assert subs["mec/reply-only"] == {"subscriberUri": f"{sub.url}/reply-only", "replyUri": None,
                                      "deadLetterSinkUri": None, "outcomes": {"delivered": 1}}
    recent = {d["trigger"]: d for d in stats["broker"]["recent"]}
    assert recent["subscriptions/mec/with-reply"]["reply_id"] == "r-1"


async def test_replies_to_a_broker_and_to_a_channel(manifest_dir: Path, state_dir: Path) -> None:
    async with subscriber() as sub:
        sub.behaviours["/to-broker"] = lambda r: reply_to(r, "r-broker")
        sub.behaviours["/to-channel"] = lambda r: reply_to(r, "r-channel")
        write_manifests(manifest_dir, broker_with_trigger("replies", "mec.reply", f"{sub.url}/broker-trigger") + channel() + channel("onward")
            + subscription("via-broker", f'  subscriber: {{uri: "{sub.url}/to-broker"}}\n'
                                         "  reply: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, "
                                         "name: default}}")
            + subscription("via-channel", f'  subscriber: {{uri: "{sub.url}/to-channel"}}\n'
                                          "  reply: {ref: {apiVersion: messaging.knative.dev/v1, kind: Channel, "
                                          "name: onward}}")
            + subscription("onward-log", f'  subscriber: {{uri: "{sub.url}/onward"}}', "onward"))
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.send(event(1), path=CHANNEL_PATH) == 202
            await broker.settle()
            await wait_for(lambda: sub.at("/broker-trigger") and sub.at("/onward"), what="both replies")
            await broker.settle()
            stats = await broker.stats()
    [via_broker] = sub.at("/broker-trigger")
    assert via_broker.attrs["id"] == "r-broker"
    assert "knativearrivaltime" in via_broker.attrs  # it went through the Broker's ingress
    assert sub.ids("/onward") == ["r-channel"]
    subs = stats["channels"]["mec/events"]["subscriptions"]
    assert subs["mec/via-broker"]["replyUri"] == broker.url + "/mec/default"
    assert subs["mec/via-channel"]["replyUri"] == broker.url + "/channels/mec/onward"
    assert stats["broker"]["accepted"] == {"mec/default": 1}


# ------------------------------------------------------------------ delivery: retry, backoff, dead letters, timeout

async def test_retry_then_dead_letter_with_the_subscription_or_the_channel_delivery(
        manifest_dir: Path, state_dir: Path) -> None:
    async with subscriber() as sub:
        for path in ("/own", "/inherits", "/own-no-dls"):
            sub.behaviours[path] = lambda r: (503, {}, b"busy")
        write_manifests(manifest_dir, channel(delivery=f'delivery: {{retry: 1, deadLetterSink: {{uri: "{sub.url}/channel-dls"}}}}')
                        + subscription("own", f'  subscriber: {{uri: "{sub.url}/own"}}\n'
                                              '  delivery: {retry: 2, backoffPolicy: linear, backoffDelay: PT0.05S, '
                                              f'deadLetterSink: {{uri: "{sub.url}/dls"}}}}')
                        + subscription("inherits", f'  subscriber: {{uri: "{sub.url}/inherits"}}')
                        + subscription("own-no-dls", f'  subscriber: {{uri: "{sub.url}/own-no-dls"}}\n'
                                                     '  delivery: {retry: 0}'))
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.send(event(1), {"n": 1}, path=CHANNEL_PATH) == 202
            await broker.settle()
            stats = await broker.stats()
    assert len(sub.at("/own")) == 3          # the first try and retry: 2
    assert len(sub.at("/inherits")) == 2     # no delivery of its own: the Channel's (retry 1)
    assert len(sub.at("/own-no-dls")) == 1   # a delivery of its own wins whole: no Channel dead-letter sink
    [dead] = sub.at("/dls")
    assert dead.attrs["id"] == "c-1" and dead.data == {"n": 1}
    assert dead.attrs["knativeerrordest"] == f"{sub.url}/own"
    assert dead.attrs["knativeerrorcode"] == "503"
    assert base64.b64decode(dead.attrs["knativeerrordata"]) == b"busy"
    assert [r.attrs["knativeerrordest"] for r in sub.at("/channel-dls")] == [f"{sub.url}/inherits"]
    subs = stats["channels"]["mec/events"]["subscriptions"]
    assert subs["mec/own"]["outcomes"] == {"dead-lettered": 1}
    assert subs["mec/own-no-dls"]["outcomes"] == {"failed": 1}
    assert stats["broker"]["store"]["failed"] == 1 and stats["broker"]["store"]["dead-lettered"] == 2


async def test_a_failing_reply_destination_dead_letters_the_original_event(manifest_dir: Path, state_dir: Path) -> None:
    async with subscriber() as sub:
        sub.behaviours["/fn"] = reply_to
        sub.behaviours["/replies"] = lambda r: (500, {}, b"reply sink down")
        write_manifests(manifest_dir, channel()
                        + subscription("s", f'  subscriber: {{uri: "{sub.url}/fn"}}\n'
                                            f'  reply: {{uri: "{sub.url}/replies"}}\n'
                                            f'  delivery: {{retry: 1, deadLetterSink: {{uri: "{sub.url}/dls"}}}}'))
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.send(event(1), path=CHANNEL_PATH) == 202
            await broker.settle()
    assert sub.ids("/fn") == ["c-1"]                  # the subscriber is not called again
    assert sub.ids("/replies") == ["r-1", "r-1"]      # the reply, with the same retries
    [dead] = sub.at("/dls")
    assert dead.attrs["id"] == "c-1"                  # the original event, not the reply
    assert dead.attrs["knativeerrordest"] == f"{sub.url}/replies" and dead.attrs["knativeerrorcode"] == "500"


async def test_what_counts_as_a_reply_behind_a_channel(manifest_dir: Path, state_dir: Path) -> None:
    """The channel dispatcher's reading of a 2xx answer (not the broker-filter's): an event in a 202
    is a reply, a body that is no event is discarded (delivered, no retry), a malformed event cannot
    be sent on to spec.reply (dead-lettered)."""
    async with subscriber() as sub:
        sub.behaviours["/accepted-with-event"] = lambda r: (202, reply_to(r, "r-202")[1], b"{}")
        sub.behaviours["/plain-body"] = lambda r: (200, {"Content-Type": "text/plain"}, b"thanks")
        sub.behaviours["/malformed"] = lambda r: (200, {"ce-specversion": "1.0", "ce-type": "x"}, b"")
        dls = f'deadLetterSink: {{uri: "{sub.url}/dls"}}'
        write_manifests(manifest_dir, channel() + "".join(
            subscription(name, f'  subscriber: {{uri: "{sub.url}/{name}"}}\n'
                               f'  reply: {{uri: "{sub.url}/replies"}}\n  delivery: {{retry: 2, {dls}}}')
            for name in ("accepted-with-event", "plain-body", "malformed")))
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.send(event(1), path=CHANNEL_PATH) == 202
            await broker.settle()
    assert sub.ids("/replies") == ["r-202"]
    assert len(sub.at("/plain-body")) == 1 and len(sub.at("/malformed")) == 1  # 2xx: never retried
    [dead] = sub.at("/dls")
    assert dead.attrs["knativeerrordest"] == f"{sub.url}/replies" and dead.attrs["knativeerrorcode"] == "-1"
    assert b"missing required attribute" in base64.b64decode(dead.attrs["knativeerrordata"])


@contextlib.asynccontextmanager
async def slow_subscriber(seconds: float) -> AsyncIterator[tuple[str, list[float]]]:
    """A subscriber that answers 202 after `seconds`; yields its URL and the arrival times."""
    arrivals: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        arrivals.append(asyncio.get_running_loop().time())
        await asyncio.sleep(seconds)
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/", arrivals
    finally:
        await runner.cleanup()


async def test_timeout_and_exponential_backoff(manifest_dir: Path, state_dir: Path) -> None:
    async with subscriber() as sub, slow_subscriber(1.0) as (slow_url, arrivals):
        write_manifests(manifest_dir, channel()
                        + subscription("slow", f'  subscriber: {{uri: "{slow_url}"}}\n'
                                               '  delivery: {retry: 2, backoffPolicy: exponential, backoffDelay: PT0.1S, '
                                               f'timeout: PT0.2S, deadLetterSink: {{uri: "{sub.url}/dls"}}}}'))
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.send(event(1), path=CHANNEL_PATH) == 202
            await broker.settle()
    assert len(arrivals) == 3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # each try is cut at the 0.2 s timeout, then waits 0.1 s * 2^i
    assert gaps[0] >= 0.28 and gaps[1] >= 0.38, gaps
    [dead] = sub.at("/dls")
    assert dead.attrs["knativeerrordest"] == slow_url and dead.attrs["knativeerrorcode"] == "-1"


# ------------------------------------------------------------------ durability

def durable_manifests(url: str) -> str:
    return channel() + "".join(
        subscription(name, f'  subscriber: {{uri: "{url}/{name}"}}\n'
                           "  delivery: {retry: 30, backoffPolicy: exponential, backoffDelay: PT0.05S}")
        for name in ("left", "right"))


async def test_kill_9_then_restart_delivers_every_pending_channel_delivery(tmp_path: Path, manifest_dir: Path,
                                                                         state_dir: Path) -> None:
    n = 30
    async with subscriber(down=True) as sub:
        write_manifests(manifest_dir, durable_manifests(sub.url))
        broker = BrokerProcess(manifest_dir, state_dir, tmp_path / "broker.log", ["--local-api"])
        try:
            await broker.start()
            answers = await asyncio.gather(*(broker.post_event(event(i), json.dumps({"n": i}).encode(),
                                                               path=CHANNEL_PATH) for i in range(n)))
            assert [r.status for r in answers] == [202] * n  # 202: in the store, with a row per Subscription
            broker.kill9()
            assert sub.got == []
            await sub.come_up()
            await broker.start()  # same state dir: the pending rows are delivered again
            want = {f"c-{i}" for i in range(n)}
            await wait_for(lambda: set(sub.ids("/left")) == want and set(sub.ids("/right")) == want,
                           what="every event at both Subscriptions")
            await wait_for(lambda: _pending(broker) == 0, what="no pending rows left")
            stats = await broker.get_json("/_local/stats")
        finally:
            await broker.stop()
    assert stats["broker"]["store"]["recovered"] == 2 * n
    assert stats["channels"]["mec/events"]["subscriptions"]["mec/left"]["outcomes"] == {"delivered": n}
    rec = sub.at("/left")[0]
    assert rec.data == {"n": int(rec.attrs["id"].split("-")[1])}
    duplicates = sum(c - 1 for path in ("/left", "/right") for c in Counter(sub.ids(path)).values())
    print(f"{n} events x 2 Subscriptions after kill -9: {duplicates} duplicates")  # -s shows it


def _pending(broker: BrokerProcess) -> int:
    """The store's pending count, read without the event loop (the test polls it)."""
    import sqlite3

    db = sqlite3.connect(broker.state_dir / "broker.db")
    try:
        return int(db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'").fetchone()[0])
    finally:
        db.close()


# ------------------------------------------------------------------ the Broker alongside

async def test_the_broker_ingress_works_alongside_and_a_broker_can_subscribe(manifest_dir: Path,
                                                                           state_dir: Path) -> None:
    async with subscriber() as sub:
        write_manifests(manifest_dir, broker_with_trigger("buys", "mec.app.buy", f"{sub.url}/trigger") + channel()
            + subscription("log", f'  subscriber: {{uri: "{sub.url}/log"}}')
            + subscription("to-broker", "  subscriber: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, "
                                        "name: default}}"))
        async with running_broker(manifest_dir, state_dir) as broker:
            assert await broker.send(event(1)) == 202                                  # the Broker
            assert await broker.send(event(2), path=CHANNEL_PATH) == 202               # the Channel
            assert await broker.send(event(3, type="mec.app.visit"), path=CHANNEL_PATH) == 202
            await broker.settle()
            stats = await broker.stats()
    assert sorted(sub.ids("/log")) == ["c-2", "c-3"]   # the channel's every event
    assert sorted(sub.ids("/trigger")) == ["c-1", "c-2"]  # the Broker's filter, for both ways in
    via_channel = next(r for r in sub.at("/trigger") if r.attrs["id"] == "c-2")
    assert "knativearrivaltime" in via_channel.attrs
    assert stats["broker"]["accepted"] == {"mec/default": 3}  # one direct, two from the channel
    assert stats["channels"]["mec/events"]["accepted"] == 2


async def test_the_project_channel_manifests_run_with_the_sample_functions(state_dir: Path) -> None:
    async with running_broker(REPO / "k8s" / "knative", state_dir, idle_override=30) as broker:
        buy = {**event(1), "id": "buy-1", "supi": "imsi-999700000000001", "subject": "imsi-999700000000001"}
        assert await broker.send(buy, {"item": "7"}, path="/channels/mec/mec-buy-clicks") == 202
        assert await broker.send({**buy, "id": "buy-2"}, {"item": "8"}, path="/channels/mec/mec-events") == 202
        visit = {**event(3), "type": "mec.app.visit", "supi": "imsi-999700000000001"}
        assert await broker.send(visit, {"path": "/"}, path="/channels/mec/mec-events") == 202
        await broker.settle(60)
        stats = await broker.stats()
    fn = state_dir / "mec"
    orders = [json.loads(line) for line in (fn / "fn-buy" / "orders.jsonl").read_text().splitlines()]
    assert sorted(o["event_id"] for o in orders) == ["buy-1", "buy-2"]  # the visit never reached fn-buy
    channel_log = [json.loads(line)["attributes"]["id"]
                   for line in (fn / "fn-channel-log" / "channel-events.jsonl").read_text().splitlines()]
    assert sorted(channel_log) == ["buy-2", "c-3"]
    logged = [json.loads(line)["attributes"] for line in (fn / "fn-logger" / "events.jsonl").read_text().splitlines()]
    # buy-1's order came as buy-orders' reply; buy-2's through the Broker's orders-audit Trigger
    assert sorted(a["id"] for a in logged if a["type"] == "mec.order.created") == sorted(
        f"order-{o['order_id']}" for o in orders)
    channels = stats["channels"]
    assert set(channels) == {"mec/mec-events", "mec/mec-buy-clicks"}
    assert channels["mec/mec-buy-clicks"]["subscriptions"]["mec/buy-orders"]["outcomes"] == {"delivered": 1}
    assert channels["mec/mec-events"]["subscriptions"]["mec/events-to-broker"]["subscriberUri"] == \
        broker.url + "/mec/default"


# ------------------------------------------------------------------ manifests: what the webhooks refuse

@pytest.mark.parametrize(("text", "message"), [
    (subscription("s", '  subscriber: {uri: "http://127.0.0.1:9/"}', "nope"),
     "spec.channel: Channel mec/nope is not defined"),
    (channel() + "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata: {name: s, namespace: mec}\n"
                 "spec: {subscriber: {uri: 'http://127.0.0.1:9/'}}\n", "missing field spec.channel"),
    (channel() + subscription("s", "  reply: {}"), "expected at least one of spec.subscriber, spec.reply"),
    (channel() + "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata: {name: s, namespace: mec}\n"
                 "spec:\n  channel: {apiVersion: messaging.knative.dev/v1, kind: Channel, name: events, namespace: x}\n"
                 "  subscriber: {uri: 'http://127.0.0.1:9/'}\n", "must be in its own namespace"),
    (channel() + "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata: {name: s, namespace: mec}\n"
                 "spec:\n  channel: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}\n"
                 "  subscriber: {uri: 'http://127.0.0.1:9/'}\n", "is not a channel served locally"),
    (channel() + subscription("s", "  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, "
                                   "name: nope}}"), "Service mec/nope is not defined"),
    (channel() + subscription("s", "  subscriber: {ref: {apiVersion: v1, kind: Service, name: k8s}}"),
     "v1 Service cannot be resolved locally"),
    (channel() + subscription("s", "  subscriber: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, "
                                   "name: nope}}"), "Broker mec/nope is not defined"),
    (channel() + subscription("s", "  subscriber: {uri: 'http://127.0.0.1:9/'}\n  delivery: {retry: -1}"),
     "spec.delivery.retry: invalid value -1"),
    (channel() + subscription("s", "  subscriber: {uri: 'http://127.0.0.1:9/'}")
     + subscription("s", "  subscriber: {uri: 'http://127.0.0.1:9/'}"), "Subscription mec/s: defined twice"),
    ("apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata: {name: c, namespace: mec}\n"
     "spec: {subscribers: [{subscriberUri: 'http://127.0.0.1:9/'}]}\n", "spec.subscribers is managed by Knative"),
    ("apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata: {name: c, namespace: mec}\n"
     "spec: {channelTemplate: {apiVersion: messaging.knative.dev/v1}}\n", "missing field spec.channelTemplate.kind"),
    ("apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata: {name: c, namespace: mec}\n---\n"
     "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata: {name: c, namespace: mec}\n",
     "defined twice"),
    (channel(delivery="delivery: {deadLetterSink: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, "
                      "name: nope}}}"), "Channel mec/events: spec.delivery.deadLetterSink.ref: Service mec/nope"),
])
def test_channel_manifest_errors_are_clear(manifest_dir: Path, text: str, message: str) -> None:
    assert_manifest_error(manifest_dir, text, message)


def test_an_inmemorychannel_and_the_backing_kind_are_accepted(manifest_dir: Path) -> None:
    write_manifests(manifest_dir, channel() + """\
apiVersion: messaging.knative.dev/v1
kind: InMemoryChannel
metadata: {name: imc, namespace: mec}
---
""" + subscription("to-imc", "  subscriber: {uri: 'http://127.0.0.1:9/'}", "imc").replace(
        "kind: Channel, name: imc", "kind: InMemoryChannel, name: imc")
        + subscription("backing", "  subscriber: {uri: 'http://127.0.0.1:9/'}").replace(
        "kind: Channel, name: events", "kind: InMemoryChannel, name: events"))
    m = load_manifests(manifest_dir)
    assert {c.kind for c in m.channels.values()} == {"Channel", "InMemoryChannel"}
    assert m.channels[("mec", "events")].backing_kind == "InMemoryChannel"
    assert {(s.name, s.channel) for s in m.subscriptions} == {("to-imc", "imc"), ("backing", "events")}
