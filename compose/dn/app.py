"""The DN's "main application": a tiny shop a UE uses over N6 (stdlib only, runs in python:slim).

The UE's clicks are plain HTTP so the tap can see them: ``POST /api/v1/buy?item=N``,
``POST /api/v1/click?button=NAME``, ``GET /api/v1/items``; ``GET /`` is a page with the
buttons; ``GET /healthz`` for the container health check. Every answer is small JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ITEMS = {1: "edge-coffee", 2: "ar-headset", 3: "drone-ride", 4: "cloud-gaming-pass"}
MAX_BODY = 64 * 1024
_orders = itertools.count(1)

PAGE = """<!doctype html><title>MEC shop</title><h1>MEC shop</h1>
{buttons}
<form method="post" action="/api/v1/click?button=like"><button>like</button></form>
"""


class Shop(BaseHTTPRequestHandler):
    server_version = "mec-shop/1"

    def _send(self, code: int, body: dict[str, object] | str, ctype: str = "application/json") -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _drain_body(self) -> bool:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._send(400, {"error": "bad Content-Length"})
            return False
        if length < 0 or length > MAX_BODY:
            self._send(413, {"error": f"body over {MAX_BODY} bytes"})
            return False
        self.rfile.read(length)
        return True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._send(200, "ok\n", "text/plain")
        elif url.path == "/":
            buttons = "\n".join(
                f'<form method="post" action="/api/v1/buy?item={i}"><button>buy {name}</button></form>'
                for i, name in ITEMS.items())
            self._send(200, PAGE.format(buttons=buttons), "text/html; charset=utf-8")
        elif url.path == "/api/v1/items":
            self._send(200, {"items": [{"id": i, "name": n} for i, n in ITEMS.items()]})
        else:
            self._send(404, {"error": f"no such page: {url.path}"})

    def do_POST(self) -> None:
        if not self._drain_body():
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/api/v1/buy":
            raw = (query.get("item") or [""])[0]
            if not raw.isdigit() or int(raw) not in ITEMS:
                self._send(400, {"error": f"unknown item {raw!r}", "items": sorted(ITEMS)})
                return
            item = int(raw)
            self._send(200, {"ok": True, "order": next(_orders), "item": item, "name": ITEMS[item]})
        elif url.path == "/api/v1/click":
            button = (query.get("button") or [""])[0]
            if not button:
                self._send(400, {"error": "button= is required"})
                return
            self._send(200, {"ok": True, "button": button})
        else:
            self._send(404, {"error": f"no such action: {url.path}"})

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.client_address[0]} {format % args}\n")
        sys.stdout.flush()


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, not {text!r}")
    return host or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="app.py", description="The MEC lab's main application (DN, N6).")
    ap.add_argument("--listen", type=parse_listen, default=("0.0.0.0", 80), metavar="HOST:PORT",
                    help="address to serve on (default 0.0.0.0:80)")
    args = ap.parse_args(argv)
    try:
        httpd = ThreadingHTTPServer(args.listen, Shop)
    except OSError as e:
        print(f"app.py: cannot listen on {args.listen[0]}:{args.listen[1]}: {e.strerror}", file=sys.stderr)
        return 1
    host, port = httpd.server_address[:2]
    print(f"mec shop listening on {host}:{port}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
