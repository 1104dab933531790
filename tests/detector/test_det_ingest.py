"""The detector in-process against a real aiohttp sink on 127.0.0.1: ingest, delivery, refusals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from detlib import (
    TOKEN,
    Sink,
    app_event,
    base_url,
    det_config,
    ndjson,
    post_events,
    running,
    truth_events,
)

from detector.cloudevent import ce_id
from detector.config import finish


async def _get(url: str, token: str | None = TOKEN) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.text()


async def test_truth_events_become_cloudevents(tmp_path: Path, sink: Sink, captures: Path) -> None:
    evs = truth_events(captures)
    async with running(det_config(tmp_path, sink.url)) as srv:
        status, ans = await post_events(base_url(srv), ndjson(evs))
        assert status == 202, ans
        assert ans == {"accepted": 87, "duplicates": 0, "emitted": 87, "rejected": []}
        await sink.wait_for(lambda: len(sink.accepted) == 87)
    by_id = {r.id: r for r in sink.accepted}
    assert len(by_id) == 87
    for ev in evs:
        r = by_id[ce_id(ev["id"], "default")]
        ce = r.ce
        assert r.headers["Content-Type"] == "application/json"       # binary mode
        assert r.headers["ce-specversion"] == "1.0"
        assert ce.get_type() == f"mec.upf.{ev['kind']}"
        assert ce.get_source() == f"/mec/detector/det1/ue/{ev['ue']['ip']}"
        assert ce.get_subject() == ev["ue"]["ip"]
        assert ce.get_time().isoformat().replace("+00:00", "Z").startswith(ev["time"][:19])
        assert ce.get_data() == {"app": ev["app"], "flow": ev["flow"], "ue": ev["ue"]}
        assert ce.get_extension("ueip") == ev["ue"]["ip"]
        assert ce.get_extension("teid") == str(ev["ue"]["teid"])
        assert ce.get_extension("tapid") == "upf1"
        assert ce.get_extension("rule") == "default"


async def test_full_identity_extensions(tmp_path: Path, sink: Sink) -> None:
    ev = app_event(3, 1)
    async with running(det_config(tmp_path, sink.url)) as srv:
        assert (await post_events(base_url(srv), ndjson([ev])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 1)
    ce = sink.accepted[0].ce
    assert ce.get_subject() == "imsi-999700000000003"
    assert ce.get_source() == "/mec/detector/det1/ue/imsi-999700000000003"
    for name, want in (("supi", "imsi-999700000000003"), ("ueip", "10.45.0.4"), ("dnn", "internet"),
                       ("snssai", "1"), ("qfi", "1"), ("teid", str(0x10003)), ("tapid", "upf1")):
        assert ce.get_extension(name) == want, name


async def test_token_required(tmp_path: Path, sink: Sink) -> None:
    async with running(det_config(tmp_path, sink.url)) as srv:
        body = ndjson([app_event(1, 1)])
        assert (await post_events(base_url(srv), body, token=None))[0] == 401
        assert (await post_events(base_url(srv), body, token="wrong"))[0] == 401
        assert (await _get(base_url(srv) + "/v1/sources", token=None))[0] == 401
        status, metrics = await _get(base_url(srv) + "/metrics", token=None)
        assert status == 200 and "detector_unauthorized_total 3" in metrics
    assert sink.received == []


async def test_bad_lines_refused_with_reasons_good_ones_kept(tmp_path: Path, sink: Sink) -> None:
    good1, good2 = app_event(1, 1), app_event(2, 2)
    bad_schema = dict(app_event(3, 3))
    bad_schema["point"] = "n5"
    no_app = app_event(4, 4)
    del no_app["app"]
    body = b"\n".join([json.dumps(good1).encode(), b"{not json", json.dumps(bad_schema).encode(), b"",
                       json.dumps(no_app).encode(), b"[1, 2]", json.dumps(good2).encode(), b"\xff\xfe",
                       b"[" * 100_000 + b"]" * 100_000])
    async with running(det_config(tmp_path, sink.url)) as srv:
        status, ans = await post_events(base_url(srv), body)
        assert status == 400
        assert ans["accepted"] == 2
        reasons = {r["line"]: r["reason"] for r in ans["rejected"]}
        assert sorted(reasons) == [2, 3, 5, 6, 8, 9]
        assert reasons[2].startswith("bad JSON")
        assert "point" in reasons[3]
        assert "app" in reasons[5] and "http.request" in reasons[5]
        assert reasons[6] == "schema: not a JSON object"
        assert reasons[9].startswith("bad JSON")
        await sink.wait_for(lambda: len(sink.accepted) == 2)
        status, ans = await post_events(base_url(srv), b"\n\n")
        assert status == 400 and "empty" in ans["error"]
    assert {r.id for r in sink.accepted} == {ce_id(good1["id"], "default"), ce_id(good2["id"], "default")}


async def test_body_over_limit_is_413(tmp_path: Path, sink: Sink) -> None:
    async with running(det_config(tmp_path, sink.url, max_body_bytes=2000)) as srv:
        big = ndjson([app_event(1, i) for i in range(10)])
        assert len(big) > 2000
        assert (await post_events(base_url(srv), big))[0] == 413

        async def chunks() -> Any:   # no Content-Length: the limit is checked while reading
            for i in range(0, len(big), 500):
                yield big[i:i + 500]
        async with aiohttp.ClientSession() as s, s.post(
                base_url(srv) + "/v1/events", data=chunks(), headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 413
        assert (await post_events(base_url(srv), ndjson([app_event(1, 1)])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 1)


async def test_same_batch_twice_same_ids(tmp_path: Path, sink: Sink) -> None:
    batch = ndjson([app_event(n, i) for n in range(1, 4) for i in range(5)])
    # without the dedupe window, both copies are delivered, with identical CloudEvent ids
    async with running(det_config(tmp_path / "a", sink.url, dedupe_window=0)) as srv:
        assert (await post_events(base_url(srv), batch))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 15)
        first = sorted(sink.accepted_ids())
        assert (await post_events(base_url(srv), batch))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 30)
    assert sorted(sink.accepted_ids()[15:]) == first
    assert len(set(first)) == 15
    # with it (the default), the re-sent batch is recognised and not delivered again
    sink.accepted.clear()
    async with running(det_config(tmp_path / "b", sink.url)) as srv:
        assert (await post_events(base_url(srv), batch))[0] == 202
        status, ans = await post_events(base_url(srv), batch)
        assert status == 202 and ans["duplicates"] == 15 and ans["accepted"] == 0
        await sink.wait_for(lambda: len(sink.accepted) == 15)
        status, metrics = await _get(base_url(srv) + "/metrics")
        assert "detector_ingest_duplicates_total 15" in metrics
    assert sorted(sink.accepted_ids()) == first


async def test_k_ce_overrides_and_structured_mode(tmp_path: Path, sink: Sink) -> None:
    env = {"K_CE_OVERRIDES": '{"extensions": {"cluster": "edge-1", "priority": 3}}', "DETECTOR_TOKEN": TOKEN}
    cfg = det_config(tmp_path, sink.url, token=None, structured=True)
    finish(cfg, env)
    assert cfg.token == TOKEN
    ev = app_event(1, 1)
    async with running(cfg) as srv:
        assert (await post_events(base_url(srv), ndjson([ev])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 1)
    r = sink.accepted[0]
    assert r.headers["Content-Type"] == "application/cloudevents+json"
    assert not any(h.lower().startswith("ce-") for h in r.headers)
    doc = json.loads(r.body)
    assert doc["cluster"] == "edge-1" and doc["priority"] == 3
    assert doc["id"] == ce_id(ev["id"], "default") and doc["datacontenttype"] == "application/json"
    assert doc["data"]["app"] == ev["app"]
    assert doc["time"].startswith(ev["time"][:19])


async def test_relays_a_single_cloudevent_binary_and_structured(tmp_path: Path, sink: Sink) -> None:
    binary = {"ce-specversion": "1.0", "ce-id": "abc-1", "ce-source": "/other/source", "ce-type": "x.y",
              "ce-supi": "imsi-999700000000001", "Content-Type": "application/json",
              "Authorization": f"Bearer {TOKEN}"}
    structured = {"specversion": "1.0", "id": "abc-2", "source": "/other/source", "type": "x.z",
                  "datacontenttype": "application/json", "data": {"k": 1}}
    async with running(det_config(tmp_path, sink.url, overrides={"cluster": "c1"})) as srv:
        async with aiohttp.ClientSession() as s:
            async with s.post(base_url(srv) + "/", data=b'{"v": 2}', headers=binary) as r:
                assert r.status == 202
            async with s.post(base_url(srv) + "/v1/cloudevents", data=json.dumps(structured).encode(),
                              headers={"Content-Type": "application/cloudevents+json",
                                       "Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 202
            async with s.post(base_url(srv) + "/", data=b"junk", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 400
                assert "not a CloudEvent" in (await r.json())["error"]
        await sink.wait_for(lambda: len(sink.accepted) == 2)
    got = {r.id: r.ce for r in sink.accepted}
    assert got["abc-1"].get_type() == "x.y" and got["abc-1"].get_data() == {"v": 2}
    assert got["abc-1"].get_extension("supi") == "imsi-999700000000001"
    assert got["abc-2"].get_data() == {"k": 1} and got["abc-2"].get_extension("cluster") == "c1"


async def test_per_ue_order_under_refusals(tmp_path: Path, sink: Sink) -> None:
    def answer(n: int, r: Any) -> tuple[int, dict[str, str]]:
        if n % 3 == 1:
            return 503, {}
        if n % 7 == 2:
            return 429, {"Retry-After": "0"}
        if n % 11 == 5:
            return 404, {}
        return 202, {}
    sink.answer = answer
    evs = [app_event(n, i) for i in range(30) for n in range(1, 6)]      # interleaved UEs, capture order
    async with running(det_config(tmp_path, sink.url, concurrency=4)) as srv:
        for k in range(0, len(evs), 25):
            assert (await post_events(base_url(srv), ndjson(evs[k:k + 25])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == len(evs))
        status, metrics = await _get(base_url(srv) + "/metrics")
    assert status == 200
    assert "detector_retries_total 0" not in metrics
    assert "detector_outbox_pending 0" in metrics
    for n in range(1, 6):
        want = [ce_id(e["id"], "default") for e in evs if e["ue"]["ip"] == f"10.45.0.{n + 1}"]
        got = [r.id for r in sink.accepted if r.ce.get_extension("ueip") == f"10.45.0.{n + 1}"]
        assert got == want


async def test_dead_letter_on_400_then_the_ue_goes_on(tmp_path: Path, sink: Sink) -> None:
    poison = app_event(1, 2)
    bad_id = ce_id(poison["id"], "default")
    sink.answer = lambda n, r: (400, {}) if r.id == bad_id else (202, {})
    evs = [app_event(1, i) for i in range(5)]
    async with running(det_config(tmp_path, sink.url)) as srv:
        assert (await post_events(base_url(srv), ndjson(evs)))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 4)
        status, text = await _get(base_url(srv) + "/v1/deadletters")
        assert status == 200
        dl = json.loads(text)["deadletters"]
        status, metrics = await _get(base_url(srv) + "/metrics")
    assert [d["id"] for d in dl] == [bad_id]
    assert dl[0]["status"] == 400 and dl[0]["response"] == "sink says 400" and dl[0]["reason"] == "HTTP 400"
    assert [r.id for r in sink.received].count(bad_id) == 1          # never retried
    assert sink.accepted_ids() == [ce_id(e["id"], "default") for e in evs if e["id"] != poison["id"]]
    assert "detector_dead_lettered_total 1" in metrics


async def test_retry_after_is_honoured(tmp_path: Path, sink: Sink) -> None:
    sink.answer = lambda n, r: (429, {"Retry-After": "1"}) if n == 0 else (202, {})
    async with running(det_config(tmp_path, sink.url)) as srv:
        assert (await post_events(base_url(srv), ndjson([app_event(1, 1)])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 1)
    first, second = sink.received
    assert first.id == second.id
    # our backoff is 10 ms here: a gap of about a second can only come from Retry-After
    assert second.at - first.at >= 0.9


async def test_nothing_lost_while_the_sink_is_down(tmp_path: Path, sink: Sink) -> None:
    port = sink.port
    await sink.stop()
    evs = [app_event(n, i) for n in range(1, 9) for i in range(25)]
    async with running(det_config(tmp_path, sink.url)) as srv:
        for k in range(0, len(evs), 50):
            assert (await post_events(base_url(srv), ndjson(evs[k:k + 50])))[0] == 202
        det = srv.det
        while det.metrics.retried < 3 * 8:          # every UE has failed a few times
            await asyncio.sleep(0.02)
        status, ready = await _get(base_url(srv) + "/readyz")
        assert status == 503 and '"sink_answered": false' in ready     # tried, never answered
        assert det.delivery.pending == len(evs)
        sink.port = port
        await sink.start()
        await sink.wait_for(lambda: len(sink.accepted) == len(evs))
        status, _ = await _get(base_url(srv) + "/readyz")
        assert status == 200
    assert sorted(sink.accepted_ids()) == sorted(ce_id(e["id"], "default") for e in evs)


async def test_backpressure_when_too_much_is_pending(tmp_path: Path, sink: Sink) -> None:
    await sink.stop()
    async with running(det_config(tmp_path, sink.url, max_pending=10)) as srv:
        assert (await post_events(base_url(srv), ndjson([app_event(1, i) for i in range(12)])))[0] == 202
        status, ans = await post_events(base_url(srv), ndjson([app_event(2, 1)]))
        assert status == 503 and "pending" in ans["error"]


async def test_probes_and_metrics(tmp_path: Path, sink: Sink) -> None:
    async with running(det_config(tmp_path, sink.url)) as srv:
        assert (await _get(base_url(srv) + "/healthz", None))[0] == 200
        assert (await _get(base_url(srv) + "/readyz", None))[0] == 200     # sink unknown yet: ready
        assert (await post_events(base_url(srv), ndjson([app_event(1, i) for i in range(3)])))[0] == 202
        await sink.wait_for(lambda: len(sink.accepted) == 3)
        await srv.det._flush_acks()
        status, text = await _get(base_url(srv) + "/metrics", None)
    assert status == 200
    lines = set(text.splitlines())
    # sample values as prometheus_client writes them (always a float: 3.0)
    for want in ("detector_delivered_total 3.0", "detector_ingest_accepted_total 3.0", "detector_outbox_pending 0.0",
                 "detector_inflight 0.0", "detector_sink_up 1.0", "detector_delivery_latency_seconds_count 3.0",
                 'detector_delivery_latency_seconds_bucket{le="+Inf"} 3.0', "# TYPE detector_delivered_total counter"):
        assert want in lines, want


async def test_max_attempts_ends_in_dead_letter(tmp_path: Path, sink: Sink) -> None:
    sink.answer = lambda n, r: (503, {})
    async with running(det_config(tmp_path, sink.url, max_attempts=3)) as srv:
        assert (await post_events(base_url(srv), ndjson([app_event(1, 1)])))[0] == 202
        while srv.det.metrics.dead_lettered < 1:
            await asyncio.sleep(0.01)
        status, text = await _get(base_url(srv) + "/v1/deadletters")
    assert status == 200
    dl = json.loads(text)["deadletters"]
    assert len(sink.received) == 3
    assert dl[0]["status"] == 503 and dl[0]["reason"] == "gave up after 3 attempts: HTTP 503"


async def test_dedupe_window_forgets_the_oldest(tmp_path: Path, sink: Sink) -> None:
    evs = [app_event(1, i) for i in range(4)]
    async with running(det_config(tmp_path, sink.url, dedupe_window=3)) as srv:
        for ev in evs:
            assert (await post_events(base_url(srv), ndjson([ev])))[0] == 202
        _, ans = await post_events(base_url(srv), ndjson([evs[3]]))
        assert ans["duplicates"] == 1
        _, ans = await post_events(base_url(srv), ndjson([evs[0]]))      # pushed out of the window
        assert ans["accepted"] == 1
        await sink.wait_for(lambda: len(sink.accepted) == 5)
    assert sink.accepted_ids()[4] == sink.accepted_ids()[0]


async def test_token_file(tmp_path: Path, sink: Sink) -> None:
    from detector.config import Config, apply_file
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "d.yaml").write_text(f"token_file: {tmp_path / 'token'}\nconcurrency: 2\n")
    cfg = Config()
    apply_file(cfg, str(tmp_path / "d.yaml"))
    assert cfg.token == "s3cret" and cfg.concurrency == 2
    async with running(det_config(tmp_path, sink.url, token=cfg.token)) as srv:
        assert (await post_events(base_url(srv), ndjson([app_event(1, 1)]), token="s3cret"))[0] == 202
        assert (await post_events(base_url(srv), ndjson([app_event(1, 2)]), token=TOKEN))[0] == 401
