"""When the outbox cannot store (disk full, I/O error), ingest answers 503 + Retry-After and never
2xx for what is not stored; once it can store again, the re-sent events are taken as new and
every accepted event reaches the sink once. A real full disk (a tiny tmpfs, as root) and an
outbox made to fail on demand."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from detlib import TOKEN, Sink, app_event, base_url, det_config, ndjson, post_events, rules_from, running

from detector.cloudevent import ce_id
from detector.server import Server

DISK_FULL = sqlite3.OperationalError("database or disk is full")


async def _metric(base: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
        m = re.search(rf"^{name} (\S+)$", await r.text(), re.M)
    assert m, name
    return float(m.group(1))


async def _post_raw(base: str, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
    async with aiohttp.ClientSession() as s, s.post(base + "/v1/events", data=body, headers=headers) as r:
        return r.status, await r.json(), dict(r.headers)


class FailingCommits:
    """Makes the outbox's commit raise while `failing` is set; `gate`, when given, holds each
    failing commit until it is set (to have a second request arrive meanwhile)."""

    def __init__(self, server: Server, error: BaseException = DISK_FULL) -> None:
        outbox = server.det.outbox
        assert outbox is not None
        self.real = outbox.commit
        self.error = error
        self.failing = True
        self.gate: threading.Event | None = None
        self.calls = 0
        outbox.commit = self._commit   # type: ignore[method-assign]

    def _commit(self, rows: Any, *args: Any) -> None:
        if self.failing:
            self.calls += 1
            if self.gate is not None:
                self.gate.wait(10)
            raise self.error
        self.real(rows, *args)


async def test_write_error_is_503_with_retry_after_then_accepted(tmp_path: Path, sink: Sink) -> None:
    batch = ndjson([app_event(n, 1) for n in range(1, 4)])
    async with running(det_config(tmp_path, sink.url)) as srv:
        failing = FailingCommits(srv)
        for error in (DISK_FULL, OSError(errno.ENOSPC, "No space left on device"), sqlite3.OperationalError("disk I/O error")):
            failing.error = error
            status, ans, headers = await _post_raw(base_url(srv), batch)
            assert status == 503 and headers["Retry-After"] == "5"
            assert ans == {"error": f"outbox cannot store events: {error}"}
        assert await _metric(base_url(srv), "detector_ingest_store_failed_total") == 3
        assert await _metric(base_url(srv), "detector_ingest_accepted_total") == 0
        await asyncio.sleep(0.1)
        assert sink.received == []             # nothing was answered 2xx, nothing is sent
        failing.failing = False
        status, ans, _ = await _post_raw(base_url(srv), batch)
        # not "duplicates": the refused copies were forgotten
        assert status == 202 and ans["accepted"] == 3 and ans["duplicates"] == 0
        await sink.wait_for(lambda: len(sink.accepted) == 3)
    assert sorted(sink.accepted_ids()) == sorted(ce_id(app_event(n, 1)["id"], "default") for n in range(1, 4))


@pytest.mark.parametrize("limit", ["debounce: 10s", "rate_limit: {count: 1, per: 1m}"])
async def test_a_refused_event_is_not_limited_on_its_retry(tmp_path: Path, sink: Sink, limit: str) -> None:
    rules = rules_from(f"""
rules:
  - name: buy
    match: {{kind: http.request}}
    {limit}
""")
    ev = app_event(1, 1)
    async with running(det_config(tmp_path, sink.url), rules) as srv:
        failing = FailingCommits(srv)
        assert (await post_events(base_url(srv), ndjson([ev])))[0] == 503
        failing.failing = False
        status, ans = await post_events(base_url(srv), ndjson([ev]))
        # the limiter state of the refused attempt was taken back: the retry emits
        assert status == 202 and ans["emitted"] == 1
        await sink.wait_for(lambda: len(sink.accepted) == 1)
    assert sink.accepted_ids() == [ce_id(ev["id"], "buy")]


async def test_a_refused_session_down_still_expires_the_source(tmp_path: Path, sink: Sink) -> None:
    rules = rules_from("""
sources: {create_on: [buy]}
rules:
  - name: buy
    match: {kind: http.request}
