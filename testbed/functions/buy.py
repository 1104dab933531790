"""buy: a UE pressed "buy" in the main application; record the order, reply with it.

Input: any event whose data says what was bought: `data.item`, or the `item` query
parameter of `data.app.path` (an `http.request` AppEvent: POST /api/v1/buy?item=3).
The buyer is the `supi` extension, else the subject, else `data.ue.supi`.
Output: one line in orders.jsonl and a `mec.order.created` reply. The order id comes
from the event's source and id, so a redelivered event (Knative delivers at least
once) gives the same order and is recorded once.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from testbed.functions.store import append_once
from testbed.functions.warmup import is_warmup

ORDERS = "orders.jsonl"
REPLY_TYPE = "mec.order.created"
REPLY_SOURCE = "/mec/functions/buy"


def _item(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if data.get("item") is not None:
        return str(data["item"])
    app = data.get("app")
    path = app.get("path") if isinstance(app, dict) else None
    if isinstance(path, str):
        values = parse_qs(urlsplit(path).query).get("item")
        if values:
            return values[0]
    return None


def handle(event: dict[str, Any]) -> dict[str, Any] | None:
    if is_warmup(event):   # pre-warm after a move: scaled up, nothing bought
        return None
    attrs = event["attributes"]
    data = event.get("data")
    ue: dict[str, Any] = data["ue"] if isinstance(data, dict) and isinstance(data.get("ue"), dict) else {}
    supi = attrs.get("supi") or attrs.get("subject") or ue.get("supi")
    order_id = hashlib.sha256(f"{attrs['source']}\n{attrs['id']}".encode()).hexdigest()[:16]
    order = {
        "order_id": order_id,
        "item": _item(data),
        "supi": supi,
        "ue_ip": attrs.get("ueip") or ue.get("ip"),
        "event_id": attrs["id"],
        "event_source": attrs["source"],
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    append_once(ORDERS, "order_id", order)
    reply: dict[str, Any] = {"specversion": "1.0", "id": f"order-{order_id}", "source": REPLY_SOURCE,
                             "type": REPLY_TYPE}
    if supi:
        reply["subject"] = str(supi)
        reply["supi"] = str(supi)
    return {"attributes": reply, "data": order}
