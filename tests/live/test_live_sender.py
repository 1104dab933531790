"""DetectorSender against a real aiohttp server on loopback: batching, auth, down/up, overflow."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from mec_common.ports import free_port
from upf_tap.live.sender import DetectorSender, SenderError, events_url

TOKEN = "s3cret-token"


class Detector:
    """A minimal /v1/events endpoint that records what it accepts."""

    def __init__(self, port: int, status: int = 202, retry_after: str | None = None) -> None:
        self.port = port
        self.status = status
        self.retry_after = retry_after
        self.events: list[dict] = []
        self.posts: list[int] = []
        self.auth: set[str] = set()
        self.peers: set[tuple] = set()
        self.runner: web.AppRunner | None = None

    async def handle(self, req: web.Request) -> web.Response:
        self.auth.add(req.headers.get("Authorization", ""))
        self.peers.add(req.transport.get_extra_info("peername") if req.transport else None)
        body = await req.read()
        if self.status >= 300:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.Response(status=self.status, text="nope", headers=headers)
        assert req.headers["Content-Type"] == "application/x-ndjson"
        lines = body.decode().splitlines()
        self.posts.append(len(lines))
        self.events.extend(json.loads(x) for x in lines)
        return web.Response(status=self.status, text="ok")

    async def start(self) -> Detector:
        app = web.Application()
        app.router.add_post("/v1/events", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def ev(i: int) -> dict:
    return {"kind": "dns.query", "seq": i, "app": {"qname": f"q{i}.mec.local", "qtype": 1}}


async def test_batches_with_bearer_token_over_one_connection() -> None:
    det = await Detector(free_port()).start()
    s = DetectorSender(f"http://127.0.0.1:{det.port}", TOKEN, batch_max=40, linger=0.05).start()
    try:
        for i in range(100):
            s.put(ev(i))
        await asyncio.to_thread(s.close, 5.0)
    finally:
        await det.stop()
    assert [e["seq"] for e in det.events] == list(range(100))
    assert det.auth == {f"Bearer {TOKEN}"}
    assert max(det.posts) <= 40 and len(det.posts) >= 3  # batched, not one POST per event
    assert len(det.peers) == 1  # keep-alive: one TCP connection for all POSTs
    assert s.stats["sent"] == 100 and s.stats["dropped_queue_full"] == 0


async def test_detector_down_then_up_loses_nothing_within_the_queue_bound() -> None:
    port = free_port()
    warnings: list[str] = []
    s = DetectorSender(f"http://127.0.0.1:{port}/v1/events", TOKEN, max_queue=500, batch_max=50,
                       backoff_initial=0.05, backoff_max=0.2, warn=warnings.append).start()
    for i in range(300):
        s.put(ev(i))
    await asyncio.sleep(0.5)  # several failed attempts while nobody listens
    assert s.stats["retries"] >= 2 and s.stats["sent"] == 0
    det = await Detector(port).start()
    try:
        for i in range(300, 400):
            s.put(ev(i))
        await asyncio.to_thread(s.close, 10.0)
    finally:
        await det.stop()
    assert [e["seq"] for e in det.events] == list(range(400))
    assert s.stats["sent"] == 400
    assert not any(k.startswith("dropped") and v for k, v in s.stats.items())
    assert any("retrying" in w for w in warnings)


async def test_full_queue_drops_the_oldest_and_counts_them() -> None:
    port = free_port()
    warnings: list[str] = []
    s = DetectorSender(f"http://127.0.0.1:{port}", TOKEN, max_queue=100, batch_max=10,
                       backoff_initial=0.05, backoff_max=0.1, warn=warnings.append).start()
    for i in range(50):
        s.put(ev(i))
    await asyncio.sleep(0.3)  # the sender now holds one batch in flight; the queue holds the rest
    for i in range(50, 400):
        s.put(ev(i))  # never blocks although nothing can be delivered
    assert s.queued() == 100
    det = await Detector(port).start()
    try:
        await asyncio.to_thread(s.close, 10.0)
    finally:
        await det.stop()
    seqs = [e["seq"] for e in det.events]
    assert seqs[-100:] == list(range(300, 400))  # the newest 100 survive, in order
    assert seqs == sorted(seqs)
    assert s.stats["dropped_queue_full"] == 400 - len(seqs)
    assert len(seqs) == 100 + 10  # + the batch that was in flight when the queue filled
    assert any("queue full" in w and "dropping the oldest" in w for w in warnings)


async def test_rejected_batch_is_dropped_and_counted() -> None:
    det = await Detector(free_port(), status=401).start()
    warnings: list[str] = []
    s = DetectorSender(f"http://127.0.0.1:{det.port}", TOKEN, warn=warnings.append).start()
    try:
        for i in range(5):
            s.put(ev(i))
        await asyncio.to_thread(s.close, 5.0)
    finally:
        await det.stop()
    assert s.stats["dropped_rejected"] == 5 and s.stats["sent"] == 0 and s.stats["retries"] == 0
    assert any("HTTP 401" in w for w in warnings)


async def test_503_is_retried_and_gives_up_at_the_drain_deadline() -> None:
    det = await Detector(free_port(), status=503, retry_after="0").start()
    s = DetectorSender(f"http://127.0.0.1:{det.port}", TOKEN, backoff_initial=0.05, backoff_max=0.1,
                       warn=lambda m: None).start()
    try:
        for i in range(7):
            s.put(ev(i))
        await asyncio.sleep(0.4)
        await asyncio.to_thread(s.close, 0.3)
    finally:
        await det.stop()
    assert s.stats["retries"] >= 3
    assert s.stats["sent"] == 0 and s.stats["dropped_shutdown"] == 7


@pytest.mark.parametrize("bad", ["ftp://x/", "http://", "127.0.0.1:8080", "http://h:99999/"])
def test_bad_detector_urls_are_refused(bad: str) -> None:
    with pytest.raises(SenderError):
        events_url(bad)


def test_base_url_gets_the_events_path() -> None:
    assert events_url("http://det:8080").path == "/v1/events"
    assert events_url("http://det:8080/custom/in").path == "/custom/in"
