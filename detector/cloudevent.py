"""CloudEvents the detector emits (Contract 2), built with the cloudevents SDK 2.x.

`id` is blake2b(AppEvent id, rule) so a redelivery or a replay carries the same id; `time` is
the capture time; `source` follows the scheme in docs/detector.md:
/mec/detector/<detector-id>/ue/<supi-or-ip> (or /mec/detector/<detector-id> without a UE).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any
from urllib.parse import quote

from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from detector.templates import to_text

DATACONTENTTYPE = "application/json"


def ce_id(app_event_id: str, rule: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(app_event_id.encode())
    h.update(b"\x00")
    h.update(rule.encode())
    return h.hexdigest()


def source_uri(detector_id: str, ue_key: str) -> str:
    base = "/mec/detector/" + quote(detector_id, safe="")
    return f"{base}/ue/{quote(ue_key, safe=':@')}" if ue_key else base


def ue_key(ev: dict[str, Any]) -> str:
    """Whom the event belongs to: the SUPI, else the UE's IP, else "" (no UE known)."""
    ue = ev.get("ue")
    if ue:
        if ue.get("supi"):
            return ue["supi"]
        if ue.get("ip"):
            return ue["ip"]
    flow = ev.get("flow")
    if flow and ev.get("point") in ("n3", "n6"):
        d = ev.get("direction")
        if d == "ul":
            return flow.get("src") or ""
        if d == "dl":
            return flow.get("dst") or ""
    return ""


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def standard_extensions(ev: dict[str, Any]) -> dict[str, Any]:
    """supi, ueip, dnn, snssai, qfi, teid, tapid: the ones Triggers filter on, when known."""
    ue = ev.get("ue") or {}
    tun = ev.get("tunnel") or {}
    ext: dict[str, Any] = {}
    for name, v in (("supi", ue.get("supi")), ("ueip", ue.get("ip")), ("dnn", ue.get("dnn")),
                    ("snssai", ue.get("snssai"))):
        if isinstance(v, str) and v:
            ext[name] = v
    for name, v in (("qfi", ue.get("qfi", tun.get("qfi"))), ("teid", ue.get("teid", tun.get("teid")))):
        iv = _int(v)
        if iv is not None:
            ext[name] = iv
    if ev.get("tap"):
        ext["tapid"] = ev["tap"]
    return ext


def ext_value(v: Any) -> Any:
    """Extension values as the spec types them: string, integer or boolean."""
    if isinstance(v, bool | str):
        return v
    iv = _int(v)
    if iv is not None:
        return iv
    return to_text(v)


def build(*, id: str, source: str, type: str, time: datetime | None, subject: str | None, data: Any,
          extensions: dict[str, Any]) -> CloudEvent:
    attrs: dict[str, Any] = {"specversion": "1.0", "id": id, "source": source, "type": type,
                             "datacontenttype": DATACONTENTTYPE}
    if time is not None:
        attrs["time"] = time
    if subject:
        attrs["subject"] = subject
    for k, v in extensions.items():
        if v is not None and v != "":
            attrs[k] = v
    return CloudEvent(attrs, data)


def to_http(event: CloudEvent, structured: bool) -> tuple[dict[str, str], bytes]:
    msg = to_structured_event(event) if structured else to_binary_event(event)
    return msg.headers, msg.body
