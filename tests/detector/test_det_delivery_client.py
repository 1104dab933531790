"""The delivery client is injected: a recording client in place of `Delivery`, the rest real
(HTTP API, rules, SQLite outbox). What it is handed, what its acks and dead letters do."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from detlib import TOKEN, app_event, base_url, det_config, ndjson, post_events

from detector.cloudevent import ce_id
from detector.config import Config
from detector.delivery import AckFn, DeadFn
from detector.outbox import Row
from detector.rules import default_ruleset
from detector.server import Server


class RecordingDelivery:
    """A DeliveryClient that records every row handed to it and settles it at once: acked, or
    dead-lettered (status 400) when `refuse(row)` says so, or left pending when `hold` is set."""

    def __init__(self, refuse: Callable[[Row], bool] = lambda row: False, hold: bool = False) -> None:
        self.pending = 0
        self.inflight = 0
        self.attempted = False
        self.sink_answered = False
        self.rows: list[Row] = []
        self.started = self.stopped = False
        self._refuse = refuse
        self._hold = hold
        self._queue: asyncio.Queue[Row] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self, ack: AckFn, dead: DeadFn) -> None:
        self.started = True
        self._task = asyncio.create_task(self._settle(ack, dead))

    def enqueue(self, rows: list[Row], t0: float | None = None) -> None:
        self.rows += rows
        self.pending += len(rows)
        for row in rows:
            self._queue.put_nowait(row)

    async def _settle(self, ack: AckFn, dead: DeadFn) -> None:
        while True:
            row = await self._queue.get()
            if self._hold:
                continue
            self.attempted = self.sink_answered = True
            if self._refuse(row):
                await dead(row, 400, b"refused by the test client", "HTTP 400")
            else:
                ack(row.seq)
            self.pending -= 1

    async def stop(self, drain_timeout: float) -> None:
        self.stopped = True
        if self._task is not None:
            self._task.cancel()


async def _until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running_with(cfg: Config, delivery: RecordingDelivery) -> AsyncIterator[Server]:
    server = Server(cfg, default_ruleset(), delivery=delivery)     # (mypy: a DeliveryClient)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_the_injected_client_gets_durable_rows_in_order_and_acks_reach_the_outbox(tmp_path: Path) -> None:
    cfg = det_config(tmp_path, "http://127.0.0.1:9/")       # no sink: the test client stands in
    evs = [app_event(n, i) for i in range(4) for n in (1, 2)]
    client = RecordingDelivery()
    async with running_with(cfg, client) as srv:
        assert client.started
        status, ans = await post_events(base_url(srv), ndjson(evs))
        assert status == 202 and ans["emitted"] == len(evs)
        await _until(lambda: client.pending == 0 and len(client.rows) == len(evs))
    assert client.stopped
    assert [r.seq for r in client.rows] == sorted(r.seq for r in client.rows)       # ingest order
    ces = [from_http_event(HTTPMessage(headers=r.headers, body=r.body)) for r in client.rows]
    assert [ce.get_id() for ce in ces] == [ce_id(e["id"], "default") for e in evs]
    assert [r.ue for r in client.rows] == [e["ue"]["supi"] for e in evs]           # the ordering key
    # every row was acked: a new detector on the same outbox has nothing to resume
    again = RecordingDelivery()
    async with running_with(cfg, again):
        await asyncio.sleep(0.05)
    assert again.rows == []


async def test_rows_the_client_never_settled_are_handed_over_again_after_a_restart(tmp_path: Path) -> None:
    cfg = det_config(tmp_path, "http://127.0.0.1:9/")
    evs = [app_event(1, i) for i in range(3)]
    held = RecordingDelivery(hold=True)
    async with running_with(cfg, held) as srv:
        assert (await post_events(base_url(srv), ndjson(evs)))[0] == 202
        await _until(lambda: len(held.rows) == 3)
    resumed = RecordingDelivery()
    async with running_with(cfg, resumed):
        await _until(lambda: resumed.pending == 0 and len(resumed.rows) == 3)
    assert [r.id for r in resumed.rows] == [r.id for r in held.rows]


async def test_dead_letters_from_the_client_are_listed(tmp_path: Path) -> None:
    poison = app_event(1, 1)
    bad_id = ce_id(poison["id"], "default")
    client = RecordingDelivery(refuse=lambda row: row.id == bad_id)
    async with running_with(det_config(tmp_path, "http://127.0.0.1:9/"), client) as srv:
        assert (await post_events(base_url(srv), ndjson([app_event(1, 0), poison, app_event(1, 2)])))[0] == 202
        await _until(lambda: client.pending == 0 and len(client.rows) == 3)
        async with aiohttp.ClientSession() as s, s.get(base_url(srv) + "/v1/deadletters",
                                                       headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
            dl = json.loads(await r.text())["deadletters"]
    assert [d["id"] for d in dl] == [bad_id]
    assert dl[0]["status"] == 400 and dl[0]["reason"] == "HTTP 400"
    assert dl[0]["response"] == "refused by the test client"
