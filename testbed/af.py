"""A sample Application Function consuming the detector's Nupf_EventExposure (docs/exposure.md).

    python -m testbed.af --detector http://127.0.0.1:8080 --token-file TOKEN --any-ue \
        [--listen 127.0.0.1:0] [--trigger periodic --period 5 [--max-reports N] | --trigger once]
        [--measure app,volume,throughput] [--granularity session|flow|app] [--log af.jsonl]
        [--count N] [--duration S]

It serves its own notification endpoint (`http://HOST:PORT/notify/<correlation id>`), subscribes
to USER_DATA_USAGE_MEASURES, and reacts to each NotificationData: every domain (DNS QNAME, TLS
SNI), URL and volume of a UE becomes one JSON line of the log (`--log`), and the first time a UE
(SUPI, else its address) is seen on a domain it prints `af: <supi> -> <domain> (<protocol>)`. It
ends after `--count` notifications, `--duration` seconds, SIGINT or SIGTERM, and then
unsubscribes (DELETE). Exit codes: 0, 1 when the detector refuses the subscription, 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from mec_common.net import parse_host_port

COLLECTION = "/nupf-ee/v1/ee-subscriptions"
MEASURES = {"app": "APPLICATION_RELATED_INFO", "volume": "VOLUME_MEASUREMENT", "throughput": "THROUGHPUT_MEASUREMENT"}
GRANULARITY = {"session": "PER_SESSION", "flow": "PER_FLOW", "app": "PER_APPLICATION"}


@dataclass
class Options:
    detector: str
    token: str | None = None
    listen: str = "127.0.0.1:0"
    notify_host: str | None = None      # the host the detector reaches us at (default: the listen host)
    any_ue: bool = False
    supi: str | None = None
    ue_ip: str | None = None
    dnn: str | None = None
    snssai: str | None = None            # "1" or "1-000001"
    trigger: str = "PERIODIC"
    period: int = 5
    max_reports: int | None = None
    measure: tuple[str, ...] = ("APPLICATION_RELATED_INFO",)
    granularity: str = "PER_SESSION"
    log: Path | None = None
    quiet: bool = False


def _snssai(text: str) -> dict[str, Any]:
    sst, _, sd = text.partition("-")
    return {"sst": int(sst), "sd": sd} if sd else {"sst": int(sst)}


def subscription_request(o: Options, notify_uri: str, correlation_id: str) -> dict[str, Any]:
    """The CreateEventSubscription this AF sends."""
    sub: dict[str, Any] = {
        "eventList": [{"type": "USER_DATA_USAGE_MEASURES", "measurementTypes": list(o.measure),
                       "granularityOfMeasurement": o.granularity}],
        "eventNotifyUri": notify_uri,
        "notifyCorrelationId": correlation_id,
        "eventReportingMode": {"trigger": o.trigger},
        "nfId": str(uuid.uuid5(uuid.NAMESPACE_URL, "mec-testbed-af")),
    }
    mode = sub["eventReportingMode"]
    if o.trigger == "PERIODIC":
        mode["repPeriod"] = o.period
    if o.max_reports is not None:
        mode["maxReports"] = o.max_reports
    if o.any_ue:
        sub["anyUe"] = True
    if o.supi:
        sub["supi"] = o.supi
    if o.ue_ip:
        sub["ueIpAddress"] = {"ipv6Addr" if ":" in o.ue_ip else "ipv4Addr": o.ue_ip}
    if o.dnn:
        sub["dnn"] = o.dnn
    if o.snssai:
        sub["snssai"] = _snssai(o.snssai)
    return {"subscription": sub}


def log_lines(item: dict[str, Any], sub_id: str | None, at: str) -> list[dict[str, Any]]:
    """One JSON line per domain, URL and volume of a NotificationItem."""
    ue = {"supi": item.get("supi"), "ue": item.get("ueIpv4Addr") or item.get("ueIpv6Prefix")}
    base = {"at": at, "subscription": sub_id, **ue}
    out: list[dict[str, Any]] = []
    for m in item.get("userDataUsageMeasurements", []):
        scope = {k: m[k] for k in ("appId", "flowInfo") if k in m}
        info = m.get("applicationRelatedInformation", {})
        for d in info.get("domainInfoList", []):
            out.append({**base, **scope, "domain": d["domainName"], "protocol": d.get("domainNameProtocol")})
        for url in info.get("urls", []):
            out.append({**base, **scope, "url": url})
        if "volumeMeasurement" in m:
            out.append({**base, **scope, "volume": m["volumeMeasurement"]})
        if "throughputMeasurement" in m:
            out.append({**base, **scope, "throughput": m["throughputMeasurement"]})
    return out


@dataclass
class ApplicationFunction:
    """The AF: its notification endpoint, its subscription, its reactions."""

    opts: Options
    correlation_id: str = field(default_factory=lambda: f"af-{uuid.uuid4().hex[:12]}")
    subscription_id: str | None = None
    location: str | None = None
    notifications: list[dict[str, Any]] = field(default_factory=list)
    seen: set[tuple[str, str]] = field(default_factory=set)      # (UE, domain) already reported
    port: int = 0
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def notify_uri(self) -> str:
        host, _ = parse_host_port(self.opts.listen, default_host="127.0.0.1")
        host = self.opts.notify_host or ("127.0.0.1" if host in ("0.0.0.0", "") else host)
        return f"http://{host}:{self.port}/notify/{self.correlation_id}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.opts.token}"} if self.opts.token else {}

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/notify/{correlation}", self._on_notification)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        host, port = parse_host_port(self.opts.listen, default_host="127.0.0.1")
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._say(f"af: notifications on {self.notify_uri}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def subscribe(self) -> dict[str, Any]:
        """POST the subscription; returns the CreatedEventSubscription (raises RuntimeError if refused)."""
        body = subscription_request(self.opts, self.notify_uri, self.correlation_id)
        async with aiohttp.ClientSession() as s, s.post(self.opts.detector + COLLECTION, json=body,
                                                        headers=self._headers()) as r:
            answer = await r.json(content_type=None)
            if r.status != 201:
                raise RuntimeError(f"subscription refused: HTTP {r.status}: {json.dumps(answer)}")
            self.location = r.headers.get("Location")
        self.subscription_id = answer["subscriptionId"]
        self._say(f"af: subscribed {self.subscription_id} ({self.opts.trigger}) at {self.location}")
        return dict(answer)

    async def unsubscribe(self) -> int:
        """DELETE the subscription: 204, or 404 if it already ended (ONE_TIME, maxReports)."""
        if self.subscription_id is None:
            return 0
        url = f"{self.opts.detector}{COLLECTION}/{self.subscription_id}"
        async with aiohttp.ClientSession() as s, s.delete(url, headers=self._headers()) as r:
            self._say(f"af: unsubscribed {self.subscription_id}: HTTP {r.status}")
            return r.status

    async def _on_notification(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            items = data["notificationItems"]
            assert isinstance(items, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            return web.json_response({"title": "Bad Request", "status": 400, "detail": "not a NotificationData"},
                                     status=400, content_type="application/problem+json")
        if data.get("correlationId") != self.correlation_id:
            return web.json_response({"title": "Not Found", "status": 404, "detail": "unknown correlationId"},
                                     status=404, content_type="application/problem+json")
        self.notifications.append(data)
        self._react(items)
        self._changed.set()
        return web.Response(status=204)

    def _react(self, items: list[dict[str, Any]]) -> None:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        lines = [line for item in items for line in log_lines(item, self.subscription_id, at)]
        if self.opts.log is not None:
            with self.opts.log.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(line) + "\n" for line in lines)
        for line in lines:
            who = line.get("supi") or line.get("ue") or "?"
            if "domain" in line and (who, line["domain"]) not in self.seen:
                self.seen.add((who, line["domain"]))
                self._say(f"af: {who} -> {line['domain']} ({line['protocol']})")
            elif "volume" in line:
                v = line["volume"]
                self._say(f"af: {who} volume ul {v.get('ulVolume')} dl {v.get('dlVolume')}"
                          f"{' app ' + line['appId'] if 'appId' in line else ''}")

    async def wait_for(self, count: int, timeout: float) -> bool:
        """Until `count` notifications arrived (True) or `timeout` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while len(self.notifications) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    def _say(self, text: str) -> None:
        if not self.opts.quiet:
            print(text, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m testbed.af", description=__doc__.split("\n\n")[0])
    p.add_argument("--detector", required=True, help="the detector's base URL, e.g. http://127.0.0.1:8080")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--token", help="the detector's bearer token")
    tok.add_argument("--token-file", type=Path, help="file holding the bearer token")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT of the notification endpoint")
    p.add_argument("--notify-host", help="host name the detector reaches this AF at (default: the listen host)")
    ue = p.add_mutually_exclusive_group(required=True)
    ue.add_argument("--any-ue", action="store_true", help="every UE")
    ue.add_argument("--supi", help="one UE by SUPI (imsi-…)")
    ue.add_argument("--ue-ip", help="one UE by address")
    p.add_argument("--dnn", help="only this DNN")
    p.add_argument("--snssai", help="only this S-NSSAI, e.g. 1 or 1-000001")
    p.add_argument("--trigger", choices=("periodic", "once"), default="periodic")
    p.add_argument("--period", type=int, default=5, help="repPeriod in seconds (periodic)")
    p.add_argument("--max-reports", type=int, help="maxReports")
    p.add_argument("--measure", default="app", help="comma-separated: app, volume, throughput (default app)")
    p.add_argument("--granularity", choices=tuple(GRANULARITY), default="session")
    p.add_argument("--log", type=Path, help="JSON lines file: one line per domain, URL and volume")
    p.add_argument("--count", type=int, help="stop after this many notifications")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--quiet", action="store_true")
    return p


def options(args: argparse.Namespace) -> Options:
    measure = tuple(MEASURES[m.strip()] for m in args.measure.split(",") if m.strip() in MEASURES)
    if not measure or len(measure) != len([m for m in args.measure.split(",") if m.strip()]):
        raise ValueError(f"--measure {args.measure!r}: use app, volume, throughput")
    parse_host_port(args.listen, default_host="127.0.0.1")     # a bad --listen is a bad argument
    token = args.token
    if args.token_file is not None:
        token = args.token_file.read_text(encoding="utf-8").strip()
    return Options(detector=args.detector.rstrip("/"), token=token, listen=args.listen, notify_host=args.notify_host,
                   any_ue=args.any_ue, supi=args.supi, ue_ip=args.ue_ip, dnn=args.dnn, snssai=args.snssai,
                   trigger="ONE_TIME" if args.trigger == "once" else "PERIODIC", period=args.period,
                   max_reports=args.max_reports, measure=measure, granularity=GRANULARITY[args.granularity],
                   log=args.log, quiet=args.quiet)


async def run(opts: Options, count: int | None, duration: float | None) -> int:
    af = ApplicationFunction(opts)
    await af.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await af.subscribe()
        except (RuntimeError, aiohttp.ClientError) as e:
            print(f"af: error: {e}", file=sys.stderr)
            return 1
        waiter = asyncio.create_task(af.wait_for(count, duration or 1e9)) if count else None
        stopper = asyncio.create_task(stop.wait())
        tasks = [t for t in (waiter, stopper) if t is not None]
        await asyncio.wait(tasks, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        with contextlib.suppress(aiohttp.ClientError):
            await af.unsubscribe()
        return 0
    finally:
        await af.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        opts = options(args)
    except (ValueError, OSError) as e:
        print(f"af: error: {e}", file=sys.stderr)
        return 2
    return asyncio.run(run(opts, args.count, args.duration))


if __name__ == "__main__":
    sys.exit(main())
