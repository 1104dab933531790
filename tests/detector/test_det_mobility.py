"""Mobility (issue 18): two MEC sites, each with its own detector and broker (a real capture sink).

A UE's handover between gNBs and its relocation to the other site's UPF give exactly one
`mec.ue.moved`; its later CloudEvents go to the serving site's sink; pre-warm sends the target
site one warm-up per recent type; a site sink that fails loses nothing; a down peer is counted;
a bad `mobility` section is one line and exit 2. Real detectors (in-process and as processes),
real sockets, real sample-function servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from detlib import (
    REPO_ROOT,
    T0_NS,
    TOKEN,
    Sink,
    base_url,
    det_config,
    ndjson,
    post_events,
    rules_from,
    running,
)

from detector.cloudevent import ce_id
from detector.config import Config, ConfigError, apply_file, finish
from detector.mobility import (
    MOVED_TYPE,
    WARMUP_EXTENSION,
    MobilityConfig,
    Prewarm,
    Site,
    parse_mobility,
)
from mec_common.ports import free_port as _free_port
from testbed.constants import supi, ue_ipv4
from testbed.functions import buy, dns_edge, logger, warmup
from upf_tap.events import make_event

GNB1, GNB2 = "192.168.100.10", "192.168.100.11"
UPF1, UPF2 = "192.168.100.20", "192.168.100.21"
SECOND = 1_000_000_000


# ------------------------------------------------------------------ AppEvents of one UE

def _ue(n: int, gnb: str | None = None) -> dict[str, Any]:
    ue: dict[str, Any] = {"supi": supi(n), "ip": ue_ipv4(n), "dnn": "internet", "qfi": 1}
    if gnb:
        ue["gnb_ip"] = gnb
    return ue


def session(kind: str, n: int, t: float, gnb: str | None, upf: str, seid: int, **app: Any) -> dict[str, Any]:
    a = {"seid": seid, "ue_ip": ue_ipv4(n), "upf_ip": upf, "ul_teid": 0x100 + seid, **app}
    if gnb:
        a.setdefault("gnb_ip", gnb)
        a.setdefault("dl_teid", 0x200 + seid)
    return make_event(kind, T0_NS + int(t * SECOND), "n4", "upf1", ue={"supi": supi(n), "ip": ue_ipv4(n)}, app=a)


def http(n: int, t: float, gnb: str, upf: str, *, item: int = 1, tagged: bool = True,
         direction: str = "ul") -> dict[str, Any]:
    """A buy click through `gnb`: `ue.gnb_ip` when `tagged`, else only the tunnel says it."""
    tunnel = {"src": gnb, "dst": upf, "teid": 0x101} if direction == "ul" else {"src": upf, "dst": gnb, "teid": 0x201}
    flow = {"proto": "tcp", "src": ue_ipv4(n), "sport": 40000 + item, "dst": "10.200.0.10", "dport": 80}
    return make_event("http.request", T0_NS + int(t * SECOND), "n3", "upf1", direction=direction,
                      ue=_ue(n, gnb if tagged else None), flow=flow, tunnel=tunnel,
                      app={"method": "POST", "host": "shop.mec.local", "path": f"/api/v1/buy?item={item}"})


def dns(n: int, t: float, gnb: str, upf: str) -> dict[str, Any]:
    return make_event("dns.query", T0_NS + int(t * SECOND), "n3", "upf1", direction="ul", ue=_ue(n, gnb),
                      flow={"proto": "udp", "src": ue_ipv4(n), "sport": 5353, "dst": "10.200.0.53", "dport": 53},
                      tunnel={"src": gnb, "dst": upf, "teid": 0x101},
                      app={"qname": "edge.mec.local", "qtype": 1, "transport": "udp"})


def end_marker(n: int, t: float, old_gnb: str, upf: str) -> dict[str, Any]:
    return make_event("gtpu.end_marker", T0_NS + int(t * SECOND), "n3", "upf1", direction="dl",
                      ue={"supi": supi(n), "ip": ue_ipv4(n)}, tunnel={"src": upf, "dst": old_gnb, "teid": 0x201})


def path_switch(n: int, t: float, gnb: str, cell: str) -> dict[str, Any]:
    return make_event("ngap.path_switch", T0_NS + int(t * SECOND), "n2", "amf1", ue={"supi": supi(n)},
                      app={"pdu_sessions": [{"pdu_session_id": 1, "gnb_ip": gnb, "dl_teid": 0x301}], "cell": cell})


def mobility(site: str, s1: str, s2: str, *, peers: tuple[str, ...] = (), prewarm: bool = False,
             window: float = 300.0, timeout: float = 1.0) -> MobilityConfig:
    return MobilityConfig(site, {"site1": Site("site1", (GNB1,), (UPF1,), s1),
                                 "site2": Site("site2", (GNB2,), (UPF2,), s2)},
                          peers, Prewarm(prewarm, window), timeout)


@pytest.fixture
async def sink2() -> AsyncIterator[Sink]:
    s = Sink()
    await s.start()
    yield s
    await s.stop()


def moved(*sinks: Sink) -> list[Any]:
    return [r.ce for s in sinks for r in s.accepted if r.ce.get_type() == MOVED_TYPE]


def warmups(s: Sink) -> list[Any]:
    return [r.ce for r in s.accepted if r.ce.get_extension(WARMUP_EXTENSION) is not None]


async def metrics_text(base: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
        return await r.text()


def metric(text: str, name: str, **labels: str) -> float:
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    want = f"{name}{{{lab}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


async def settle(seconds: float = 0.3) -> None:
    """Let anything still on its way arrive (to check that nothing more comes)."""
    await asyncio.sleep(seconds)


# ------------------------------------------------------------------ intra-UPF handover

async def test_handover_moves_once_and_later_events_go_to_site2(tmp_path: Path, sink: Sink, sink2: Sink) -> None:
    cfg = det_config(tmp_path, sink.url, mobility=mobility("site1", sink.url, sink2.url))
    before = [session("session.up", 1, 0, GNB1, UPF1, 1), http(1, 1, GNB1, UPF1, item=1)]
    after = [session("session.modify", 1, 2, GNB2, UPF1, 1, prev_gnb_ip=GNB1),
             end_marker(1, 2.001, GNB1, UPF1),
             path_switch(1, 2.002, GNB2, "cell-2"),          # N2 says it too: still one move
             http(1, 3, GNB2, UPF1, item=2, tagged=False),    # the tunnel names gNB2 (no ue.gnb_ip)
             http(1, 3.5, GNB1, UPF1, item=3, tagged=False)]  # a straggler on the closed old path
    async with running(cfg) as srv:
        assert (await post_events(base_url(srv), ndjson(before)))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 2)
        status, ans = await post_events(base_url(srv), ndjson(after))
        assert status == 202, ans
        await sink2.wait_for(lambda: len(sink2.accepted) == 1 + len(after))
        status, ans = await post_events(base_url(srv), ndjson(before + after))   # a re-sent batch
        assert status == 202 and ans["duplicates"] == len(before + after)
        await settle()
        text = await metrics_text(base_url(srv))
    assert [r.ce.get_type() for r in sink.accepted] == ["mec.upf.session.up", "mec.upf.http.request"]
    got = [r.ce for r in sink2.accepted]
    assert [c.get_type() for c in got] == [MOVED_TYPE, "mec.upf.session.modify", "mec.upf.gtpu.end_marker",
                                           "mec.upf.ngap.path_switch", "mec.upf.http.request", "mec.upf.http.request"]
    (mv,) = moved(sink, sink2)
    assert mv.get_id() == ce_id(after[0]["id"], "mobility")
    assert mv.get_source() == f"/mec/detector/det1/ue/{supi(1)}" and mv.get_subject() == supi(1)
    assert mv.get_extension("supi") == supi(1) and mv.get_extension("tosite") == "site2"
    assert mv.get_extension("fromsite") == "site1"
    data = mv.get_data()
    assert data == {"ue": {"supi": supi(1), "ip": ue_ipv4(1)}, "from": {"gnb_ip": GNB1, "site": "site1"},
                    "to": {"gnb_ip": GNB2, "site": "site2"}, "procedure": "handover", "at": after[0]["time"]}
    assert warmups(sink2) == []                               # pre-warm is off
    assert metric(text, "detector_ue_moved_total", procedure="handover") == 1
    assert metric(text, "detector_ue_moved_total", procedure="relocation") == 0
    assert metric(text, "detector_routed_total", site="site1") == 2
    assert metric(text, "detector_routed_total", site="site2") == 6
    assert metric(text, "detector_prewarm_sent_total", site="site2") == 0


async def test_user_plane_alone_moves_a_ue_whose_control_plane_is_not_seen(tmp_path: Path, sink: Sink,
                                                                           sink2: Sink) -> None:
    cfg = det_config(tmp_path, sink.url, mobility=mobility("site1", sink.url, sink2.url))
    evs = [http(2, 0, GNB1, UPF1, item=1), http(2, 1, GNB1, UPF1, item=2, direction="dl", tagged=False),
           http(2, 2, GNB2, UPF1, item=3), http(2, 3, GNB2, UPF1, item=4)]
    async with running(cfg) as srv:
        assert (await post_events(base_url(srv), ndjson(evs)))[0] == 202
        await sink2.wait_for(lambda: len(sink2.accepted) == 3)
        await settle()
    assert len(sink.accepted) == 2
    (mv,) = moved(sink, sink2)
    assert mv.get_data()["from"] == {"gnb_ip": GNB1, "site": "site1"} and mv.get_data()["procedure"] == "handover"


async def test_the_taps_serving_gnb_moves_a_ue_the_packet_tunnel_does_not(tmp_path: Path, sink: Sink,
                                                                          sink2: Sink) -> None:
    """Once the control plane is seen, a packet's tunnel end (a late or early packet) moves nothing;
    the tap's `ue.gnb_ip` (the serving gNB by the control plane it follows) does."""
    cfg = det_config(tmp_path, sink.url, mobility=mobility("site1", sink.url, sink2.url))
    evs = [session("session.up", 4, 0, GNB1, UPF1, 1), http(4, 1, GNB2, UPF1, item=1, tagged=False),
           http(4, 2, GNB1, UPF1, item=2), http(4, 3, GNB2, UPF1, item=3)]
    async with running(cfg) as srv:
        assert (await post_events(base_url(srv), ndjson(evs)))[0] == 202
        await sink2.wait_for(lambda: len(sink2.accepted) == 2)
        await settle()
    assert [r.ce.get_type() for r in sink.accepted] == ["mec.upf.session.up"] + ["mec.upf.http.request"] * 2
    (mv,) = moved(sink, sink2)
    assert mv.get_data()["to"] == {"gnb_ip": GNB2, "site": "site2"}


