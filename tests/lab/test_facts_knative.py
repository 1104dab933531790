"""The lab's Knative install plan and manifests against the real releases (tests/lab/facts/knative.yaml).

Offline tests check our plan data (testbed.lab.plan.up_plan, found by argv) and k8s/ manifests
against the committed facts. Upstream tests re-derive every fact from the Knative sources at the
pinned tags and fail when the committed facts drifted; they skip when the snapshots are absent.
Install order is not tested here (the constraints are recorded under install_order: in the facts).
"""

from __future__ import annotations

import json
import posixpath
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from labfacts import facts, require_upstream, upstream_files, upstream_text

from testbed.lab import layout as L
from testbed.lab.subscribers import generate
from testbed.lab.versions import read_versions, release_manifests

K = facts("knative")
SERVING, KOURIER, EVENTING = K["serving"], K["kourier"], K["eventing"]


# ------------------------------------------------------------------ our side (read only)

@pytest.fixture(scope="module")
def plan() -> list[Any]:
    from testbed.lab.plan import up_plan
    return up_plan(read_versions(), generate(3))


def _kubectl_args(argv: list[str]) -> list[str]:
    """argv without `kubectl --context <ctx>`; [] for other commands."""
    if not argv or argv[0] != "kubectl":
        return []
    args = argv[1:]
    if args[:1] == ["--context"]:
        args = args[2:]
    return args


