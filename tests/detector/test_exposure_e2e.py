"""End to end, as an operator runs it: `python -m detector serve` (a real process), the sample AF
`python -m testbed.af` (a real process with its own notification endpoint), and real AppEvents from
`upf-tap read --flows` of the repo's demo capture and of an OAI capture with TLS. The AF must get
USER_DATA_USAGE_MEASURES notifications with each SUPI's domains, log them, and unsubscribe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from detlib import REPO_ROOT, TOKEN, Sink, ndjson, post_events
from test_exposure_api import DEMO_CAPTURE, OAI_CAPTURE, SUPI1, SUPI2, SUPI3, tap_events

OAI_SUPI = "imsi-208950000000031"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K_", "DETECTOR_"))}
    return {**env, "DETECTOR_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}


async def _lines(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode(errors="replace").rstrip())


async def _wait_line(log: list[str], pattern: str, proc: asyncio.subprocess.Process, timeout: float = 30) -> re.Match[str]:
    for _ in range(int(timeout / 0.05)):
        for line in log:
            m = re.search(pattern, line)
            if m:
                return m
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"no line matching {pattern!r}: {log}")


@contextlib.asynccontextmanager
async def process(*argv: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    p = await asyncio.create_subprocess_exec(sys.executable, *argv, cwd=REPO_ROOT, env=_env(),
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert p.stdout is not None
    log: list[str] = []
    reader = asyncio.create_task(_lines(p.stdout, log))
    try:
        yield p, log
    finally:
        if p.returncode is None:
            p.terminate()
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                p.kill()
                await p.wait()
        await reader


async def test_an_af_learns_the_domains_of_each_supi(tmp_path: Path, sink: Sink) -> None:
    events = list(tap_events(DEMO_CAPTURE)) + list(tap_events(OAI_CAPTURE))
    af_log = tmp_path / "af.jsonl"
    (tmp_path / "token").write_text(TOKEN)
    async with process("-m", "detector", "serve", "--listen", "127.0.0.1:0", "--sink", sink.url,
                       "--outbox", str(tmp_path / "outbox.db"), "--detector-id", "e2e") as (det, det_log):
        port = (await _wait_line(det_log, r"listening on [^ ]*:(\d+),", det)).group(1)
        base = f"http://127.0.0.1:{port}"
        async with process("-m", "testbed.af", "--detector", base, "--token-file", str(tmp_path / "token"),
                           "--any-ue", "--trigger", "periodic", "--period", "1", "--measure", "app,volume",
                           "--log", str(af_log), "--count", "1", "--duration", "30") as (af, af_out):
            await _wait_line(af_out, r"af: subscribed ", af)
            status, answer = await post_events(base, ndjson(events))
            assert status == 202 and answer["accepted"] == len(events), answer
            assert await asyncio.wait_for(af.wait(), 30) == 0, af_out
        await _wait_line(det_log, r"subscription .* deleted", det)      # the AF unsubscribed on its way out
    lines = [json.loads(line) for line in af_log.read_text().splitlines()]
    domains: dict[str, set[tuple[str, str]]] = {}
    for line in lines:
        if "domain" in line:
            domains.setdefault(line["supi"], set()).add((line["domain"], line["protocol"]))
    for n, supi in enumerate((SUPI1, SUPI2, SUPI3), 1):
        assert domains[supi] == {("shop.mec.local", "DNS_QNAME"), (f"edge{n}.mec.local", "DNS_QNAME"),
                                 ("mqtt.mec.local", "DNS_QNAME")}, domains
    assert domains[OAI_SUPI] == {("www.montimage.com", "TLS_SNI")}
    urls = {(line["supi"], line["url"]) for line in lines if "url" in line}
    assert (SUPI1, "http://shop.mec.local/api/v1/buy?item=1") in urls and (OAI_SUPI, "http://montimage.com/") in urls
    volumes = {line["supi"]: line["volume"] for line in lines if "volume" in line and line["supi"]}
    assert volumes[SUPI1]["ulVolume"] == "888 B"
    assert f"af: {SUPI2} -> edge2.mec.local (DNS_QNAME)" in af_out
    assert f"af: {OAI_SUPI} -> www.montimage.com (TLS_SNI)" in af_out
    assert any(re.search(r"af: unsubscribed .*: HTTP 204", line) for line in af_out)


async def test_the_af_exits_1_when_refused(tmp_path: Path, sink: Sink) -> None:
    async with process("-m", "detector", "serve", "--listen", "127.0.0.1:0", "--sink", sink.url,
                       "--outbox", str(tmp_path / "outbox.db")) as (det, det_log):
        port = (await _wait_line(det_log, r"listening on [^ ]*:(\d+),", det)).group(1)
        async with process("-m", "testbed.af", "--detector", f"http://127.0.0.1:{port}", "--token", "wrong",
                           "--any-ue", "--duration", "5") as (af, af_out):
            assert await asyncio.wait_for(af.wait(), 30) == 1
        assert any("HTTP 401" in line for line in af_out), af_out
    async with process("-m", "testbed.af", "--detector", "http://127.0.0.1:9", "--any-ue",
                       "--measure", "bogus") as (af, af_out):
        assert await asyncio.wait_for(af.wait(), 30) == 2
