"""AppEvent construction: the boundary between parsing and policy (DESIGN.md, Contract 1).

An AppEvent is a plain dict, serialised as one JSON line. Ids are stable: they are a
hash of what the tap saw (capture time, point, kind, tunnel, flow, app fields), so a
replay of the same capture gives the same ids and the detector can dedupe.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

AppEvent = dict[str, Any]


def rfc3339(ts_ns: int) -> str:
    """Capture time in RFC 3339, UTC, microsecond precision."""
    sec, ns = divmod(ts_ns, 1_000_000_000)
    base = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns // 1000:06d}Z"


def stable_id(event: AppEvent, ts_ns: int, seq: int = 0) -> str:
    """A 32-hex-digit id from the event's content and exact capture time.

    ``seq`` separates events that are otherwise identical within one packet.
    """
    body = json.dumps(event, sort_keys=True, separators=(",", ":"), default=str)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{ts_ns}|{seq}|".encode())
    h.update(body.encode())
    return h.hexdigest()


def make_event(
    kind: str,
    ts_ns: int,
    point: str,
    tap: str,
    *,
    direction: str | None = None,
    ue: dict[str, Any] | None = None,
    flow: dict[str, Any] | None = None,
    tunnel: dict[str, Any] | None = None,
    app: dict[str, Any] | None = None,
    seq: int = 0,
) -> AppEvent:
    ev: AppEvent = {"kind": kind, "point": point, "tap": tap}
    if direction is not None:
        ev["direction"] = direction
    if ue:
        ev["ue"] = ue
    if flow is not None:
        ev["flow"] = flow
    if tunnel is not None:
        ev["tunnel"] = tunnel
    if app is not None:
        ev["app"] = app
    ev["time"] = rfc3339(ts_ns)
    ev["id"] = stable_id(ev, ts_ns, seq)
    return ev


def to_json_line(event: AppEvent) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
