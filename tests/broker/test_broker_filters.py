"""Trigger filter semantics, dialect by dialect (Knative eventing 1.22 broker-filter)."""

from __future__ import annotations

from typing import Any

import pytest

from testbed.broker.filters import FAIL, NO_FILTER, PASS, build_filter, legacy_filter, passes, trigger_filter
from testbed.broker.manifests import Destination, Trigger

EV = {
    "specversion": "1.0", "id": "1", "source": "/detector/ue/1", "type": "mec.upf.dns.query",
    "subject": "video.mec.local", "supi": "imsi-999700000000001", "qfi": "9", "flag": True, "empty": "",
}


@pytest.mark.parametrize(("entry", "expected"), [
    ({"exact": {"type": "mec.upf.dns.query"}}, PASS),
    ({"exact": {"type": "mec.upf.dns"}}, FAIL),
    ({"exact": {"type": "MEC.UPF.DNS.QUERY"}}, FAIL),                        # case-sensitive
    ({"exact": {"type": "mec.upf.dns.query", "qfi": "9"}}, PASS),            # several keys: AND
    ({"exact": {"type": "mec.upf.dns.query", "qfi": "8"}}, FAIL),
    ({"exact": {"dnn": "internet"}}, FAIL),                                  # missing attribute
    ({"exact": {"flag": "true"}}, PASS),                                     # non-string as String
    ({"exact": {"type": ""}}, NO_FILTER),                                    # Knative cannot build it
    ({"prefix": {"type": "mec.upf."}}, PASS),
    ({"prefix": {"type": "mec.app."}}, FAIL),
    ({"prefix": {"dnn": "i"}}, FAIL),
    ({"suffix": {"subject": ".mec.local"}}, PASS),
    ({"suffix": {"subject": ".mec.local."}}, FAIL),
    ({"all": [{"prefix": {"type": "mec."}}, {"exact": {"qfi": "9"}}]}, PASS),
    ({"all": [{"prefix": {"type": "mec."}}, {"exact": {"qfi": "1"}}]}, FAIL),
    ({"all": []}, NO_FILTER),
    ({"any": [{"exact": {"qfi": "1"}}, {"suffix": {"subject": "local"}}]}, PASS),
    ({"any": [{"exact": {"qfi": "1"}}, {"exact": {"qfi": "2"}}]}, FAIL),
    ({"any": []}, NO_FILTER),
    ({"not": {"exact": {"qfi": "1"}}}, PASS),
    ({"not": {"exact": {"qfi": "9"}}}, FAIL),
    ({"not": {"exact": {"dnn": "ims"}}}, PASS),                               # missing -> FAIL -> PASS
    ({"not": {"all": []}}, NO_FILTER),
    ({"cesql": "subject LIKE '%.mec.local' AND INT(qfi) > 5"}, PASS),
    ({"cesql": "INT(qfi) > 10"}, FAIL),
    ({"cesql": "dnn = 'internet' OR TRUE"}, FAIL),                           # error -> does not pass
    ({"cesql": "subject"}, FAIL),                                            # not a Boolean
    ({"cesql": ""}, NO_FILTER),
    ({"any": [{"not": {"prefix": {"type": "mec."}}}, {"cesql": "EXISTS supi"}]}, PASS),
])
def test_dialect(entry: dict[str, Any], expected: str) -> None:
    assert build_filter(entry)(EV) == expected


@pytest.mark.parametrize(("attributes", "expected"), [
    ({}, PASS),
    ({"type": "mec.upf.dns.query"}, PASS),
    ({"type": "mec.upf.dns.query", "supi": "imsi-999700000000001"}, PASS),
    ({"type": "mec.upf.dns.query", "supi": "imsi-999700000000002"}, FAIL),
    ({"supi": ""}, PASS),          # empty value: the attribute must exist...
    ({"dnn": ""}, FAIL),
    ({"empty": ""}, FAIL),         # ...with a non-empty value
    ({"type": "mec.upf"}, FAIL),   # exact, not prefix
])
def test_legacy_attributes(attributes: dict[str, str], expected: str) -> None:
    assert legacy_filter(attributes)(EV) == expected


def _trigger(**kw: Any) -> Trigger:
    return Trigger("mec", "t", "default", Destination(uri="http://127.0.0.1:9/"), **kw)


def test_filters_win_over_legacy_filter() -> None:
    t = _trigger(filter_attributes={"type": "something.else"}, filters=[{"prefix": {"type": "mec."}}])
    assert passes(trigger_filter(t), EV)
    t = _trigger(filter_attributes={"type": "mec.upf.dns.query"}, filters=[{"prefix": {"type": "x."}}])
    assert not passes(trigger_filter(t), EV)


def test_every_filters_entry_must_pass() -> None:
    t = _trigger(filters=[{"prefix": {"type": "mec."}}, {"exact": {"qfi": "9"}}, {"cesql": "EXISTS dnn"}])
    assert not passes(trigger_filter(t), EV)
    t = _trigger(filters=[{"prefix": {"type": "mec."}}, {"exact": {"qfi": "9"}}, {"cesql": "EXISTS supi"}])
    assert passes(trigger_filter(t), EV)


def test_no_filter_at_all_passes_everything() -> None:
    assert passes(trigger_filter(_trigger()), EV)
    assert passes(trigger_filter(_trigger(filters=[{"exact": {"type": ""}}])), EV)