# ------------------------------------------------------------------ pre-warm

PREWARM_RULES = """
unmatched: drop
prewarm: {enabled: true, window: 5m}
rules:
  - name: buy-click
    match: {kind: http.request, app: {path: {glob: "/api/v1/buy*"}}}
    emit: {type: mec.app.buy, extensions: {apphost: "{app.host}"}}
  - name: mec-dns
    match: {kind: dns.query}
    emit: {type: mec.upf.dns.query, subject: "{app.qname}"}
  - name: session
    match: {kind: [session.up, session.down]}
    emit: {type: "mec.{kind}"}
"""


@pytest.mark.parametrize("enabled", [True, False])
async def test_prewarm_sends_one_warmup_per_recent_type(tmp_path: Path, sink: Sink, sink2: Sink,
                                                        enabled: bool) -> None:
    rules_text = PREWARM_RULES if enabled else PREWARM_RULES.replace("enabled: true", "enabled: false")
    cfg = det_config(tmp_path, sink.url, mobility=mobility("site1", sink.url, sink2.url))
    evs = [session("session.up", 1, 0, GNB1, UPF1, 1),           # 400 s before the move: out of the window
           dns(1, 200, GNB1, UPF1), dns(1, 201, GNB1, UPF1),
           http(1, 300, GNB1, UPF1, item=1), http(1, 301, GNB1, UPF1, item=2),
           session("session.modify", 1, 400, GNB2, UPF1, 1, prev_gnb_ip=GNB1),
           http(1, 401, GNB2, UPF1, item=3)]
    async with running(cfg, rules_from(rules_text)) as srv:
        assert (await post_events(base_url(srv), ndjson(evs)))[0] == 202
        await sink2.wait_for(lambda: any(r.ce.get_type() == "mec.app.buy" for r in sink2.accepted))
        await settle()
        text = await metrics_text(base_url(srv))
    got = warmups(sink2)
    assert warmups(sink) == []
    if not enabled:
        assert got == [] and metric(text, "detector_prewarm_sent_total", site="site2") == 0
        return
    assert sorted(c.get_type() for c in got) == ["mec.app.buy", "mec.upf.dns.query"]
    by_type = {c.get_type(): c for c in got}
    for c in got:
        assert c.get_extension(WARMUP_EXTENSION) == "true"
        assert c.get_data() == {"warmup": True, "ue": {"supi": supi(1), "ip": ue_ipv4(1)}}
        assert c.get_extension("supi") == supi(1)                 # the UE's Triggers pass it
    assert by_type["mec.upf.dns.query"].get_subject() == "edge.mec.local"
    assert by_type["mec.app.buy"].get_extension("apphost") == "shop.mec.local"
    # the moved event comes first at the target, then the warm-ups, then the UE's own event
    types = [r.ce.get_type() for r in sink2.accepted]
    assert types[0] == MOVED_TYPE and types[-1] == "mec.app.buy"
    assert metric(text, "detector_prewarm_sent_total", site="site2") == 2


