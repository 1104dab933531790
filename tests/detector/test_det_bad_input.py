"""Pointed bad input against a real detector: each is a 4xx with a JSON reason, counted, and
nothing of it reaches the sink (the good lines of a mixed batch excepted, which are kept)."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
from detlib import TOKEN, Sink, app_event, base_url, det_config, ndjson, running

from detector.cloudevent import ce_id

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any], Any]:
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status, await r.json(content_type=None), r.headers


async def _raw(port: int, request: bytes) -> tuple[int, dict[str, Any]]:
    """Bytes the aiohttp client would not send (a non-ASCII header, a lying Content-Encoding)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


async def _metric(base: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
        text = await r.text()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))


async def test_one_bad_line_among_good_ones(tmp_path: Path, sink: Sink) -> None:
    good = [app_event(1, i) for i in range(3)]
    body = b"\n".join([json.dumps(good[0]).encode(), b'{"id": "x", oops', json.dumps(good[1]).encode(),
                       json.dumps(good[2]).encode()]) + b"\n"
    async with running(det_config(tmp_path, sink.url)) as srv:
        status, ans, _ = await _post(base_url(srv) + "/v1/events", body,
                                     {**AUTH, "Content-Type": "application/x-ndjson"})
        # 400 names the bad line; the three good ones are durable and delivered, in order
        assert status == 400
        assert ans["accepted"] == 3 and ans["emitted"] == 3 and ans["duplicates"] == 0
        assert [r["line"] for r in ans["rejected"]] == [2]
        assert ans["rejected"][0]["reason"].startswith("bad JSON: ")
        await sink.wait_for(lambda: len(sink.accepted) == 3)
        assert await _metric(base_url(srv), "detector_ingest_rejected_total") == 1
        assert await _metric(base_url(srv), "detector_ingest_accepted_total") == 3
        # the sender re-sends the whole batch (say): the good lines are duplicates now, nothing new is sent
        status, ans, _ = await _post(base_url(srv) + "/v1/events", body,
                                     {**AUTH, "Content-Type": "application/x-ndjson"})
        assert status == 400 and ans["accepted"] == 0 and ans["duplicates"] == 3
    assert sink.accepted_ids() == [ce_id(e["id"], "default") for e in good]


async def test_json_body_one_object_or_an_array(tmp_path: Path, sink: Sink) -> None:
    one, two, three = app_event(1, 1), app_event(1, 2), app_event(1, 3)
    pretty = json.dumps(one, indent=2).encode()      # several lines: only readable as one JSON document
    bad = dict(three, point="n5")
    async with running(det_config(tmp_path, sink.url)) as srv:
        url, headers = base_url(srv) + "/v1/events", {**AUTH, "Content-Type": "application/json"}
        assert (await _post(url, pretty, headers))[:2] == (
            202, {"accepted": 1, "duplicates": 0, "emitted": 1, "rejected": []})
        status, ans, _ = await _post(url, json.dumps([two, bad]).encode(), headers)
        assert status == 400 and ans["accepted"] == 1
        assert ans["rejected"] == [{"index": 1, "reason": "schema: point: must be one of n2, n3, n4, n6, n9"}]
        # NDJSON labelled application/json is still read as NDJSON
        status, ans, _ = await _post(url, ndjson([one, three]), headers)
        assert status == 202 and ans["accepted"] == 1 and ans["duplicates"] == 1
        await sink.wait_for(lambda: len(sink.accepted) == 3)


async def test_bad_json_and_nan_are_refused_per_line(tmp_path: Path, sink: Sink) -> None:
    ev = json.dumps(app_event(1, 1))
    nan = ev.replace('"qfi": 1', '"qfi": 1, "score": NaN', 1)
    assert nan != ev
    lines = [b"{", b"[1,", nan.encode(), ev.replace('"id"', '"ID"', 1).encode(), b'"just a string"']
    async with running(det_config(tmp_path, sink.url)) as srv:
        status, ans, _ = await _post(base_url(srv) + "/v1/events", b"\n".join(lines), AUTH)
    assert status == 400 and ans["accepted"] == 0 and ans["emitted"] == 0
    reasons = {r["line"]: r["reason"] for r in ans["rejected"]}
    assert reasons[1].startswith("bad JSON: ") and reasons[2].startswith("bad JSON: ")
    assert reasons[3] == "bad JSON: NaN is not JSON"      # JSON has no NaN; the sink's parser would refuse it
    assert reasons[4] == "schema: id: required"
    assert reasons[5] == "schema: not a JSON object"
    assert sink.received == []


