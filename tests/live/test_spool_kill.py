"""kill -9 with a spool: a restarted sender resends what was not acknowledged, and only that.

A real sender process (DetectorSender with a Spool, driven over stdin) and the real
`upf-tap live` on a veth pair are killed with SIGKILL and started again on the same
spool directory, against a real HTTP server on loopback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import comparable, start_live, upf_tap
from test_spool import PYTHON, REPO, Receiver, free_port, wait_for

N = 1000

# One sender process: commands on stdin, one answer line (its counters) per command on stdout.
DRIVER = r"""
import json, sys, time
from upf_tap.live.sender import DetectorSender
from upf_tap.live.spool import Spool

url, spool_dir, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = DetectorSender(url, "tok", batch_max=batch, backoff_initial=0.02, backoff_max=0.1,
                   spool=Spool(spool_dir, segment_bytes=8192), warn=lambda m: None).start()
for cmd in sys.stdin:
    verb, _, rest = cmd.strip().partition(" ")
    if verb == "put":
        a, b = map(int, rest.split())
        for i in range(a, b):
            s.put({"id": f"ev-{i:06d}", "kind": "dns.query", "seq": i})
    elif verb == "until":  # until <python expression over c, the counters>
        deadline = time.monotonic() + 20
        while not eval(rest, {"c": s.counters()}) and time.monotonic() < deadline:
            time.sleep(0.005)
    elif verb == "close":
        s.close(5.0)
    print(json.dumps(s.counters()), flush=True)
"""


class Driver:
    def __init__(self, port: int, spool: Path, batch: int = 50) -> None:
        self.p = subprocess.Popen([PYTHON, "-c", DRIVER, f"http://127.0.0.1:{port}", str(spool), str(batch)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=spool.parent,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})

    def cmd(self, text: str) -> dict[str, Any]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()
        answer = self.p.stdout.readline()
        assert answer, f"the sender process died on {text!r}"
        counters: dict[str, Any] = json.loads(answer)
        return counters

    def kill9(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def close(self) -> dict[str, Any]:
        c = self.cmd("close")
        assert self.p.stdin is not None
        self.p.stdin.close()
        self.p.wait(10)
        return c


def ids(a: int, b: int) -> list[str]:
    return [f"ev-{i:06d}" for i in range(a, b)]


def first_arrivals(seen: list[str]) -> list[str]:
    return list(dict.fromkeys(seen))


def test_kill9_while_detector_down_resends_all_unacknowledged_and_nothing_acknowledged(tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    rx = Receiver(port).start()
    a = Driver(port, spool)
    try:
        a.cmd("put 0 100")
        c = a.cmd("until c['sent'] == 100 and c['spool.pending_bytes'] == 0")  # acknowledged and committed
        assert c["sent"] == 100 and c["spool.pending_bytes"] == 0
        rx.stop()  # the detector goes down
        a.cmd(f"put 100 {N}")
        c = a.cmd(f"until c['spool.spooled'] == {N}")
        assert c["spool.spooled"] == N and c["sent"] == 100
        a.kill9()
    finally:
        if a.p.poll() is None:
            a.kill9()
    assert rx.ids() == ids(0, 100)

    b = Driver(port, spool)  # restarted on the same spool; then the detector comes back
    try:
        time.sleep(0.2)
        rx.start()
        wait_for(lambda: set(rx.ids()) >= set(ids(0, N)), what="every event after the restart")
        cb = b.close()
    finally:
        rx.stop()
        if b.p.poll() is None:
            b.kill9()
    seen = Counter(rx.ids())
    assert set(seen) == set(ids(0, N))  # nothing lost
    assert all(seen[i] == 1 for i in ids(0, 100))  # acknowledged before the kill: never resent
    assert sum(seen.values()) == N  # and nothing else twice either: none was acknowledged after
    assert first_arrivals(rx.ids()) == ids(0, N)  # in order
    assert cb["sent"] == N - 100 and cb["spool.torn_tails"] == 0 and cb["spool.pending_bytes"] == 0


def test_kill9_while_sending_resends_at_most_the_batch_in_flight(tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    rx = Receiver(port, delay=0.02).start()  # a slow detector: the kill lands mid-stream
    procs: list[Driver] = []
    try:
        a = Driver(port, spool, batch=50)
        procs.append(a)
        a.cmd(f"put 0 {N}")
        a.cmd(f"until c['spool.spooled'] == {N}")
        wait_for(lambda: len(rx.ids()) >= 300, what="part of the stream")
        a.kill9()
        assert 300 <= len(rx.ids()) < N
        b = Driver(port, spool, batch=50)
        procs.append(b)
        wait_for(lambda: set(rx.ids()) >= set(ids(0, N)), what="the rest after the restart")
        b.close()
    finally:
        rx.stop()
        for d in procs:
            if d.p.poll() is None:
                d.kill9()
    seen = Counter(rx.ids())
    assert set(seen) == set(ids(0, N))
    twice = [i for i, n in seen.items() if n > 1]
    assert len(twice) <= 50 and all(n <= 2 for n in seen.values())  # only the batch in flight at the kill
    assert first_arrivals(rx.ids()) == ids(0, N)


# -- the real `upf-tap live`, captured on a veth pair ----------------------------------------------
HAVE_CONTROL = importlib.util.find_spec("upf_tap.control.correlator") is not None
CONTROL = [] if HAVE_CONTROL else ["--no-control"]


@pytest.mark.root
@pytest.mark.parametrize("workers", [1, 2])
def test_upf_tap_live_kill9_then_restart_delivers_every_event(veth_ns: Any, captures: Path, tmp_path: Path,
                                                              workers: int) -> None:
    pcap = str(captures / "synthetic-n3.pcap")
    want = subprocess.run(upf_tap("read", *CONTROL, pcap), cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.splitlines()
    assert want
    with veth_ns.inside():  # a port on the namespace's loopback, for the detector
        port = free_port()
    token = tmp_path / "token"
    token.write_text("tok-kill\n")
    common = ["--iface", veth_ns.rx, *CONTROL, "--detector", f"http://127.0.0.1:{port}", "--token-file", str(token),
              "--spool", str(tmp_path / "spool"), "--workers", str(workers)]

    first = start_live(veth_ns, *common, "--report-every", "0.2")  # the detector is down
    veth_ns.replay(pcap, "--topspeed")
    try:
        wait_for(lambda: any(f"spooled {len(want)} " in ln for ln in first.err_lines), timeout=20,
                 what="the events spooled")
    finally:
        first.p.send_signal(signal.SIGKILL)  # `ip netns exec` execs the tap: this is its pid
        first.finish(timeout=10)
    assert first.p.returncode == -signal.SIGKILL

    with veth_ns.inside():
        rx = Receiver(port).start()
    try:
        second = start_live(veth_ns, *common, "--duration", "2")
        rc, out, err = second.finish()
    finally:
        rx.stop()
    assert rc == 0, err
    assert out == []
    assert rx.auth == {"Bearer tok-kill"}
    if workers == 1:
        assert comparable(rx.lines) == comparable(want)  # every event of the first run, once, in order
    else:
        assert sorted(comparable(rx.lines)) == sorted(comparable(want))  # workers interleave them
    counters = {ln.split()[0]: ln.split()[-1] for ln in err.splitlines() if ln.startswith("  sender.")}
    assert counters["sender.sent"] == str(len(want))
    assert counters["sender.spool.pending_bytes"] == "0" and counters["sender.spool.spooled"] == "0"
