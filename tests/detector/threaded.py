"""A real detector and a sink on their own event loop in a background thread, for synchronous
clients (schemathesis and requests cannot share pytest-asyncio's loop)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from aiohttp import web

from detector.config import Config
from detector.rules import default_ruleset
from detector.server import Server

T = TypeVar("T")


class AcceptingSink:
    """A sink that answers 202 to anything and keeps the bodies (it does not parse them: whatever
    the fuzzer made the detector relay must not end in retries)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def _handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        return web.Response(status=202)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class ThreadedDetector:
    """`with ThreadedDetector(make_config) as d:` a detector listening on 127.0.0.1 (d.base_url),
    delivering to an AcceptingSink; `make_config(sink_url)` gives its Config."""

    def __init__(self, make_config: Callable[[str], Config]) -> None:
        self.make_config = make_config
        self.sink = AcceptingSink()
        self.server: Server | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="detector-loop", daemon=True)

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run `coro` on the detector's loop and wait for its result."""
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    async def _start(self) -> None:
        await self.sink.start()
        self.server = Server(self.make_config(self.sink.url), default_ruleset())
        await self.server.start()

    async def _stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        await self.sink.stop()

    def __enter__(self) -> ThreadedDetector:
        self._thread.start()
        try:
            self.call(self._start())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
