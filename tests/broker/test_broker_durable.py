"""Nothing lost: a 202 from the broker means the event is in its SQLite store, every matching
Trigger gets it at least once across a kill -9 and a restart on the same state dir, a disk
that cannot write gives 503 + Retry-After (never a 202), and /_local/* is off unless asked.

Real `python -m testbed.broker` processes, real HTTP subscribers, real SIGKILL, a real
full tmpfs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from brokerlib import (
    REPO,
    BrokerProcess,
    Received,
    Subscriber,
    broker_process,
    subscriber,
    wait_for,
    write_manifests,
)

from testbed.broker.events import Event
from testbed.broker.store import DELIVERED, PENDING, Accepted, DeliveryUpdate, EventStore

N_EVENTS = 40


def manifests(url: str) -> str:
    """`all` gets every event, `odd` only type mec.odd (its filter is applied at ingest);
    retries outlast the test's downtime, so nothing is dead-lettered before the kill."""
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: mec}}
spec:
  delivery: {{retry: 30, backoffPolicy: exponential, backoffDelay: PT0.05S}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: all, namespace: mec}}
spec:
  broker: default
  subscriber: {{uri: "{url}/all"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: odd, namespace: mec}}
spec:
  broker: default
  filters: [{{exact: {{type: mec.odd}}}}]
  subscriber: {{uri: "{url}/odd"}}
"""


def event(i: int) -> dict[str, str]:
    return {"specversion": "1.0", "id": f"ev-{i}", "source": "/test/durable",
            "type": "mec.odd" if i % 2 else "mec.even"}


def body(i: int) -> bytes:
    return json.dumps({"n": i}).encode()


async def post_all(broker: BrokerProcess, numbers: range) -> list[int]:
    responses = await asyncio.gather(*(broker.post_event(event(i), body(i)) for i in numbers))
    return [r.status for r in responses]


def copies(sub: Subscriber, path: str) -> Counter[str]:
    return Counter(sub.ids(path))


async def test_kill_9_then_restart_delivers_every_accepted_event(tmp_path: Path, manifest_dir: Path,
                                                                 state_dir: Path) -> None:
    async with subscriber(down=True) as sub:
        write_manifests(manifest_dir, manifests(sub.url))
        broker = BrokerProcess(manifest_dir, state_dir, tmp_path / "broker.log")
        try:
            await broker.start()
            assert await post_all(broker, range(N_EVENTS)) == [202] * N_EVENTS
            broker.kill9()  # deliveries were still being retried against the refused port
            assert sub.got == []
            await sub.come_up()
            await broker.start()  # same state dir: resumes the pending rows
            odd = {f"ev-{i}" for i in range(N_EVENTS) if i % 2}
            await wait_for(lambda: set(sub.ids("/all")) == {f"ev-{i}" for i in range(N_EVENTS)}
                           and set(sub.ids("/odd")) == odd, what="every event at every matching Trigger")
        finally:
            await broker.stop()
    per_all, per_odd = copies(sub, "/all"), copies(sub, "/odd")
    duplicates = sum(n - 1 for per in (per_all, per_odd) for n in per.values())
    print(f"{N_EVENTS} events, {len(per_odd)} odd: {duplicates} duplicate deliveries")  # -s shows it
    assert set(per_odd) == odd  # the filter matched at ingest; the restart did not widen it
    rec = sub.at("/all")[0]
    n = int(rec.attrs["id"].split("-")[1])
    assert rec.data == {"n": n} and rec.attrs["type"] == event(n)["type"]
    assert "knativearrivaltime" in rec.attrs and "knativebrokerttl" not in rec.attrs
    assert "resuming" in broker.log_text()


async def test_202_means_durable_even_right_before_kill_9(tmp_path: Path, manifest_dir: Path,
                                                         state_dir: Path) -> None:
    async with subscriber() as sub:
        sub.behaviours["/all"] = lambda r: (503, {}, b"not yet")
        sub.behaviours["/odd"] = lambda r: (503, {}, b"not yet")
        write_manifests(manifest_dir, manifests(sub.url))
        broker = BrokerProcess(manifest_dir, state_dir, tmp_path / "broker.log")
        try:
            await broker.start()
            resp = await broker.post_event(event(7), body(7))
            broker.kill9()  # nothing between the 202 and the kill
            assert resp.status == 202
            sub.behaviours.clear()  # the subscriber recovers: 202 from now on
            got_before = len(sub.at("/all"))
            await broker.start()
            await wait_for(lambda: len(sub.at("/all")) > got_before and len(sub.at("/odd")) > 0,
                           what="the accepted event after the restart")
        finally:
            await broker.stop()
    assert set(sub.ids("/all")) == {"ev-7"} and sub.at("/all")[-1].data == {"n": 7}


def reply_manifests(url: str) -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: mec}}
spec:
  delivery: {{retry: 30, backoffPolicy: exponential, backoffDelay: PT0.05S}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: shop, namespace: mec}}
spec:
  broker: default
  filters: [{{exact: {{type: mec.app.buy}}}}]
  subscriber: {{uri: "{url}/shop"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: audit, namespace: mec}}
spec:
  broker: default
  filters: [{{exact: {{type: mec.order.created}}}}]
  subscriber: {{uri: "{url}/audit"}}
"""


