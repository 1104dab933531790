"""k8s/knative/eventtypes.yaml: generated from detector/eventtypes.py, current, complete, deterministic,
and valid against the pinned Eventing 1.22.2 EventType CRD."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from detector import eventtypes as et
from detector.cloudevent import EventBuilder
from detector.config import ConfigError
from detector.rules import load_rules
from testbed.lab import checks

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "k8s" / "knative" / "eventtypes.yaml"


def committed_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(COMMITTED.read_text(encoding="utf-8")) if d]


def declared_types() -> set[str]:
    return {d["spec"]["type"] for d in committed_docs()}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detector", "eventtypes", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------ the committed file is the generated one

def test_committed_file_is_what_the_generator_writes() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == et.generate(), \
        "k8s/knative/eventtypes.yaml is stale: run `python -m detector eventtypes --write`"


def test_generation_is_deterministic() -> None:
    assert et.generate() == et.generate()
    assert et.generate(list(reversed(et.shipped_rules()))) == et.generate()


def test_cli_prints_the_file_and_check_tells_a_stale_one(tmp_path: Path) -> None:
    out = run_cli()
    assert out.returncode == 0, out.stderr
    assert out.stdout == COMMITTED.read_text(encoding="utf-8")
    assert run_cli("--check").returncode == 0
    stale = tmp_path / "eventtypes.yaml"
    stale.write_text(out.stdout.replace("mec.app.visit", "mec.app.visited"), encoding="utf-8")
    r = run_cli("--check", str(stale))
    assert r.returncode == 1 and "not current" in r.stderr
    written = tmp_path / "written.yaml"
    assert run_cli("--write", str(written)).returncode == 0
    assert written.read_text(encoding="utf-8") == out.stdout


# ------------------------------------------------------------------ complete

def _raw_rule_types(path: Path, kinds: list[str]) -> set[str]:
    """What a rules file can emit, read from its YAML (not through detector.rules)."""
    out: set[str] = set()
    for rule in yaml.safe_load(path.read_text(encoding="utf-8")).get("rules") or []:
        if rule.get("drop"):
            continue
        type_ = (rule.get("emit") or {}).get("type", "mec.upf.{kind}")
        if "{kind}" not in type_:
            out.add(type_)
            continue
        spec = (rule.get("match") or {}).get("kind")
        if spec is None:
            matched = kinds
        elif isinstance(spec, dict):
            matched = [k for k in kinds if fnmatch.fnmatchcase(k, spec["glob"])]
        else:
            matched = [k for k in kinds if k in (spec if isinstance(spec, list) else [spec])]
        out.update(type_.replace("{kind}", k) for k in matched)
    return out


def test_shipped_rules_files_are_the_project_ones() -> None:
    names = {str(p.relative_to(REPO)) for p in et.shipped_rules()}
    assert names >= {"examples/rules/mec-demo.yaml", "bench/rules-e2e.yaml", "testbed/soak/rules.yaml"}


def test_every_type_a_shipped_rule_can_emit_is_declared() -> None:
    kinds = et.app_event_kinds()
    expected: set[str] = set()
    for path in et.shipped_rules():
        expected |= _raw_rule_types(path, kinds)
    assert {"mec.app.buy", "mec.app.visit", "mec.upf.dns.query", "mec.session.up", "mec.session.down"} <= expected
    assert expected <= declared_types()


def _app_events(kind: str) -> list[dict[str, Any]]:
    """AppEvents of `kind` that reach every kind of rule the shipped files have."""
    apps = [{"method": "POST", "host": "shop.mec.local", "path": "/api/v1/buy?item=3"},
            {"method": "GET", "host": "shop.mec.local", "path": "/"},
            {"qname": "edge.mec.local", "qtype": 1}, {"topic": "sensors/1", "qos": 0}, {"seid": 1}]
    return [{"id": f"{kind}-{i}", "time": "2026-12-03T10:00:00Z", "kind": kind, "point": "n3", "tap": "upf1",
             "direction": "ul", "ue": {"supi": "imsi-999700000000001", "ip": "10.45.0.2"}, "app": app}
            for i, app in enumerate(apps)]


def test_what_the_rules_engine_emits_for_the_shipped_rules_is_declared() -> None:
    """The oracle: real AppEvents through the detector's own rules and CloudEvent builder."""
    builder = EventBuilder()
    t = datetime(2026, 12, 3, tzinfo=UTC)
    emitted: dict[str, set[str]] = {}
    for path in et.shipped_rules():
        rs = load_rules(str(path))
        for kind in et.app_event_kinds():
            for ev in _app_events(kind):
                for rule in rs.evaluate(ev, "ue", 0.0).emissions:
                    ce = builder.for_rule(ev, rule, {**ev, "detector": "d", "uekey": "ue", "source": "/s"}, t, "/s")
                    emitted.setdefault(ce.get_type(), set()).add(rule.name)
    assert set(emitted) <= declared_types()
    rule_names = {r.name for p in et.shipped_rules() for r in load_rules(str(p)).rules if r.emit is not None}
    assert rule_names <= set().union(*emitted.values()), "the events above reach every emitting rule"


