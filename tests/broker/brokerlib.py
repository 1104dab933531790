"""Helpers for the broker tests: real loopback HTTP subscribers and a real broker server.

Received events are decoded with the cloudevents SDK (not with the broker's own
codec), so the tests check the wire, not the code against itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cloudevents.core.bindings.http import HTTPMessage, from_http_event, to_binary_event
from cloudevents.core.v1.event import CloudEvent

from testbed.broker.ingress import BROKER_KEY, RUNNER_KEY, build_app
from testbed.broker.manifests import load_manifests


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    attrs: dict[str, Any]
    data: Any


@dataclass
class Subscriber:
    """One aiohttp server; each path has its own behaviour (see `behave`)."""

    url: str = ""
    got: list[Received] = field(default_factory=list)
    # path -> function(Received) -> (status, headers, body)
    behaviours: dict[str, Callable[[Received], tuple[int, dict[str, str], bytes]]] = field(default_factory=dict)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.got if r.path == path]

    def ids(self, path: str) -> list[str]:
        return [r.attrs["id"] for r in self.at(path)]


async def _sub_handler(sub: Subscriber, request: web.Request) -> web.Response:
    body = await request.read()
    headers = dict(request.headers)
    event = from_http_event(HTTPMessage(headers={k: v for k, v in headers.items()}, body=body))
    attrs = dict(event.get_attributes())
    if not _time_on_wire(headers, body):  # the SDK invents a time when there is none
        attrs.pop("time", None)
    rec = Received(request.path, headers, attrs, event.get_data())
    sub.got.append(rec)
    behave = sub.behaviours.get(request.path)
    if behave is None:
        return web.Response(status=202)
    status, out_headers, out_body = behave(rec)
    return web.Response(status=status, headers=out_headers, body=out_body)


@contextlib.asynccontextmanager
async def subscriber() -> AsyncIterator[Subscriber]:
    sub = Subscriber()
    app = web.Application()

    async def handle(request: web.Request) -> web.Response:
        return await _sub_handler(sub, request)

    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = _loopback_socket()
    site = web.SockSite(runner, sock)
    await site.start()
    sub.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield sub
    finally:
        await runner.cleanup()


def _time_on_wire(headers: dict[str, str], body: bytes) -> bool:
    lower = {k.lower(): v for k, v in headers.items()}
    if lower.get("content-type", "").startswith("application/cloudevents+json"):
        return "time" in json.loads(body)
    return "ce-time" in lower


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@dataclass
class RunningBroker:
    url: str
    app: web.Application
    session: aiohttp.ClientSession

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        return self.app[BROKER_KEY]

    @property
    def runner(self):  # type: ignore[no-untyped-def]
        return self.app[RUNNER_KEY]

    async def post(self, path: str, headers: dict[str, str], body: bytes = b"") -> int:
        async with self.session.post(self.url + path, headers=headers, data=body) as resp:
            await resp.read()
            return resp.status

    async def send(self, attrs: dict[str, Any], data: Any = None, path: str = "/mec/default") -> int:
        """Post a CloudEvent in binary mode, written by the SDK."""
        attrs = dict(attrs)
        if isinstance(data, dict | list) and "datacontenttype" not in attrs:
            attrs["datacontenttype"] = "application/json"
        msg = to_binary_event(CloudEvent(attrs, data))
        headers = dict(msg.headers)
        if "time" not in attrs:  # the SDK adds one; a real source may not
            headers.pop("ce-time", None)
        return await self.post(path, headers, msg.body)

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(self.url + "/_local/stats") as resp:
            return await resp.json()

    async def settle(self, timeout: float = 20.0) -> None:
        await self.engine.drain(timeout)


@contextlib.asynccontextmanager
async def running_broker(manifest_dir: Path, state_dir: Path, **kw: Any) -> AsyncIterator[RunningBroker]:
    sock = _loopback_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = build_app(load_manifests(manifest_dir), url, state_dir, **kw)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    session = aiohttp.ClientSession()
    try:
        yield RunningBroker(url, app, session)
    finally:
        await session.close()
        await runner.cleanup()


def write_manifests(directory: Path, text: str, name: str = "manifests.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return directory


async def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> None:
    """Wait for a state change (not a timing assertion: the limit only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
