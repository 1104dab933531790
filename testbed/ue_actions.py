"""A UE's actions in the main application, run inside the UE's network namespace.

    ip netns exec mec0-ue1 python -m testbed.ue_actions < plan.json

The plan is one JSON object: ``{"start": <epoch seconds>, "actions": [{"at": <offset s>,
"http"|"dns"|"mqtt"|"ping": {...}}, ...]}``. Every action runs at ``start + at`` (in order)
and prints one JSON line: the index, the kind, ``t_send`` (wall clock just before the
request leaves the UE), ``t_done``, ``ok`` and an ``error`` when it failed. Plain sockets
only, so that what the tap sees is what the UE sent (no library retries or extra lookups).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from testbed.sim.uetools import echo_request

TIMEOUT = 5.0


def _resolve(host: str) -> str:
    try:
        socket.inet_pton(socket.AF_INET, host)
        return host
    except OSError:
        return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])


def do_http(spec: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    url = urlsplit(spec["url"])
    host = url.hostname or ""
    port = url.port or 80
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    body = spec.get("body", "").encode()
    method = spec.get("method", "GET").upper()
    head = [f"{method} {target} HTTP/1.1", f"Host: {url.netloc}", "User-Agent: mec-ue/1.0",
            "Connection: close"]
    if body or method in ("POST", "PUT", "PATCH"):
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    addr = spec.get("ip") or _resolve(host)
    with socket.create_connection((addr, port), timeout=TIMEOUT) as s:
        t_send = time.time()
        s.sendall(request)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    return t_send, {"status": status, "ok": 200 <= status < 400}


def _dns_query(name: str, qtype: int, qid: int) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def _resolver() -> str:
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1]
    except OSError:
        pass
    return "127.0.0.53"


def do_dns(spec: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    qid = os.getpid() & 0xFFFF
    server = spec.get("server") or _resolver()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        t_send = time.time()
        s.sendto(_dns_query(spec["qname"], int(spec.get("qtype", 1)), qid), (server, 53))
        data, _ = s.recvfrom(4096)
    rcode = data[3] & 0x0F if len(data) >= 4 else -1
    answers = struct.unpack_from("!H", data, 6)[0] if len(data) >= 8 else 0
    return t_send, {"rcode": rcode, "answers": answers, "ok": rcode == 0}


def _mqtt_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _mqtt_packet(first: int, body: bytes) -> bytes:
    n, out = len(body), bytearray([first])
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + body


def do_mqtt(spec: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """MQTT 3.1.1: CONNECT, wait for CONNACK, PUBLISH (QoS 0 or 1), DISCONNECT."""
    host = spec.get("ip") or _resolve(spec.get("host", "mqtt.mec.local"))
    qos = int(spec.get("qos", 0))
    client_id = spec.get("client_id") or f"ue-{os.getpid()}"
    connect = _mqtt_packet(0x10, _mqtt_str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30) + _mqtt_str(client_id))
    payload = str(spec.get("message", "")).encode()
    pub_body = _mqtt_str(spec["topic"]) + (struct.pack("!H", 1) if qos else b"") + payload
    publish = _mqtt_packet(0x30 | (qos << 1) | (1 if spec.get("retain") else 0), pub_body)
    with socket.create_connection((host, int(spec.get("port", 1883))), timeout=TIMEOUT) as s:
        s.sendall(connect)
        connack = s.recv(4)
        if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
            return time.time(), {"ok": False, "error": f"CONNACK refused: {connack.hex()}"}
        t_send = time.time()
        s.sendall(publish)
        if qos:
            s.recv(4)  # PUBACK
        s.sendall(b"\xe0\x00")
    return t_send, {"ok": True}


def do_ping(spec: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    host = _resolve(spec["host"])
    ident, seq = os.getpid() & 0xFFFF, int(spec.get("seq", 1))
    packet = echo_request(ident, seq, int(spec.get("size", 56)))
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(TIMEOUT)
        t_send = time.time()
        s.sendto(packet, (host, 0))
        while True:
            data, _ = s.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            if data[ihl] == 0 and struct.unpack_from("!HH", data, ihl + 4) == (ident, seq):
                return t_send, {"ok": True}


ACTIONS = {"http": do_http, "dns": do_dns, "mqtt": do_mqtt, "ping": do_ping}


def run(plan: dict[str, Any], out: Any = sys.stdout) -> int:
    start = float(plan.get("start", time.time()))
    failures = 0
    for i, action in enumerate(plan.get("actions", [])):
        kind = next((k for k in ACTIONS if k in action), None)
        record: dict[str, Any] = {"i": i, "kind": kind, "tag": action.get("tag")}
        delay = start + float(action.get("at", 0)) - time.time()
        if delay > 0:
            time.sleep(delay)
        if kind is None:
            record.update(ok=False, error=f"unknown action {sorted(action)}")
        else:
            try:
                t_send, result = ACTIONS[kind](action[kind])
                record.update(t_send=t_send, **result)
            except (OSError, ValueError, KeyError, IndexError) as e:
                record.update(ok=False, error=f"{type(e).__name__}: {e}")
        record["t_done"] = time.time()
        failures += not record.get("ok")
        out.write(json.dumps(record) + "\n")
        out.flush()
    return 1 if failures else 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        plan = json.load(sys.stdin)
    except json.JSONDecodeError as e:
        print(f"ue_actions: the plan on stdin is not JSON: {e}", file=sys.stderr)
        return 2
    return run(plan)


if __name__ == "__main__":
    sys.exit(main())