# ------------------------------------------------------------------ a site's sink fails

async def test_site_sink_failing_loses_nothing_and_survives_a_restart(tmp_path: Path, sink: Sink,
                                                                      sink2: Sink) -> None:
    failing = {"on": True}
    sink2.answer = lambda n, r: (500, {}) if failing["on"] or n < 3 else (202, {})
    cfg = det_config(tmp_path, sink.url, mobility=mobility("site1", sink.url, sink2.url))
    first = [session("session.up", 3, 0, GNB1, UPF1, 1), session("session.modify", 3, 1, GNB2, UPF1, 1)]
    later = [http(3, 2 + i * 0.01, GNB2, UPF1, item=i) for i in range(20)]
    async with running(cfg) as srv:
        assert (await post_events(base_url(srv), ndjson(first + later[:10])))[0] == 202
        await sink2.wait_for(lambda: len(sink2.received) >= 5)   # refused, being retried
        text = await metrics_text(base_url(srv))
        assert metric(text, "detector_site_pending", site="site2") > 0
    # stopped with site2's CloudEvents pending: they wait in the outbox, for site2
    failing["on"] = False
    async with running(cfg) as srv:
        assert (await post_events(base_url(srv), ndjson(later[10:])))[0] == 202
        await sink2.wait_for(lambda: len({r.id for r in sink2.accepted}) == 22)
        await settle()
        text = await metrics_text(base_url(srv))
    want = {ce_id(e["id"], "default") for e in first[1:] + later} | {ce_id(first[1]["id"], "mobility")}
    assert {r.id for r in sink2.accepted} == want
    assert [r.ce.get_type() for r in sink.accepted] == ["mec.upf.session.up"]   # nothing strayed home
    assert len(moved(sink, sink2)) == 1                   # the restart kept the location: no second move
    assert metric(text, "detector_routed_total", site="site2") == 10