def _opt(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _steps(plan: list[Any], *words: str) -> list[list[str]]:
    """kubectl args of the steps whose argv holds all ``words`` (as items)."""
    out = []
    for step in plan:
        args = _kubectl_args(step.argv or [])
        if args and all(w in args for w in words):
            out.append(args)
    return out


def _patch(plan: list[Any], target: str) -> tuple[str | None, str | None, dict[str, Any]]:
    """(namespace, --type, patch body) of the one `kubectl patch <target>` step."""
    found = _steps(plan, "patch", target)
    assert len(found) == 1, f"expected one `kubectl patch {target}` step, found {len(found)}"
    args = found[0]
    body = _opt(args, "-p")
    assert body is not None, f"`kubectl patch {target}` has no -p"
    return _opt(args, "-n"), _opt(args, "--type"), json.loads(body)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def _manifest_docs(*dirs: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for d in dirs:
        for f in sorted(d.rglob("*.yaml")):
            out += [(f, doc) for doc in _docs(f)]
    return out


def _kind_container_ports() -> set[int]:
    cluster = yaml.safe_load(L.KIND_CONFIG.read_text())
    return {m["containerPort"] for n in cluster.get("nodes", []) for m in n.get("extraPortMappings", [])}


def _selected(labels: dict[str, str], sel: dict[str, Any]) -> bool:
    """A label selector written as {key, operator In/NotIn, values} against ``labels``."""
    value = labels.get(sel["key"])
    if sel["operator"] == "In":
        return value in sel["values"]
    if sel["operator"] == "NotIn":
        return value not in sel["values"]
    raise AssertionError(f"operator {sel['operator']} not handled")


# ------------------------------------------------------------------ offline: versions and manifests

def test_pinned_versions_are_the_ones_the_facts_describe() -> None:
    v = read_versions()
    assert v["KNATIVE_SERVING_VERSION"] == SERVING["tag"]
    assert v["KNATIVE_EVENTING_VERSION"] == EVENTING["tag"]
    # Kourier is moving from v1.22.0 to v1.22.1; its config/ is the same in both (changes_since_v1_22_0)
    kourier_src = next(s for s in K["source"] if s["repo"] == KOURIER["repo"])
    same_config = {KOURIER["tag"]} | (set() if KOURIER["changes_since_v1_22_0"]["config_changed"]
                                      else {kourier_src["compared_with"]})
    assert v["KNATIVE_KOURIER_VERSION"] in same_config


def test_release_manifests_are_real_release_files() -> None:
    rel = release_manifests(read_versions())
    assert {k for k in rel if k.startswith("serving-")} == set(SERVING["release"])
    assert {k for k in rel if k not in SERVING["release"] and k != "kourier"} == set(EVENTING["release"])
    assert rel["kourier"].rsplit("/", 1)[1] in KOURIER["release"]
    for name, url in rel.items():
        if name != "kourier":
            assert url.rsplit("/", 1)[1] == f"{name}.yaml"


def test_crd_waits_use_the_real_crd_label(plan: list[Any]) -> None:
    waits = _steps(plan, "wait", "crd")
    assert waits, "the plan waits for no CRDs"
    [(key, value)] = K["crd_install_label"].items()
    for args in waits:
        assert _opt(args, "-l") == f"{key}={value}"


def test_deployment_waits_cover_namespaces_with_real_deployments(plan: list[Any]) -> None:
    real: dict[str, set[str]] = {SERVING["namespace"]: set(SERVING["deployments"])}
    for ns, names in KOURIER["deployments"].items():
        real.setdefault(ns, set()).update(names)
    real.setdefault(EVENTING["namespace"], set()).update(*EVENTING["deployments"].values())
    waits = _steps(plan, "wait", "deployment", "--all")
    assert {_opt(a, "-n") for a in waits} == set(real)


def test_config_network_patch_sets_the_real_kourier_class(plan: list[Any]) -> None:
    ns, kind, body = _patch(plan, "configmap/config-network")
    cm = SERVING["configmaps"]["config-network"]
    assert ns == SERVING["namespace"]
    assert kind == "merge"
    assert set(body["data"]) == {cm["ingress_class_key"]}     # the current key, which wins over ingress.class
    assert body["data"][cm["ingress_class_key"]] == KOURIER["ingress_class"]


def test_config_domain_patch_sets_a_default_domain(plan: list[Any]) -> None:
    ns, kind, body = _patch(plan, "configmap/config-domain")
    assert ns == SERVING["namespace"] and kind == "merge"
    assert "config-domain" in SERVING["configmaps"]
    for domain, value in body["data"].items():
        assert domain != "_example"
        assert not (yaml.safe_load(value) or {}).get("selector"), "no selector: the default domain"
        assert re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", domain), domain


def test_config_deployment_patch_keeps_the_default_skip_registries(plan: list[Any]) -> None:
    ns, kind, body = _patch(plan, "configmap/config-deployment")
    cm = SERVING["configmaps"]["config-deployment"]
    assert ns == SERVING["namespace"] and kind == "merge"
    assert set(body["data"]) == {cm["registries_skipping_tag_resolving_key"]}
    value = set(body["data"][cm["registries_skipping_tag_resolving_key"]].split(","))
    # a value replaces the default set: the defaults must stay in it
    assert set(cm["registries_skipping_tag_resolving_default"]) <= value


def test_patched_configmaps_are_validated_by_the_serving_config_webhook(plan: list[Any]) -> None:
    """Each ConfigMap we patch is one the Fail-policy config webhook covers (hence the order constraint)."""
    hook = SERVING["webhooks"]["config.webhook.serving.knative.dev"]
    assert hook["failurePolicy"] == "Fail"
    for name in ("config-network", "config-domain", "config-deployment"):
        labels = SERVING["configmaps"][name]["labels"]
        assert all(labels.get(k) in allowed for k, allowed in hook["objectSelector"].items()), name
        assert name in hook["validates"]


def test_kourier_service_patch_targets_real_ports(plan: list[Any]) -> None:
    ns, kind, body = _patch(plan, "service/kourier")
    svc = KOURIER["service"]
    assert ns == svc["namespace"]
    assert body["spec"]["type"] == "NodePort"
    # strategic merge (kubectl's default for built-in types): Service ports merge by `port`, so
    # the https port stays; a merge patch would replace the whole list
    assert kind in (None, "strategic")
    real_ports = {p["port"] for p in svc["ports"]}
    for p in body["spec"]["ports"]:
        assert p["port"] in real_ports
        assert p["nodePort"] in _kind_container_ports()
    assert L.KOURIER_NODEPORT in {p["nodePort"] for p in body["spec"]["ports"]}


def test_broker_ingress_nodeport_selects_the_real_broker_ingress_pods() -> None:
    [svc] = _docs(L.K8S_DIR / "install" / "broker-ingress-nodeport.yaml")
    real = EVENTING["broker_ingress"]
    assert svc["metadata"]["namespace"] == real["service"]["namespace"]
    selector = svc["spec"]["selector"]
    assert selector.items() <= real["deployment"]["pod_labels"].items()
    assert selector == real["service"]["selector"]
    http = next(p for p in real["service"]["ports"] if p["name"] == "http")
    container = {c["name"]: c["containerPort"] for c in real["deployment"]["container_ports"]}
    [port] = svc["spec"]["ports"]
    target = port["targetPort"]
    assert (container.get(target) if isinstance(target, str) else target) == http["targetPort"]
    assert port["nodePort"] == L.BROKER_NODEPORT
    assert port["nodePort"] in _kind_container_ports()


def test_broker_uses_the_mt_channel_broker_class() -> None:
    cls = EVENTING["broker_class"]
    brokers = [d for _, d in _manifest_docs(L.K8S_DIR / "knative") if d.get("kind") == "Broker"]
    assert brokers
    for b in brokers:
        assert b["metadata"].get("annotations", {}).get(cls["annotation"], cls["cluster_default"]) \
            == cls["mt_channel_broker"]
    assert "mt-channel-broker" in release_manifests(read_versions())


# ------------------------------------------------------------------ offline: SinkBinding selection

def _lab_namespaces() -> list[tuple[Path, dict[str, Any]]]:
    return [(f, d) for f, d in _manifest_docs(L.K8S_DIR / "detector", L.K8S_DIR / "knative")
            if d.get("kind") == "Namespace" and d["metadata"]["name"] == L.NAMESPACE]


def _sinkbinding_subjects() -> list[dict[str, Any]]:
    docs = _manifest_docs(L.K8S_DIR / "detector")
    subjects = []
    for _, sb in docs:
        if sb.get("kind") != "SinkBinding":
            continue
        ref = sb["spec"]["subject"]
        subjects += [d for _, d in docs if d.get("kind") == ref["kind"] and d["metadata"]["name"] == ref["name"]]
    assert subjects, "no SinkBinding subject in k8s/detector"
    return subjects


def test_sinkbinding_selects_the_lab_namespace_and_subject_in_the_default_mode() -> None:
    sb = EVENTING["sinkbinding"]
    sel = sb["selectors"][sb["selection_mode_default"]]
    for f, ns in _lab_namespaces():
        assert _selected(ns["metadata"].get("labels", {}), sel), f
    for subject in _sinkbinding_subjects():
        assert _selected(subject["metadata"].get("labels", {}), sel), subject["metadata"]["name"]


def test_lab_namespace_uses_the_real_binding_label_names() -> None:
    sb = EVENTING["sinkbinding"]
    for f, ns in _lab_namespaces():
        for key in ns["metadata"].get("labels", {}):
            if key.startswith("bindings.knative.dev/"):
                assert key in (sb["include_label"], sb["exclude_label"]), f"{f}: {key}"


def test_sinkbinding_selects_the_subject_in_inclusion_mode_too() -> None:
    sb = EVENTING["sinkbinding"]
    assert set(sb["selector_applies_to"]) == {"namespaceSelector", "objectSelector"}
    sel = sb["selectors"]["inclusion"]
    for _, ns in _lab_namespaces():
        assert _selected(ns["metadata"].get("labels", {}), sel)
    for subject in _sinkbinding_subjects():
        assert _selected(subject["metadata"].get("labels", {}), sel), subject["metadata"]["name"]


def test_every_lab_namespace_manifest_carries_the_same_labels() -> None:
    """A Namespace mec declared twice with different labels: a later `kubectl apply` of the bare one
    removes the binding label (three-way merge) and the namespace falls out of inclusion mode."""
    found = _lab_namespaces()
    assert len(found) >= 1
    labels = {str(f.relative_to(L.REPO)): ns["metadata"].get("labels", {}) for f, ns in found}
    assert len({json.dumps(v, sort_keys=True) for v in labels.values()}) == 1, labels


# ------------------------------------------------------------------ upstream: re-derive the facts

def _git(repo: str, tag: str, *args: str) -> str:
    d = require_upstream(repo, tag)
    return subprocess.run(["git", "--git-dir", str(d), *args], capture_output=True, text=True, check=True).stdout


@cache
def _is_symlink(repo: str, tag: str, path: str) -> bool:
    return _git(repo, tag, "ls-tree", tag, "--", path).startswith("120000")


def _resolve(repo: str, tag: str, path: str) -> tuple[str, str]:
    """(real path, text) of ``path``, following symlinks (release YAMLs link into vendor/)."""
    for _ in range(8):
        text = upstream_text(repo, tag, path)
        if not _is_symlink(repo, tag, path):
            return path, text
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), text.strip()))
    raise AssertionError(f"{repo}@{tag}: symlink loop at {path}")


