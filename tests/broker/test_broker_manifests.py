"""Manifests: the project's k8s/knative files against Knative's CRD schemas, and clear errors."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from brokerlib import assert_manifest_error, write_manifests

from testbed.broker.manifests import (
    DIALECTS,
    load_manifests,
    parse_go_duration,
    parse_iso_duration,
)
from testbed.broker.runner import function_for_image, idle_window, min_scale

REPO = Path(__file__).resolve().parents[2]
KNATIVE_DIR = REPO / "k8s" / "knative"
CRD_FILES = {
    ("eventing.knative.dev/v1", "Broker"): "eventing-v1.22.2/broker.yaml",
    ("eventing.knative.dev/v1", "Trigger"): "eventing-v1.22.2/trigger.yaml",
    ("serving.knative.dev/v1", "Service"): "serving-v1.22.1/service.yaml",
    ("messaging.knative.dev/v1", "Channel"): "eventing-v1.22.2/channel.yaml",
    ("messaging.knative.dev/v1", "Subscription"): "eventing-v1.22.2/subscription.yaml",
    ("eventing.knative.dev/v1beta2", "EventType"): "eventing-v1.22.2/eventtype.yaml",
}


def _closed(schema: Any) -> Any:
    """Like the API server's pruning: an object schema with `properties` and without
    x-kubernetes-preserve-unknown-fields accepts no other fields (so typos fail)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def _crd_schema(shared: Path, api: str, kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((shared / "knative" / CRD_FILES[(api, kind)]).read_text())
    version = api.split("/")[1]
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return _closed(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
    raise AssertionError(f"no {version} in {CRD_FILES[(api, kind)]}")


def _objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(KNATIVE_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def test_knative_files_validate_against_the_crds(shared: Path) -> None:
    files = {p.name for p in KNATIVE_DIR.glob("*.yaml")}
    assert {"broker.yaml", "triggers.yaml", "services.yaml"} <= files
    checked: dict[str, int] = {}
    for name, obj in _objects():
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key == ("v1", "Namespace"):
            continue
        assert key in CRD_FILES, f"{name}: unexpected object {key}"
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        schema = _crd_schema(shared, *key)
        schema_props = schema.get("properties", {})
        # the eventing CRDs describe spec/status only; serving's also lists apiVersion/kind/metadata
        candidate = {k: v for k, v in obj.items() if k in schema_props} if "metadata" in schema_props else body
        jsonschema.validate(candidate, schema)
        checked[key[1]] = checked.get(key[1], 0) + 1
    assert checked.get("Broker") == 1 and checked.get("Trigger", 0) >= 3 and checked.get("Service", 0) >= 3


def test_a_typo_fails_crd_validation(shared: Path) -> None:
    trigger = next(o for _, o in _objects() if o["kind"] == "Trigger")
    bad = copy.deepcopy(trigger)
    bad["spec"]["subscriber"]["reff"] = bad["spec"]["subscriber"].pop("ref")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"spec": bad["spec"]}, _crd_schema(shared, "eventing.knative.dev/v1", "Trigger"))


def _entries(filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for entry in filters:
        out.append(entry)
        for dialect in ("all", "any"):
            out.extend(_entries(entry.get(dialect) or []))
        if entry.get("not"):
            out.extend(_entries([entry["not"]]))
    return out


def test_knative_triggers_use_every_dialect_one_per_entry() -> None:
    used: set[str] = set()
    legacy = 0
    for _, obj in _objects():
        if obj["kind"] != "Trigger":
            continue
        legacy += bool((obj["spec"].get("filter") or {}).get("attributes"))
        for entry in _entries(obj["spec"].get("filters") or []):
            present = [d for d in DIALECTS if d in entry]
            assert len(present) == 1, f"{obj['metadata']['name']}: filter entry {entry} has dialects {present}"
            used.add(present[0])
    assert used == set(DIALECTS)
    assert legacy >= 1


def test_knative_manifests_load_and_every_service_runs_locally() -> None:
    m = load_manifests(KNATIVE_DIR)
    assert ("mec", "default") in m.brokers
    assert {t.name for t in m.triggers} >= {"buy-clicks", "mec-dns-lookups", "orders-audit"}
    for svc in m.services.values():
        assert function_for_image(svc.image), svc.image
        assert svc.image.startswith("ghcr.io/mec-testbed/fn-") and ":" in svc.image
    dockerfile = (REPO / "docker" / "function.Dockerfile").read_text()
    assert "FROM python:3.11.13-slim-bookworm" in dockerfile
    assert "USER 65532" in dockerfile and "ARG FUNCTION" in dockerfile


BROKER = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: mec}
---
"""


def _trigger(spec_extra: str) -> str:
    return BROKER + f"""\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: t1, namespace: mec}}