async def test_end_marker_alone_reveals_the_move(tmp_path: Path, sink: Sink, sink2: Sink) -> None:
    """N4 not seen here: the End Marker on gNB1's path, with the tap's serving gNB2 beside it."""
    cfg = det_config(tmp_path, sink.url, mobility=mobility("site1", sink.url, sink2.url))
    em = end_marker(9, 2, GNB1, UPF1)
    em["ue"]["gnb_ip"] = GNB2
    evs = [http(9, 1, GNB1, UPF1), em, http(9, 3, GNB1, UPF1, tagged=False, direction="dl")]
    async with running(cfg) as srv:
        assert (await post_events(base_url(srv), ndjson(evs)))[0] == 202
        await sink2.wait_for(lambda: len(sink2.accepted) == 3)
        await settle()
    (mv,) = moved(sink, sink2)
    assert mv.get_id() == ce_id(em["id"], "mobility")
    assert [r.ce.get_type() for r in sink.accepted] == ["mec.upf.http.request"]


def test_an_older_outbox_gains_the_site_column(tmp_path: Path) -> None:
    import sqlite3

    from detector.outbox import Outbox

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, ue TEXT NOT NULL, "
                     "headers TEXT NOT NULL, body BLOB NOT NULL, created REAL NOT NULL);"
                     "INSERT INTO outbox VALUES (1, 'a', 'ue', '{}', x'00', 0);")
    db.commit()
    db.close()
    box = Outbox(str(path))
    try:
        (row,) = box.pending()
        assert row.id == "a" and row.dest == ""           # the default sink, as before
        assert box.locations() == []
    finally:
        box.close()


# ------------------------------------------------------------------ relocation: two detector processes

def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K_", "DETECTOR_"))}
    env.update(extra)
    return env


FAST = {"backoff_base": "10ms", "backoff_cap": "100ms", "ack_interval": "10ms", "drain_timeout": "5s",
        "concurrency": 8, "sweep_interval": "50ms"}


