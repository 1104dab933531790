"""Helpers for the detector tests: a real aiohttp sink that can refuse, a detector runner, events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from detector.config import Config
from detector.rules import RuleSet, default_ruleset, parse_rules
from detector.server import Server
from testbed.constants import supi, ue_ipv4
from upf_tap.events import make_event, to_json_line

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-123"
T0_NS = 1_795_000_000_000_000_000  # a fixed capture clock for generated events


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    ce: Any = None

    @property
    def id(self) -> str:
        return self.ce.get_id()


@dataclass
class Sink:
    """A CloudEvents sink on 127.0.0.1 whose answer the test picks per request."""

    port: int = 0
    # a function of the request number (from 0) -> (status, extra headers); default 202
    answer: Callable[[int, Received], tuple[int, dict[str, str]]] | None = None
    received: list[Received] = field(default_factory=list)    # every request, whatever the answer
    accepted: list[Received] = field(default_factory=list)    # the ones answered 2xx
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        r = Received(dict(request.headers), body, time.monotonic())
        r.ce = from_http_event(HTTPMessage(headers=r.headers, body=body))
        n = len(self.received)
        self.received.append(r)
        status, headers = (202, {}) if self.answer is None else self.answer(n, r)
        if 200 <= status < 300:
            self.accepted.append(r)
        self._changed.set()
        return web.Response(status=status, headers=headers, text="" if status < 300 else f"sink says {status}")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"sink: condition not met in {timeout}s "
                                     f"({len(self.received)} received, {len(self.accepted)} accepted)")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))

    def accepted_ids(self) -> list[str]:
        return [r.id for r in self.accepted]


def schema_refs(node: Any) -> Iterator[str]:
    """Every `$ref` string anywhere in a JSON/OpenAPI document, depth first."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for v in node.values():
            yield from schema_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from schema_refs(v)


def det_config(tmp_path: Path, sink_url: str, **kw: Any) -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = Config(listen="127.0.0.1:0", sink=sink_url, outbox=str(tmp_path / "outbox.db"), detector_id="det1",
                 token=TOKEN, backoff_base=0.01, backoff_cap=0.1, drain_timeout=2.0, ack_interval=0.01,
                 sweep_interval=0.05, concurrency=8)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@contextlib.asynccontextmanager
async def running(cfg: Config, rules: RuleSet | None = None) -> AsyncIterator[Server]:
    server = Server(cfg, rules or default_ruleset())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def rules_from(yaml_text: str) -> RuleSet:
    import yaml
    return parse_rules(yaml.safe_load(yaml_text))


def app_event(n: int, i: int, kind: str = "http.request", *, app: dict[str, Any] | None = None,
              with_supi: bool = True, direction: str = "ul", seq: int = 0) -> dict[str, Any]:
    """AppEvent number i of UE n, built with the project's make_event (capture time grows with i)."""
    ue: dict[str, Any] = {"ip": ue_ipv4(n), "teid": 0x10000 + n, "qfi": 1, "dnn": "internet", "snssai": "1"}
    if with_supi:
        ue["supi"] = supi(n)
    if app is None:
        app = {"method": "POST", "host": "shop.mec.local", "path": f"/api/v1/buy?item={i}"}
    flow = {"proto": "tcp", "src": ue_ipv4(n), "sport": 40000 + n, "dst": "10.200.0.10", "dport": 80}
    return make_event(kind, T0_NS + i * 1_000_000 + n, "n3", "upf1", direction=direction, ue=ue, flow=flow,
                      tunnel={"src": "192.168.100.10", "dst": "192.168.100.20", "teid": 0x10000 + n, "qfi": 1},
                      app=app, seq=seq)


def truth_events(captures: Path) -> list[dict[str, Any]]:
    """The AppEvents a correct tap reports for synthetic-n3.pcap (from its truth file)."""
    out = []
    lines = (captures / "synthetic-n3.truth.jsonl").read_text().splitlines()
    for i, line in enumerate(lines):
        t = json.loads(line)
        kind = t.pop("kind")
        ip, teid = t.pop("ue_ip"), t.pop("teid")
        proto = "udp" if kind == "dns.query" else "tcp"
        dport = {"http.request": 80, "dns.query": 53, "tls.client_hello": 443, "mqtt.publish": 1883}[kind]
        if kind == "dns.query":
            t["transport"] = "udp"
        out.append(make_event(kind, T0_NS + i * 1_000_000, "n3", "upf1", direction="ul",
                              ue={"ip": ip, "teid": teid}, flow={"proto": proto, "src": ip, "sport": 40000 + i,
                                                                 "dst": "10.200.0.10", "dport": dport},
                              tunnel={"src": "192.168.100.10", "dst": "192.168.100.20", "teid": teid}, app=t))
    return out


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return ("\n".join(to_json_line(e) for e in events) + "\n").encode()


async def post_events(base: str, body: bytes, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/x-ndjson"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.post(base + "/v1/events", data=body, headers=headers) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text.startswith("{") else {"text": text})


def base_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"
