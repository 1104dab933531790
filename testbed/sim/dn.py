"""The DN side of the sim lab: the "main application", plus how to run DNS and MQTT there.

The main application is a small shop (aiohttp): a page with buttons, a JSON API, and
a record of who called what (the client address is the UE's address, since the
user plane carries it untouched). Every call is appended as one JSON line to the
calls file so the lab and tests can check what reached the application.

DNS is dnsmasq answering *.mec.local; MQTT is mosquitto. Both are Debian binaries
the lab starts in the DN namespace with the arguments and config built here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from testbed.sim.topology import DN_DOMAIN, DNS_IP, MQTT_BROKER_PORT, MQTT_HOST, MQTT_IP, SHOP_IP, SHOP_PORT

ITEMS = [
    {"id": 1, "name": "coffee", "price": 3},
    {"id": 2, "name": "sandwich", "price": 6},
    {"id": 3, "name": "ticket", "price": 12},
    {"id": 4, "name": "charger", "price": 20},
]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>MEC shop</title></head>
<body><h1>MEC shop</h1>
<p>Each button is a UE action: POST /api/v1/buy?item=N.</p>
{buttons}
</body></html>
"""

CALLS_KEY: web.AppKey[Path | None] = web.AppKey("calls")
ORDERS_KEY: web.AppKey[list[dict[str, Any]]] = web.AppKey("orders")


def _record(request: web.Request, status: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    call = {"time": time.time(), "client": request.remote, "method": request.method,
            "path": request.path_qs, "host": request.host, "status": status,
            "user_agent": request.headers.get("User-Agent")}
    if extra:
        call.update(extra)
    path = request.app[CALLS_KEY]
    if path is not None:
        with path.open("a") as f:
            f.write(json.dumps(call) + "\n")
    return call


async def index(request: web.Request) -> web.Response:
    buttons = "\n".join(
        f'<form method="post" action="/api/v1/buy?item={it["id"]}"><button>Buy {it["name"]} '
        f'({it["price"]} EUR)</button></form>' for it in ITEMS)
    _record(request, 200)
    return web.Response(text=PAGE.format(buttons=buttons), content_type="text/html")


async def items(request: web.Request) -> web.Response:
    _record(request, 200)
    return web.json_response({"items": ITEMS})


async def buy(request: web.Request) -> web.Response:
    raw = request.query.get("item", "")
    item = next((it for it in ITEMS if raw.isdigit() and it["id"] == int(raw)), None)
    if item is None:
        _record(request, 400)
        return web.json_response({"error": f"unknown item {raw!r}"}, status=400)
    orders = request.app[ORDERS_KEY]
    order = {"order": len(orders) + 1, "item": item["id"], "name": item["name"], "client": request.remote}
    orders.append(order)
    _record(request, 200, {"order": order["order"], "item": item["id"]})
    return web.json_response({"ok": True, **order})


async def calls(request: web.Request) -> web.Response:
    return web.json_response({"orders": request.app[ORDERS_KEY]})


def make_app(calls_path: Path | None = None) -> web.Application:
    app = web.Application()
    app[CALLS_KEY] = calls_path
    app[ORDERS_KEY] = []
    app.router.add_get("/", index)
    app.router.add_get("/api/v1/items", items)
    app.router.add_post("/api/v1/buy", buy)
    app.router.add_get("/api/v1/orders", calls)
    return app


def dnsmasq_argv(pid_file: Path, log_file: Path) -> list[str]:
    """dnsmasq answering *.mec.local (mqtt.mec.local -> the broker, the rest -> the shop), nothing else."""
    return [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--no-poll", f"--listen-address={DNS_IP}", "--bind-interfaces", "--port=53",
        f"--address=/{DN_DOMAIN}/{SHOP_IP}", f"--address=/{MQTT_HOST}/{MQTT_IP}",
        f"--local=/{DN_DOMAIN}/",   # AAAA and other types: NODATA, not REFUSED
        "--user=root", f"--pid-file={pid_file}", "--log-queries", f"--log-facility={log_file}",
    ]


def mosquitto_config(log_file: Path) -> str:
    return (
        "# sim lab MQTT broker (written by testbed.sim)\n"
        "user root\n"   # stay root: the state directory (log, config) is root's
        "per_listener_settings false\n"
        f"listener {MQTT_BROKER_PORT} {MQTT_IP}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        f"log_dest file {log_file}\n"
        "log_type all\n"
        "connection_messages true\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.sim.dn",
                                 description="The sim lab's main application (run it in the DN namespace).")
    ap.add_argument("--host", default=SHOP_IP, help="address to listen on (default %(default)s)")
    ap.add_argument("--port", type=int, default=SHOP_PORT, help="TCP port (default %(default)s)")
    ap.add_argument("--calls", type=Path, help="append one JSON line per call to this file")
    args = ap.parse_args(argv)
    try:
        web.run_app(make_app(args.calls), host=args.host, port=args.port, print=None, access_log=None)
    except OSError as e:
        print(f"dn: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