@contextlib.asynccontextmanager
async def detector_process(tmp_path: Path, name: str, port: int, config: dict[str, Any]) -> AsyncIterator[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**FAST, **config}))
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "detector", "serve", "--listen", f"127.0.0.1:{port}", "--config", str(path),
        "--outbox", str(tmp_path / f"{name}.db"), "--detector-id", name,
        cwd=REPO_ROOT, env=_env(DETECTOR_TOKEN=TOKEN), stderr=asyncio.subprocess.PIPE)
    assert p.stderr is not None
    log: list[str] = []
    while True:
        line = (await asyncio.wait_for(p.stderr.readline(), 30)).decode()
        assert line, f"{name} exited: {log}"
        log.append(line.rstrip())
        if re.search(r"listening on", line):
            break

    async def drain() -> None:
        assert p.stderr is not None
        while line := await p.stderr.readline():
            log.append(line.decode(errors="replace").rstrip())
    reader = asyncio.create_task(drain())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if p.returncode is None:
            p.terminate()
            await asyncio.wait_for(p.wait(), 20)
        await reader
        assert not [x for x in log if "Traceback" in x], "\n".join(log)


def site_config(site: str, s1: Sink, s2: Sink, peer: str, prewarm: bool) -> dict[str, Any]:
    return {"sink": (s1 if site == "site1" else s2).url,
            "mobility": {"site": site, "peers": [peer], "prewarm": {"enabled": prewarm, "window": "5m"},
                         "sites": {"site1": {"gnbs": [GNB1], "upfs": [UPF1], "sink": s1.url},
                                   "site2": {"gnbs": [GNB2], "upfs": [UPF2], "sink": s2.url}}}}


async def test_relocation_across_two_detectors_is_one_move(tmp_path: Path, sink: Sink, sink2: Sink) -> None:
    p1, p2 = _free_port(), _free_port()
    u1, u2 = f"http://127.0.0.1:{p1}", f"http://127.0.0.1:{p2}"
    async with (detector_process(tmp_path, "det-site1", p1, site_config("site1", sink, sink2, u2, True)),
                detector_process(tmp_path, "det-site2", p2, site_config("site2", sink, sink2, u1, True))):
        # the UE attaches at site1 (det-site1 asks det-site2, which does not know it: no move)
        at1 = [session("session.up", 5, 0, GNB1, UPF1, 1), http(5, 1, GNB1, UPF1, item=1)]
        assert (await post_events(u1, ndjson(at1)))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 2)
        # SSC mode 3: a new PDU session at site2's UPF, then the old one released at site1
        up2 = session("session.up", 5, 10, GNB2, UPF2, 7)
        status, ans = await post_events(u2, ndjson([up2]))
        assert status == 202, ans
        assert (await post_events(u1, ndjson([session("session.down", 5, 10.5, GNB1, UPF1, 1)])))[0] == 202
        assert (await post_events(u2, ndjson([http(5, 11, GNB2, UPF2, item=2)])))[0] == 202
        await sink2.wait_for(lambda: any(r.ce.get_type() == "mec.upf.http.request" for r in sink2.accepted))
        await sink.wait_for(lambda: len(sink.accepted) == 3)
        await settle(seconds=0.5)
        m1, m2 = await metrics_text(u1), await metrics_text(u2)
    (mv,) = moved(sink, sink2)
    assert mv in [r.ce for r in sink2.accepted]
    assert mv.get_id() == ce_id(up2["id"], "mobility")
    assert mv.get_source() == f"/mec/detector/det-site2/ue/{supi(5)}"
    d = mv.get_data()
    assert d["from"] == {"gnb_ip": GNB1, "site": "site1"} and d["to"] == {"gnb_ip": GNB2, "site": "site2"}
    assert d["procedure"] == "relocation" and d["ue"]["supi"] == supi(5)
    # the old site released the session there: its session.down stayed at site1, and no move of its own
    assert [r.ce.get_type() for r in sink.accepted] == ["mec.upf.session.up", "mec.upf.http.request",
                                                        "mec.upf.session.down"]
    # pre-warm at the target: one per type the UE caused at site1 (as site1's detector told)
    assert sorted(c.get_type() for c in warmups(sink2)) == ["mec.upf.http.request", "mec.upf.session.up"]
    assert metric(m1, "detector_ue_moved_total", procedure="relocation") == 0
    assert metric(m1, "detector_peer_lookups_total", outcome="unknown") == 1
    assert metric(m2, "detector_ue_moved_total", procedure="relocation") == 1
    assert metric(m2, "detector_peer_lookups_total", outcome="found") == 1
    assert metric(m2, "detector_prewarm_sent_total", site="site2") == 2


