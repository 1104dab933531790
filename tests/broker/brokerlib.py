"""Helpers for the broker tests: real loopback HTTP subscribers and a real broker server
(in this process, or a `python -m testbed.broker` process to kill -9 and restart).

Received events are decoded with the cloudevents SDK (not with the broker's own
codec), so the tests check the wire, not the code against itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cloudevents.core.bindings.http import HTTPMessage, from_http_event, to_binary_event
from cloudevents.core.v1.event import CloudEvent

from mec_common.ports import free_port
from testbed.broker.ingress import BROKER_KEY, RUNNER_KEY, build_app
from testbed.broker.manifests import load_manifests

REPO = Path(__file__).resolve().parents[2]


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
    start_listening: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)

    async def come_up(self) -> None:
        """Start listening (a subscriber made with `down=True` refuses connections until then)."""
        assert self.start_listening is not None
        start, self.start_listening = self.start_listening, None
        await start()

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
async def subscriber(*, down: bool = False) -> AsyncIterator[Subscriber]:
    """A subscriber on a loopback port; with `down`, the port is bound but not listening
    (connections are refused, as from a host whose server is not up) until `come_up()`."""
    sub = Subscriber()
    app = web.Application()

    async def handle(request: web.Request) -> web.Response:
        return await _sub_handler(sub, request)

    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = _loopback_socket(listen=False)  # the site listens when it starts
    sub.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sub.start_listening = web.SockSite(runner, sock).start
    if not down:
        await sub.come_up()
    try:
        yield sub
    finally:
        await runner.cleanup()
        sock.close()


def _time_on_wire(headers: dict[str, str], body: bytes) -> bool:
    lower = {k.lower(): v for k, v in headers.items()}
    if lower.get("content-type", "").startswith("application/cloudevents+json"):
        return "time" in json.loads(body)
    return "ce-time" in lower


def _loopback_socket(listen: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    if listen:
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
    """The broker in this process (its /_local API on unless `local_api=False`)."""
    sock = _loopback_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    kw.setdefault("local_api", True)
    app = build_app(load_manifests(manifest_dir), url, state_dir, **kw)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    await app[BROKER_KEY].resume()
    session = aiohttp.ClientSession()
    try:
        yield RunningBroker(url, app, session)
    finally:
        await session.close()
        await runner.cleanup()


@dataclass
class BrokerProcess:
    """A real `python -m testbed.broker` process on a fixed port and state dir, so it can be
    killed (-9) and started again on the same store."""

    manifests: Path
    state_dir: Path
    log: Path
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        """Start and wait until /_local/healthz answers (the store is open and pending
        deliveries are resumed by then)."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "testbed.broker", "--manifests", str(self.manifests), "--listen",
                 f"127.0.0.1:{self.port}", "--state-dir", str(self.state_dir), *self.args],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.log.parent)
        if self.session is None:
            self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited with {self.proc.returncode}:\n{self.log_text()[-1500:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(self.url + "/_local/healthz") as resp:
                    if resp.status == 200 and b"listening on" in self.log.read_bytes():
                        return
            if time.monotonic() > deadline:
                raise AssertionError(f"broker did not come up:\n{self.log_text()[-1500:]}")
            await asyncio.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def stop(self) -> int | None:
        """SIGTERM (clean stop), then close the client; the exit status."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(self.proc.wait, 20)
        if self.session is not None:
            await self.session.close()
            self.session = None
        return code

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def post_event(self, attrs: dict[str, Any], data: bytes | None = None,
                         path: str = "/mec/default") -> aiohttp.ClientResponse:
        """POST a binary-mode CloudEvent; the (read) response."""
        assert self.session is not None
        headers = {f"ce-{k}": str(v) for k, v in attrs.items()}
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.session.post(self.url + path, headers=headers, data=data or b"") as resp:
            await resp.read()
            return resp

    async def get_json(self, path: str) -> Any:
        assert self.session is not None
        async with self.session.get(self.url + path) as resp:
            assert resp.status == 200, f"GET {path}: {resp.status}"
            return await resp.json()


@contextlib.asynccontextmanager
async def broker_process(manifests: Path, state_dir: Path, log: Path, *args: str) -> AsyncIterator[BrokerProcess]:
    """A started BrokerProcess; stopped (or found killed) at the end."""
    bp = BrokerProcess(manifests, state_dir, log, list(args))
    try:
        await bp.start()
        yield bp
    finally:
        await bp.stop()


def write_manifests(directory: Path, text: str, name: str = "manifests.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return directory


def assert_manifest_error(directory: Path, text: str, message: str) -> None:
    """Loading ``text`` (as bad.yaml) fails with ``message``, and the error names the file first."""
    from testbed.broker.manifests import ManifestError, load_manifests

    write_manifests(directory, text, "bad.yaml")
    try:
        load_manifests(directory)
    except ManifestError as exc:
        assert message in str(exc)
        assert str(exc).startswith("bad.yaml")
    else:
        raise AssertionError(f"no ManifestError for: {text[:80]!r}")


def broker_with_trigger(trigger: str, event_type: str, uri: str) -> str:
    """The Broker mec/default and one Trigger of ``event_type`` to ``uri``, as manifest text."""
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: mec}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: {trigger}, namespace: mec}}
spec:
  broker: default
  filters: [{{exact: {{type: {event_type}}}}}]
  subscriber: {{uri: "{uri}"}}
---
"""


async def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> None:
    """Wait for a state change (not a timing assertion: the limit only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
