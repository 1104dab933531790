"""A tap killed with -9 loses no packet when a supervisor keeps its capture socket (systemd's fd store).

`upf-tap live` stores each ring's socket on $NOTIFY_SOCKET as it opens it (FDSTORE=1, as a
service with FileDescriptorStoreMax= does); the kernel goes on filling the ring while the tap
is down; the restarted tap gets the socket back (LISTEN_FDS, through `python -m
mec_common.fdstore exec`) and reads what arrived meanwhile. Real sockets, a real veth pair,
a real kill -9.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import live_frames as F
import pytest
from conftest import REPO, VethNs, upf_tap

from mec_common.fdstore import FdStore, store
from mec_common.ports import free_port

pytestmark = pytest.mark.root


def _dns_frame(name: str, ident: int) -> bytes:
    inner = F.ipv4("10.45.0.2", "10.200.0.53", 17, F.udp(40000 + ident, 53, F.dns_query(name, ident)))
    return F.eth(F.ipv4("10.100.0.1", "10.100.0.2", 17, F.udp(2152, 2152, F.gtpu(7, inner, qfi=1))))


def _send(v: VethNs, names: list[str]) -> None:
    with v.inside():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((v.tx, 0))
    with s:
        for i, name in enumerate(names):
            s.send(_dns_frame(name, i + 1))


def _qnames(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        with_json = json.loads(line)
        if with_json.get("kind") == "dns.query":
            out.append(with_json["app"]["qname"])
    return out


def _wait(cond, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _start(v: VethNs, argv: list[str], out: Path, env: dict[str, str], fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    with out.open("ab") as f, (out.parent / "err.log").open("ab") as err:
        return subprocess.Popen(argv, cwd=REPO, stdout=f, stderr=err, env={**os.environ, **env}, pass_fds=fds)


def test_packets_sent_while_the_tap_is_down_are_read_after_its_restart(veth_ns: VethNs, tmp_path: Path) -> None:
    kept = FdStore(tmp_path / "notify").start()
    argv = upf_tap("live", "--netns", veth_ns.ns, "--iface", veth_ns.rx, "--no-control", "--report-every", "60")
    out1, out2 = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    err = tmp_path / "err.log"
    first = _start(veth_ns, argv, out1, kept.env())
    try:
        assert _wait(lambda: "capturing on" in (err.read_text() if err.exists() else "")), err.read_text()
        assert _wait(lambda: len(kept.stored()) == 1), "the tap did not store its ring's socket"
        (name,) = kept.stored()
        assert name.startswith("ring.w0.all.") and name.endswith(f".{veth_ns.rx}")
        before = [f"a{i}.kept.test" for i in range(20)]
        _send(veth_ns, before)
        assert _wait(lambda: _qnames(out1) == before), _qnames(out1)
        first.send_signal(signal.SIGKILL)
        first.wait()

        during = [f"b{i}.kept.test" for i in range(30)]  # nobody reads: the kernel fills the kept ring
        _send(veth_ns, during)
        time.sleep(0.1)

        run_argv, fds = kept.exec_argv(argv)
        assert run_argv[:4] == [run_argv[0], "-m", "mec_common.fdstore", "exec"]
        second = _start(veth_ns, run_argv, out2, kept.env(), fds)
        try:
            assert _wait(lambda: _qnames(out2) == during), (_qnames(out2), err.read_text()[-2000:])
            assert f"{veth_ns.rx}: resuming the kept ring" in err.read_text()
            after = [f"c{i}.kept.test" for i in range(5)]
            _send(veth_ns, after)
            assert _wait(lambda: _qnames(out2) == during + after), _qnames(out2)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
    finally:
        if first.poll() is None:
            first.kill()
        kept.close()
    # nothing read twice: the first tap gave back the blocks it had decoded
    assert set(_qnames(out1)).isdisjoint(_qnames(out2))


def test_a_tap_without_a_supervisor_stores_nothing_and_runs(veth_ns: VethNs, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    out = tmp_path / "out.jsonl"
    p = _start(veth_ns, upf_tap("live", "--netns", veth_ns.ns, "--iface", veth_ns.rx, "--no-control",
                                "--duration", "1.5"), out, env)
    time.sleep(0.8)
    _send(veth_ns, ["solo.kept.test"])
    assert p.wait(30) == 0
    assert _qnames(out) == ["solo.kept.test"]


def test_exec_passes_fds_as_systemd_does(tmp_path: Path) -> None:
    """`python -m mec_common.fdstore exec` moves the fds to 3, 4 … and names them; the program
    (same pid, so LISTEN_PID matches) finds them with listen_fds and reads through them."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    os.write(w1, b"one")
    os.write(w2, b"two")
    probe = ("import json, os; from mec_common.fdstore import listen_fds; fds = listen_fds(); "
             "print(json.dumps({n: os.read(fd, 3).decode() for n, fd in fds.items()}), os.environ.get('LISTEN_FDS'))")
    res = subprocess.run([upf_tap()[0], "-m", "mec_common.fdstore", "exec", f"first={r2}", f"second={r1}", "--",
                          upf_tap()[0], "-c", probe], cwd=REPO, capture_output=True, text=True, pass_fds=(r1, r2),
                         timeout=30)
    for fd in (r1, w1, r2, w2):
        os.close(fd)
    assert res.returncode == 0, res.stderr
    names, left = res.stdout.rsplit(" ", 1)
    assert json.loads(names) == {"first": "two", "second": "one"}
    assert left.strip() == "None"  # unset once read: not inherited by the program's children
    bad = subprocess.run([upf_tap()[0], "-m", "mec_common.fdstore", "exec", "bad:name=3", "--", "true"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "bad file descriptor name" in bad.stderr


def test_store_without_a_supervisor_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert store(0, "ring.x") is False


def test_fdstore_keeps_the_latest_socket_per_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kept = FdStore(tmp_path / "n").start()
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(kept.path))
        a, b = socket.socketpair()
        with a, b:
            assert store(a.fileno(), "one") and store(b.fileno(), "one")
            assert _wait(lambda: "one" in kept.stored(), 5)
            time.sleep(0.1)
            fd = kept.stored()["one"]
            os.write(fd, b"x")  # the stored fd is b's duplicate: a receives what it writes
            assert a.recv(1) == b"x"
    finally:
        kept.close()


def test_kill_9_mid_stream_with_spool_and_kept_ring_loses_no_event(veth_ns: VethNs, tmp_path: Path) -> None:
    """Queries keep coming while the tap is killed and restarted: with its spool (events durable
    before their ring block is given back) and its kept ring, every one reaches the detector."""
    import threading

    from test_spool import Receiver

    port = free_port()  # the tap runs here (it opens its sockets in the namespace): so does the detector
    token = tmp_path / "token"
    token.write_text("tok-kept\n")
    rx = Receiver(port).start()
    kept = FdStore(tmp_path / "notify").start()
    argv = upf_tap("live", "--netns", veth_ns.ns, "--iface", veth_ns.rx, "--no-control", "--report-every", "60",
                   "--detector", f"http://127.0.0.1:{port}", "--token-file", str(token),
                   "--spool", str(tmp_path / "spool"))
    err = tmp_path / "err.log"
    names = [f"q{i}.stream.test" for i in range(2000)]

    def stream() -> None:  # about 2 s of queries at 1000/s
        for i in range(0, len(names), 10):
            _send(veth_ns, names[i : i + 10])
            time.sleep(0.01)

    first = _start(veth_ns, argv, tmp_path / "out.jsonl", kept.env())
    second = None
    try:
        assert _wait(lambda: len(kept.stored()) == 1 and "capturing on" in err.read_text()), err.read_text()
        sender = threading.Thread(target=stream)
        sender.start()
        assert _wait(lambda: len(rx.lines) > 300), "the first tap sent nothing"
        first.send_signal(signal.SIGKILL)
        first.wait()
        run_argv, fds = kept.exec_argv(argv)
        second = _start(veth_ns, run_argv, tmp_path / "out.jsonl", kept.env(), fds)
        sender.join()

        def got() -> set[str]:
            return {json.loads(x)["app"]["qname"] for x in list(rx.lines)}

        assert _wait(lambda: got() >= set(names), 30), sorted(set(names) - got())[:20]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
        rx.stop()
        kept.close()
    arrivals = [json.loads(x)["app"]["qname"] for x in rx.lines]
    print(f"{len(names)} queries, {len(arrivals) - len(set(arrivals))} delivered twice")  # -s shows it