def test_default_mapping_lifecycle_and_function_replies_are_declared() -> None:
    from testbed.functions import buy, dns_edge

    declared = declared_types()
    assert {f"mec.upf.{k}" for k in et.app_event_kinds()} <= declared
    assert {"mec.source.created", "mec.source.expired", buy.REPLY_TYPE, dns_edge.REPLY_TYPE} <= declared
    by_type = {d["spec"]["type"]: d["spec"] for d in committed_docs()}
    assert by_type[buy.REPLY_TYPE]["source"] == buy.REPLY_SOURCE
    assert by_type[dns_edge.REPLY_TYPE]["source"] == dns_edge.REPLY_SOURCE
    assert by_type["mec.app.buy"]["source"] == "/mec/detector/{detector}/ue/{uekey}"
    assert len(by_type) == len(committed_docs()), "one EventType per type"


def test_the_types_the_triggers_filter_on_are_declared() -> None:
    exact: set[str] = set()
    prefixes: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("exact", "attributes") and isinstance(value, dict) and "type" in value:
                    exact.add(value["type"])
                elif key == "prefix" and isinstance(value, dict) and "type" in value:
                    prefixes.add(value["type"])
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for doc in yaml.safe_load_all((REPO / "k8s/knative/triggers.yaml").read_text(encoding="utf-8")):
        walk((doc or {}).get("spec"))
    declared = declared_types()
    assert exact and exact <= declared
    for prefix in prefixes:
        assert any(t.startswith(prefix) for t in declared), prefix


def test_the_tap_kinds_list_agrees_with_the_tap_code() -> None:
    """TAP_CORE_KINDS is what the flow table, N4 and N2 emit; the dissectors' are their constants."""
    src = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "upf_tap").rglob("*.py")}
    core = set(re.findall(r'self\._emit\("([a-z_.]+)"', src["pipeline.py"]))
    core |= {f"session.{k}" for k in re.findall(r'N4Change\("(\w+)"', src["n4.py"])}
    core |= set(re.findall(r'_change\("([a-z_.]+)"', src["n2.py"]))
    core |= set(re.findall(r'make_event\("([a-z_.]+)"', src["events.py"]))  # e.g. gtpu.end_marker
    assert core == set(et.TAP_CORE_KINDS)
    declared_in_dissectors = set()
    for p in (REPO / "upf_tap" / "dissect").glob("*.py"):
        declared_in_dissectors |= set(re.findall(r'^KIND\w* = "([a-z_.]+)"', p.read_text(encoding="utf-8"), re.M))
    assert set(et.dissector_kinds()) == declared_in_dissectors
    assert set(et.app_event_kinds()) == core | declared_in_dissectors
    assert set(et.KIND_TEXT) == set(et.app_event_kinds()), "every kind has its sentence"


