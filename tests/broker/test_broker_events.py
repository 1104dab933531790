"""The broker's CloudEvents codec: what arrives is forwarded without additions or loss."""

from __future__ import annotations

import base64
import json

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from testbed.broker.events import Event, EventError, parse_http, to_binary, to_structured

REQ = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}


def test_binary_keeps_time_text_and_data_bytes() -> None:
    body = b'{"b": 1,   "a": [1, 2]}'
    ev = parse_http({**REQ, "ce-time": "2026-11-27T06:53:01.123456+02:00", "Content-Type": "application/json"}, body)
    assert ev.attrs["time"] == "2026-11-27T06:53:01.123456+02:00"
    assert ev.data == body                                            # not re-encoded
    headers, out = to_binary(ev)
    assert out == body and headers["ce-time"] == "2026-11-27T06:53:01.123456+02:00"
    assert headers["Content-Type"] == "application/json"


def test_nothing_is_invented() -> None:
    ev = parse_http(REQ, b"")
    assert set(ev.attrs) == {"specversion", "id", "source", "type"} and ev.data is None
    with pytest.raises(EventError, match="missing required attribute"):
        parse_http({k: v for k, v in REQ.items() if k != "ce-id"}, b"")  # the SDK would make up an id


def test_percent_encoding_round_trip() -> None:
    value = 'héllo "world" 100% ✓'
    ev = Event({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "note": value})
    headers, _ = to_binary(ev)
    assert headers["ce-note"].isascii() and " " not in headers["ce-note"]
    assert parse_http(headers, b"").attrs["note"] == value
    # an independent decoder (the SDK) agrees
    assert from_http_event(HTTPMessage(headers, b"")).get_extension("note") == value


def test_structured_round_trips() -> None:
    obj = {"specversion": "1.0", "id": "9", "source": "/s", "type": "t", "count": 3, "flag": True,
           "data": {"x": [1, 2]}}
    ev = parse_http({"Content-Type": "application/cloudevents+json"}, json.dumps(obj).encode())
    assert ev.attrs["count"] == 3 and ev.attrs["flag"] is True
    headers, body = to_binary(ev)
    assert headers["Content-Type"] == "application/json" and json.loads(body) == {"x": [1, 2]}
    assert headers["ce-flag"] == "true"
    sh, sb = to_structured(ev)
    assert json.loads(sb) == obj and sh["Content-Type"].startswith("application/cloudevents+json")
    raw = {"specversion": "1.0", "id": "b", "source": "/s", "type": "t", "datacontenttype": "application/octet-stream",
           "data_base64": base64.b64encode(b"\x00\xff").decode()}
    ev = parse_http({"Content-Type": "application/cloudevents+json"}, json.dumps(raw).encode())
    assert ev.data == b"\x00\xff"
    assert json.loads(to_structured(ev)[1])["data_base64"] == raw["data_base64"]


@pytest.mark.parametrize(("headers", "body", "reason"), [
    ({"Content-Type": "text/plain"}, b"hi", "not a CloudEvent"),
    ({**REQ, "ce-specversion": "0.3"}, b"", "unsupported specversion"),
    ({"Content-Type": "application/cloudevents+json"}, b"[1]", "not a JSON object"),
    ({"Content-Type": "application/cloudevents+xml"}, b"<e/>", "unsupported event format"),
    ({"Content-Type": "application/cloudevents+json"},
     b'{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"@@"}', "data_base64"),
    ({**REQ, "ce-UPPER_case": "x"}, b"", "lowercase"),
])
def test_invalid_events_are_refused_with_a_reason(headers: dict[str, str], body: bytes, reason: str) -> None:
    with pytest.raises(EventError, match=reason):
        parse_http(headers, body)
