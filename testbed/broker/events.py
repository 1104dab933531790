"""CloudEvents over HTTP for the broker: parse what arrives, write what leaves.

Parsing goes through the cloudevents 2.x SDK (`from_http_event`), which validates
attribute names and types. Two SDK habits are undone because the Knative ingress does
not have them: the SDK invents an `id` and a `time` when they are absent, so required
attributes are checked on the raw message first and `time` is only kept when it was
sent (as the original string); and binary-mode data is forwarded as the exact bytes
received instead of being re-encoded.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from cloudevents.core.bindings.http import HTTPMessage, from_http_event

REQUIRED = ("id", "source", "specversion", "type")
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch"


class EventError(ValueError):
    """The HTTP message is not a valid CloudEvent 1.0 (the ingress answers 400)."""


@dataclass
class Event:
    """Context attributes and extensions (str, or int/bool from structured JSON) plus data bytes."""

    attrs: dict[str, Any]
    data: bytes | None = None
    # structured-mode JSON data without datacontenttype: still JSON when written in binary mode
    json_data: bool = field(default=False, repr=False)

    def get(self, name: str) -> Any:
        return self.attrs.get(name)

    def copy(self) -> Event:
        return Event(dict(self.attrs), self.data, self.json_data)


def attr_text(value: Any) -> str:
    """The String form of an attribute value, as filters compare it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def parse_http(headers: Mapping[str, str], body: bytes) -> Event:
    """An Event from an HTTP request or response in binary or structured mode."""
    h = _lower(headers)
    ctype = h.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media.startswith(BATCH):
        raise EventError("batched CloudEvents are not accepted by a Broker or a Channel")
    if media.startswith("application/cloudevents"):
        if media != STRUCTURED:
            raise EventError(f"unsupported event format {media!r}")
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventError(f"structured event is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise EventError("structured event is not a JSON object")
        raw = {k: v for k, v in obj.items() if k not in ("data", "data_base64")}
        _check_required(raw)
        _sdk_validate(headers, body)
        if "data_base64" in obj:
            try:
                data: bytes | None = base64.b64decode(obj["data_base64"], validate=True)
            except (ValueError, TypeError) as exc:
                raise EventError(f"bad data_base64: {exc}") from exc
            return Event(raw, data)
        if "data" in obj:
            dct = str(raw.get("datacontenttype", "application/json"))
            value = obj["data"]
            if isinstance(value, str) and not _is_json_type(dct):
                return Event(raw, value.encode())
            encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
            return Event(raw, encoded, json_data="datacontenttype" not in raw)
        return Event(raw, None)
    if "ce-specversion" not in h:
        raise EventError("not a CloudEvent: no ce-specversion header and not structured mode")
    raw = {k[3:]: unquote(v) for k, v in h.items() if k.startswith("ce-")}
    _check_required(raw)
    _sdk_validate(headers, body)
    if ctype:
        raw["datacontenttype"] = ctype
    return Event(raw, body or None)


def _check_required(raw: Mapping[str, Any]) -> None:
    missing = [name for name in REQUIRED if not isinstance(raw.get(name), str) or not raw.get(name)]
    if missing:
        raise EventError(f"missing required attribute(s): {', '.join(missing)}")
    if raw["specversion"] != "1.0":
        raise EventError(f"unsupported specversion {raw['specversion']!r} (1.0 only)")


def _sdk_validate(headers: Mapping[str, str], body: bytes) -> None:
    # The SDK checks attribute names (lower-case letters and digits) and value types.
    try:
        from_http_event(HTTPMessage(headers=dict(headers), body=body))
    except Exception as exc:  # the SDK raises several types (validation, JSON, base64)
        raise EventError(" ".join(str(exc).split()) or type(exc).__name__) from exc


def _is_json_type(ctype: str) -> bool:
    media = ctype.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json") or media == "text/json"


# HTTP binding §3.1.3.2: space, '"', '%' and anything outside printable ASCII are percent-encoded
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def to_binary(event: Event) -> tuple[dict[str, str], bytes]:
    headers: dict[str, str] = {}
    for name, value in event.attrs.items():
        if name == "datacontenttype":
            headers["Content-Type"] = str(value)
        else:
            headers[f"ce-{name}"] = quote(attr_text(value), safe=_SAFE)
    if "Content-Type" not in headers and event.json_data:
        headers["Content-Type"] = "application/json"
    return headers, event.data or b""


def to_structured(event: Event) -> tuple[dict[str, str], bytes]:
    obj: dict[str, Any] = dict(event.attrs)
    if event.data is not None:
        dct = str(event.attrs.get("datacontenttype", "application/json"))
        try:
            if _is_json_type(dct):
                obj["data"] = json.loads(event.data)
            elif dct.startswith("text/"):
                obj["data"] = event.data.decode()
            else:
                raise ValueError
        except ValueError:
            obj["data_base64"] = base64.b64encode(event.data).decode()
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return {"Content-Type": f"{STRUCTURED}; charset=utf-8"}, body
