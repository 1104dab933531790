"""Nupf_EventExposure on a running detector: subscribe, notify (ONE_TIME, PERIODIC + maxReports),
modify (JSON Patch), delete, restart, bad input (ProblemDetails), a notification endpoint that is
down and comes back. The AppEvents are real: `upf-tap read --flows` of the repo's demo capture
and of ../shared/captures/oai-5greplay.pcap."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from detlib import REPO_ROOT, TOKEN, Sink, base_url, det_config, ndjson, post_events, running

from detector.exposure.spec import COLLECTION
from detector.rules import default_ruleset
from detector.server import Server

DEMO_CAPTURE = REPO_ROOT / "testbed" / "data" / "demo-n3-n4.pcapng"
OAI_CAPTURE = REPO_ROOT.parent / "shared" / "captures" / "oai-5greplay.pcap"
NF_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
SUPI1, SUPI2, SUPI3 = "imsi-999700000000001", "imsi-999700000000002", "imsi-999700000000003"
PROBLEM = "application/problem+json"


# ---- helpers (also used by the other test_exposure_* modules) ----------------------------------
@functools.cache
def tap_events(capture: Path) -> tuple[dict[str, Any], ...]:
    """The AppEvents `upf-tap read --flows CAPTURE` prints."""
    if not capture.exists():
        pytest.skip(f"capture {capture} not present")
    p = subprocess.run([sys.executable, "-m", "upf_tap", "read", "--flows", str(capture)], capture_output=True,
                       text=True, check=True, cwd=REPO_ROOT, timeout=120)
    return tuple(json.loads(line) for line in p.stdout.splitlines() if line.strip())


def demo_events() -> list[dict[str, Any]]:
    return copy.deepcopy(list(tap_events(DEMO_CAPTURE)))


def renamed(events: list[dict[str, Any]], suffix: str) -> list[dict[str, Any]]:
    """The same AppEvents with new ids (the detector skips ids it saw as duplicates)."""
    return [{**e, "id": f"{e['id']}-{suffix}"} for e in events]


def subscription(uri: str, **over: Any) -> dict[str, Any]:
    """A CreateEventSubscription: any UE, every measurement, ONE_TIME, unless `over` says otherwise."""
    sub: dict[str, Any] = {
        "eventList": [{"type": "USER_DATA_USAGE_MEASURES",
                       "measurementTypes": ["VOLUME_MEASUREMENT", "THROUGHPUT_MEASUREMENT", "APPLICATION_RELATED_INFO"],
                       "granularityOfMeasurement": "PER_SESSION"}],
        "eventNotifyUri": uri,
        "notifyCorrelationId": "corr-1",
        "eventReportingMode": {"trigger": "ONE_TIME"},
        "nfId": NF_ID,
        "anyUe": True,
    }
    sub.update(over)
    return {"subscription": {k: v for k, v in sub.items() if v is not None}}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


async def call(method: str, url: str, body: Any = None, *, ctype: str = "application/json",
               token: str | None = TOKEN, raw: bytes | None = None) -> Answer:
    headers = {"Content-Type": ctype}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with aiohttp.ClientSession() as s, s.request(method, url, data=data, headers=headers) as r:
        text = await r.text()
        return Answer(r.status, dict(r.headers), json.loads(text) if text else None)


async def create(base: str, body: Any) -> Answer:
    return await call("POST", base + COLLECTION, body)


async def patch(base: str, sub_id: str, ops: Any, ctype: str = "application/json-patch+json") -> Answer:
    return await call("PATCH", f"{base}{COLLECTION}/{sub_id}", ops, ctype=ctype)


async def delete(base: str, sub_id: str) -> Answer:
    return await call("DELETE", f"{base}{COLLECTION}/{sub_id}")


@dataclass
class Receiver:
    """The consumer's notification endpoint: keeps every NotificationData; `answer(n)` picks the
    status and headers of request n (from 0); default 204."""

    port: int = 0
    answer: Callable[[int], tuple[int, dict[str, str]]] | None = None
    requests: list[Any] = field(default_factory=list)     # every body received, whatever the answer
    delivered: list[Any] = field(default_factory=list)    # the ones answered 2xx
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notify"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        n = len(self.requests)
        self.requests.append(body)
        status, headers = (204, {}) if self.answer is None else self.answer(n)
        if 200 <= status < 300:
            self.delivered.append(body)
        self._changed.set()
        return web.Response(status=status, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/notify", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.delivered) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(self.delivered)} notifications delivered, wanted {n} "
                                     f"({len(self.requests)} requests)")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))


def domains_per_supi(notifications: list[Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for n in notifications:
        for item in n["notificationItems"]:
            for m in item.get("userDataUsageMeasurements", []):
                for d in m.get("applicationRelatedInformation", {}).get("domainInfoList", []):
                    out.setdefault(item.get("supi") or item.get("ueIpv4Addr"), set()).add(d["domainName"])
    return out


def items_of(notification: Any) -> dict[str, dict[str, Any]]:
    """NotificationItems by SUPI (else UE address)."""
    return {i.get("supi") or i.get("ueIpv4Addr") or i["ueIpv6Prefix"]: i for i in notification["notificationItems"]}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@contextlib.asynccontextmanager
async def detector(tmp_path: Path, sink: Sink, **cfg: Any) -> AsyncIterator[Server]:
    async with running(det_config(tmp_path, sink.url, **cfg)) as srv:
        yield srv


# ---- subscribe, notify -----------------------------------------------------------------------
async def test_subscribe_answers_201_with_location_and_the_subscription(tmp_path: Path, sink: Sink,
                                                                         receiver: Receiver) -> None:
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        body = {**subscription(receiver.url), "supportedFeatures": "0"}
        a = await create(base, body)
        assert a.status == 201, a.body
        sub_id = a.body["subscriptionId"]
        assert a.headers["Location"] == f"{base}{COLLECTION}/{sub_id}"
        assert a.body["subscription"] == body["subscription"]
        assert a.body["supportedFeatures"] == "0"
        assert srv.det.exposure is not None and srv.det.exposure.active


async def test_one_time_reports_the_first_measurement_then_the_subscription_is_gone(
        tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        a = await create(base, subscription(receiver.url, anyUe=None, supi=SUPI2,
                                            eventList=[{"type": "USER_DATA_USAGE_MEASURES",
                                                        "measurementTypes": ["APPLICATION_RELATED_INFO"]}]))
        sub_id = a.body["subscriptionId"]
        assert (await post_events(base, ndjson(demo_events())))[0] == 202
        await receiver.wait_for(1)
        (n,) = receiver.delivered
        assert n["correlationId"] == "corr-1"
        (item,) = n["notificationItems"]
        assert item["supi"] == SUPI2 and item["ueIpv4Addr"] == "10.45.0.3" and item["dnn"] == "internet"
        assert item["eventType"] == "USER_DATA_USAGE_MEASURES"
        # the first thing UE 2 did: look up shop.mec.local
        assert item["userDataUsageMeasurements"] == [{"applicationRelatedInformation": {
            "domainInfoList": [{"domainName": "shop.mec.local", "domainNameProtocol": "DNS_QNAME"}]}}]
        assert (await delete(base, sub_id)).status == 404
        assert (await patch(base, sub_id, [{"op": "remove", "path": "/dnn"}])).status == 404
        assert not srv.det.exposure.active        # type: ignore[union-attr]
        await post_events(base, ndjson(renamed(demo_events(), "again")))
        await asyncio.sleep(0.3)
        assert len(receiver.requests) == 1


async def test_periodic_reports_each_period_until_max_reports(tmp_path: Path, sink: Sink,
                                                              receiver: Receiver) -> None:
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        a = await create(base, subscription(receiver.url, eventReportingMode={
            "trigger": "PERIODIC", "repPeriod": 1, "maxReports": 2}))
        sub_id = a.body["subscriptionId"]
        await post_events(base, ndjson(demo_events()))
        await receiver.wait_for(1, timeout=5)
        first = items_of(receiver.delivered[0])
        assert set(first) >= {SUPI1, SUPI2, SUPI3}
        m = first[SUPI1]["userDataUsageMeasurements"][0]
        # UE 1's flows with its SUPI: 2 HTTP (320+320 B up) and 1 MQTT (248 B up)
        assert m["volumeMeasurement"]["ulVolume"] == "888 B"
        assert m["volumeMeasurement"]["ulNbOfPackets"] == 16
        assert m["throughputMeasurement"]["ulThroughput"].endswith("bps")
        assert {"http://shop.mec.local/api/v1/buy?item=1", "http://shop.mec.local/api/v1/buy?item=2"} == set(
            m["applicationRelatedInformation"]["urls"])
        await asyncio.sleep(1.2)                  # a period with nothing measured sends nothing
        assert len(receiver.requests) == 1
        await post_events(base, ndjson(renamed(demo_events(), "r2")))
        await receiver.wait_for(2, timeout=5)
        assert (await delete(base, sub_id)).status == 404      # maxReports reached: ended
        await post_events(base, ndjson(renamed(demo_events(), "r3")))
        await asyncio.sleep(1.3)
        assert len(receiver.requests) == 2


# ---- modify, delete --------------------------------------------------------------------------
async def test_patch_changes_the_subscription(tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        sub_id = (await create(base, subscription(receiver.url))).body["subscriptionId"]
        ops = [{"op": "test", "path": "/eventReportingMode/trigger", "value": "ONE_TIME"},
               {"op": "replace", "path": "/eventReportingMode", "value": {"trigger": "PERIODIC", "repPeriod": 1}},
               {"op": "remove", "path": "/anyUe"},
               {"op": "add", "path": "/supi", "value": SUPI3},
               {"op": "replace", "path": "/eventList/0/measurementTypes", "value": ["APPLICATION_RELATED_INFO"]},
               {"op": "copy", "from": "/notifyCorrelationId", "path": "/x-note"},
               {"op": "move", "from": "/x-note", "path": "/x-copied"}]
        a = await patch(base, sub_id, ops)
        assert a.status == 204, a.body
        stored = srv.det.exposure.subs[sub_id].body   # type: ignore[union-attr]
        assert stored["supi"] == SUPI3 and "anyUe" not in stored and stored["x-copied"] == "corr-1"
        await post_events(base, ndjson(demo_events()))
        await receiver.wait_for(1, timeout=5)
        (item,) = receiver.delivered[0]["notificationItems"]
        assert item["supi"] == SUPI3
        assert {d["domainName"] for d in item["userDataUsageMeasurements"][0]["applicationRelatedInformation"][
            "domainInfoList"]} == {"shop.mec.local", "edge3.mec.local", "mqtt.mec.local"}
        assert "volumeMeasurement" not in item["userDataUsageMeasurements"][0]
        assert (await delete(base, sub_id)).status == 204


async def test_a_failed_patch_changes_nothing(tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        body = subscription(receiver.url)
        sub_id = (await create(base, body)).body["subscriptionId"]
        cases = [
            ([{"op": "replace", "path": "/dnn", "value": "x"}], "/dnn", "index= 0"),             # no such member
            ([{"op": "add", "path": "/dnn", "value": "internet"},
              {"op": "test", "path": "/nfId", "value": "other"}], "/nfId", "index= 1"),          # test fails
            ([{"op": "remove", "path": "/eventNotifyUri"}], "/eventNotifyUri", "missing"),       # result invalid
            ([{"op": "replace", "path": "/eventReportingMode/trigger", "value": "PERIODIC"}],
             "/eventReportingMode/repPeriod", "repPeriod"),
            ([{"op": "jump", "path": "/dnn"}], "/dnn", "op must be"),
        ]
        for ops, param, reason in cases:
            a = await patch(base, sub_id, ops)
            assert a.status == 400 and a.headers["Content-Type"].startswith(PROBLEM), (ops, a.body)
            assert a.body["invalidParams"][0]["param"] == param, (ops, a.body)
            assert reason in a.body["invalidParams"][0]["reason"], (ops, a.body)
        bad_patches: list[Any] = [[], {"op": "remove"}, "nope"]
        for bad in bad_patches:
            assert (await patch(base, sub_id, bad)).status == 400
        a = await patch(base, sub_id, [{"op": "remove", "path": "/dnn"}], ctype="application/json")
        assert a.status == 415 and a.headers["Accept-Patch"] == "application/json-patch+json"
        assert srv.det.exposure.subs[sub_id].body == body["subscription"]   # type: ignore[union-attr]


async def test_delete_stops_the_notifications(tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        sub_id = (await create(base, subscription(receiver.url))).body["subscriptionId"]
        a = await delete(base, sub_id)
        assert a.status == 204 and a.body is None
        assert (await delete(base, sub_id)).status == 404
        await post_events(base, ndjson(demo_events()))
        await asyncio.sleep(0.3)
        assert receiver.requests == []


# ---- restart ---------------------------------------------------------------------------------
async def test_the_subscription_survives_a_restart(tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    async with detector(tmp_path, sink) as srv:
        sub_id = (await create(base_url(srv), subscription(receiver.url, anyUe=None, supi=SUPI1))).body[
            "subscriptionId"]
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        assert list(srv.det.exposure.subs) == [sub_id]        # type: ignore[union-attr]
        assert (await patch(base, sub_id, [{"op": "add", "path": "/dnn", "value": "internet"}])).status == 204
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        assert srv.det.exposure.subs[sub_id].body["dnn"] == "internet"   # type: ignore[union-attr]
        await post_events(base, ndjson(demo_events()))
        await receiver.wait_for(1)
        assert [i["supi"] for i in receiver.delivered[0]["notificationItems"]] == [SUPI1]
    async with detector(tmp_path, sink) as srv:                           # ONE_TIME done: gone for good
        assert srv.det.exposure.subs == {}                                 # type: ignore[union-attr]


async def test_an_expired_subscription_is_not_resumed(tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    async with detector(tmp_path, sink) as srv:
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
        a = await create(base_url(srv), subscription(receiver.url, eventReportingMode={
            "trigger": "PERIODIC", "repPeriod": 60, "expiry": expiry}))
        assert a.status == 201, a.body
    await asyncio.sleep(2.2)
    async with detector(tmp_path, sink) as srv:
        assert srv.det.exposure.subs == {}                 # type: ignore[union-attr]


# ---- bad input -------------------------------------------------------------------------------
def _bad_cases(uri: str) -> list[tuple[str, Any, str, str]]:
    """(name, body, the first invalidParams' param, cause)."""
    s = subscription(uri)["subscription"]
    return [
        ("no subscription", {}, "/subscription", "MANDATORY_IE_MISSING"),
        ("no nfId", {"subscription": {k: v for k, v in s.items() if k != "nfId"}}, "/subscription/nfId",
         "MANDATORY_IE_MISSING"),
        ("QOS_MONITORING", subscription(uri, eventList=[{"type": "QOS_MONITORING"}]),
         "/subscription/eventList/0/type", "MANDATORY_IE_INCORRECT"),
        ("bad measurement", subscription(uri, eventList=[{"type": "USER_DATA_USAGE_MEASURES",
                                                          "measurementTypes": ["DELAY"]}]),
         "/subscription/eventList/0/measurementTypes/0", "OPTIONAL_IE_INCORRECT"),
        ("gpsi", subscription(uri, anyUe=None, gpsi="msisdn-123456789"), "/subscription/gpsi",
         "OPTIONAL_IE_INCORRECT"),
        ("trafficFilters", subscription(uri, eventList=[{"type": "USER_DATA_USAGE_MEASURES",
                                                         "trafficFilters": [{"flowDescription": "permit out ip"}]}]),
         "/subscription/eventList/0/trafficFilters", "OPTIONAL_IE_INCORRECT"),
        ("PERIODIC without repPeriod", subscription(uri, eventReportingMode={"trigger": "PERIODIC"}),
         "/subscription/eventReportingMode/repPeriod", "OPTIONAL_IE_INCORRECT"),
        ("maxReports 0", subscription(uri, eventReportingMode={"trigger": "ONE_TIME", "maxReports": 0}),
         "/subscription/eventReportingMode/maxReports", "OPTIONAL_IE_INCORRECT"),
        ("expiry in the past", subscription(uri, eventReportingMode={"trigger": "ONE_TIME",
                                                                     "expiry": "2020-01-01T00:00:00Z"}),
         "/subscription/eventReportingMode/expiry", "OPTIONAL_IE_INCORRECT"),
        ("relative notify URI", subscription("/notify"), "/subscription/eventNotifyUri", "MANDATORY_IE_INCORRECT"),
        ("no target", subscription(uri, anyUe=None), "/subscription/anyUe", "OPTIONAL_IE_INCORRECT"),
        ("anyUe and supi", subscription(uri, supi=SUPI1), "/subscription/anyUe", "OPTIONAL_IE_INCORRECT"),
        ("bad sst", subscription(uri, snssai={"sst": 256}), "/subscription/snssai/sst", "OPTIONAL_IE_INCORRECT"),
        ("bad ipv4", subscription(uri, anyUe=None, ueIpAddress={"ipv4Addr": "10.45.0.300"}),
         "/subscription/ueIpAddress/ipv4Addr", "OPTIONAL_IE_INCORRECT"),
        ("nfId not a UUID", subscription(uri, nfId="upf-1"), "/subscription/nfId", "MANDATORY_IE_INCORRECT"),
        ("array body", [1, 2], "", "MANDATORY_IE_INCORRECT"),
    ]


async def test_bad_requests_get_problem_details(tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        for name, body, param, cause in _bad_cases(receiver.url):
            a = await create(base, body)
            assert a.status == 400 and a.headers["Content-Type"].startswith(PROBLEM), (name, a.status, a.body)
            assert a.body["status"] == 400 and a.body["title"] == "Bad Request" and a.body["detail"], name
            assert a.body["cause"] == cause, (name, a.body)
            assert a.body["invalidParams"][0]["param"] == param, (name, a.body)
        for raw, ctype, status in ((b"{", "application/json", 400), (b"\xff", "application/json", 400),
                                   (b'{"a": NaN}', "application/json", 400), (b"{}", "text/plain", 415)):
            a = await call("POST", base + COLLECTION, raw=raw, ctype=ctype)
            assert a.status == status and a.headers["Content-Type"].startswith(PROBLEM), (raw, a.body)
        a = await call("POST", base + COLLECTION, subscription(receiver.url), token="wrong")
        assert a.status == 401 and a.body == {"error": "missing or wrong bearer token"}
        assert srv.det.exposure.subs == {}                 # type: ignore[union-attr]


async def test_too_large_a_body_is_413(tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    async with detector(tmp_path, sink, max_body_bytes=2048) as srv:
        body = subscription(receiver.url, notifyCorrelationId="x" * 4096)
        a = await create(base_url(srv), body)
        assert a.status == 413 and a.body["status"] == 413


# ---- the notification endpoint down, then up ---------------------------------------------------
async def test_notifications_are_retried_until_the_endpoint_answers(tmp_path: Path, sink: Sink,
                                                                     receiver: Receiver) -> None:
    receiver.answer = lambda n: [(503, {"Retry-After": "0"}), (429, {}), (204, {})][min(n, 2)]
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        await create(base, subscription(receiver.url))
        await post_events(base, ndjson(demo_events()))
        await receiver.wait_for(1)
        assert len(receiver.requests) == 3 and receiver.requests[0] == receiver.delivered[0]
        assert srv.det.exposure.notifier.retried == 2       # type: ignore[union-attr]


async def test_an_endpoint_that_is_down_gets_the_notification_once_it_is_up(tmp_path: Path, sink: Sink) -> None:
    late = Receiver()
    await late.start()
    port = late.port
    await late.stop()                                  # nothing listens there now: connection refused
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        await create(base, subscription(f"http://127.0.0.1:{port}/notify"))
        await post_events(base, ndjson(demo_events()))
        await asyncio.sleep(0.5)
        notifier = srv.det.exposure.notifier               # type: ignore[union-attr]
        assert notifier.retried >= 2 and notifier.pending == 1
        up = Receiver(port=port)
        await up.start()
        try:
            await up.wait_for(1)
            assert notifier.pending == 0 and notifier.delivered == 1
        finally:
            await up.stop()


async def test_307_is_followed_and_4xx_drops(tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    target = Receiver()
    await target.start()
    receiver.answer = lambda n: (307, {"Location": target.url}) if n == 0 else (400, {})
    try:
        async with detector(tmp_path, sink) as srv:
            base = base_url(srv)
            await create(base, subscription(receiver.url, notifyCorrelationId="a"))
            await create(base, subscription(receiver.url, notifyCorrelationId="b"))
            await post_events(base, ndjson(demo_events()))
            await target.wait_for(1)
            await asyncio.sleep(0.3)
            notifier = srv.det.exposure.notifier           # type: ignore[union-attr]
            assert len(receiver.requests) == 2 and notifier.dropped == 1 and notifier.delivered == 1
    finally:
        await target.stop()


# ---- targets and granularity ---------------------------------------------------------------------
async def test_targets_by_address_dnn_and_snssai(tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    oai = renamed(copy.deepcopy(list(tap_events(OAI_CAPTURE))), "oai")
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        app_info = [{"type": "USER_DATA_USAGE_MEASURES", "measurementTypes": ["APPLICATION_RELATED_INFO"]}]
        wanted = {
            "by-ip": subscription(receiver.url, anyUe=None, ueIpAddress={"ipv4Addr": "10.45.0.4"}, eventList=app_info),
            "by-dnn": subscription(receiver.url, dnn="OAI", eventList=app_info),                 # DNNs: any case
            "by-slice": subscription(receiver.url, snssai={"sst": 1, "sd": "000001"}, eventList=app_info),
            "other-slice": subscription(receiver.url, snssai={"sst": 2}, eventList=app_info),
        }
        for name, body in wanted.items():
            body["subscription"]["notifyCorrelationId"] = name
            assert (await create(base, body)).status == 201
        await post_events(base, ndjson(demo_events() + oai))
        await receiver.wait_for(3)
        await asyncio.sleep(0.3)
        got = {n["correlationId"]: n["notificationItems"][0] for n in receiver.delivered}
        assert set(got) == {"by-ip", "by-dnn", "by-slice"}
        assert got["by-ip"]["supi"] == SUPI3
        assert got["by-dnn"]["supi"] == got["by-slice"]["supi"] == "imsi-208950000000031"
        assert got["by-slice"]["snssai"] == {"sst": 1, "sd": "000001"} and got["by-slice"]["dnn"] == "oai"


async def test_per_flow_and_per_application(tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    oai = copy.deepcopy(list(tap_events(OAI_CAPTURE)))
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        for gran in ("PER_FLOW", "PER_APPLICATION"):
            body = subscription(receiver.url, notifyCorrelationId=gran, eventReportingMode={
                "trigger": "PERIODIC", "repPeriod": 1, "maxReports": 1},
                eventList=[{"type": "USER_DATA_USAGE_MEASURES", "granularityOfMeasurement": gran,
                            "measurementTypes": ["VOLUME_MEASUREMENT", "APPLICATION_RELATED_INFO"]}])
            assert (await create(base, body)).status == 201
        await post_events(base, ndjson(oai))
        await receiver.wait_for(2, timeout=5)
    got = {n["correlationId"]: items_of(n) for n in receiver.delivered}
    per_flow = got["PER_FLOW"]["imsi-208950000000031"]["userDataUsageMeasurements"]
    tls = [m for m in per_flow if m["flowInfo"]["flowDescription"] == "permit out 6 from 51.75.72.167 443 to "
                                                                      "12.1.1.136 37869"]
    assert tls and all(m["flowInfo"]["flowDirection"] == "BIDIRECTIONAL" for m in per_flow)
    # the flow's ClientHello (SNI) and its flow.end, plus the tail flow the tap saw start from the server
    assert {"domainInfoList": [{"domainName": "www.montimage.com", "domainNameProtocol": "TLS_SNI"}]} in [
        m.get("applicationRelatedInformation") for m in tls]
    assert sum(int(m["volumeMeasurement"]["dlVolume"].split()[0]) for m in tls if "volumeMeasurement" in m) == \
        47695 + 7432
    per_app = {m.get("appId"): m for m in got["PER_APPLICATION"]["imsi-208950000000031"]["userDataUsageMeasurements"]}
    assert per_app["www.montimage.com"]["volumeMeasurement"]["dlVolume"] == f"{47695 + 50623} B"
    assert per_app["montimage.com"]["applicationRelatedInformation"]["urls"] == ["http://montimage.com/"]
    assert per_app["montimage.com"]["volumeMeasurement"]["ulVolume"] == f"{308 + 308} B"


async def test_app_ids_restrict_the_report(tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        body = subscription(receiver.url, eventList=[{"type": "USER_DATA_USAGE_MEASURES", "appIds": ["EDGE2.mec.local"],
                                                      "measurementTypes": ["APPLICATION_RELATED_INFO"]}])
        assert (await create(base, body)).status == 201
        await post_events(base, ndjson(demo_events()))
        await receiver.wait_for(1)
    assert domains_per_supi(receiver.delivered) == {SUPI2: {"edge2.mec.local"}}


async def test_without_subscriptions_the_detector_offers_nothing(tmp_path: Path, sink: Sink,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    async with detector(tmp_path, sink) as srv:
        exposure = srv.det.exposure
        assert exposure is not None and not exposure.active
        offered: list[int] = []
        original = exposure.offer
        exposure.offer = lambda events: offered.append(len(events))   # type: ignore[method-assign]
        await post_events(base_url(srv), ndjson(demo_events()))
        assert offered == [] and not exposure.reporter.saw_flow_end
        exposure.offer = original                                        # type: ignore[method-assign]


async def test_without_flow_end_events_volume_is_missing_and_logged(tmp_path: Path, sink: Sink, receiver: Receiver,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    no_flows = [e for e in demo_events() if not e["kind"].startswith("flow.")]
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        await create(base, subscription(receiver.url, anyUe=None, supi=SUPI1))
        await post_events(base, ndjson(no_flows))
        await receiver.wait_for(1)
    (item,) = receiver.delivered[0]["notificationItems"]
    assert "volumeMeasurement" not in item["userDataUsageMeasurements"][0]
    assert any("--flows" in r.getMessage() for r in caplog.records)


async def test_the_report_count_survives_a_restart(tmp_path: Path, sink: Sink, receiver: Receiver) -> None:
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        sub_id = (await create(base, subscription(receiver.url, eventReportingMode={
            "trigger": "PERIODIC", "repPeriod": 1, "maxReports": 2}))).body["subscriptionId"]
        await post_events(base, ndjson(demo_events()))
        await receiver.wait_for(1, timeout=5)
        await asyncio.sleep(0.1)                          # the count is stored in the background
    async with detector(tmp_path, sink) as srv:
        base = base_url(srv)
        assert srv.det.exposure.subs[sub_id].reports == 1   # type: ignore[union-attr]
        await post_events(base, ndjson(renamed(demo_events(), "after")))
        await receiver.wait_for(2, timeout=5)
        assert (await delete(base, sub_id)).status == 404     # the second report was the last


async def test_an_unreadable_store_stops_the_start_cleanly(tmp_path: Path, sink: Sink) -> None:
    from detector.outbox import OutboxError

    (tmp_path / "outbox-exposure.db").write_text("not a database")
    server = Server(det_config(tmp_path, sink.url), default_ruleset())
    with pytest.raises(OutboxError, match=r"subscription store .*outbox-exposure\.db"):
        await server.start()
    (tmp_path / "outbox-exposure.db").unlink()
    async with detector(tmp_path, sink) as srv:     # the same outbox: its lock was released on the way out
        assert srv.det.exposure is not None and srv.det.exposure.subs == {}