async def test_handover_to_site2_then_relocation_there_is_one_move(tmp_path: Path, sink: Sink,
                                                                   sink2: Sink) -> None:
    """A handover to site2's gNB (seen and announced by site1's detector), then the UE's new session
    at site2's UPF through the same gNB: site2's detector learns from its peer that nothing moved."""
    p1, p2 = _free_port(), _free_port()
    u1, u2 = f"http://127.0.0.1:{p1}", f"http://127.0.0.1:{p2}"
    c1 = det_config(tmp_path / "1", sink.url, listen=f"127.0.0.1:{p1}", detector_id="det-site1",
                    mobility=mobility("site1", sink.url, sink2.url, peers=(u2,)))
    c2 = det_config(tmp_path / "2", sink2.url, listen=f"127.0.0.1:{p2}", detector_id="det-site2",
                    mobility=mobility("site2", sink.url, sink2.url, peers=(u1,)))
    async with running(c1), running(c2):
        evs = [session("session.up", 8, 0, GNB1, UPF1, 1), session("session.modify", 8, 1, GNB2, UPF1, 1)]
        assert (await post_events(u1, ndjson(evs)))[0] == 202
        assert (await post_events(u2, ndjson([session("session.up", 8, 5, GNB2, UPF2, 9)])))[0] == 202
        assert (await post_events(u1, ndjson([session("session.down", 8, 6, GNB2, UPF1, 1)])))[0] == 202
        await sink2.wait_for(lambda: len(sink2.accepted) == 4)   # moved, modify, up at site2, down
        await settle()
        m2 = await metrics_text(u2)
    (mv,) = moved(sink, sink2)
    assert mv.get_source() == f"/mec/detector/det-site1/ue/{supi(8)}" and mv.get_data()["procedure"] == "handover"
    assert metric(m2, "detector_peer_lookups_total", outcome="found") == 1
    assert [r.ce.get_type() for r in sink.accepted] == ["mec.upf.session.up"]


async def test_down_peer_is_counted_and_the_move_has_no_from(tmp_path: Path, sink: Sink, sink2: Sink) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    cfg = det_config(tmp_path, sink2.url, mobility=mobility("site2", sink.url, sink2.url, peers=(dead,)))
    async with running(cfg) as srv:
        status, ans = await post_events(base_url(srv), ndjson([session("session.up", 6, 0, GNB2, UPF2, 1)]))
        assert status == 202, ans
        assert (await post_events(base_url(srv), ndjson([http(6, 1, GNB2, UPF2)])))[0] == 202
        await sink2.wait_for(lambda: len(sink2.accepted) == 3)
        text = await metrics_text(base_url(srv))
        async with aiohttp.ClientSession() as s, s.get(base_url(srv) + "/readyz") as r:
            assert r.status == 200
    (mv,) = moved(sink2)
    assert mv.get_data()["from"] is None and mv.get_data()["to"] == {"gnb_ip": GNB2, "site": "site2"}
    assert mv.get_extension("fromsite") is None
    assert metric(text, "detector_peer_lookups_total", outcome="unanswered") == 1
    assert metric(text, "detector_ue_moved_from_unknown_total") == 1
    assert sink.accepted == []


# ------------------------------------------------------------------ the peer route