def _order_reply(rec: Received) -> tuple[int, dict[str, str], bytes]:
    return 200, {"ce-specversion": "1.0", "ce-id": f"order-{rec.attrs['id']}", "ce-source": "/shop",
                 "ce-type": "mec.order.created", "Content-Type": "application/json"}, b'{"ok": true}'


async def test_a_reply_is_stored_like_any_event(tmp_path: Path, manifest_dir: Path, state_dir: Path) -> None:
    async with subscriber() as sub:
        # the shop replies once only: after the restart the order can come from the store alone
        sub.behaviours["/shop"] = lambda r: _order_reply(r) if len(sub.at("/shop")) == 1 else (202, {}, b"")
        sub.behaviours["/audit"] = lambda r: (503, {}, b"down")
        write_manifests(manifest_dir, reply_manifests(sub.url))
        broker = BrokerProcess(manifest_dir, state_dir, tmp_path / "broker.log", ["--local-api"])
        try:
            await broker.start()
            assert (await broker.post_event({**event(1), "type": "mec.app.buy"})).status == 202
            await wait_for(lambda: len(sub.at("/audit")) >= 1, what="the reply at audit (refused)")
            broker.kill9()
            refused = len(sub.at("/audit"))
            sub.behaviours["/audit"] = lambda r: (202, {}, b"")
            await broker.start()
            await wait_for(lambda: len(sub.at("/audit")) > refused, what="the reply delivered after the restart")
            events = await broker.get_json("/_local/events")
        finally:
            await broker.stop()
    assert set(sub.ids("/audit")) == {"order-ev-1"}
    assert {e["attributes"]["id"] for e in events} == {"ev-1", "order-ev-1"}  # both in the store


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real filesystem that fills up: a tmpfs of `size` (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill up needs root")
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_disk_full_gives_503_with_retry_after_never_202(tmp_path: Path, manifest_dir: Path) -> None:
    big = json.dumps({"pad": "x" * 120_000}).encode()  # ~30 WAL pages per event
    async with subscriber() as sub:
        write_manifests(manifest_dir, manifests(sub.url))
        with tiny_tmpfs(tmp_path / "full", "1m") as state:
            broker = BrokerProcess(manifest_dir, state, tmp_path / "broker.log", ["--local-api"])
            try:
                await broker.start()
                statuses: list[tuple[str, int, str | None]] = []
                for i in range(60):  # 60 x 120 kB cannot fit in 1 MiB
                    resp = await broker.post_event(event(i), big)
                    statuses.append((f"ev-{i}", resp.status, resp.headers.get("Retry-After")))
                    if resp.status == 503 and len([s for s in statuses if s[1] == 503]) >= 3:
                        break
                accepted = [eid for eid, code, _ in statuses if code == 202]
                refused = [(eid, ra) for eid, code, ra in statuses if code == 503]
                assert {code for _, code, _ in statuses} <= {202, 503}
                assert refused and all(ra is not None and int(ra) > 0 for _, ra in refused)
                stats = (await broker.get_json("/_local/stats"))["broker"]
                assert stats["refused"]["store-unavailable"] == len(refused)
                assert stats["store"]["write_errors"] >= len(refused)
                await wait_for(lambda: set(sub.ids("/all")) == set(accepted), what="the accepted events")
                # space comes back: the same broker accepts again, without a restart
                subprocess.run(["mount", "-o", "remount,size=16m", str(state)], check=True)
                retry = await broker.post_event(event(1000), body(1000))
                assert retry.status == 202
                await wait_for(lambda: "ev-1000" in sub.ids("/all"), what="the event accepted after the remount")
            finally:
                await broker.stop()
    assert not {eid for eid, _ in refused} & set(sub.ids("/all"))  # a 503 event was never stored
    assert len(accepted) >= 1


async def test_local_api_is_off_unless_asked(tmp_path: Path, manifest_dir: Path, state_dir: Path) -> None:
    write_manifests(manifest_dir, manifests("http://127.0.0.1:1"))
    async with broker_process(manifest_dir, state_dir, tmp_path / "off.log") as off:
        assert off.session is not None
        for path in ("/_local/stats", "/_local/events", "/_local/anything"):
            async with off.session.get(off.url + path) as resp:
                assert resp.status == 404, path
                assert "--local-api" in await resp.text()
        async with off.session.get(off.url + "/_local/healthz") as resp:
            assert resp.status == 200  # a liveness probe stays: it tells nothing about the events
        assert (await off.post_event(event(2), body(2))).status == 202
        off.kill9()  # (a clean stop would wait for the retries' grace period)
    async with broker_process(manifest_dir, state_dir, tmp_path / "on.log", "--local-api") as on:
        stats = await on.get_json("/_local/stats")
        events = await on.get_json("/_local/events?since=0")
        on.kill9()
    assert stats["broker"]["store"]["path"].endswith("broker.db")
    assert stats["broker"]["store"]["pending"] == 1  # from the first run: nobody listens at the subscriber
    assert stats["broker"]["store"]["recovered"] == 1
    assert [e["attributes"]["id"] for e in events] == ["ev-2"]


async def test_a_second_broker_on_the_same_state_dir_is_refused(tmp_path: Path, manifest_dir: Path,
                                                                state_dir: Path) -> None:
    write_manifests(manifest_dir, manifests("http://127.0.0.1:1"))
    async with broker_process(manifest_dir, state_dir, tmp_path / "first.log"):
        second = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "testbed.broker", "--manifests", str(manifest_dir),
                             "--listen", "127.0.0.1:0", "--state-dir", str(state_dir)],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1 and "in use by another broker" in second.stderr


