"""The packaged schema equals the shared one; the fast validator agrees with jsonschema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from detlib import app_event, truth_events
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.schema import check_app_event, load_schema

ORACLE = jsonschema.Draft202012Validator(load_schema())


def test_packaged_schema_is_the_shared_one(shared: Path) -> None:
    shared_schema = json.loads((shared / "schemas" / "app-event.schema.json").read_text())
    assert load_schema() == shared_schema


def test_truth_events_are_valid(captures: Path) -> None:
    evs = truth_events(captures)
    assert len(evs) == 87
    for ev in evs:
        assert ORACLE.is_valid(ev)
        assert check_app_event(ev) is None


BAD: list[tuple[str, Any]] = [
    ("id", "short"), ("id", 12345678), ("kind", "HTTP.request"), ("kind", "http"), ("point", "n5"),
    ("tap", ""), ("direction", "up"), ("ue", []), ("ue.qfi", 64), ("ue.qfi", True), ("ue.teid", -1),
    ("ue.supi", "999700000000001"), ("ue.snssai", "1-00001"), ("ue.ip", None), ("ue.pdu_session_id", 256),
    ("flow.proto", "quic"), ("flow.proto", ["tcp"]), ("flow.sport", 70000), ("flow.src", 1),
    ("tunnel.teid", "1"), ("tunnel.qfi", 1.5), ("app", "x"), ("app.method", "<del>"), ("flow", "<del>"),
    ("direction", "<del>"), ("time", "<del>"), ("tunnel.dst", "<del>"),
]


def _set(ev: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    ev = copy.deepcopy(ev)
    *parents, last = path.split(".")
    d = ev
    for p in parents:
        d = d[p]
    if value == "<del>":
        del d[last]
    else:
        d[last] = value
    return ev


@pytest.mark.parametrize(("path", "value"), BAD)
def test_invalid_events_are_refused_by_both(path: str, value: Any) -> None:
    ev = _set(app_event(1, 1), path, value)
    reason = check_app_event(ev)
    if path != "time":  # jsonschema ignores "format" unless asked; our check parses the time
        assert not ORACLE.is_valid(ev), path
    assert reason is not None
    assert reason.split(":")[0].split(" ")[0] in (path, path.split(".")[0], "app." + path.split(".")[-1]), reason


def test_bad_time_refused() -> None:
    for t in ("yesterday", "2026-11-27T06:53:01", "2026-11-27 06:53", "2026-13-01T00:00:00Z"):
        assert check_app_event(_set(app_event(1, 1), "time", t)) is not None
    assert check_app_event(_set(app_event(1, 1), "time", "2026-11-27T06:53:01.5+02:00")) is None


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=False),
                    st.sampled_from(["", "ul", "dl", "tcp", "udp", "n3", "n9", "imsi-1", "1-00000a", "1",
                                     "http.request", "dns.query", "x.y", "abcdefgh"]))
FIELDS = ["id", "kind", "point", "tap", "direction", "ue.ip", "ue.teid", "ue.qfi", "ue.supi", "ue.dnn",
          "ue.snssai", "ue.pdu_session_id", "flow.proto", "flow.src", "flow.sport", "flow.dst", "flow.dport",
          "tunnel.src", "tunnel.teid", "tunnel.qfi", "app.method", "app.host", "app.path", "app.qname",
          "app.qtype", "app.sni", "app.topic", "app.uri_path"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FIELDS), st.one_of(scalars, st.just("<del>"))), max_size=4),
       st.sampled_from(["http.request", "dns.query", "tls.client_hello", "quic.initial", "mqtt.publish",
                        "coap.request", "flow.start", "session.up"]))
def test_agrees_with_jsonschema(mutations: list[tuple[str, Any]], kind: str) -> None:
    ev = app_event(2, 3, kind=kind, app={})
    for path, value in mutations:
        try:
            ev = _set(ev, path, value)
        except (KeyError, TypeError):
            pass
    assert (check_app_event(ev) is None) == ORACLE.is_valid(ev), (ev, check_app_event(ev))
