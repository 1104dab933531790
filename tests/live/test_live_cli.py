"""The bar of issue 4: `upf-tap live` on a veth pair reports what `upf-tap read` reports.

A capture is replayed with tcpreplay into one end of a veth pair inside a fresh
network namespace while `upf-tap live` listens on the other end; its events must
equal those of `upf-tap read` on the same file, except id and time (both derive
from the capture time, which is the replay time live).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pwd
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, BinaryIO, cast

import live_frames as F
import pytest
from conftest import PYTHON, REPO, comparable, open_tun, start_live, upf_tap

from mec_common.ports import free_port

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

pytestmark = pytest.mark.root

# Until the control-plane correlator is in the tree, both sides run without it.
HAVE_CONTROL = importlib.util.find_spec("upf_tap.control.correlator") is not None
CONTROL = [] if HAVE_CONTROL else ["--no-control"]


def read_events(pcap: str, *args: str) -> list[str]:
    res = subprocess.run(upf_tap("read", *CONTROL, *args, pcap), cwd=REPO, capture_output=True, text=True,
                         check=True)
    return res.stdout.splitlines()


@pytest.mark.parametrize(("name", "workers"), [
    ("synthetic-n3.pcap", 1), ("synthetic-n3.pcap", 2),
    ("oai-5greplay.pcap", 1), ("oai-5greplay.pcap", 2), ("gtp-http-fragmented.pcap", 1),
    ("gtp-http-fragmented.pcap", 2),
])
def test_live_equals_read(veth_ns, captures, name: str, workers: int) -> None:
    pcap = str(captures / name)
    want = read_events(pcap)
    assert want, "the capture must give events for this test to mean anything"
    live = start_live(veth_ns, "--iface", veth_ns.rx, *CONTROL, "--duration", "2", "--workers", str(workers))
    veth_ns.replay(pcap, "--topspeed")
    rc, got, err = live.finish()
    assert rc == 0, err
    if workers == 1:
        assert comparable(got) == comparable(want)  # same events, same order
    else:
        g, w = sorted(comparable(got)), sorted(comparable(want))
        assert ([x for x in g if x not in w], [x for x in w if x not in g]) == ([], [])
        assert g == w  # the same events; workers interleave them
    assert "kernel.drops" in err and "upf-tap live: done" in err
    reported = sum(int(ln.split()[-1]) for ln in err.splitlines() if ln.strip().startswith("events."))
    assert reported == len(got)  # counted once, even when every worker decodes the control plane
    kdrops = [ln.split()[-1] for ln in err.splitlines() if ln.strip().startswith("kernel.drops")]
    assert kdrops == ["0"]


def _raw_pcap(path: str, packets: list[bytes]) -> None:
    """A pcap with linktype RAW (101): what the TUN hands the tap."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for i, p in enumerate(packets):
            f.write(struct.pack("<IIII", 1_790_000_000 + i, 0, len(p), len(p)))
            f.write(p)


