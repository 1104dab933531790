"""Knative Services of the project's sample functions, run as local processes.

A Service whose image is `…/fn-<name>:<tag>` (for example
ghcr.io/mec-testbed/fn-buy:0.1.0) runs `python -m testbed.functions.serve <name>`: the
same handler code as the container image. Like Knative Serving:
- scale from zero: the first request finds no process, the activator (this module)
  holds it while the process starts, then proxies it; later requests go straight
  through (warm);
- scale to zero: after the idle window the process is stopped (SIGTERM). The window
  comes from the revision annotations: autoscaling.knative.dev/window (stable window,
  default 60s) plus the larger of scale-to-zero-pod-retention-period (default 0s) and
  the cluster's scale-to-zero grace period (30s); `min-scale` >= 1 keeps one process
  up from the start. Tests pass a short `idle_override`.
- environment: PORT, K_SERVICE, K_CONFIGURATION, K_REVISION, and the container's env.
Cold and warm request latencies (activator in to answer out) and start times are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import statistics
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from testbed.broker.manifests import Service, parse_go_duration

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = REPO_ROOT / "testbed" / "functions"
ANNOTATION = "autoscaling.knative.dev/"
DEFAULT_WINDOW = 60.0          # config-autoscaler stable-window
DEFAULT_GRACE = 30.0           # config-autoscaler scale-to-zero-grace-period
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
LATENCY_SAMPLES = 10_000
_IMAGE = re.compile(r"(?:^|/)fn-(?P<name>[a-z0-9][a-z0-9-]*)(?::[\w.-]+)?(?:@sha256:[0-9a-f]{64})?\Z")
_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"})


def function_for_image(image: str) -> str | None:
    """The sample function an image runs (`fn-dns-edge` -> `dns_edge`), or None."""
    m = _IMAGE.search(image)
    if not m:
        return None
    module = m.group("name").replace("-", "_")
    if module == "serve" or not (FUNCTIONS_DIR / f"{module}.py").is_file():
        return None
    return module


def _annotation(annotations: Mapping[str, str], key: str) -> str | None:
    # the camelCase spellings (minScale) are the older forms Knative still reads
    camel = re.sub(r"-([a-z])", lambda m: m.group(1).upper(), key)
    return annotations.get(ANNOTATION + key) or annotations.get(ANNOTATION + camel)


def min_scale(annotations: Mapping[str, str]) -> int:
    raw = _annotation(annotations, "min-scale")
    return int(raw) if raw and raw.isdigit() else 0


def idle_window(annotations: Mapping[str, str], grace: float = DEFAULT_GRACE) -> float:
    """Seconds without requests before the process is stopped."""
    window = _annotation(annotations, "window")
    retention = _annotation(annotations, "scale-to-zero-pod-retention-period")
    w = parse_go_duration(window) if window else DEFAULT_WINDOW
    r = parse_go_duration(retention) if retention else 0.0
    return w + max(r, grace)


def _percentiles(samples: list[float]) -> dict[str, float | int]:
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"count": len(ordered), "p50_ms": pick(0.5), "p95_ms": pick(0.95), "p99_ms": pick(0.99),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 3), "max_ms": round(ordered[-1] * 1000, 3)}


@dataclass
class _Fn:
    service: Service
    module: str
    idle: float
    keep: int
    proc: asyncio.subprocess.Process | None = None
    port: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    in_flight: int = 0
    last_active: float = 0.0
    idle_task: asyncio.Task[None] | None = None
    drain_task: asyncio.Task[None] | None = None
    starts: int = 0
    stops: int = 0
    start_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    cold: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    warm: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class RunnerError(RuntimeError):
    pass


class FunctionRunner:
    """Activator + process supervisor for the Services of a manifest set."""

    def __init__(self, services: Mapping[tuple[str, str], Service], state_dir: Path, *,
                 idle_override: float | None = None, grace: float = DEFAULT_GRACE,
                 python: str = sys.executable) -> None:
        self.state_dir = Path(state_dir)
        self.python = python
        self.fns: dict[tuple[str, str], _Fn] = {}
        self.unrunnable: dict[tuple[str, str], str] = {}
        self._session: aiohttp.ClientSession | None = None
        for key, svc in services.items():
            module = function_for_image(svc.image)
            if module is None:
                self.unrunnable[key] = svc.image
                continue
            idle = idle_override if idle_override is not None else idle_window(svc.annotations, grace)
            self.fns[key] = _Fn(svc, module, idle, min_scale(svc.annotations))

    def can_run(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.fns

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        for fn in self.fns.values():
            if fn.keep > 0:
                await self._ensure_running(fn)

    async def close(self) -> None:
        for fn in self.fns.values():
            if fn.idle_task:
                fn.idle_task.cancel()
            await self._stop(fn)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- process lifecycle -------------------------------------------------------------

    async def _ensure_running(self, fn: _Fn) -> bool:
        """Start the process if needed; True when the request had to wait for a start (cold),
        whether this call started it or another request that arrived first did."""
        if fn.running:
            return False
        async with fn.lock:
            if not fn.running:
                await self._spawn(fn)
        return True

    async def _spawn(self, fn: _Fn) -> None:
        svc = fn.service
        state = self.state_dir / svc.namespace / svc.name
        state.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({
            "K_SERVICE": svc.name, "K_CONFIGURATION": svc.name, "K_REVISION": f"{svc.name}-00001",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(svc.env)
        # locally every function gets a free loopback port and its own state directory
        env["PORT"] = "0"
        env["FN_STATE_DIR"] = str(state)
        env["FN_PARENT_PID"] = str(os.getpid())  # the function ends with this broker, even after kill -9
        began = time.monotonic()
        log_file = (state / "process.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "testbed.functions.serve", fn.module, "--host", "127.0.0.1", "--ready-line",
            stdout=asyncio.subprocess.PIPE, stderr=log_file, env=env, cwd=str(state),
        )
        log_file.close()
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        m = re.match(rb"READY port=(\d+)", line)
        if not m:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RunnerError(f"function {svc.namespace}/{svc.name} did not start (see {state / 'process.log'})")
        fn.proc = proc
        fn.port = int(m.group(1))
        fn.starts += 1
        fn.start_seconds.append(time.monotonic() - began)
        fn.last_active = time.monotonic()
        fn.drain_task = asyncio.get_running_loop().create_task(self._drain_stdout(proc, state / "process.log"))
        if fn.keep == 0:
            fn.idle_task = asyncio.get_running_loop().create_task(self._idle_watch(fn))

    @staticmethod
    async def _drain_stdout(proc: asyncio.subprocess.Process, path: Path) -> None:
        assert proc.stdout is not None
        with path.open("ab") as out:
            while line := await proc.stdout.readline():
                out.write(line)
                out.flush()

    async def _idle_watch(self, fn: _Fn) -> None:
        while fn.running:
            left = fn.last_active + fn.idle - time.monotonic()
            if fn.in_flight == 0 and left <= 0:
                await self._stop(fn)
                return
            await asyncio.sleep(max(left, 0.05))

    async def _stop(self, fn: _Fn) -> None:
        async with fn.lock:
            proc = fn.proc
            if proc is None:
                return
            fn.proc = None
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            if fn.drain_task:
                await fn.drain_task
            fn.stops += 1

    # --- activator / proxy ---------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """`/_fn/<namespace>/<name>/<path>`: start the function if it is at zero, then proxy."""
        key = (request.match_info["namespace"], request.match_info["name"])
        fn = self.fns.get(key)
        if fn is None:
            return web.Response(status=404, text=f"no local function for Service {key[0]}/{key[1]}\n")
        began = time.monotonic()
        fn.in_flight += 1
        try:
            try:
                cold = await self._ensure_running(fn)
            except RunnerError as exc:
                return web.Response(status=503, text=f"{exc}\n")
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
            url = f"http://127.0.0.1:{fn.port}/{request.match_info.get('tail', '')}"
            if request.query_string:
                url += "?" + request.query_string
            assert self._session is not None, "FunctionRunner.start() was not awaited"
            try:
                async with self._session.request(request.method, url, data=body, headers=headers) as resp:
                    payload = await resp.read()
                    out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
                    status = resp.status
            except (aiohttp.ClientError, OSError) as exc:
                return web.Response(status=502, text=f"function {key[0]}/{key[1]} failed: {exc}\n")
            (fn.cold if cold else fn.warm).append(time.monotonic() - began)
            return web.Response(status=status, body=payload, headers=out_headers)
        finally:
            fn.in_flight -= 1
            fn.last_active = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (ns, name), fn in self.fns.items():
            out[f"{ns}/{name}"] = {
                "function": fn.module, "image": fn.service.image, "running": fn.running,
                "pid": fn.proc.pid if fn.running and fn.proc else None, "port": fn.port if fn.running else None,
                "idle_window_s": fn.idle, "min_scale": fn.keep, "starts": fn.starts, "stops": fn.stops,
                "in_flight": fn.in_flight, "start": _percentiles(list(fn.start_seconds)),
                "cold": _percentiles(list(fn.cold)), "warm": _percentiles(list(fn.warm)),
            }
        for (ns, name), image in self.unrunnable.items():
            out[f"{ns}/{name}"] = {"image": image, "running": False, "error": "not a sample function image"}
        return out
