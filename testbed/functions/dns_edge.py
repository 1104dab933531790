"""dns_edge: a UE looked up a MEC service name; warm the edge cache for it.

Input: a DNS-query event: the name is `data.app.qname` (a `dns.query` AppEvent), else
`data.qname`, else the subject. "Warming" is recorded in edge-cache.jsonl (one line
per name, the first time) and counted in lookups.jsonl (every lookup). The first
lookup of a name replies `mec.edge.warmed`; later lookups of a warm name reply nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from testbed.functions.store import append_jsonl, append_once
from testbed.functions.warmup import is_warmup

CACHE = "edge-cache.jsonl"
LOOKUPS = "lookups.jsonl"
REPLY_TYPE = "mec.edge.warmed"
REPLY_SOURCE = "/mec/functions/dns-edge"


def _qname(event: dict[str, Any]) -> str | None:
    data = event.get("data")
    if isinstance(data, dict):
        app = data.get("app")
        if isinstance(app, dict) and app.get("qname"):
            return str(app["qname"])
        if data.get("qname"):
            return str(data["qname"])
    subject = event["attributes"].get("subject")
    return str(subject) if subject else None


def handle(event: dict[str, Any]) -> dict[str, Any] | None:
    if is_warmup(event):   # pre-warm after a move: no lookup counted, no name warmed
        return None
    attrs = event["attributes"]
    qname = _qname(event)
    if not qname:
        raise ValueError("the event names no DNS query (data.app.qname, data.qname or subject)")
    qname = qname.rstrip(".").lower()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    supi = attrs.get("supi")
    append_jsonl(LOOKUPS, {"qname": qname, "supi": supi, "event_id": attrs["id"], "at": now})
    entry = {"qname": qname, "warmed_at": now, "warmed_for": supi, "event_id": attrs["id"]}
    if not append_once(CACHE, "qname", entry):
        return None
    reply: dict[str, Any] = {"specversion": "1.0", "id": f"warm-{attrs['id']}", "source": REPLY_SOURCE,
                             "type": REPLY_TYPE, "subject": qname}
    if supi:
        reply["supi"] = str(supi)
    return {"attributes": reply, "data": entry}
