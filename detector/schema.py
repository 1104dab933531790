"""AppEvent validation (Contract 1): a hand-written check equal to app-event.schema.json.

jsonschema needs about 300 µs per event here, too slow for the ingest path; this check does
the same constraints in a few µs. tests/detector/test_schema.py keeps the two in agreement
(jsonschema is the oracle there). On top of the schema, `time` must parse as RFC 3339 because
it becomes the CloudEvent's `time`.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from importlib import resources
from typing import Any

_KIND = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
_SUPI = re.compile(r"^(imsi|nai)-.+$")
_SNSSAI = re.compile(r"^[0-9]{1,3}(-[0-9a-fA-F]{6})?$")
_POINTS = frozenset({"n2", "n3", "n4", "n6", "n9"})
_PROTOS = frozenset({"tcp", "udp", "icmp", "icmpv6", "sctp", "other"})
# kind -> app fields it must carry (the schema's allOf/if/then)
_KIND_APP = {
    "http.request": ("method", "host", "path"),
    "dns.query": ("qname", "qtype"),
    "tls.client_hello": ("sni",),
    "quic.initial": ("sni",),
    "mqtt.publish": ("topic",),
    "coap.request": ("method", "uri_path"),
}


def load_schema() -> dict[str, Any]:
    """The packaged copy of the shared AppEvent schema."""
    text = resources.files("detector").joinpath("app-event.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _is_int(v: Any) -> bool:
    # JSON Schema's "integer" admits 1.0 but never a boolean
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _int_in(v: Any, lo: int, hi: int) -> bool:
    return _is_int(v) and lo <= v <= hi


def parse_time(value: str) -> datetime | None:
    """RFC 3339 with a zone (Z or offset) -> aware datetime, else None."""
    if len(value) < 20 or value[10] not in "Tt ":
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def _check_ue(ue: Any) -> str | None:
    if not isinstance(ue, dict):
        return "ue: must be an object"
    v = ue.get("ip")
    if v is not None and not isinstance(v, str):
        return "ue.ip: must be a string"
    if "ip" in ue and v is None:
        return "ue.ip: must be a string"
    for name, hi in (("teid", 4294967295), ("qfi", 63), ("pdu_session_id", 255)):
        if name in ue and not _int_in(ue[name], 0, hi):
            return f"ue.{name}: must be an integer 0..{hi}"
    if "supi" in ue and not (isinstance(ue["supi"], str) and _SUPI.search(ue["supi"])):
        return "ue.supi: must look like imsi-… or nai-…"
    if "dnn" in ue and not isinstance(ue["dnn"], str):
        return "ue.dnn: must be a string"
    if "snssai" in ue and not (isinstance(ue["snssai"], str) and _SNSSAI.search(ue["snssai"])):
        return "ue.snssai: must be <sst> or <sst>-<6 hex digits>"
    return None


def _check_flow(flow: Any) -> str | None:
    if not isinstance(flow, dict):
        return "flow: must be an object"
    for name in ("proto", "src", "dst"):
        if name not in flow:
            return f"flow.{name}: required"
    if not isinstance(flow["proto"], str) or flow["proto"] not in _PROTOS:
        return f"flow.proto: must be one of {', '.join(sorted(_PROTOS))}"
    for name in ("src", "dst"):
        if not isinstance(flow[name], str):
            return f"flow.{name}: must be a string"
    for name in ("sport", "dport"):
        if name in flow and not _int_in(flow[name], 0, 65535):
            return f"flow.{name}: must be an integer 0..65535"
    return None


def _check_tunnel(tun: Any) -> str | None:
    if not isinstance(tun, dict):
        return "tunnel: must be an object"
    for name in ("src", "dst", "teid"):
        if name not in tun:
            return f"tunnel.{name}: required"
    for name in ("src", "dst"):
        if not isinstance(tun[name], str):
            return f"tunnel.{name}: must be a string"
    if not _int_in(tun["teid"], 0, 4294967295):
        return "tunnel.teid: must be an integer 0..4294967295"
    if "qfi" in tun and not _int_in(tun["qfi"], 0, 63):
        return "tunnel.qfi: must be an integer 0..63"
    return None


def check_app_event(ev: Any) -> str | None:
    """None when `ev` is a valid AppEvent, else a short reason naming the field."""
    if not isinstance(ev, dict):
        return "not a JSON object"
    for name in ("id", "time", "kind", "point", "tap"):
        if name not in ev:
            return f"{name}: required"
    if not isinstance(ev["id"], str) or len(ev["id"]) < 8:
        return "id: must be a string of at least 8 characters"
    if not isinstance(ev["time"], str) or parse_time(ev["time"]) is None:
        return "time: must be an RFC 3339 date-time with a zone"
    kind = ev["kind"]
    if not isinstance(kind, str) or not _KIND.search(kind):
        return "kind: must look like family.name (lower-case, dotted)"
    if not isinstance(ev["point"], str) or ev["point"] not in _POINTS:
        return "point: must be one of n2, n3, n4, n6, n9"
    if not isinstance(ev["tap"], str) or not ev["tap"]:
        return "tap: must be a non-empty string"
    if "direction" in ev and ev["direction"] not in ("ul", "dl"):
        return "direction: must be ul or dl"
    for name, check in (("ue", _check_ue), ("flow", _check_flow), ("tunnel", _check_tunnel)):
        if name in ev:
            reason = check(ev[name])
            if reason:
                return reason
    if "app" in ev and not isinstance(ev["app"], dict):
        return "app: must be an object"
    needed = _KIND_APP.get(kind)
    if needed is not None:
        for name in ("app", "flow", "direction"):
            if name not in ev:
                return f"{name}: required for kind {kind}"
        for name in needed:
            if name not in ev["app"]:
                return f"app.{name}: required for kind {kind}"
    return None
