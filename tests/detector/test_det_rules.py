"""Rules and templates: matching, templating, debounce, rate limit, drop, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from detlib import REPO_ROOT, app_event, rules_from, truth_events

from detector.config import ConfigError
from detector.rules import load_rules
from detector.schema import parse_time
from detector.templates import Template, TemplateError

EV = app_event(1, 1)


def test_template_single_reference_keeps_type() -> None:
    assert Template("{ue.qfi}").render(EV) == 1
    assert Template("{app}").render(EV) == EV["app"]
    assert Template("{ue.nothing}").render(EV) is None


def test_template_text_and_fallbacks() -> None:
    assert Template("{app.host}{app.path}").render(EV) == "shop.mec.local/api/v1/buy?item=1"
    assert Template("{ue.nosuch|ue.ip}").render(EV) == "10.45.0.2"
    assert Template("x-{ue.nosuch}-y").render(EV) == "x--y"
    assert Template("{{literal}} {kind}").render(EV) == "{literal} http.request"
    assert Template("qfi={ue.qfi} ok={app}").render({"ue": {"qfi": 5}, "app": {"b": 1, "a": True}}) == \
        'qfi=5 ok={"a":true,"b":1}'


@pytest.mark.parametrize("bad", ["{app.host", "a}b", "{__import__('os')}", "{os.system}", "{app..x}", "{}"])
def test_template_refuses_code_and_typos(bad: str) -> None:
    with pytest.raises(TemplateError):
        Template(bad)


def test_template_does_not_reach_attributes() -> None:
    # dotted names walk dicts only: a str's methods are not reachable
    assert Template("{app.host.upper}").render(EV) is None


def _emitted(rs, ev, key="k", t=0.0) -> list[str]:
    return [r.name for r in rs.evaluate(ev, key, t).emissions]


def test_matchers_exact_glob_regex_prefix_list_not_exists() -> None:
    rs = rules_from("""
unmatched: drop
rules:
  - {name: exact, match: {kind: http.request, app: {method: GET}}, continue: true}
  - {name: glob, match: {app: {path: {glob: "/api/v1/buy*"}}}, continue: true}
  - {name: regex, match: {app.host: {regex: "^shop\\\\."}}, continue: true}
  - {name: supi-list, match: {ue: {supi: [imsi-999700000000009, imsi-999700000000001]}}, continue: true}
  - {name: supi-prefix, match: {ue: {supi: {prefix: imsi-99970}}}, continue: true}
  - {name: qfi, match: {ue: {qfi: 1}, direction: ul, point: n3}, continue: true}
  - {name: qfi-str, match: {ue: {qfi: "9"}}, continue: true}
  - {name: slice, match: {ue: {snssai: "1", dnn: internet}}, continue: true}
  - {name: not-dl, match: {direction: {not: dl}}, continue: true}
  - {name: no-user-agent, match: {app: {user_agent: {exists: false}}}, continue: true}
  - {name: has-sni, match: {app: {sni: {exists: true}}}, continue: true}
""")
    assert _emitted(rs, EV) == ["glob", "regex", "supi-list", "supi-prefix", "qfi", "slice", "not-dl",
                                "no-user-agent"]


def test_first_match_wins_unless_continue_and_drop() -> None:
    rs = rules_from("""
rules:
  - {name: a, match: {kind: http.request}}
  - {name: b, match: {kind: http.request}}
  - {name: quiet, match: {kind: dns.query}, drop: true}
""")
    assert _emitted(rs, EV) == ["a"]
    dns = app_event(1, 2, kind="dns.query", app={"qname": "x.mec.local", "qtype": 1})
    out = rs.evaluate(dns, "k", 0)
    assert out.dropped and not out.emissions
    # unmatched (default): the default mapping
    assert _emitted(rs, app_event(1, 3, kind="flow.start", app={})) == ["default"]


def test_debounce_and_rate_limit_use_capture_time_per_ue() -> None:
    rs = rules_from("""
rules:
  - {name: click, match: {kind: http.request}, debounce: 1s}
  - {name: dns, match: {kind: dns.query}, rate_limit: {count: 2, per: 10s}}
""")
    assert _emitted(rs, EV, "ue1", 100.0) == ["click"]
    assert _emitted(rs, EV, "ue1", 100.5) == []          # inside the window
    assert _emitted(rs, EV, "ue2", 100.5) == ["click"]   # another UE is not held back
    assert _emitted(rs, EV, "ue1", 101.2) == ["click"]   # window counted from the last emit
    dns = app_event(1, 2, kind="dns.query", app={"qname": "x.mec.local", "qtype": 1})
    got = [bool(_emitted(rs, dns, "ue1", 200.0 + i * 0.1)) for i in range(4)]
    assert got == [True, True, False, False]
    assert _emitted(rs, dns, "ue1", 205.0) == ["dns"]    # 5 s refill one token (2 per 10 s)


@pytest.mark.parametrize(("text", "words"), [
    ("rules: [{match: {kind: x}}]", "needs a name"),
    ("rules: [{name: a, match: {kindd: x}}]", "unknown field 'kindd'"),
    ("rules: [{name: a, match: {app: {path: {globb: x}}}}]", "unknown matcher 'globb'"),
    ("rules: [{name: a, match: {app: {path: {regex: '('}}}}]", "bad regular expression"),
    ("rules: [{name: a, emit: {type: '{evil()}'}}]", "bad reference"),
    ("rules: [{name: a, emit: {extensions: {Bad-Name: x}}}]", "not a valid extension name"),
    ("rules: [{name: a, drop: true, emit: {type: x}}]", "either drops or emits"),
    ("rules: [{name: a}, {name: a}]", "used twice"),
    ("rules: [{name: a, debounce: soon}]", "expected a duration"),
    ("rules: [{name: a}]\nsources: {create_on: [b]}", "no rule named 'b'"),
    ("unmatched: maybe", "unmatched must be"),
    ("- just a list", "expected a mapping"),
])
def test_bad_rules_give_one_clear_error(text: str, words: str, tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_rules(str(p))
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("rules: [unclosed")
    with pytest.raises(ConfigError, match="bad YAML"):
        load_rules(str(p))


def test_example_rules_on_the_synthetic_capture(captures: Path) -> None:
    rs = load_rules(str(REPO_ROOT / "examples" / "rules" / "mec-demo.yaml"))
    fired: dict[str, int] = {}
    for ev in truth_events(captures):
        t = parse_time(ev["time"])
        assert t is not None
        for r in rs.evaluate(ev, ev["ue"]["ip"], t.timestamp()).emissions:
            fired[r.name] = fired.get(r.name, 0) + 1
    truth = truth_events(captures)
    posts = [e for e in truth if e["kind"] == "http.request" and e["app"]["method"] == "POST"
             and e["app"]["path"].startswith("/api/v1/buy")]
    assert posts, "the capture has buy clicks"
    # the clicks are 1 ms apart: the 500 ms debounce keeps the first click of each UE
    assert fired["buy-click"] == len({e["ue"]["ip"] for e in posts})
    assert fired.get("mec-dns", 0) >= 1
    assert "default" not in fired              # unmatched: drop
