"""Small pure pieces: Retry-After, backoff, retryable codes, ids, source URIs, HTTP bindings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from detlib import app_event

from detector.cloudevent import build, ce_id, source_uri, standard_extensions, to_http, ue_key
from detector.config import ConfigError, parse_duration, parse_overrides
from detector.delivery import backoff_delay, is_retryable, retry_after_seconds


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after_seconds("7") == 7.0
    now = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)     # "Fri, 27 Nov 2026 08:00:30 GMT"
    assert retry_after_seconds(later, now=now.timestamp()) == pytest.approx(30.0)
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(earlier, now=now.timestamp()) == 0.0
    for junk in (None, "", "soon", "-3", "1.5"):
        assert retry_after_seconds(junk) is None


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    assert backoff_delay(1, 0.2, 30, lambda: 0.0) == pytest.approx(0.1)
    assert backoff_delay(1, 0.2, 30, lambda: 0.999999) == pytest.approx(0.2, rel=1e-5)
    assert backoff_delay(4, 0.2, 30, lambda: 0.999999) == pytest.approx(1.6, rel=1e-5)
    assert backoff_delay(60, 0.2, 30, lambda: 0.999999) == pytest.approx(30, rel=1e-5)


def test_retryable_codes_are_knatives() -> None:
    assert [c for c in range(100, 600) if is_retryable(c)] == [404, 408, 409, 429, *range(500, 600)]


def test_ids_are_stable_and_distinct_per_rule() -> None:
    a = ce_id("5f0cabcdef", "buy-click")
    assert a == ce_id("5f0cabcdef", "buy-click") and len(a) == 32
    assert a != ce_id("5f0cabcdef", "main-app") and a != ce_id("5f0cabcdee", "buy-click")
    assert ce_id("ab", "c|d") != ce_id("ab|c", "d")


def test_source_uri_and_ue_key() -> None:
    assert source_uri("det 1", "imsi-999700000000001") == "/mec/detector/det%201/ue/imsi-999700000000001"
    assert source_uri("d", "2001:db8:cafe::2") == "/mec/detector/d/ue/2001:db8:cafe::2"
    assert source_uri("d", "") == "/mec/detector/d"
    ev = app_event(1, 1)
    assert ue_key(ev) == "imsi-999700000000001"
    del ev["ue"]["supi"]
    assert ue_key(ev) == "10.45.0.2"
    del ev["ue"]
    assert ue_key(ev) == "10.45.0.2"          # the uplink flow's source
    assert ue_key({"kind": "x.y", "point": "n4"}) == ""


def test_standard_extensions_fall_back_to_the_tunnel() -> None:
    ev = app_event(1, 1)
    del ev["ue"]["qfi"], ev["ue"]["teid"]
    ext = standard_extensions(ev)
    assert ext == {"supi": "imsi-999700000000001", "ueip": "10.45.0.2", "dnn": "internet", "snssai": "1",
                   "qfi": 1, "teid": 0x10001, "tapid": "upf1"}


@pytest.mark.parametrize("structured", [False, True])
def test_binary_and_structured_round_trip(structured: bool) -> None:
    t = datetime(2026, 11, 27, 6, 53, 1, 123456, tzinfo=UTC)
    ce = build(id="i1", source="/s", type="mec.t", time=t, subject="imsi-1", data={"a": [1, "x"]},
               extensions={"qfi": 1, "supi": "imsi-1", "empty": ""})
    headers, body = to_http(ce, structured)
    if structured:
        assert headers == {"content-type": "application/cloudevents+json"}
    else:
        assert headers["content-type"] == "application/json" and headers["ce-time"] == "2026-11-27T06:53:01.123456Z"
    back = from_http_event(HTTPMessage(headers=headers, body=body))
    assert back.get_id() == "i1" and back.get_data() == {"a": [1, "x"]} and back.get_time() == t
    assert back.get_extension("supi") == "imsi-1" and back.get_extension("empty") is None


def test_durations_and_overrides() -> None:
    assert [parse_duration(v, "x") for v in (2, "250ms", "2s", "1.5m", "1h")] == [2.0, 0.25, 2.0, 90.0, 3600.0]
    with pytest.raises(ConfigError):
        parse_duration("-1s", "x")
    assert parse_overrides('{"extensions": {"a": "b", "n": 2}}') == {"a": "b", "n": 2}
    for bad in ('[]', '{"extensions": []}', '{"extensions": {"id": "x"}}', '{"extensions": {"a": {"b": 1}}}'):
        with pytest.raises(ConfigError):
            parse_overrides(bad)