async def _get(url: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.json()


async def test_peer_route_answers_where_a_ue_was(tmp_path: Path, sink: Sink, sink2: Sink) -> None:
    cfg = det_config(tmp_path / "m", sink.url, mobility=mobility("site1", sink.url, sink2.url))
    async with running(cfg) as srv:
        base = base_url(srv)
        await post_events(base, ndjson([session("session.up", 7, 0, GNB1, UPF1, 1), http(7, 1, GNB1, UPF1)]))
        assert (await _get(f"{base}/v1/mobility/ues/{supi(7)}", token=None))[0] == 401
        status, view = await _get(f"{base}/v1/mobility/ues/{supi(7)}")
        assert status == 200
        assert view["ue"] == {"supi": supi(7), "ip": ue_ipv4(7)} and view["site"] == "site1"
        assert view["location"]["gnb_ip"] == GNB1 and view["location"]["site"] == "site1"
        assert view["released"] is None
        assert {r["type"] for r in view["recent"]} == {"mec.upf.session.up", "mec.upf.http.request"}
        assert (await _get(f"{base}/v1/mobility/ues/{ue_ipv4(7)}"))[1] == view      # by UE IP too
        status, err = await _get(f"{base}/v1/mobility/ues/imsi-999700000000099")
        assert status == 404 and err == {"error": "unknown UE"}
    async with running(det_config(tmp_path / "plain", sink.url)) as srv:   # no mobility section
        status, err = await _get(f"{base_url(srv)}/v1/mobility/ues/{supi(7)}")
        assert status == 404 and "not configured" in err["error"]


# ------------------------------------------------------------------ configuration

GOOD = {"site": "site1", "peers": ["http://det2:8080/"],
        "sites": {"site1": {"gnbs": [GNB1], "upfs": [UPF1]},
                  "site2": {"gnbs": [GNB2], "upfs": [UPF2], "sink": "http://broker2/mec/default"}}}


def test_config_section_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump({"mobility": GOOD, "outbox": str(tmp_path / "o.db")}))
    cfg = Config()
    apply_file(cfg, str(path))
    finish(cfg, {"K_SINK": "http://broker1/mec/default", "DETECTOR_TOKEN": TOKEN})
    mob = cfg.mobility
    assert mob is not None and mob.site == "site1" and mob.peers == ("http://det2:8080",)
    assert mob.site_of(GNB2) == "site2" and mob.site_of(None, UPF1) == "site1" and mob.site_of("10.9.9.9") is None
    assert mob.sinks(cfg.sink or "") == {"site1": "http://broker1/mec/default", "site2": "http://broker2/mec/default"}
    assert mob.prewarm == Prewarm(False, 300.0)
    # from the environment: the section as YAML text, the site and peers by their own variables
    section = {k: v for k, v in GOOD.items() if k not in ("site", "peers")}
    section["sites"] = {**GOOD["sites"], "site1": {"gnbs": [GNB1], "sink": "http://broker1/mec/default"}}
    env = {"DETECTOR_MOBILITY": json.dumps(section), "DETECTOR_SITE": "site2", "DETECTOR_PEERS": "http://a:1, http://b:2",
           "K_SINK": "http://broker2/mec/default", "DETECTOR_TOKEN": TOKEN}
    cfg = finish(Config(outbox=str(tmp_path / "o2.db")), env)
    assert cfg.mobility is not None and cfg.mobility.site == "site2"
    assert cfg.mobility.peers == ("http://a:1", "http://b:2")
    # no section: today's detector, one sink
    assert finish(Config(outbox=str(tmp_path / "o3.db")), {"K_SINK": "http://x/", "DETECTOR_TOKEN": TOKEN}).mobility is None


