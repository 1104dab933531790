"""The sample functions: their CloudEvents server alone, and run by the broker (scale
from zero, warm, back to zero), with the project's own k8s/knative manifests too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from brokerlib import running_broker, wait_for, write_manifests
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

REPO = Path(__file__).resolve().parents[2]
SUPI1 = "imsi-999700000000001"


@pytest.fixture
def function_server(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    procs: list[subprocess.Popen[str]] = []

    def start(name: str) -> tuple[str, Path]:
        state = tmp_path / name
        env = {**os.environ, "FN_STATE_DIR": str(state), "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "testbed.functions.serve", name, "--host", "127.0.0.1", "--port", "0", "--ready-line"],
            stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY port="), line
        return f"http://127.0.0.1:{int(line.split('=')[1])}", state

    yield start
    for proc in procs:
        proc.terminate()
        assert proc.wait(timeout=10) == 0  # SIGTERM is a clean stop


def _binary(id_: str, type_: str, data: dict | None = None, **ext: str) -> tuple[dict[str, str], bytes]:
    headers = {"ce-specversion": "1.0", "ce-id": id_, "ce-source": "/detector/ue/1", "ce-type": type_,
               **{f"ce-{k}": v for k, v in ext.items()}}
    if data is None:
        return headers, b""
    return {**headers, "Content-Type": "application/json"}, json.dumps(data).encode()


async def test_buy_function_replies_with_the_order_once(function_server) -> None:  # type: ignore[no-untyped-def]
    url, state = function_server("buy")
    headers, body = _binary("click-1", "mec.app.buy", {"app": {"method": "POST", "path": "/api/v1/buy?item=3"},
                                                       "ue": {"ip": "10.45.0.2"}}, supi=SUPI1)
    async with aiohttp.ClientSession() as s:
        replies = []
        for _ in range(2):  # a redelivery gives the same order and is recorded once
            async with s.post(url, headers=headers, data=body) as resp:
                assert resp.status == 200
                replies.append(from_http_event(HTTPMessage(dict(resp.headers), await resp.read())))
        structured = {"specversion": "1.0", "id": "click-2", "source": "/detector/ue/2", "type": "mec.app.buy",
                      "subject": "imsi-999700000000002", "data": {"item": "9"}}
        async with s.post(url, headers={"Content-Type": "application/cloudevents+json"},
                          data=json.dumps(structured)) as resp:
            assert resp.status == 200
            second = from_http_event(HTTPMessage(dict(resp.headers), await resp.read()))
        async with s.post(url, headers={"Content-Type": "application/json"}, data=b"{}") as resp:
            assert resp.status == 400
        async with s.get(url + "/healthz") as resp:
            assert resp.status == 200
    first = replies[0]
    assert first.get_type() == "mec.order.created" and first.get_source() == "/mec/functions/buy"
    assert first.get_extension("supi") == SUPI1
    order = first.get_data()
    assert order["item"] == "3" and order["supi"] == SUPI1 and order["ue_ip"] == "10.45.0.2"
    assert replies[1].get_id() == first.get_id() and replies[1].get_data()["order_id"] == order["order_id"]
    assert second.get_data()["item"] == "9" and second.get_data()["supi"] == "imsi-999700000000002"
    lines = (state / "orders.jsonl").read_text().splitlines()
    assert [json.loads(x)["event_id"] for x in lines] == ["click-1", "click-2"]


async def test_dns_edge_and_logger_functions(function_server) -> None:  # type: ignore[no-untyped-def]
    dns_url, dns_state = function_server("dns_edge")
    log_url, log_state = function_server("logger")
    async with aiohttp.ClientSession() as s:
        statuses = []
        for i, name in enumerate(["video.mec.local.", "VIDEO.mec.local", "maps.mec.local"]):
            headers, body = _binary(f"q{i}", "mec.upf.dns.query", {"app": {"qname": name, "qtype": 1}}, supi=SUPI1)
            async with s.post(dns_url, headers=headers, data=body) as resp:
                statuses.append(resp.status)
                if resp.status == 200:
                    reply = from_http_event(HTTPMessage(dict(resp.headers), await resp.read()))
                    assert reply.get_type() == "mec.edge.warmed" and reply.get_subject() == name.rstrip(".").lower()
        headers, _ = _binary("q9", "mec.upf.dns.query")
        async with s.post(dns_url, headers=headers) as resp:
            assert resp.status == 500  # no name anywhere: the handler refuses, the server survives
        headers, body = _binary("log-1", "mec.anything", {"x": 1}, supi=SUPI1)
        async with s.post(log_url, headers=headers, data=body) as resp:
            assert resp.status == 202 and await resp.read() == b""
    assert statuses == [200, 202, 200]  # the second lookup of a warm name replies nothing
    cache = [json.loads(x) for x in (dns_state / "edge-cache.jsonl").read_text().splitlines()]
    assert [c["qname"] for c in cache] == ["video.mec.local", "maps.mec.local"]
    assert len((dns_state / "lookups.jsonl").read_text().splitlines()) == 3
    [logged] = [json.loads(x) for x in (log_state / "events.jsonl").read_text().splitlines()]
    assert logged["attributes"]["id"] == "log-1" and logged["data"] == {"x": 1}


SCALE_MANIFESTS = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: mec}
spec:
  delivery: {retry: 2, backoffPolicy: exponential, backoffDelay: PT0.05S}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: buy, namespace: mec}
spec:
  broker: default
  filters: [{exact: {type: mec.app.buy}}]
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn-buy}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: audit, namespace: mec}
spec:
  broker: default
  filter: {attributes: {type: mec.order.created}}
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn-logger}}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: fn-buy, namespace: mec}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/window: "6s"}
    spec:
      containers: [{image: "ghcr.io/mec-testbed/fn-buy:0.1.0"}]
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: fn-logger, namespace: mec}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/min-scale: "1"}
    spec:
      containers: [{image: "ghcr.io/mec-testbed/fn-logger:0.1.0"}]
"""