# ------------------------------------------------------------------ a new type in a rules file

NEW_RULES = """
  - name: checkout
    match: {kind: http.request, app: {path: {glob: "/api/v1/checkout*"}}}
    emit: {type: mec.app.checkout}
  - name: coap-kinds
    match: {kind: {glob: "coap.*"}}
    emit: {type: "mec.iot.{kind}"}
"""


def test_a_new_type_in_a_rules_file_changes_the_output(tmp_path: Path) -> None:
    copy = tmp_path / "mec-demo.yaml"
    copy.write_text((REPO / "examples/rules/mec-demo.yaml").read_text(encoding="utf-8") + NEW_RULES, encoding="utf-8")
    original = et.generate([REPO / "examples/rules/mec-demo.yaml"])
    changed = et.generate([copy])
    assert changed != original
    types = {d["spec"]["type"] for d in yaml.safe_load_all(changed) if d}
    assert types - {d["spec"]["type"] for d in yaml.safe_load_all(original) if d} == {
        "mec.app.checkout", "mec.iot.coap.request"}
    doc = next(d for d in yaml.safe_load_all(changed) if d and d["spec"]["type"] == "mec.app.checkout")
    assert "rule checkout" in doc["spec"]["description"]
    r = run_cli("--rules", str(copy))
    assert r.returncode == 0 and r.stdout == changed


def test_a_type_that_cannot_be_listed_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('rules:\n  - name: per-host\n    emit: {type: "mec.host.{app.host}"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"per-host.*\{app\.host\}"):
        et.generate([bad])
    r = run_cli("--rules", str(bad))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("detector: error:")


def test_one_type_with_two_sources_is_refused(tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - name: fake-order\n    emit: {type: mec.order.created}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="two sources"):
        et.generate([rules])


# ------------------------------------------------------------------ the objects

def test_every_object_validates_against_the_pinned_crd(shared: Path) -> None:
    schemas = checks.load_crd_schemas(shared / "knative")
    docs = committed_docs()
    assert len(docs) >= 20
    for doc in docs:
        assert checks.knative_errors(doc, schemas, doc["metadata"]["name"]) == []
    bad = {**docs[0], "spec": {**docs[0]["spec"], "attributes": [{"name": "type"}]}}  # v1beta3's field
    assert any("attributes" in e for e in checks.knative_errors(bad, schemas, "bad"))


def test_the_api_version_is_the_crds_storage_version(shared: Path) -> None:
    crd = yaml.safe_load((shared / "knative/eventing-v1.22.2/eventtype.yaml").read_text(encoding="utf-8"))
    stored = [v["name"] for v in crd["spec"]["versions"] if v.get("storage")]
    assert et.API_VERSION == f"{crd['spec']['group']}/{stored[0]}" == "eventing.knative.dev/v1beta2"


def test_objects_name_the_broker_and_have_valid_unique_names() -> None:
    broker = yaml.safe_load((REPO / "k8s/knative/broker.yaml").read_text(encoding="utf-8"))
    dns1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    names = []
    for doc in committed_docs():
        meta, spec = doc["metadata"], doc["spec"]
        assert meta["namespace"] == broker["metadata"]["namespace"]
        assert spec["reference"] == {"apiVersion": broker["apiVersion"], "kind": "Broker",
                                     "name": broker["metadata"]["name"]}
        assert dns1123.match(meta["name"]) and len(meta["name"]) <= 253, meta["name"]
        assert spec["description"] and spec["source"]
        names.append(meta["name"])
    assert len(names) == len(set(names))
    assert sorted(d["spec"]["type"] for d in committed_docs()) == [d["spec"]["type"] for d in committed_docs()]


def test_object_names_stay_unique_when_types_map_to_one_name() -> None:
    taken: set[str] = set()
    first = et.object_name("mec.a_b", taken)
    second = et.object_name("mec.a-b", taken)
    assert first == "mec.a-b" and second.startswith("mec.a-b-") and second != first