def test_store_rows_and_pruning(tmp_path: Path) -> None:
    """The schema's promises: one pending row per matched Trigger; pruning keeps the newest
    events and every event with a pending delivery; sequence numbers never go back."""
    store = EventStore(tmp_path / "broker.db")
    try:
        for seq in range(1, 11):
            ev = Event({"specversion": "1.0", "id": f"e{seq}", "source": "/s", "type": "t"}, b"{}")
            store.commit([Accepted(seq, "mec/default", ev, ["mec/a", "mec/b"] if seq == 2 else ["mec/a"])], [])
        store.commit([], [DeliveryUpdate(s, "mec/a", DELIVERED, 1, 202) for s in range(1, 11)]
                     + [DeliveryUpdate(2, "mec/b", PENDING, 1, 503)])
        assert [(p.seq, p.trigger, p.attempts) for p in store.pending()] == [(2, "mec/b", 1)]
        assert store.prune(keep=3) == 6  # 1 and 3..7 go; 2 is pending for mec/b; 8..10 are the newest
        assert [e["seq"] for e in store.events_since(0)] == [2, 8, 9, 10]
        assert store.counts() == {"pending": 1, "delivered": 4, "dead-lettered": 0, "failed": 0, "events": 4}
        assert store.last_seq() == 10
    finally:
        store.close()


async def test_kill_9_mid_stream_loses_no_acknowledged_event(tmp_path: Path, manifest_dir: Path,
                                                                   state_dir: Path) -> None:
    """Many concurrent senders (group commits), killed mid-way: whatever got a 202 arrives."""
    async with subscriber() as sub:
        write_manifests(manifest_dir, manifests(sub.url))
        broker = BrokerProcess(manifest_dir, state_dir, tmp_path / "broker.log")
        try:
            await broker.start()
            acked: list[str] = []

            async def send(i: int) -> None:
                with contextlib.suppress(aiohttp.ClientError):
                    if (await broker.post_event(event(i), body(i))).status == 202:
                        acked.append(f"ev-{i}")

            senders = [asyncio.create_task(send(i)) for i in range(300)]
            await wait_for(lambda: len(acked) >= 50, what="some 202s")
            broker.kill9()  # in the middle of the stream: some requests never get an answer
            await asyncio.gather(*senders)
            await broker.start()
            await wait_for(lambda: set(acked) <= set(sub.ids("/all")), what="every acknowledged event")
        finally:
            await broker.stop()
    assert len(acked) >= 50


FUNCTION_MANIFEST = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: mec}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: fn-warm-logger, namespace: mec}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/min-scale: "1"}
    spec:
      containers:
        - image: ghcr.io/mec-testbed/fn-logger:0.1.0
"""


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


async def test_kill_9_of_the_broker_ends_its_functions(tmp_path: Path, manifest_dir: Path, state_dir: Path) -> None:
    """A function process must not outlive its broker (as a pod's containers end with the pod):
    otherwise each broker crash leaves one more process holding a port."""
    (manifest_dir / "fn.yaml").write_text(FUNCTION_MANIFEST)
    broker = BrokerProcess(manifest_dir, state_dir, tmp_path / "broker.log")
    try:
        await broker.start()
        assert broker.proc is not None
        fns: list[int] = []
        await wait_for(lambda: bool(fns.extend(_children(broker.proc.pid)) or fns), what="the warm function")  # type: ignore[union-attr]
        broker.kill9()
        await wait_for(lambda: not any(Path(f"/proc/{pid}").exists() and "zombie" not in
                                       Path(f"/proc/{pid}/status").read_text() for pid in fns),
                       what="the function process to end with its broker")
    finally:
        await broker.stop()
