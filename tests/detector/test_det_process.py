"""`python -m detector serve` as a real process: SIGKILL mid-stream, SIGTERM drain, CLI errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from detlib import REPO_ROOT, TOKEN, Sink, app_event, ndjson, post_events

from detector.cloudevent import ce_id

FAST = "backoff_base: 10ms\nbackoff_cap: 100ms\nack_interval: 10ms\ndrain_timeout: 5s\nconcurrency: 8\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K_", "DETECTOR_"))}
    env.update(extra)
    return env


class Proc:
    def __init__(self, p: asyncio.subprocess.Process, port: int, log: list[str]) -> None:
        self.p, self.port, self.log = p, port, log

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _drain(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode(errors="replace").rstrip())


@contextlib.asynccontextmanager
async def detector(tmp_path: Path, sink: Sink) -> AsyncIterator[Proc]:
    cfg = tmp_path / "detector.yaml"
    cfg.write_text(FAST)
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "detector", "serve", "--listen", "127.0.0.1:0", "--sink", sink.url,
        "--outbox", str(tmp_path / "outbox.db"), "--config", str(cfg), "--detector-id", "det1",
        cwd=REPO_ROOT, env=_env(DETECTOR_TOKEN=TOKEN), stderr=asyncio.subprocess.PIPE)
    assert p.stderr is not None
    log: list[str] = []
    port = 0
    while not port:
        line = (await asyncio.wait_for(p.stderr.readline(), 30)).decode()
        assert line, f"detector exited: {log}"
        log.append(line.rstrip())
        m = re.search(r"listening on [^ ]*:(\d+),", line)
        if m:
            port = int(m.group(1))
    drainer = asyncio.create_task(_drain(p.stderr, log))
    try:
        yield Proc(p, port, log)
    finally:
        if p.returncode is None:
            p.kill()
        await p.wait()
        await drainer


async def test_sigkill_mid_stream_then_restart_loses_nothing(tmp_path: Path, sink: Sink) -> None:
    sink.answer = lambda n, r: (503, {}) if n % 2 == 0 else (202, {})   # a slow, flaky sink: a backlog builds
    batches = [[app_event(n, b * 10 + i) for n in range(1, 7) for i in range(10)] for b in range(40)]
    accepted: list[dict] = []
    async with detector(tmp_path, sink) as d:
        async def stream() -> None:
            for batch in batches:
                try:
                    status, _ = await post_events(d.base, ndjson(batch))
                except aiohttp.ClientError:
                    return
                if status == 202:
                    accepted.extend(batch)
        streamer = asyncio.create_task(stream())
        while len(accepted) < 600 and not streamer.done():
            await asyncio.sleep(0.005)
        d.p.send_signal(signal.SIGKILL)
        await d.p.wait()
        await streamer
    assert d.p.returncode == -signal.SIGKILL
    want = {ce_id(e["id"], "default") for e in accepted}
    delivered_before = want & set(sink.accepted_ids())
    assert len(delivered_before) < len(want), "the kill should leave a backlog"
    async with detector(tmp_path, sink) as d2:
        await sink.wait_for(lambda: want <= set(sink.accepted_ids()), timeout=60)
        assert any("resuming" in line for line in d2.log)
    # at least once: every accepted event arrived; duplicates are only re-sends of the same ids
    assert set(sink.accepted_ids()) == want


async def test_sigterm_drains_keeps_pending_exits_zero(tmp_path: Path, sink: Sink) -> None:
    sink.answer = lambda n, r: (503, {})
    evs = [app_event(n, i) for n in range(1, 4) for i in range(10)]
    async with detector(tmp_path, sink) as d:
        assert (await post_events(d.base, ndjson(evs)))[0] == 202
        await sink.wait_for(lambda: len(sink.received) >= 3)
        d.p.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(d.p.wait(), 20) == 0
    assert any("30 CloudEvents left pending" in line for line in d.log), d.log
    sink.answer = None
    async with detector(tmp_path, sink):
        await sink.wait_for(lambda: len(sink.accepted) == 30)
    assert sorted(sink.accepted_ids()) == sorted(ce_id(e["id"], "default") for e in evs)


async def test_one_outbox_one_detector(tmp_path: Path, sink: Sink) -> None:
    async with detector(tmp_path, sink):
        r = subprocess.run([sys.executable, "-m", "detector", "serve", "--listen", "127.0.0.1:0", "--sink", sink.url,
                            "--outbox", str(tmp_path / "outbox.db")], cwd=REPO_ROOT, capture_output=True,
                           text=True, env=_env(DETECTOR_TOKEN=TOKEN), timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip() == f"detector: error: outbox {tmp_path / 'outbox.db'} is in use by another detector"


@pytest.mark.parametrize(("args", "env", "words"), [
    ([], {}, "no ingest token: set DETECTOR_TOKEN or --token-file F (or pass --insecure-no-token explicitly)"),
    (["--token-file", "/nonexistent/t"], {}, "cannot read token file /nonexistent/t"),
    (["--insecure-no-token", "--sink", ""], {}, "no sink: set K_SINK or pass --sink URL"),
    (["--insecure-no-token", "--sink", "ftp://x"], {}, "must be an http:// or https:// URL"),
    (["--insecure-no-token"], {"K_CE_OVERRIDES": "{bad"}, "K_CE_OVERRIDES is not JSON"),
    (["--insecure-no-token"], {"K_CE_OVERRIDES": '{"extensions": {"Bad": 1}}'}, "not a valid extension name"),
    (["--insecure-no-token", "--listen", "nowhere"], {}, "expected HOST:PORT"),
    (["--insecure-no-token", "--outbox", "/dev/null/x/outbox.db"], {}, "cannot be created"),
    (["--insecure-no-token", "--rules", "/nonexistent.yaml"], {}, "cannot read rules /nonexistent.yaml"),
    (["--insecure-no-token", "--config", "/nonexistent.yaml"], {}, "cannot read config /nonexistent.yaml"),
])
def test_bad_start_is_one_clear_line(tmp_path: Path, args: list[str], env: dict[str, str], words: str) -> None:
    base = ["--sink", "http://127.0.0.1:9/", "--outbox", str(tmp_path / "o.db"), "--listen", "127.0.0.1:0"]
    r = subprocess.run([sys.executable, "-m", "detector", "serve", *base, *args], cwd=REPO_ROOT,
                       capture_output=True, text=True, env=_env(**env), timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detector: error: ") and words in lines[0], r.stderr


def test_help_and_check_rules(tmp_path: Path) -> None:
    for cmd in (["--help"], ["serve", "--help"], ["check-rules", "--help"]):
        r = subprocess.run([sys.executable, "-m", "detector", *cmd], cwd=REPO_ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "usage: detector" in r.stdout
    r = subprocess.run([sys.executable, "-m", "detector", "check-rules", "examples/rules/mec-demo.yaml"],
                       cwd=REPO_ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "buy-click: emit mec.app.buy" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{name: a, match: {app: {path: {globb: x}}}}]")
    r = subprocess.run([sys.executable, "-m", "detector", "check-rules", str(bad)], cwd=REPO_ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "unknown matcher 'globb'" in r.stderr