spec:
  broker: default
  subscriber: {{uri: "http://127.0.0.1:9/"}}
{spec_extra}
"""


@pytest.mark.parametrize(("text", "message"), [
    (_trigger("  filters:\n    - {exact: {type: a}, prefix: {type: b}}"), "multiple dialects found (exact, prefix)"),
    (_trigger("  filters:\n    - {all: [{suffix: {type: a}, cesql: 'TRUE'}]}"), "spec.filters[0].all[0]: multiple dialects"),
    (_trigger("  filters:\n    - {regex: {type: a}}"), "unknown filter dialect 'regex'"),
    (_trigger("  filters:\n    - {cesql: \"type LIKE \"}"), "spec.filters[0].cesql: invalid expression"),
    (_trigger("  filters:\n    - {exact: {Type: a}}"), "invalid attribute name 'Type'"),
    (_trigger("  filter: {attributes: {my-ext: a}}"), "invalid attribute name 'my-ext'"),
    (_trigger("  delivery: {backoffDelay: 200ms}"), "spec.delivery.backoffDelay: not an ISO-8601 duration"),
    (_trigger("  delivery: {backoffPolicy: fibonacci}"), "backoffPolicy: invalid value 'fibonacci'"),
    (_trigger("  delivery: {retry: -1}"), "retry: invalid value -1"),
    (_trigger("  delivery: {timeout: PT0S}"), "timeout: invalid value"),
    (_trigger("  delivery: {deadLetterSink: {ref: {kind: Service, apiVersion: serving.knative.dev/v1, name: nope}}}"),
     "Service mec/nope is not defined"),
    (BROKER + "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t2, namespace: mec}\n"
              "spec: {broker: other, subscriber: {uri: 'http://127.0.0.1:9/'}}\n", "Broker mec/other is not defined"),
    (BROKER + "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t3, namespace: mec}\n"
              "spec: {broker: default}\n", "missing field spec.subscriber"),
    (BROKER + "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t4, namespace: mec}\n"
              "spec: {broker: default, subscriber: {uri: 'not a url'}}\n", "is not an absolute http(s) URL"),
    (BROKER + "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t5, namespace: mec}\n"
              "spec: {broker: default, subscriber: {ref: {apiVersion: v1, kind: Service, name: k8s}}}\n",
     "v1 Service cannot be resolved locally"),
    ("kind: Broker\napiVersion: eventing.knative.dev/v1\nmetadata: {name: x}\nspec: [1]\n", "spec must be a mapping"),
    ("key: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "a manifest must be a mapping"),
])
def test_manifest_errors_are_clear(manifest_dir: Path, text: str, message: str) -> None:
    assert_manifest_error(manifest_dir, text, message)


def test_other_kinds_are_skipped_and_namespace_defaults(manifest_dir: Path) -> None:
    write_manifests(manifest_dir, """\
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: cm}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {name: b}
        """)
    m = load_manifests(manifest_dir)
    assert list(m.brokers) == [("default", "b")]
    assert m.skipped == ["manifests.yaml (document 1): ConfigMap cm"]


def test_durations() -> None:
    assert parse_iso_duration("PT0.2S") == pytest.approx(0.2)
    assert parse_iso_duration("PT1M30S") == 90
    assert parse_iso_duration("P1DT1H") == 90000
    for bad in ("", "P", "PT", "0.2", "PT1.S", "1m"):
        with pytest.raises(ValueError):
            parse_iso_duration(bad)
    assert parse_go_duration("1m30s") == 90
    assert parse_go_duration("250ms") == pytest.approx(0.25)
    for bad in ("1x", "s", "10 s", "-1s"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)


def test_scale_annotations() -> None:
    a = "autoscaling.knative.dev/"
    assert idle_window({}) == 90                                          # 60s window + 30s grace
    assert idle_window({a + "window": "20s", a + "scale-to-zero-pod-retention-period": "1m"}) == 80
    assert idle_window({a + "window": "6s"}, grace=0) == 6
    assert min_scale({a + "min-scale": "1"}) == 1
    assert min_scale({a + "minScale": "2"}) == 2
    assert min_scale({}) == 0
    assert function_for_image("ghcr.io/mec-testbed/fn-dns-edge:0.1.0") == "dns_edge"
    assert function_for_image("fn-buy") == "buy"
    assert function_for_image("ghcr.io/mec-testbed/fn-serve:0.1.0") is None
    assert function_for_image("nginx:1.27") is None


def test_cli_help_and_errors(manifest_dir: Path) -> None:
    run = [sys.executable, "-m", "testbed.broker"]
    ok = subprocess.run([*run, "--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert ok.returncode == 0 and "--manifests" in ok.stdout
    checked = subprocess.run([*run, "--manifests", str(KNATIVE_DIR), "--check"], capture_output=True, text=True,
                             cwd=REPO, timeout=60)
    assert checked.returncode == 0 and "1 broker(s)" in checked.stdout
    write_manifests(manifest_dir, _trigger("  filters:\n    - {exact: {type: a}, cesql: 'TRUE'}"), "bad.yaml")
    bad = subprocess.run([*run, "--manifests", str(manifest_dir)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "multiple dialects" in bad.stderr
    missing = subprocess.run([*run, "--manifests", str(manifest_dir / "nope")], capture_output=True, text=True,
                             cwd=REPO, timeout=60)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    write_manifests(manifest_dir, BROKER + """\
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: web, namespace: mec}
spec: {template: {spec: {containers: [{image: "nginx:1.27"}]}}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t1, namespace: mec}
spec: {broker: default, subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: web}}}
""", "bad.yaml")
    image = subprocess.run([*run, "--manifests", str(manifest_dir), "--check"], capture_output=True, text=True,
                           cwd=REPO, timeout=60)
    assert image.returncode == 2 and image.stderr.count("\n") == 1
    assert "Trigger mec/t1: Service mec/web: image 'nginx:1.27' is not one of the sample functions" in image.stderr
    listen = subprocess.run([*run, "--listen", "nowhere"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert listen.returncode == 2 and "HOST:PORT" in listen.stderr
