"""Running the detector: the HTTP listener plus the core, with an orderly stop.

Stop order (SIGTERM): refuse new ingest, let running ingest requests finish (their events are
then durable), let POSTs in flight finish, keep everything else pending in the outbox.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

from aiohttp import web

from detector.config import Config, parse_listen
from detector.ingest import make_app
from detector.rules import RuleSet
from detector.service import Detector

log = logging.getLogger("detector")
SWITCH_INTERVAL = 0.0005  # seconds


class Server:
    def __init__(self, cfg: Config, rules: RuleSet) -> None:
        self.cfg = cfg
        self.det = Detector(cfg, rules)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        """Open the outbox, start delivery, listen; returns the bound port."""
        await self.det.start()
        host, port = parse_listen(self.cfg.listen)
        self._runner = web.AppRunner(make_app(self.det), access_log=None, shutdown_timeout=self.cfg.drain_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            await self.det.stop()
            raise OSError(f"cannot listen on {self.cfg.listen}: {e.strerror}") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("detector %s listening on %s:%d, sink %s, outbox %s", self.cfg.detector_id, host, self.port,
                 self.cfg.sink, self.cfg.outbox)
        return self.port

    async def stop(self) -> None:
        self.det.draining = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.det.stop()
        log.info("detector stopped; %d CloudEvents left pending", self.det.delivery.pending)


async def serve(cfg: Config, rules: RuleSet) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = Server(cfg, rules)
    await server.start()
    gc.freeze()   # start-up objects (SDK, aiohttp, rules) leave the collector's view: shorter pauses
    # The SQLite thread needs the GIL back after each C call; with the default 5 ms switch
    # interval a busy loop makes every commit wait several such slices (it was the p50 at 1k/s).
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        await stop.wait()
    finally:
        await server.stop()
