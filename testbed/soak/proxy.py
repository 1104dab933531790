"""SinkProxy: an HTTP hop in front of the broker that can answer 503 or 429 storms.

The detector's sink points here; normally every request is passed on unchanged (method,
path, headers, body) to the broker and the broker's answer comes back. During a storm,
requests are answered with the storm's status (and ``Retry-After`` for 429) without
reaching the broker, as an overloaded ingress or a rate-limiting gateway would.

It runs its own event loop in a thread so that the soak harness, which is synchronous,
can start it, change its mode and read its counters.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
from aiohttp import web

_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class SinkProxy:
    """Forward to ``target()`` (read per request: the broker's URL is known only once it runs)."""

    def __init__(self, target: Callable[[], str], host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.port = 0
        self.counts: Counter[str] = Counter()
        self._storm_status = 0
        self._storm_until = 0.0
        self._retry_after = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SinkProxy:
        self._thread = threading.Thread(target=self._run, name="sink-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("sink proxy did not start")
        if self._error is not None:
            raise RuntimeError(f"sink proxy failed to start: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def storm(self, status: int, seconds: float, retry_after: int = 1) -> None:
        """Answer ``status`` to every request for the next ``seconds``."""
        self._retry_after = retry_after
        self._storm_status = status
        self._storm_until = time.monotonic() + seconds

    # ------------------------------------------------------------------ server
    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as self._session:
            self._ready.set()
            await self._stop.wait()
        await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self._storm_status and time.monotonic() < self._storm_until:
            status = self._storm_status
            self.counts[f"storm_{status}"] += 1
            headers = {"Retry-After": str(self._retry_after)} if status in (429, 503) else {}
            return web.Response(status=status, text=f"fault injected: {status}\n", headers=headers)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        url = self.target() + request.path_qs
        try:
            async with self._session.request(request.method, url, data=body, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=15)) as resp:
                payload = await resp.read()
                out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
                self.counts[f"passed_{resp.status}"] += 1
                return web.Response(status=resp.status, body=payload, headers=out)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            self.counts["upstream_down"] += 1  # the broker is down (a kill fault): a gateway answers 502
            return web.Response(status=502, text=f"sink proxy: broker unreachable: {e}\n")