def n6_packets() -> list[bytes]:
    ue, srv = "10.45.0.7", "10.200.0.10"
    http = b"GET /api/v1/buy?item=3 HTTP/1.1\r\nHost: shop.mec.local\r\nUser-Agent: ue/1\r\n\r\n"
    return [
        F.ipv4(ue, srv, 17, F.udp(40000, 53, F.dns_query("shop.mec.local"))),
        F.ipv4(ue, srv, 6, F.tcp(40512, 80, flags=0x02, seq=1000)),
        F.ipv4(srv, ue, 6, F.tcp(80, 40512, flags=0x12, seq=5000)),
        F.ipv4(ue, srv, 6, F.tcp(40512, 80, http, flags=0x18, seq=1001)),
        F.ipv4(ue, srv, 1, b"\x08\x00\xf7\xfe\x00\x01\x00\x01" + b"ping"),
        F.ipv6("2001:db8:cafe::7", "2001:db8::10", 17, F.udp(40001, 53, F.dns_query("v6.mec.local"))),
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_n6_on_tun_equals_read(veth_ns, tmp_path, workers: int) -> None:
    packets = n6_packets()
    pcap = str(tmp_path / "n6.pcap")
    _raw_pcap(pcap, packets)
    want = read_events(pcap, "--point", "n6")
    kinds = [json.loads(x)["kind"] for x in want]
    assert {"dns.query", "http.request"} <= set(kinds)
    fd = open_tun(veth_ns)
    try:
        live = start_live(veth_ns, "--iface", "tun0", "--point", "n6", *CONTROL, "--duration", "2",
                          "--workers", str(workers))
        for p in packets:
            os.write(fd, p)
        rc, got, err = live.finish()
    finally:
        os.close(fd)
    assert rc == 0, err
    if workers == 1:
        assert comparable(got) == comparable(want)
    else:
        assert sorted(comparable(got)) == sorted(comparable(want))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_drains_and_exits_0(veth_ns, captures, sig) -> None:
    pcap = str(captures / "synthetic-n3.pcap")
    want = read_events(pcap)
    live = start_live(veth_ns, "--iface", veth_ns.rx, *CONTROL, "--workers", "2")
    veth_ns.replay(pcap, "--topspeed")
    time.sleep(0.5)
    live.p.send_signal(sig)
    rc, got, err = live.finish(timeout=30)
    assert rc == 0, err
    assert sorted(comparable(got)) == sorted(comparable(want))  # flushed, not lost
    assert "upf-tap live: done" in err


def _eth_pcap(path: str, frames: list[bytes]) -> None:
    """A pcap with linktype Ethernet (1), one frame a microsecond."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames):
            f.write(struct.pack("<IIII", 1_790_000_000, i, len(fr), len(fr)))
            f.write(fr)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_with_unbuffered_stdout_full_pipe_loses_nothing(veth_ns, tmp_path, monkeypatch, sig) -> None:
    """Far more output than a pipe holds (~210 KB), a reader that takes a little and then waits,
    and stdout unbuffered (PYTHONUNBUFFERED=1, as the tap's image sets it): the parent is blocked
    in the middle of a write to the full pipe when the signal comes, that write returns short,
    and the rest must still follow (it was dropped: lines cut mid-way and lost)."""
    qnames = [f"host{i:04d}.shop.mec.local" for i in range(400)]  # one dns.query each, ~600 bytes
    frames = [F.eth(F.ipv4("192.168.100.10", "192.168.100.1", 17, F.udp(2152, 2152, F.gtpu(
        0x10000 + i % 8, F.ipv4(f"10.45.0.{2 + i % 8}", "10.200.0.10", 17,
                                F.udp(40000 + i, 53, F.dns_query(q, ident=i))), qfi=1))))
              for i, q in enumerate(qnames)]
    pcap = str(tmp_path / "many-dns.pcap")
    _eth_pcap(pcap, frames)
    want = read_events(pcap)
    assert len(want) == len(qnames) and sum(len(x) + 1 for x in want) > 3 * 65536
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    live = start_live(veth_ns, "--iface", veth_ns.rx, *CONTROL, "--workers", "2", drain_stdout=False)
    assert live.p.stdout is not None
    veth_ns.replay(pcap, "--topspeed")
    time.sleep(0.5)
    # read a little past the text wrapper (not used before finish): the parent, blocked on the
    # full pipe, writes a page more and blocks again in the middle of a write
    head = os.read(live.p.stdout.fileno(), 6000).decode()
    time.sleep(0.3)
    live.p.send_signal(sig)
    rc, rest, err = live.finish(timeout=30)
    assert rc == 0, err
    got = (head + "\n".join(rest)).splitlines()
    assert sorted(comparable(got)) == sorted(comparable(want))  # every line whole, none lost
    assert "upf-tap live: done" in err


def test_output_finishes_short_writes_of_an_unbuffered_stdout(monkeypatch) -> None:
    """_Output on a raw stdout (python -u) whose write() takes at most one page, as a full pipe
    does when a signal interrupts its writer: every byte still goes out, in order."""
    from upf_tap.live.command import _Output

    class ShortPipe(io.RawIOBase):
        def __init__(self) -> None:
            self.got = bytearray()
            self.calls = 0

        def writable(self) -> bool:
            return True

        def write(self, b: ReadableBuffer, /) -> int:
            data = memoryview(b).cast("B")
            n = min(len(data), 4096)
            self.got += data[:n]
            self.calls += 1
            return n

    raw = ShortPipe()
    stdout = io.TextIOWrapper(cast("BinaryIO", raw), encoding="utf-8", newline="\n",
                              write_through=True)  # sys.stdout under -u
    monkeypatch.setattr(sys, "stdout", stdout)
    out = _Output(None)
    lines = [json.dumps({"n": i, "pad": "x" * (600 + i % 50)}) for i in range(300)]
    for k in range(0, len(lines), 13):  # batches, flushed one by one as _run_workers does
        for line in lines[k:k + 13]:
            out.line(line)
        out.flush()
    out.close()
    assert not out.broken and raw.calls > len(lines) // 13
    assert raw.got.decode() == "".join(x + "\n" for x in lines)
    assert not raw.closed and sys.stdout.buffer is raw  # stdout is left usable
    sys.stdout.write("still open\n")
    assert raw.got.endswith(b"still open\n")


def test_detector_receives_the_events(veth_ns, captures, tmp_path) -> None:
    """--detector: NDJSON batches with the bearer token reach a real HTTP server."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    pcap = str(captures / "synthetic-n3.pcap")
    want = read_events(pcap)
    got: list[str] = []
    auth: set[str] = set()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            auth.add(self.headers.get("Authorization", ""))
            got.extend(body.decode().splitlines())
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    with veth_ns.inside():  # the server listens on the namespace's loopback
        srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    try:
        live = start_live(veth_ns, "--iface", veth_ns.rx, *CONTROL, "--duration", "3",
                          "--detector", f"http://127.0.0.1:{srv.server_address[1]}", "--token-file", str(token))
        veth_ns.replay(pcap, "--topspeed")
        rc, out, err = live.finish()
    finally:
        srv.shutdown()
        srv.server_close()
    assert rc == 0, err
    assert out == []  # events go to the detector, not stdout
    assert auth == {"Bearer tok-123"}
    assert comparable(got) == comparable(want)
    assert "sender.sent" in err


def _scrape(port: int) -> dict[str, int]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    metrics = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            metrics[name] = int(value)
    return metrics


def test_metrics_endpoint(veth_ns, captures) -> None:
    pcap = str(captures / "synthetic-n3.pcap")
    with veth_ns.inside():
        port = free_port()
    live = start_live(veth_ns, "--iface", veth_ns.rx, *CONTROL, "--duration", "20", "--metrics-port", str(port),
                      "--metrics-addr", "127.0.0.1")
    veth_ns.replay(pcap, "--topspeed")
    # counters are published once a second, after the frames are decoded: poll, with a deadline
    deadline = time.monotonic() + 15
    with veth_ns.inside():
        while True:
            metrics = _scrape(port)
            if metrics.get('upf_tap_packets_total{iface="rx0"}', 0) >= 811 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    live.p.send_signal(signal.SIGINT)
    rc, _out, err = live.finish()
    assert rc == 0, err
    assert metrics['upf_tap_packets_total{iface="rx0"}'] == 811
    assert metrics['upf_tap_kernel_drops_total{iface="rx0"}'] == 0
    assert metrics['upf_tap_events_total{kind="http.request"}'] == 39
    assert metrics['upf_tap_drops_total{reason="tcp.retransmission"}'] == 8
    assert "upf_tap_flows" in metrics and "upf_tap_sessions" in metrics


@pytest.mark.parametrize(("args", "msg"), [
    (["--iface", "nope0"], "no such interface: nope0"),
    (["--iface", "lo", "--workers", "0"], "--workers must be"),
    (["--iface", "lo", "--detector", "http://127.0.0.1:1"], "--detector needs --token-file"),
    (["--iface", "lo", "--detector", "gopher://x", "--token-file", "/etc/hostname"], "detector URL"),
    (["--iface", "lo", "--detector", "http://127.0.0.1:1", "--token-file", "/nonexistent"], "cannot read token"),
    (["--iface", "lo", "--duration", "-1"], "--duration must be positive"),
    (["--iface", "lo", "--gtpu-port", "0"], "--gtpu-port"),
    (["--iface", "lo", "--identity", "/nonexistent.yaml"], "/nonexistent.yaml"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], msg: str) -> None:
    res = subprocess.run(upf_tap("live", *args), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], res.stderr


def test_without_cap_net_raw_exit_2() -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    nobody = pwd.getpwnam("nobody")
    as_nobody = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                 "--inh-caps=-all"]
    env = {"PYTHONPATH": REPO, "PATH": os.environ.get("PATH", "")}
    # a checkout in a mode-700 folder (a private CI clone) is out of nobody's reach: nothing to test then
    probe = subprocess.run([*as_nobody, PYTHON, "-c", "import upf_tap.cli"], cwd="/", capture_output=True,
                           timeout=60, env=env)
    if probe.returncode != 0:
        pytest.skip("this checkout or its virtualenv is not readable by an unprivileged user here")
    res = subprocess.run([*as_nobody, PYTHON, "-m", "upf_tap", "live", "--iface", "lo"],
                         cwd="/", capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "upf-tap live: capturing needs root or CAP_NET_RAW (e.g. setcap cap_net_raw,cap_net_admin+ep "
        "on the python binary)"]
