"""The DN services as shipped in compose/: the main application and the DNS config, run for real."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mec_common.ports import free_port as _free_port
from testbed.lab import layout as L

APP = L.COMPOSE_DIR / "dn/app.py"


def free_port() -> int:
    return _free_port()


def free_dns_port() -> int:
    """A port free for both UDP and TCP: dnsmasq binds both and exits if either is taken."""
    return _free_port((socket.SOCK_DGRAM, socket.SOCK_STREAM))


@pytest.fixture
def app() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(APP), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()           # printed once the socket is bound
    assert "listening" in line, proc.stderr.read() if proc.stderr else line
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def call(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=body, headers={"Host": L.APP_HOST})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_main_application_buttons(app: str) -> None:
    assert call(f"{app}/healthz") == (200, b"ok\n")
    code, page = call(f"{app}/")
    assert code == 200 and b'action="/api/v1/buy?item=3"' in page
    code, body = call(f"{app}/api/v1/buy?item=3", "POST", b"")
    assert code == 200
    order = json.loads(body)
    assert order["ok"] is True and order["item"] == 3 and order["order"] >= 1
    code, body = call(f"{app}/api/v1/click?button=like", "POST", b"x=1")
    assert code == 200 and json.loads(body)["button"] == "like"


def test_main_application_refuses_bad_requests(app: str) -> None:
    assert call(f"{app}/api/v1/buy?item=99", "POST", b"")[0] == 400
    assert call(f"{app}/api/v1/buy?item=abc", "POST", b"")[0] == 400
    assert call(f"{app}/api/v1/click", "POST", b"")[0] == 400
    assert call(f"{app}/nowhere")[0] == 404
    assert call(f"{app}/api/v1/nothing", "POST", b"")[0] == 404


def test_main_application_bad_listen_argument() -> None:
    p = subprocess.run([sys.executable, str(APP), "--listen", "nonsense"], capture_output=True, text=True)
    assert p.returncode == 2 and "HOST:PORT" in p.stderr


def dns_query(name: str, port: int, qid: int = 0x1234, timeout: float = 3.0) -> tuple[int, list[str]]:
    """rcode and A records of a plain UDP query (hand-built, RFC 1035)."""
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, ("127.0.0.1", port))
        data = s.recv(512)
    rid, flags, _, ancount, _, _ = struct.unpack_from("!HHHHHH", data)
    assert rid == qid
    off = len(q)          # the question is echoed back unchanged
    addrs = []
    for _ in range(ancount):
        if data[off] & 0xC0 == 0xC0:
            off += 2
        else:
            while data[off]:
                off += data[off] + 1
            off += 1
        rtype, _, _, rdlen = struct.unpack_from("!HHIH", data, off)
        off += 10
        if rtype == 1:
            addrs.append(socket.inet_ntoa(data[off:off + 4]))
        off += rdlen
    return flags & 0xF, addrs


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq (Debian dnsmasq-base) not installed")
def test_dn_dns_answers_the_lab_names(tmp_path: Path) -> None:
    conf = L.COMPOSE_DIR / "dn/dnsmasq.conf"
    port = free_dns_port()
    argv = ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", f"--port={port}",
            "--listen-address=127.0.0.1", "--bind-interfaces", f"--pid-file={tmp_path}/pid"]
    if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0:
        argv.append("--user=root")    # no privilege drop to a user that may not exist here
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(50):
            try:
                rcode, addrs = dns_query(L.APP_HOST, port, timeout=0.2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"dnsmasq exited with {proc.returncode}: {proc.communicate()[0].strip()}")
                time.sleep(0.1)
        else:
            pytest.fail("dnsmasq did not answer")
        assert (rcode, addrs) == (0, [L.ADDR["app"]["n6"]])
        assert dns_query(f"mqtt.{L.DN_DOMAIN}", port) == (0, [L.ADDR["mqtt"]["n6"]])
        rcode, addrs = dns_query(f"nothing.{L.DN_DOMAIN}", port)
        assert rcode == 3 and addrs == []          # NXDOMAIN for other lab names
    finally:
        proc.terminate()
        proc.wait(timeout=10)