async def test_wrong_content_type_is_415_before_reading(tmp_path: Path, sink: Sink) -> None:
    body = ndjson([app_event(1, 1)])
    async with running(det_config(tmp_path, sink.url)) as srv:
        url = base_url(srv) + "/v1/events"
        for ctype in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "image/png"):
            status, ans, _ = await _post(url, body, {**AUTH, "Content-Type": ctype})
            assert status == 415, ctype
            assert ctype.split(";")[0] in ans["error"] and "application/x-ndjson" in ans["error"]
        # the NDJSON family, plain text, octet-stream and no type at all are read as NDJSON
        for i, ctype in enumerate(("application/x-ndjson", "application/jsonl", "text/plain; charset=utf-8",
                                   "application/octet-stream")):
            status, ans, _ = await _post(url, ndjson([app_event(2, i)]), {**AUTH, "Content-Type": ctype})
            assert status == 202, (ctype, ans)
        assert await _metric(base_url(srv), "detector_ingest_requests_total") == 7
        await sink.wait_for(lambda: len(sink.accepted) == 4)


async def test_missing_wrong_or_undecodable_token_is_401(tmp_path: Path, sink: Sink) -> None:
    body = ndjson([app_event(1, 1)])
    async with running(det_config(tmp_path, sink.url)) as srv:
        url = base_url(srv) + "/v1/events"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            status, ans, hdrs = await _post(url, body, headers)
            assert status == 401 and ans == {"error": "missing or wrong bearer token"}
            assert hdrs["WWW-Authenticate"] == "Bearer"
        # a non-UTF-8 byte in the header was a 500 (UnicodeEncodeError in the comparison)
        status, ans = await _raw(srv.port, b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xe9t\xe9\r\n"
                                           b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        assert status == 401 and ans == {"error": "missing or wrong bearer token"}
        assert await _metric(base_url(srv), "detector_unauthorized_total") == 5
    assert sink.received == []


async def test_huge_bodies_are_413(tmp_path: Path, sink: Sink) -> None:
    async with running(det_config(tmp_path, sink.url, max_body_bytes=64 * 1024)) as srv:
        url = base_url(srv) + "/v1/events"
        huge = b"x" * (10 * 1024 * 1024)
        status, ans, _ = await _post(url, huge, AUTH)
        assert status == 413 and ans == {"error": "body over 65536 bytes"}
        # small on the wire, huge once decompressed: the limit counts what aiohttp decompresses
        bomb = gzip.compress(ndjson([app_event(1, 1)]) * 2000)
        assert len(bomb) < 64 * 1024
        status, ans, _ = await _post(url, bomb, {**AUTH, "Content-Encoding": "gzip"})
        assert status == 413 and "65536" in ans["error"]
        # and the detector goes on
        status, _, _ = await _post(url, ndjson([app_event(1, 1)]), AUTH)
        assert status == 202
        await sink.wait_for(lambda: len(sink.accepted) == 1)


async def test_a_body_that_lies_about_its_encoding_is_400(tmp_path: Path, sink: Sink) -> None:
    async with running(det_config(tmp_path, sink.url)) as srv:
        for path in (b"/v1/events", b"/v1/cloudevents"):
            status, ans = await _raw(srv.port, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                                     + TOKEN.encode() + b"\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n"
                                     b"Connection: close\r\n\r\nhello")
            assert status == 400, path       # was a 500 (aiohttp's RequestPayloadError escaped the handler)
            assert ans["error"].startswith("cannot read the body: ")
    assert sink.received == []


async def test_unknown_paths_and_methods_answer_json(tmp_path: Path, sink: Sink) -> None:
    async with running(det_config(tmp_path, sink.url)) as srv, aiohttp.ClientSession() as s:
        async with s.get(base_url(srv) + "/v2/nothing") as r:
            assert r.status == 404 and await r.json() == {"error": "not found"}
        async with s.put(base_url(srv) + "/v1/events", headers=AUTH) as r:
            assert r.status == 405 and await r.json() == {"error": "method not allowed"}
            assert r.headers["Allow"] == "POST"
        async with s.head(base_url(srv) + "/healthz") as r:     # GET routes have no implicit HEAD
            assert r.status == 405


async def test_empty_bodies_and_bad_cloudevents_are_400(tmp_path: Path, sink: Sink) -> None:
    async with running(det_config(tmp_path, sink.url)) as srv:
        for body, ctype in ((b"", "application/x-ndjson"), (b"\n \n", "application/x-ndjson"),
                            (b"[]", "application/json")):
            status, ans, _ = await _post(base_url(srv) + "/v1/events", body, {**AUTH, "Content-Type": ctype})
            assert status == 400 and ans["error"].startswith("empty body"), (body, ans)
        for headers, body in (({"Content-Type": "application/cloudevents+json"}, b'{"specversion": "1.0"}'),
                              ({"ce-specversion": "0.3", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}, b"{}"),
                              ({"Content-Type": "application/cloudevents+json"}, b"[1, 2]")):
            status, ans, _ = await _post(base_url(srv) + "/v1/cloudevents", body, {**AUTH, **headers})
            assert status == 400 and ans["error"].startswith("not a CloudEvent: "), ans
    assert sink.received == []