""")
    down = app_event(1, 2, "session.down", app={"seid": 1})
    async with running(det_config(tmp_path, sink.url), rules) as srv:
        assert (await post_events(base_url(srv), ndjson([app_event(1, 1)])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 2)        # source.created + the buy
        failing = FailingCommits(srv)
        assert (await post_events(base_url(srv), ndjson([down])))[0] == 503
        assert len(srv.det.sources.by_key) == 1                     # put back: the expiry was not stored
        failing.failing = False
        assert (await post_events(base_url(srv), ndjson([down])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 4)
    types = [r.ce.get_type() for r in sink.accepted]
    assert types == ["mec.source.created", "mec.upf.http.request", "mec.upf.session.down", "mec.source.expired"]


async def test_a_duplicate_waits_for_its_first_copy(tmp_path: Path, sink: Sink) -> None:
    """A re-sent batch that arrives while its first copy is being committed is answered only once
    that commit is done: 503 as well if it failed (never 202 for events that are not stored)."""
    batch = ndjson([app_event(1, i) for i in range(3)])
    async with running(det_config(tmp_path, sink.url)) as srv:
        failing = FailingCommits(srv)
        failing.gate = threading.Event()
        first = asyncio.create_task(_post_raw(base_url(srv), batch))
        while failing.calls == 0:
            await asyncio.sleep(0.005)
        second = asyncio.create_task(_post_raw(base_url(srv), batch))
        while srv.det.metrics.ingest_duplicates < 3:                 # the copy has been read: 3 duplicates
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert not second.done()                                     # held: its events are not durable yet
        failing.gate.set()
        (s1, _, _), (s2, a2, h2) = await first, await second
        assert (s1, s2) == (503, 503) and h2["Retry-After"] == "5"
        assert "first copy of a re-sent event was not stored" in a2["error"]
        failing.failing = False
        status, ans, _ = await _post_raw(base_url(srv), batch)
        assert status == 202 and ans["accepted"] == 3
        await sink.wait_for(lambda: len(sink.accepted) == 3)
    assert len(set(sink.accepted_ids())) == 3


# ---- a real full disk ----

@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (root only); unmounted however the test ends."""
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)   # lazily, if still busy


def fill(disk: Path) -> Path:
    """Write a file until the disk is full (ENOSPC), in ever smaller pieces; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for piece in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * piece)
    finally:
        os.close(fd)
    return filler


def _events(first: int, count: int) -> list[dict[str, Any]]:
    # a long path makes each CloudEvent a few hundred bytes: the WAL must grow to hold them
    return [app_event(1 + i % 5, first + i, app={"method": "POST", "host": "shop.mec.local",
                                                 "path": f"/api/v1/buy?item={first + i}&pad=" + "p" * 300})
            for i in range(count)]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")
async def test_real_disk_full_503_then_accepted_nothing_lost(tmp_path: Path, sink: Sink) -> None:
    with tiny_tmpfs(tmp_path / "disk", "2m") as disk:
        cfg = det_config(disk, sink.url)
        accepted: list[dict[str, Any]] = []
        async with running(cfg) as srv:
            base = base_url(srv)
            evs = _events(0, 20)
            assert (await post_events(base, ndjson(evs)))[0] == 202
            accepted += evs
            filler = fill(disk)
            # post until the outbox cannot grow any more (the WAL may first reuse room it already has)
            refused: list[dict[str, Any]] = []
            for k in range(1, 200):
                evs = _events(k * 20, 20)
                status, ans, headers = await _post_raw(base, ndjson(evs))
                if status == 202:
                    accepted += evs
                    continue
                assert status == 503, ans
                assert headers["Retry-After"] == "5"
                assert ans["error"].startswith("outbox cannot store events: "), ans
                refused = evs
                break
            assert refused, "the disk never filled up"
            # still full: the same batch is refused again, and counted each time
            assert (await _post_raw(base, ndjson(refused)))[0] == 503
            assert await _metric(base, "detector_ingest_store_failed_total") == 2
            await sink.wait_for(lambda: len(sink.accepted) == len(accepted))
            filler.unlink()                                   # space comes back
            status, ans, _ = await _post_raw(base, ndjson(refused))
            assert status == 202 and ans["accepted"] == len(refused) and ans["duplicates"] == 0
            accepted += refused
            more = _events(10_000, 20)
            assert (await post_events(base, ndjson(more)))[0] == 202
            accepted += more
            await sink.wait_for(lambda: len(sink.accepted) == len(accepted))
            await asyncio.sleep(0.1)                          # nothing else is on its way
        # and every delivered row was deleted from the outbox in the end (the acks refused while full included)
        with contextlib.closing(sqlite3.connect(str(cfg.outbox))) as db:
            assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
        want = [ce_id(e["id"], "default") for e in accepted]
        got = sink.accepted_ids()
        assert len(got) == len(set(got)), "a CloudEvent was delivered twice"
        assert sorted(got) == sorted(want)
        # exactly as before the disk filled: the same binary-mode CloudEvents, data intact
        by_id = {r.id: r for r in sink.accepted}
        for ev in accepted:
            r = by_id[ce_id(ev["id"], "default")]
            assert r.ce.get_data()["app"] == ev["app"]
            assert r.headers["ce-specversion"] == "1.0" and r.headers["Content-Type"] == "application/json"
        assert json.loads(sink.accepted[0].body)["app"]["path"].endswith("p" * 300)