@pytest.mark.parametrize(("change", "says"), [
    ({"site": "site9"}, "'site9' is not in sites"),
    ({"site": None}, "mobility.site"),
    ({"sites": {}}, "mobility.sites"),
    ({"sites": {"site1": {"gnbs": ["gnb-one"]}}}, "not an IP address"),
    ({"sites": {"site1": {"gnbs": [GNB1]}, "site2": {"gnbs": [GNB2]}}}, "site2.sink"),
    ({"sites": {"site1": {"gnbs": [GNB1]}, "site2": {"gnbs": [GNB1], "sink": "http://b/"}}}, "already a gNB"),
    ({"peers": ["det2:8080"]}, "peers[0]"),
    ({"prewarm": {"enabled": "yes"}}, "prewarm.enabled"),
    ({"prewarm": {"window": "-5m"}}, "prewarm.window"),
    ({"colour": "blue"}, "unknown key 'colour'"),
])
def test_bad_sections_are_named(change: dict[str, Any], says: str) -> None:
    spec = {**GOOD, **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(ConfigError) as e:
        parse_mobility(spec)
    assert says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("config", [
    {"mobility": {**GOOD, "site": "site9"}},
    {"mobility": {**GOOD, "sites": {"site1": {"gnbs": ["not-an-ip"]}}}},
    {"mobility": ["site1"]},
])
def test_bad_mobility_config_is_one_line_and_exit_2(tmp_path: Path, config: dict[str, Any]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    r = subprocess.run([sys.executable, "-m", "detector", "serve", "--config", str(path), "--sink", "http://x/",
                        "--outbox", str(tmp_path / "o.db")], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=60, env=_env(DETECTOR_TOKEN=TOKEN))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("detector: error: config: mobility"), r.stderr
    assert not (tmp_path / "o.db").exists()


def test_site_variable_without_a_section_is_refused(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "detector", "serve", "--sink", "http://x/", "--outbox",
                        str(tmp_path / "o.db")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                       env=_env(DETECTOR_TOKEN=TOKEN, DETECTOR_SITE="site1"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "DETECTOR_SITE" in r.stderr, r.stderr


def test_rules_file_prewarm_and_the_declared_type() -> None:
    rs = rules_from(PREWARM_RULES)
    assert rs.prewarm == Prewarm(True, 300.0)
    with pytest.raises(ConfigError, match=r"prewarm\.window"):
        rules_from("prewarm: {enabled: true, window: soon}\nrules: []\n")
    shipped = yaml.safe_load((REPO_ROOT / "examples/rules/mec-mobility.yaml").read_text())
    assert shipped["prewarm"]["enabled"] is True
    declared = {d["spec"]["type"]: d["spec"] for d in yaml.safe_load_all(
        (REPO_ROOT / "k8s/knative/eventtypes.yaml").read_text()) if d}
    assert declared[MOVED_TYPE]["source"] == "/mec/detector/{detector}/ue/{uekey}"


# ------------------------------------------------------------------ the sample functions honour warm-ups

def warmup_event(type_: str, **data: Any) -> dict[str, Any]:
    return {"attributes": {"specversion": "1.0", "id": "w-1", "source": "/mec/detector/d/ue/x", "type": type_,
                           WARMUP_EXTENSION: "true", "supi": supi(1)},
            "data": {"warmup": True, "ue": {"supi": supi(1)}, **data}}


def test_handlers_do_nothing_for_a_warmup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert warmup.WARMUP_EXTENSION == WARMUP_EXTENSION
    monkeypatch.setenv("FN_STATE_DIR", str(tmp_path))
    assert buy.handle(warmup_event("mec.app.buy", item=3)) is None
    assert dns_edge.handle(warmup_event("mec.upf.dns.query", qname="edge.mec.local")) is None
    assert logger.handle(warmup_event("mec.upf.http.request")) is None
    assert list(tmp_path.iterdir()) == []      # no order, no lookup, no cache entry, no log line
    assert not warmup.is_warmup({"attributes": {WARMUP_EXTENSION: "false"}})
    assert warmup.is_warmup({"attributes": {WARMUP_EXTENSION: True}})


async def test_function_server_answers_a_warmup_200_without_acting(tmp_path: Path) -> None:
    env = {**os.environ, "FN_STATE_DIR": str(tmp_path), "FN_JOURNAL": "1", "FN_ACCESS_LOG": "0"}
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "testbed.functions.serve", "buy", "--host",
                                             "127.0.0.1", "--port", "0", "--ready-line", cwd=REPO_ROOT, env=env,
                                             stdout=asyncio.subprocess.PIPE)
    assert p.stdout is not None
    try:
        line = (await asyncio.wait_for(p.stdout.readline(), 30)).decode()
        port = int(line.split("port=")[1])
        base = {"ce-specversion": "1.0", "ce-source": "/mec/detector/d/ue/x", "ce-type": "mec.app.buy",
                "ce-supi": supi(1), "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/", headers={**base, "ce-id": "w-1", f"ce-{WARMUP_EXTENSION}": "true"},
                              data=json.dumps({"warmup": True, "ue": {"supi": supi(1)}})) as r:
                assert r.status == 200 and await r.read() == b""
                assert "ce-id" not in r.headers                           # no reply event
            assert not (tmp_path / "orders.jsonl").exists()
            async with s.post(f"http://127.0.0.1:{port}/", headers={**base, "ce-id": "real-1"},
                              data=json.dumps({"item": 3})) as r:
                assert r.status == 200 and r.headers["ce-type"] == buy.REPLY_TYPE
    finally:
        p.terminate()
        await p.wait()
    orders = [json.loads(x) for x in (tmp_path / "orders.jsonl").read_text().splitlines()]
    assert [o["event_id"] for o in orders] == ["real-1"]
    (w,) = [json.loads(x) for x in (tmp_path / "warmups.jsonl").read_text().splitlines()]
    assert w["first"] is True and w["id"] == "w-1"
    (inv,) = [json.loads(x) for x in (tmp_path / "invocations.jsonl").read_text().splitlines()]
    assert inv["id"] == "real-1" and inv["first"] is False    # the warm-up took the cold start
