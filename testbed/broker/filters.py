"""Trigger filters as Knative's broker-filter evaluates them (eventing 1.22).

Results are three-valued like Knative's eventfilter.FilterResult: PASS, FAIL and
NO_FILTER (nothing to say); an event is delivered unless the result is FAIL.
- `spec.filters` (when non-empty) wins over `spec.filter`; its entries combine like
  the `all` dialect: the first FAIL stops, else the last result counts.
- `any` returns PASS at the first PASS, else the last result; `not` swaps PASS and
  FAIL and keeps NO_FILTER; exact/prefix/suffix need every listed attribute present
  (value compared as a String, case-sensitive); an entry with an empty attribute value
  cannot be built in Knative and is skipped (NO_FILTER); `cesql` passes on true
  without errors.
- legacy `filter.attributes`: every listed attribute must exist and equal the value;
  an empty value means the attribute must exist with a non-empty value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from testbed.broker.cesql import compile_expression
from testbed.broker.events import attr_text
from testbed.broker.manifests import Trigger

PASS = "pass"
FAIL = "fail"
NO_FILTER = "no_filter"

Attrs = Mapping[str, Any]
Filter = Callable[[Attrs], str]


def _lookup(attrs: Attrs, name: str) -> str | None:
    value = attrs.get(name)
    return None if value is None else attr_text(value)


def _string_match(spec: Mapping[str, Any], test: Callable[[str, str], bool]) -> Filter:
    pairs = [(str(k), str(v)) for k, v in spec.items()]
    if not pairs or any(not k or not v for k, v in pairs):
        return lambda attrs: NO_FILTER

    def run(attrs: Attrs) -> str:
        for name, want in pairs:
            have = _lookup(attrs, name)
            if have is None or not test(have, want):
                return FAIL
        return PASS

    return run


def _all(filters: list[Filter]) -> Filter:
    def run(attrs: Attrs) -> str:
        res = NO_FILTER
        for f in filters:
            res = f(attrs)
            if res == FAIL:
                return FAIL
        return res

    return run


def _any(filters: list[Filter]) -> Filter:
    def run(attrs: Attrs) -> str:
        res = NO_FILTER
        for f in filters:
            res = f(attrs)
            if res == PASS:
                return PASS
        return res

    return run


def _not(inner: Filter) -> Filter:
    def run(attrs: Attrs) -> str:
        res = inner(attrs)
        return FAIL if res == PASS else PASS if res == FAIL else NO_FILTER

    return run


def build_filter(entry: Mapping[str, Any]) -> Filter:
    """One `filters` entry (already checked by manifests.check_filter) as a function."""
    for dialect, value in entry.items():
        if value is None:
            continue
        if dialect == "exact":
            return _string_match(value, lambda have, want: have == want)
        if dialect == "prefix":
            return _string_match(value, lambda have, want: have.startswith(want))
        if dialect == "suffix":
            return _string_match(value, lambda have, want: have.endswith(want))
        if dialect == "all":
            return _all([build_filter(sub) for sub in value])
        if dialect == "any":
            return _any([build_filter(sub) for sub in value])
        if dialect == "not":
            return _not(build_filter(value))
        if dialect == "cesql":
            if not value:
                return lambda attrs: NO_FILTER
            expr = compile_expression(value)
            return lambda attrs: PASS if expr.matches(attrs) else FAIL
        raise ValueError(f"unknown filter dialect {dialect!r}")
    return lambda attrs: NO_FILTER


def legacy_filter(attributes: Mapping[str, str]) -> Filter:
    pairs = list(attributes.items())

    def run(attrs: Attrs) -> str:
        for name, want in pairs:
            have = _lookup(attrs, name)
            if have is None or (want == "" and have == ""):
                return FAIL
            if want != "" and have != want:
                return FAIL
        return PASS

    return run


def trigger_filter(trigger: Trigger) -> Filter:
    """The filter Knative applies for this Trigger."""
    if trigger.filters:
        return _all([build_filter(e) for e in trigger.filters])
    if trigger.filter_attributes is not None:
        return legacy_filter(trigger.filter_attributes)
    return lambda attrs: NO_FILTER


def passes(flt: Filter, attrs: Attrs) -> bool:
    return flt(attrs) != FAIL