def _orders_logged(state: Path) -> list[str]:
    path = state / "mec" / "fn-logger" / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["data"]["event_id"] for x in path.read_text().splitlines()]


async def test_function_scales_from_zero_and_back(manifest_dir: Path, state_dir: Path) -> None:
    write_manifests(manifest_dir, SCALE_MANIFESTS)
    async with running_broker(manifest_dir, state_dir, idle_override=1.5) as broker:
        fns = broker.runner.fns
        buy, logger = fns[("mec", "fn-buy")], fns[("mec", "fn-logger")]
        assert not buy.running and logger.running  # min-scale 1 starts at once
        assert logger.idle == 1.5

        def click(n: int) -> dict[str, str]:
            return {"id": f"c{n}", "source": "/ue/1", "specversion": "1.0", "type": "mec.app.buy", "supi": SUPI1}

        assert await broker.send(click(1), {"item": 1}) == 202           # cold: the activator holds it
        await broker.settle()
        pid = buy.proc.pid
        assert await broker.send(click(2), {"item": 2}) == 202           # warm
        await broker.settle()
        assert buy.proc is not None and buy.proc.pid == pid
        assert _orders_logged(state_dir) == ["c1", "c2"]
        await wait_for(lambda: buy.stops == 1, what="fn-buy to scale to zero")
        assert not buy.running and logger.running
        assert await broker.send(click(3), {"item": 3}) == 202           # from zero again
        await broker.settle()
        stats = (await broker.stats())["functions"]
    s = stats["mec/fn-buy"]
    assert (s["starts"], s["stops"], s["cold"]["count"], s["warm"]["count"]) == (2, 1, 2, 1)
    assert s["cold"]["p50_ms"] > 0 and s["warm"]["p50_ms"] > 0 and s["start"]["count"] == 2
    assert stats["mec/fn-logger"]["starts"] == 1 and stats["mec/fn-logger"]["warm"]["count"] == 3
    assert _orders_logged(state_dir) == ["c1", "c2", "c3"]
    assert [d["outcome"] for d in (await _final(broker))] == ["delivered"] * 6


async def _final(broker) -> list[dict]:  # type: ignore[no-untyped-def]
    return [d.__dict__ for d in broker.engine.stats.dispatches]


async def test_project_manifests_end_to_end(state_dir: Path) -> None:
    async with running_broker(REPO / "k8s" / "knative", state_dir, idle_override=30) as broker:
        sends = [
            ({"id": "buy-1", "type": "mec.app.buy", "supi": SUPI1, "ueip": "10.45.0.2"},
             {"app": {"path": "/api/v1/buy?item=42"}}),
            ({"id": "buy-ims", "type": "mec.app.buy", "supi": SUPI1, "dnn": "ims"}, {"item": 1}),
            ({"id": "buy-roamer", "type": "mec.app.buy", "supi": "imsi-001010000000001"}, {"item": 1}),
            ({"id": "dns-1", "type": "mec.upf.dns.query", "subject": "video.mec.local", "supi": SUPI1},
             {"app": {"qname": "video.mec.local", "qtype": 1}}),
            ({"id": "dns-internal", "type": "mec.upf.dns.query", "subject": "internal.mec.local", "supi": SUPI1},
             {"app": {"qname": "internal.mec.local", "qtype": 1}}),
            ({"id": "dns-public", "type": "mec.upf.dns.query", "subject": "example.org", "supi": SUPI1},
             {"app": {"qname": "example.org", "qtype": 1}}),
        ]
        for attrs, data in sends:
            assert await broker.send({"source": "/detector/ue/1", "specversion": "1.0", **attrs}, data) == 202
        await broker.settle()
    base = state_dir / "mec"
    orders = [json.loads(x) for x in (base / "fn-buy" / "orders.jsonl").read_text().splitlines()]
    assert [(o["event_id"], o["item"], o["ue_ip"]) for o in orders] == [("buy-1", "42", "10.45.0.2")]
    cache = [json.loads(x) for x in (base / "fn-dns-edge" / "edge-cache.jsonl").read_text().splitlines()]
    assert [c["qname"] for c in cache] == ["video.mec.local"]
    logged = [json.loads(x)["attributes"] for x in (base / "fn-logger" / "events.jsonl").read_text().splitlines()]
    # orders-audit (legacy filter) gets the reply; ue-activity-log (cesql) gets every mec.upf.* event with a UE
    assert sorted(a["id"] for a in logged) == sorted(
        ["order-" + orders[0]["order_id"], "dns-1", "dns-internal", "dns-public"])
    assert not (base / "fn-dead-letters").exists()  # nothing failed, so it never started
