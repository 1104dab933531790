"""Rules: which AppEvents become which CloudEvents (YAML, evaluated in order).

A rule file:

    unmatched: default          # default: events no rule matches get the default mapping; drop: nothing
    prewarm: {enabled: true, window: 5m}   # mobility: warm the UE's functions up at its new site
    sources:
      create_on: [buy-click]    # a UE's source is created when one of these rules first matches it
      idle_timeout: 5m
    rules:
      - name: buy-click
        match:
          kind: http.request
          direction: ul
          app: {method: POST, path: {glob: "/api/v1/buy*"}}
          ue: {supi: {prefix: imsi-99970}}
        emit:
          type: mec.app.buy
          subject: "{ue.supi|ue.ip}"
          data: {host: "{app.host}", path: "{app.path}"}
          extensions: {item: "{app.path}"}
        debounce: 1s
        rate_limit: {count: 5, per: 10s}

Matchers: a scalar (equal), a list (any of), or one of {glob}, {regex} (re.search), {prefix},
{suffix}, {exists: true|false}, {not: matcher}. Debounce and rate limits are per (rule, UE)
and use the AppEvent's capture time, so replays behave as the live run did.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from detector.config import EXT_NAME, RESERVED_ATTRS, ConfigError, parse_duration
from detector.mobility import Prewarm, parse_prewarm
from detector.templates import Template, TemplateError, compile_tree

Test = Callable[[Any], bool]
# limiter changes, oldest first: (the table changed, "_last" or "_bucket", by name because `prune`
# replaces them; its key; the value before, None: was absent)
Journal = list[tuple[str, tuple[str, str], Any]]
GROUPS = ("app", "ue", "flow", "tunnel")
TOP_FIELDS = ("id", "kind", "point", "tap", "direction")
DEFAULT_SUBJECT = "{ue.supi|ue.ip}"
DEFAULT_DATA = {"app": "{app}", "flow": "{flow}", "ue": "{ue}"}
_RULE_KEYS = {"name", "match", "emit", "drop", "debounce", "rate_limit", "continue"}
_EMIT_KEYS = {"type", "subject", "data", "extensions"}


def _eq(spec: Any) -> Test:
    text = str(spec)

    def test(v: Any) -> bool:
        if v is None or isinstance(v, dict | list):
            return False
        if isinstance(v, bool) or isinstance(spec, bool):
            return v is spec
        return v == spec or str(v) == text
    return test


def compile_matcher(spec: Any, where: str) -> Test:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: empty list matches nothing")
        tests = [compile_matcher(s, f"{where}[{i}]") for i, s in enumerate(spec)]
        return lambda v: any(t(v) for t in tests)
    if isinstance(spec, dict):
        if len(spec) != 1:
            raise ConfigError(f"{where}: a matcher mapping takes exactly one of glob, regex, prefix, suffix, exists, not")
        (op, arg), = spec.items()
        if op == "not":
            inner = compile_matcher(arg, f"{where}.not")
            return lambda v: not inner(v)
        if op == "exists":
            if not isinstance(arg, bool):
                raise ConfigError(f"{where}.exists: expected true or false")
            return (lambda v: v is not None) if arg else (lambda v: v is None)
        if not isinstance(arg, str):
            raise ConfigError(f"{where}.{op}: expected a string")
        if op == "glob":
            rx = re.compile(fnmatch.translate(arg))
            return lambda v: isinstance(v, str) and rx.match(v) is not None
        if op == "regex":
            try:
                rx = re.compile(arg)
            except re.error as e:
                raise ConfigError(f"{where}.regex: bad regular expression: {e}") from None
            return lambda v: isinstance(v, str) and rx.search(v) is not None
        if op == "prefix":
            return lambda v: isinstance(v, str) and v.startswith(arg)
        if op == "suffix":
            return lambda v: isinstance(v, str) and v.endswith(arg)
        raise ConfigError(f"{where}: unknown matcher {op!r} (use glob, regex, prefix, suffix, exists, not)")
    if spec is None:
        raise ConfigError(f"{where}: empty matcher (use {{exists: false}} to match a missing field)")
    if isinstance(spec, str | int | float | bool):
        return _eq(spec)
    raise ConfigError(f"{where}: unsupported matcher {spec!r}")


def compile_match(spec: Any, where: str) -> list[tuple[tuple[str, ...], Test]]:
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping of field -> matcher")
    out: list[tuple[tuple[str, ...], Test]] = []
    for key, value in spec.items():
        key = str(key)
        if key in GROUPS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a mapping of {key} fields -> matcher")
            for sub, m in value.items():
                out.append(((key, str(sub)), compile_matcher(m, f"{where}.{key}.{sub}")))
        elif key in TOP_FIELDS or key.split(".")[0] in GROUPS:
            out.append((tuple(key.split(".")), compile_matcher(value, f"{where}.{key}")))
        else:
            raise ConfigError(f"{where}: unknown field {key!r} (use {', '.join(TOP_FIELDS + GROUPS)})")
    return out


def _get(ev: dict[str, Any], path: tuple[str, ...]) -> Any:
    v: Any = ev
    for p in path:
        if not isinstance(v, dict):
            return None
        v = v.get(p)
    return v


@dataclass
class Emit:
    type: Template
    subject: Template
    data: Any
    extensions: dict[str, Template]


@dataclass
class Rule:
    name: str
    tests: list[tuple[tuple[str, ...], Test]]
    emit: Emit | None            # None: the rule drops what it matches
    debounce: float = 0.0
    rate_count: int = 0
    rate_per: float = 0.0
    cont: bool = False

    def matches(self, ev: dict[str, Any]) -> bool:
        return all(t(_get(ev, path)) for path, t in self.tests)


def compile_emit(spec: Any, where: str) -> Emit:
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping")
    extra = set(spec) - _EMIT_KEYS
    if extra:
        raise ConfigError(f"{where}: unknown key {sorted(extra)[0]!r} (use type, subject, data, extensions)")
    try:
        type_t = Template(str(spec.get("type", "mec.upf.{kind}")))
        subject_t = Template(str(spec.get("subject", DEFAULT_SUBJECT)))
        data_t = compile_tree(spec.get("data", DEFAULT_DATA), f"{where}.data")
        exts: dict[str, Template] = {}
        raw_exts = spec.get("extensions") or {}
        if not isinstance(raw_exts, dict):
            raise ConfigError(f"{where}.extensions: expected a mapping")
        for k, v in raw_exts.items():
            if not EXT_NAME.match(str(k)) or k in RESERVED_ATTRS:
                raise ConfigError(f"{where}.extensions: {k!r} is not a valid extension name (lower-case letters, digits)")
            exts[str(k)] = Template(str(v))
    except TemplateError as e:
        raise ConfigError(f"{where}: {e}") from None
    return Emit(type_t, subject_t, data_t, exts)


def compile_rule(spec: Any, index: int) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping")
    name = spec.get("name")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.-]{1,64}$", name):
        raise ConfigError(f"{where}: needs a name (letters, digits, _ . -)")
    where = f"rule {name!r}"
    extra = set(spec) - _RULE_KEYS
    if extra:
        raise ConfigError(f"{where}: unknown key {sorted(extra)[0]!r}")
    drop = spec.get("drop", False)
    if not isinstance(drop, bool):
        raise ConfigError(f"{where}.drop: expected true or false")
    if drop and "emit" in spec:
        raise ConfigError(f"{where}: a rule either drops or emits, not both")
    rule = Rule(name, compile_match(spec.get("match"), f"{where}.match"),
                None if drop else compile_emit(spec.get("emit"), f"{where}.emit"))
    if "debounce" in spec:
        rule.debounce = parse_duration(spec["debounce"], f"{where}.debounce")
    if "rate_limit" in spec:
        rl = spec["rate_limit"]
        if not isinstance(rl, dict) or set(rl) != {"count", "per"}:
            raise ConfigError(f"{where}.rate_limit: expected {{count: N, per: DURATION}}")
        if not isinstance(rl["count"], int) or rl["count"] < 1:
            raise ConfigError(f"{where}.rate_limit.count: expected a positive integer")
        rule.rate_count = rl["count"]
        rule.rate_per = parse_duration(rl["per"], f"{where}.rate_limit.per")
        if rule.rate_per <= 0:
            raise ConfigError(f"{where}.rate_limit.per: must be positive")
    cont = spec.get("continue", False)
    if not isinstance(cont, bool):
        raise ConfigError(f"{where}.continue: expected true or false")
    rule.cont = cont
    return rule


DEFAULT_RULE = Rule("default", [], compile_emit({}, "default"))


@dataclass
class Outcome:
    emissions: list[Rule] = field(default_factory=list)  # rules whose emit applies, in order
    matched: list[str] = field(default_factory=list)     # names of every rule that matched
    dropped: bool = False
    suppressed: int = 0


class RuleSet:
    def __init__(self, rules: list[Rule], unmatched: str = "default", create_on: frozenset[str] = frozenset(),
                 idle_timeout: float = 300.0, required: bool = False, prewarm: Prewarm | None = None) -> None:
        self.rules = rules
        self.prewarm = prewarm      # None: the detector config's mobility.prewarm applies
        self.unmatched = unmatched
        self.create_on = create_on
        self.idle_timeout = idle_timeout
        self.required = required    # only UEs with a source get CloudEvents (besides lifecycle ones)
        # (rule, ue) -> last emit time (debounce) / [tokens, last time] (rate limit)
        self._last: dict[tuple[str, str], float] = {}
        self._bucket: dict[tuple[str, str], list[float]] = {}

    def _allow(self, rule: Rule, key: str, t: float, journal: Journal | None) -> bool:
        k = (rule.name, key)
        if rule.debounce > 0:
            last = self._last.get(k)
            if last is not None and 0 <= t - last < rule.debounce:
                return False
        if rule.rate_count:
            b = self._bucket.get(k)
            if journal is not None:
                journal.append(("_bucket", k, None if b is None else list(b)))
            if b is None:
                b = self._bucket[k] = [float(rule.rate_count), t]
            else:
                b[0] = min(float(rule.rate_count), b[0] + max(0.0, t - b[1]) * rule.rate_count / rule.rate_per)
                b[1] = max(b[1], t)
            if b[0] < 1.0:
                return False
            b[0] -= 1.0
        if rule.debounce > 0:
            if journal is not None:
                journal.append(("_last", k, self._last.get(k)))
            self._last[k] = t
        return True

    def evaluate(self, ev: dict[str, Any], key: str, t: float, journal: Journal | None = None) -> Outcome:
        """Which rules fire for `ev` (UE `key`, capture time `t` in seconds). With a `journal`, the
        limiter state it changes is recorded there, so that `undo` can take it back."""
        out = Outcome()
        for rule in self.rules:
            if not rule.matches(ev):
                continue
            out.matched.append(rule.name)
            if rule.emit is None:
                out.dropped = True
                return out
            if self._allow(rule, key, t, journal):
                out.emissions.append(rule)
            else:
                out.suppressed += 1
            if not rule.cont:
                return out
        if not out.matched:
            if self.unmatched == "drop":
                out.dropped = True
            else:
                out.emissions.append(DEFAULT_RULE)
        return out

    def undo(self, journal: Journal, start: int = 0) -> None:
        """Take back the limiter changes recorded in `journal[start:]` (newest first): events whose
        CloudEvents were not stored must find debounce and rate limits as they were, or their retry
        would be suppressed and the event lost."""
        for name, k, old in reversed(journal[start:]):
            table = getattr(self, name)
            if old is None:
                table.pop(k, None)
            else:
                table[k] = old
        del journal[start:]

    def prune(self, horizon: float) -> None:
        """Forget limiter state older than `horizon` (capture-time seconds)."""
        self._last = {k: v for k, v in self._last.items() if v >= horizon}
        self._bucket = {k: v for k, v in self._bucket.items() if v[1] >= horizon}


def default_ruleset() -> RuleSet:
    return RuleSet([])


def parse_rules(data: Any, where: str = "rules") -> RuleSet:
    if data is None:
        return default_ruleset()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with `rules:` (and optional `sources:`, `unmatched:`)")
    extra = set(data) - {"rules", "sources", "unmatched", "prewarm"}
    if extra:
        raise ConfigError(f"{where}: unknown key {sorted(extra)[0]!r} (use rules, sources, unmatched, prewarm)")
    raw = data.get("rules") or []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: `rules` must be a list")
    rules = [compile_rule(r, i) for i, r in enumerate(raw)]
    names = [r.name for r in rules]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{where}: rule name {sorted(dup)[0]!r} used twice")
    unmatched = data.get("unmatched", "default")
    if unmatched not in ("default", "drop"):
        raise ConfigError(f"{where}: unmatched must be default or drop")
    src = data.get("sources") or {}
    if not isinstance(src, dict) or set(src) - {"create_on", "idle_timeout", "required"}:
        raise ConfigError(f"{where}.sources: expected {{create_on: [rule names], idle_timeout: 5m, required: false}}")
    create_on = src.get("create_on", [])
    if isinstance(create_on, str):
        create_on = [create_on]
    if not isinstance(create_on, list):
        raise ConfigError(f"{where}.sources.create_on: expected a list of rule names")
    for n in create_on:
        if n not in names:
            raise ConfigError(f"{where}.sources.create_on: no rule named {n!r}")
    idle = parse_duration(src.get("idle_timeout", 300), f"{where}.sources.idle_timeout")
    required = src.get("required", False)
    if not isinstance(required, bool):
        raise ConfigError(f"{where}.sources.required: expected true or false")
    prewarm = parse_prewarm(data["prewarm"], f"{where}.prewarm") if "prewarm" in data else None
    return RuleSet(rules, unmatched, frozenset(create_on), idle, required, prewarm)


def load_rules(path: str | None) -> RuleSet:
    if not path:
        return default_ruleset()
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read rules {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"rules {path}: bad YAML: {str(e).splitlines()[0]}") from None
    return parse_rules(data, f"rules {path}")
