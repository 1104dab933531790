"""Running the detector: the HTTP listener plus the core, with an orderly stop.

Stop order (SIGTERM), carried by aiohttp's runner: stop listening and refuse new ingest
(on_shutdown), let running requests finish (their events are then durable), then stop the
detector (cleanup_ctx): POSTs in flight finish, everything else stays pending in the outbox.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
import sys

from aiohttp import web

from detector.api import make_app
from detector.config import Config, parse_listen, server_ssl_context
from detector.delivery import Delivery, DeliveryClient, SiteDelivery
from detector.metrics import Metrics
from detector.rules import RuleSet
from detector.service import Detector

log = logging.getLogger("detector")
SWITCH_INTERVAL = 0.0005  # seconds


class Server:
    """The detector behind its HTTP API. `delivery`: the client taking durable CloudEvents
    (default: `Delivery` POSTing to `cfg.sink`, sharing the detector's metrics; with mobility a
    `SiteDelivery`, one queue per site's sink)."""

    def __init__(self, cfg: Config, rules: RuleSet, delivery: DeliveryClient | None = None) -> None:
        self.cfg = cfg
        metrics = Metrics()
        if delivery is None:
            delivery = SiteDelivery.from_config(cfg, metrics) if cfg.mobility else Delivery.from_config(cfg, metrics)
        self.det = Detector(cfg, rules, delivery, metrics)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        """Open the outbox, start delivery, listen; returns the bound port."""
        host, port = parse_listen(self.cfg.listen)
        runner = web.AppRunner(make_app(self.det), access_log=None, shutdown_timeout=self.cfg.drain_timeout)
        # built before the outbox is opened: a bad certificate stops the start with nothing to undo
        ssl_context = self._ssl_context()
        await runner.setup()          # runs the app's startup: the detector starts
        try:
            await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context).start()
        except OSError as e:
            await runner.cleanup()
            raise OSError(f"cannot listen on {self.cfg.listen}: {e.strerror}") from None
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("detector %s listening on %s:%d, %s, sink %s, outbox %s", self.cfg.detector_id, host, self.port,
                 "https" if self.tls else "http", self.cfg.sink, self.cfg.outbox)
        mob = self.cfg.mobility
        if mob is not None:
            log.info("mobility: site %s of %s, %d peers, pre-warm %s", mob.site, ", ".join(sorted(mob.sites)),
                     len(mob.peers), "on" if self.det.mobility and self.det.mobility.prewarm.enabled else "off")
        return self.port

    @property
    def tls(self) -> bool:
        return bool(self.cfg.tls_cert and self.cfg.tls_key)

    def _ssl_context(self) -> ssl.SSLContext | None:
        cert, key = self.cfg.tls_cert, self.cfg.tls_key
        return server_ssl_context(cert, key) if cert and key else None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()   # the app's shutdown and cleanup: the detector stops
            self._runner = None
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
