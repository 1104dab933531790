"""UE sources: created on the first match of a configured rule, expired when idle or at session.down."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from detlib import TOKEN, Sink, app_event, base_url, det_config, ndjson, post_events, rules_from, running

from detector.cloudevent import ce_id

RULES = """
unmatched: drop
sources: {create_on: [main-app], idle_timeout: %s}
rules:
  - name: main-app
    match: {kind: http.request, app: {host: shop.mec.local}}
    emit: {type: mec.app.visit, subject: "{ue.supi}", data: {path: "{app.path}"},
           extensions: {apphost: "{app.host}"}}
  - name: dns
    match: {kind: dns.query}
    emit: {type: mec.dns.query, data: {qname: "{app.qname}"}}
  - name: session
    match: {kind: session.down}
    emit: {type: mec.session.down}
"""


def dns(n: int, i: int) -> dict:
    return app_event(n, i, kind="dns.query", app={"qname": "svc.mec.local", "qtype": 1})


async def _sources(srv) -> list[dict]:
    async with aiohttp.ClientSession() as s, s.get(base_url(srv) + "/v1/sources",
                                                   headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200
        return (await r.json())["sources"]


async def test_created_on_first_match_then_expired_when_idle(tmp_path: Path, sink: Sink) -> None:
    rules = rules_from(RULES % "300ms")
    async with running(det_config(tmp_path, sink.url), rules) as srv:
        # DNS before the UE reaches the application: no source yet
        assert (await post_events(base_url(srv), ndjson([dns(1, 0)])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 1)
        assert await _sources(srv) == []
        visit, again = app_event(1, 1), app_event(1, 2)
        assert (await post_events(base_url(srv), ndjson([visit, again])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 4)
        types = [r.ce.get_type() for r in sink.accepted]
        assert types == ["mec.dns.query", "mec.source.created", "mec.app.visit", "mec.app.visit"]
        created = sink.accepted[1].ce
        src = "/mec/detector/det1/ue/imsi-999700000000001"
        assert created.get_source() == src and created.get_subject() == "imsi-999700000000001"
        assert created.get_id() == ce_id(visit["id"], "source.created")
        assert created.get_data()["rule"] == "main-app" and created.get_extension("supi") == "imsi-999700000000001"
        assert all(r.ce.get_source() == src for r in sink.accepted)
        assert sink.accepted[2].ce.get_extension("apphost") == "shop.mec.local"
        listing = await _sources(srv)
        assert [(s["key"], s["source"], s["rule"]) for s in listing] == [("imsi-999700000000001", src, "main-app")]
        # no traffic for longer than idle_timeout: expired, with a lifecycle event
        await sink.wait_for(lambda: len(sink.accepted) == 5, timeout=10)
        expired = sink.accepted[4].ce
        assert expired.get_type() == "mec.source.expired" and expired.get_source() == src
        assert expired.get_data()["reason"] == "idle"
        assert await _sources(srv) == []


async def test_session_down_expires_and_sources_survive_restart(tmp_path: Path, sink: Sink) -> None:
    rules = rules_from(RULES % "1h")
    cfg = det_config(tmp_path, sink.url)
    async with running(cfg, rules) as srv:
        assert (await post_events(base_url(srv), ndjson([app_event(1, 1), app_event(2, 1)])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 4)
        assert {s["key"] for s in await _sources(srv)} == {"imsi-999700000000001", "imsi-999700000000002"}
    async with running(cfg, rules_from(RULES % "1h")) as srv:
        assert {s["key"] for s in await _sources(srv)} == {"imsi-999700000000001", "imsi-999700000000002"}
        down = app_event(2, 5, kind="session.down", app={"seid": 7})
        assert (await post_events(base_url(srv), ndjson([down])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 6)
        assert [r.ce.get_type() for r in sink.accepted[4:]] == ["mec.session.down", "mec.source.expired"]
        assert sink.accepted[5].ce.get_data()["reason"] == "session.down"
        assert [s["key"] for s in await _sources(srv)] == ["imsi-999700000000001"]


async def test_required_source_gates_other_events(tmp_path: Path, sink: Sink) -> None:
    text = RULES.replace("idle_timeout: %s", "idle_timeout: 1h, required: true")
    async with running(det_config(tmp_path, sink.url), rules_from(text)) as srv:
        status, ans = await post_events(base_url(srv), ndjson([dns(1, 0), app_event(1, 1), dns(1, 2)]))
        assert status == 202 and ans["emitted"] == 3
        await sink.wait_for(lambda: len(sink.accepted) == 3)
    assert [r.ce.get_type() for r in sink.accepted] == ["mec.source.created", "mec.app.visit", "mec.dns.query"]
    assert json.loads(sink.accepted[2].body) == {"qname": "svc.mec.local"}


async def test_example_rules_end_to_end_on_the_synthetic_capture(tmp_path: Path, sink: Sink, captures: Path) -> None:
    from detlib import REPO_ROOT, truth_events

    from detector.rules import load_rules
    rules = load_rules(str(REPO_ROOT / "examples" / "rules" / "mec-demo.yaml"))
    evs = truth_events(captures)
    async with running(det_config(tmp_path, sink.url), rules) as srv:
        status, ans = await post_events(base_url(srv), ndjson(evs))
        assert status == 202 and ans["accepted"] == len(evs)
        await sink.wait_for(lambda: len(sink.accepted) == ans["emitted"])
        listing = await _sources(srv)
    types = [r.ce.get_type() for r in sink.accepted]
    buyers = {e["ue"]["ip"] for e in evs if e["kind"] == "http.request" and e["app"]["method"] == "POST"
              and e["app"]["path"].startswith("/api/v1/buy")}
    shoppers = {e["ue"]["ip"] for e in evs if e["kind"] == "http.request"
                and (e["app"]["host"] == "shop.mec.local" or e["ue"]["ip"] in buyers)}
    assert types.count("mec.app.buy") == len(buyers)         # one click per UE in this capture
    assert types.count("mec.source.created") == len(shoppers) == len(listing)
    assert set(types) <= {"mec.app.buy", "mec.app.visit", "mec.upf.dns.query", "mec.upf.mqtt.publish",
                          "mec.source.created"}
    for ip in shoppers:       # the source is created before the UE's first application event
        mine = [r.ce.get_type() for r in sink.accepted if r.ce.get_extension("ueip") == ip]
        first_app = min(i for i, t in enumerate(mine) if t in ("mec.app.buy", "mec.app.visit"))
        assert mine.index("mec.source.created") == first_app - 1