def _release_docs(repo: str, tag: str, spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The objects of one release YAML: `ko resolve -f` (``recursive``: -R) of its config/ paths."""
    return _release_docs_of(repo, tag, tuple(spec["paths"]), bool(spec["recursive"]))


@cache
def _release_docs_of(repo: str, tag: str, paths: tuple[str, ...], recursive: bool) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for p in paths:
        if p.endswith("/"):
            d = p.rstrip("/")
            files = [f for f in upstream_files(repo, tag, d) if recursive or posixpath.dirname(f) == d]
        else:
            files = [p]
        for f in files:
            if not f.endswith((".yaml", ".yml")):
                continue
            real, text = _resolve(repo, tag, f)
            out += [(real, doc) for doc in yaml.safe_load_all(text) if isinstance(doc, dict) and doc.get("kind")]
    return out


def _of_kind(docs: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [d for _, d in docs if d["kind"] == kind]


def _const(text: str, name: str) -> str:
    m = re.search(rf"\b{re.escape(name)}\s*=\s*\"([^\"]*)\"", text)
    assert m, f"no constant {name}"
    return m.group(1)


def _func(text: str, name: str) -> str:
    """The body of Go func ``name`` (to its first column-0 closing brace)."""
    m = re.search(rf"^func (\([^)]*\) )?{re.escape(name)}\(.*?^}}", text, re.S | re.M)
    assert m, f"no func {name}"
    return m.group(0)


def _labels(doc: dict[str, Any], *keys: str) -> dict[str, str]:
    labels = doc["metadata"].get("labels", {})
    return {k: v for k, v in labels.items() if k in keys} if keys else labels


def _webhook_facts(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for path, d in docs:
        if d["kind"] not in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
            continue
        [w] = d["webhooks"]
        assert w["name"] == d["metadata"]["name"]
        svc = w["clientConfig"]["service"]
        out[w["name"]] = {"kind": d["kind"], "file": path, "failurePolicy": w["failurePolicy"],
                          "service": {"namespace": svc["namespace"], "name": svc["name"]},
                          "timeoutSeconds": w.get("timeoutSeconds"), "rules": w.get("rules"),
                          "objectSelector": w.get("objectSelector"), "namespaceSelector": w.get("namespaceSelector")}
    return out


def _selector_sets(sel: dict[str, Any]) -> dict[str, list[str]]:
    assert not sel.get("matchLabels")
    assert all(e["operator"] == "In" for e in sel["matchExpressions"])
    return {e["key"]: e["values"] for e in sel["matchExpressions"]}


def _ports(svc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": p["name"], "port": p["port"], "targetPort": p["targetPort"], "protocol": p.get("protocol", "TCP")}
            for p in svc["spec"]["ports"]]


class TestServingUpstream:
    R, T = SERVING["repo"], SERVING["tag"]

    def core(self) -> list[tuple[str, dict[str, Any]]]:
        return _release_docs(self.R, self.T, SERVING["release"]["serving-core"])

    def test_release_paths(self) -> None:
        gen = upstream_text(self.R, self.T, "hack/generate-yamls.sh")
        assert re.search(r"ko resolve \S+ -R -f config/core/ .*SERVING_CORE_YAML", gen)
        assert re.search(r"ko resolve \S+ -f config/core/300-resources/ -f config/core/300-imagecache.yaml .*"
                         r"SERVING_CRD_YAML", gen)

    def test_namespace(self) -> None:
        [ns] = _of_kind(self.core(), "Namespace")
        assert ns["metadata"]["name"] == SERVING["namespace"]
        assert _labels(ns, *SERVING["namespace_labels"]) == SERVING["namespace_labels"]

    def test_crds_carry_the_install_label(self) -> None:
        crds = _of_kind(_release_docs(self.R, self.T, SERVING["release"]["serving-crds"]), "CustomResourceDefinition")
        assert sorted(c["metadata"]["name"] for c in crds) == SERVING["crds"]
        for c in crds:
            assert K["crd_install_label"].items() <= _labels(c).items(), c["metadata"]["name"]

    def test_deployments(self) -> None:
        deps = _of_kind(self.core(), "Deployment")
        assert {d["metadata"]["namespace"] for d in deps} == {SERVING["namespace"]}
        assert sorted(d["metadata"]["name"] for d in deps) == SERVING["deployments"]

    def test_webhooks(self) -> None:
        real = _webhook_facts(self.core())
        assert set(real) == set(SERVING["webhooks"])
        for name, f in SERVING["webhooks"].items():
            r = real[name]
            assert (r["kind"], r["file"], r["failurePolicy"], r["service"]) == \
                (f["kind"], f["file"], f["failurePolicy"], f["service"]), name
            if "objectSelector" in f:
                assert _selector_sets(r["objectSelector"]) == f["objectSelector"]
            if "resources" in f:
                [rule] = r["rules"]
                assert (rule["operations"], rule["apiGroups"], rule["resources"]) == \
                    (f["operations"], f["apiGroups"], f["resources"]), name

    def test_config_webhook_rules_come_at_run_time(self) -> None:
        f = SERVING["webhooks"]["config.webhook.serving.knative.dev"]
        r = _webhook_facts(self.core())["config.webhook.serving.knative.dev"]
        assert r["rules"] is None and r["timeoutSeconds"] == f["timeoutSeconds"]
        rec = _func(upstream_text(self.R, self.T, "vendor/knative.dev/pkg/webhook/configmaps/configmaps.go"),
                    "reconcileValidatingWebhook")
        assert '"configmaps/*"' in rec and "admissionregistrationv1.Create" in rec and "admissionregistrationv1.Update" in rec
        assert "admissionregistrationv1.Delete" not in rec
        main = _func(upstream_text(self.R, self.T, "cmd/webhook/main.go"), "newConfigValidationController")
        assert f'"{f["path"]}"' in main and '"config.webhook.serving.knative.dev"' in main
        for cm, c in f["validates"].items():
            assert f"{c['constant']}:" in main, cm
            assert _const(upstream_text(self.R, self.T, c["defined_in"]), c["constant"].split(".")[-1]) == cm

    def test_configmaps(self) -> None:
        cms = {d["metadata"]["name"]: (p, d) for p, d in self.core() if d["kind"] == "ConfigMap"}
        for name, f in SERVING["configmaps"].items():
            path, cm = cms[name]
            assert path == f["file"], name
            assert cm["metadata"]["namespace"] == SERVING["namespace"]
            assert _labels(cm, *f["labels"]) == f["labels"], name
            assert sorted(cm.get("data", {})) == sorted(f["data_keys"]), name

    def test_config_network_keys(self) -> None:
        f = SERVING["configmaps"]["config-network"]
        src = upstream_text(self.R, self.T, f["key_source"])
        assert _const(src, "DefaultIngressClassKey") == f["ingress_class_key"]
        assert _const(src, "IstioIngressClassName") == f["default_ingress_class"]
        parse = _func(src, "NewConfigFromMap")
        legacy = parse.index(f'cm.AsString("{f["ingress_class_legacy_key"]}", &nc.DefaultIngressClass)')
        current = parse.index("cm.AsString(DefaultIngressClassKey, &nc.DefaultIngressClass)")
        assert legacy < current, "the current key is read last, so it wins"
        cms = {d["metadata"]["name"]: d for _, d in self.core() if d["kind"] == "ConfigMap"}
        assert re.search(rf"^\s*{re.escape(f['ingress_class_key'])}:", cms["config-network"]["data"]["_example"], re.M)

    def test_config_deployment_keys(self) -> None:
        f = SERVING["configmaps"]["config-deployment"]
        src = upstream_text(self.R, self.T, f["key_source"])
        assert _const(src, "registriesSkippingTagResolvingKey") == f["registries_skipping_tag_resolving_key"]
        assert f'cm.AsStringSet("{f["registries_skipping_tag_resolving_legacy_key"]}"' in src
        m = re.search(r"RegistriesSkippingTagResolving:\s*sets\.New\(([^)]*)\)", src)
        assert m and sorted(re.findall(r'"([^"]+)"', m.group(1))) == f["registries_skipping_tag_resolving_default"]

    def test_config_domain_keys(self) -> None:
        src = upstream_text(self.R, self.T, "pkg/reconciler/route/config/domain.go")
        parse = _func(src, "NewDomainFromConfigMap")
        assert "configmap.ExampleKey" in parse and "len(internalConfig.Selector) == 0" in parse
        assert "hasDefault = true" in parse

    def test_kubernetes_minimum(self) -> None:
        for repo, tag in ((self.R, self.T), (KOURIER["repo"], KOURIER["tag"]), (EVENTING["repo"], EVENTING["tag"])):
            src = upstream_text(repo, tag, "vendor/knative.dev/pkg/version/version.go")
            assert _const(src, "defaultMinimumVersion") == K["kubernetes_minimum"], repo


class TestKourierUpstream:
    R, T = KOURIER["repo"], KOURIER["tag"]

    def docs(self, tag: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        [path] = KOURIER["release"].values()
        return _release_docs(self.R, tag or self.T, {"paths": [path + "/"], "recursive": False})

    def test_release_is_config(self) -> None:
        rel = upstream_text(self.R, self.T, "hack/release.sh")
        [(name, path)] = KOURIER["release"].items()
        assert f'["{name}"]="{path.rstrip("/")}"' in rel

    def test_ingress_class(self) -> None:
        src = upstream_text(self.R, self.T, "pkg/reconciler/ingress/config/config.go")
        assert _const(src, "KourierIngressClassName") == KOURIER["ingress_class"]

    def test_namespace_services_deployments(self) -> None:
        docs = self.docs()
        [ns] = _of_kind(docs, "Namespace")
        assert ns["metadata"]["name"] == KOURIER["namespace"]
        assert _labels(ns, *KOURIER["namespace_labels"]) == KOURIER["namespace_labels"]
        svcs = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in _of_kind(docs, "Service")}
        for key in ("service", "internal_service"):
            f = KOURIER[key]
            s = svcs[(f["namespace"], f["name"])]
            assert _ports(s) == f["ports"], key
            if "selector" in f:
                assert (s["spec"]["type"], s["spec"]["selector"]) == (f["type"], f["selector"])
        deps: dict[str, list[str]] = {}
        for d in _of_kind(docs, "Deployment"):
            deps.setdefault(d["metadata"]["namespace"], []).append(d["metadata"]["name"])
        assert {ns: sorted(n) for ns, n in deps.items()} == KOURIER["deployments"]
        [gw] = [d for d in _of_kind(docs, "Deployment") if d["metadata"]["namespace"] == KOURIER["namespace"]]
        assert [c["image"] for c in gw["spec"]["template"]["spec"]["containers"]] == [KOURIER["gateway_image"]]

    def test_configmaps_outside_the_serving_config_webhook(self) -> None:
        hook = SERVING["webhooks"]["config.webhook.serving.knative.dev"]["objectSelector"]
        cms = {d["metadata"]["name"]: d for d in _of_kind(self.docs(), "ConfigMap")}
        for name, f in KOURIER["configmaps"].items():
            cm = cms[name]
            assert cm["metadata"]["namespace"] == f["namespace"]
            assert _labels(cm, *f["labels"]) == f["labels"]
            assert _labels(cm).get("app.kubernetes.io/component") not in hook["app.kubernetes.io/component"]

    def test_changes_since_v1_22_0(self) -> None:
        old = next(s for s in K["source"] if s["repo"] == self.R)["compared_with"]
        require_upstream(self.R, old)
        ch = KOURIER["changes_since_v1_22_0"]
        changed = _git(self.R, self.T, "diff", "--name-only", old, self.T).split()
        assert any(p.startswith("config/") for p in changed) == ch["config_changed"]
        assert all(p.startswith((".github/", "vendor/")) or p in ("go.mod", "go.sum") for p in changed), changed
        log = _git(self.R, self.T, "log", "--format=%h %s", f"{old}..{self.T}").splitlines()
        assert sorted(c.split()[0][:9] for c in log) == sorted(c.split()[0] for c in ch["commits"])
        if not ch["config_changed"]:
            assert self.docs(old) == self.docs()


class TestEventingUpstream:
    R, T = EVENTING["repo"], EVENTING["tag"]

    def rel(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        return _release_docs(self.R, self.T, EVENTING["release"][name])

    def test_release_paths(self) -> None:
        gen = upstream_text(self.R, self.T, "hack/generate-yamls.sh")
        var = {"eventing-core": "EVENTING_CORE_YAML", "eventing-crds": "EVENTING_CRDS_YAML",
               "in-memory-channel": "EVENTING_IN_MEMORY_CHANNEL_YAML", "mt-channel-broker": "EVENTING_MT_CHANNEL_BROKER_YAML"}
        for name, spec in EVENTING["release"].items():
            [path] = spec["paths"]
            m = re.search(rf"ko resolve \S+ (-R -f|-Rf|-f) {re.escape(path)} .*\b{var[name]}\b", gen)
            assert m, name
            assert ("R" in m.group(1)) == spec["recursive"], name

    def test_namespace(self) -> None:
        [ns] = _of_kind(self.rel("eventing-core"), "Namespace")
        assert ns["metadata"]["name"] == EVENTING["namespace"]
        assert _labels(ns, *EVENTING["namespace_labels"]) == EVENTING["namespace_labels"]

    def test_crds(self) -> None:
        for name, expected in EVENTING["crds"].items():
            crds = _of_kind(self.rel(name), "CustomResourceDefinition")
            assert sorted(c["metadata"]["name"] for c in crds) == expected, name
            for c in crds:
                assert K["crd_install_label"].items() <= _labels(c).items(), c["metadata"]["name"]

    def test_workloads(self) -> None:
        for name, expected in EVENTING["deployments"].items():
            deps = _of_kind(self.rel(name), "Deployment")
            assert {d["metadata"]["namespace"] for d in deps} == {EVENTING["namespace"]}
            assert sorted(d["metadata"]["name"] for d in deps) == expected, name
        for name, expected in EVENTING["statefulsets"].items():
            assert sorted(d["metadata"]["name"] for d in _of_kind(self.rel(name), "StatefulSet")) == expected

    def test_webhooks(self) -> None:
        real = {}
        for name in EVENTING["release"]:
            real.update({k: {**v, "manifest": name} for k, v in _webhook_facts(self.rel(name)).items()})
        assert set(real) == set(EVENTING["webhooks"])
        for name, f in EVENTING["webhooks"].items():
            r = real[name]
            assert (r["kind"], r["manifest"], r["failurePolicy"], r["service"]) == \
                (f["kind"], f["manifest"], f["failurePolicy"], f["service"]), name
            assert r["rules"] is None, f"{name}: rules are written at run time"
            if "namespaceSelector" in f:
                assert _selector_sets(r["namespaceSelector"]) == f["namespaceSelector"]

    def test_broker_class(self) -> None:
        cls = EVENTING["broker_class"]
        reg = upstream_text(self.R, self.T, "pkg/apis/eventing/register.go")
        assert _const(reg, "MTChannelBrokerClassValue") == cls["mt_channel_broker"]
        assert re.search(r'BrokerClassKey\s*=\s*GroupName \+ "/broker.class"', reg)
        assert _const(reg, "GroupName") + "/broker.class" == cls["annotation"]
        cms = {d["metadata"]["name"]: d for d in _of_kind(self.rel("eventing-core"), "ConfigMap")}
        default = yaml.safe_load(cms["config-br-defaults"]["data"]["default-br-config"])["clusterDefault"]
        assert default["brokerClass"] == cls["cluster_default"]
        channel = yaml.safe_load(cms[default["name"]]["data"]["channel-template-spec"])
        assert channel["kind"] == cls["default_channel_kind"]

    def test_broker_ingress(self) -> None:
        f = EVENTING["broker_ingress"]
        docs = self.rel("mt-channel-broker")
        [svc] = [s for s in _of_kind(docs, "Service") if s["metadata"]["name"] == f["service"]["name"]]
        assert svc["metadata"]["namespace"] == f["service"]["namespace"]
        assert _labels(svc, *f["service"]["labels"]) == f["service"]["labels"]
        assert svc["spec"]["selector"] == f["service"]["selector"]
        assert _ports(svc) == f["service"]["ports"]
        [(path, dep)] = [(p, d) for p, d in docs if d["kind"] == "Deployment"
                         and d["metadata"]["name"] == f["deployment"]["name"]]
        assert path == f["deployment"]["file"]
        pod = dep["spec"]["template"]
        assert _labels(pod, *f["deployment"]["pod_labels"]) == f["deployment"]["pod_labels"]
        [c] = pod["spec"]["containers"]
        assert [{"name": p["name"], "containerPort": p["containerPort"]} for p in c["ports"]] == \
            f["deployment"]["container_ports"]
        handler = upstream_text(self.R, self.T, "pkg/broker/ingress/ingress_handler.go")
        assert re.search(r"nsBrokerName := strings\.Split\(strings\.TrimSuffix\(request\.RequestURI, \"/\"\), \"/\"\)",
                         handler)
        assert "len(nsBrokerName) != 3" in handler and f["request_path"] == "/<namespace>/<broker>"

    def test_sinkbinding_selection(self) -> None:
        f = EVENTING["sinkbinding"]
        core = self.rel("eventing-core")
        [dep] = [d for d in _of_kind(core, "Deployment") if d["metadata"]["name"] == f["deployment"]]
        env = {e["name"]: e.get("value") for c in dep["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
        assert env[f["selection_mode_env"]] == f["selection_mode_default"]
        main = _func(upstream_text(self.R, self.T, "cmd/webhook/main.go"), "main")
        assert "psbinding.WithSelector(psbinding.ExclusionSelector)" in main
        assert f'os.Getenv("{f["selection_mode_env"]}") == "inclusion"' in main
        duck = upstream_text(self.R, self.T, "vendor/knative.dev/pkg/apis/duck/const.go")
        assert _const(duck, "BindingIncludeLabel") == f["include_label"]
        assert _const(duck, "BindingExcludeLabel") == f["exclude_label"]
        ps = upstream_text(self.R, self.T, "vendor/knative.dev/pkg/webhook/psbinding/psbinding.go")
        for mode, const, label, key in (("exclusion", "ExclusionSelector", "BindingExcludeLabel", "exclude_label"),
                                        ("inclusion", "InclusionSelector", "BindingIncludeLabel", "include_label")):
            m = re.search(rf"{const} = metav1\.LabelSelector\{{.*?Key:\s*duck\.{label},\s*Operator:\s*"
                          rf"metav1\.LabelSelectorOp(\w+),\s*Values:\s*\[\]string\{{([^}}]*)\}}", ps, re.S)
            assert m, mode
            sel = f["selectors"][mode]
            assert (sel["key"], sel["operator"]) == (f[key], m.group(1))
            assert sel["values"] == re.findall(r'"([^"]*)"', m.group(2))
        rec = _func(ps, "reconcileMutatingWebhook")
        for field in f["selector_applies_to"]:
            assert f"cur.{field[0].upper()}{field[1:]} = selector" in rec, field
        excluded = sorted(d["metadata"]["name"] for name in EVENTING["release"]
                          for d in _of_kind(self.rel(name), "Deployment")
                          if _labels(d).get(f["exclude_label"]) == "true")
        assert excluded == sorted(f["excluded_system_deployments"])
        namespaces = [d for name in EVENTING["release"] for d in _of_kind(self.rel(name), "Namespace")]
        assert all(f["exclude_label"] not in _labels(n) for n in namespaces)
