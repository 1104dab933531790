"""Istio as the lab's ingress (`testbed lab up --ingress istio`) against net-istio (tests/lab/facts/istio.yaml).

Every fact comes from knative-extensions/net-istio at knative-v1.22.0 (the newest knative-v1.22.x tag):

- versions: hack/update-deps.sh (ISTIO_VERSION 1.29.2), go.mod (istio.io/client-go v1.29.2), the images
  of third_party/istio-latest/*/istio.yaml (docker.io/istio/pilot and proxyv2 :1.29.2);
- release assets: hack/release.sh (net-istio.yaml from config/, istio.yaml = the istio-ci-no-mesh
  profile); the kind profile the lab applies instead: .github/workflows/kind-e2e.yaml;
- Istio's namespace, deployments, CRDs and their labels, the istio-ingressgateway Service (name, type,
  ports), resource requests and replicas, the injection webhooks' labels:
  third_party/istio-latest/istio-kind-no-mesh/istio.yaml and istio-ci-no-mesh/istio.yaml;
- net-istio's deployments, requests, Gateways, webhooks, config-istio: config/*.yaml; config-istio's
  defaults: pkg/reconciler/ingress/config/istio.go;
- the ingress class and its key: vendor/knative.dev/networking/pkg/config/config.go
  (IstioIngressClassName, DefaultIngressClassKey), pkg/reconciler/ingress/controller.go;
- the Kubernetes minimum: vendor/knative.dev/pkg/version/version.go.

Offline tests (no snapshot needed) check the plan, versions.env, testbed/lab/ingress.py, the doctor
and docs/lab.md against the committed facts. TestNetIstioUpstream re-derives every fact from the
snapshot and skips, saying why, when it is absent.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from labfacts import facts, require_upstream, upstream_files, upstream_text

from testbed.lab import doctor as D
from testbed.lab import ingress as ING
from testbed.lab import layout as L
from testbed.lab import plan as P
from testbed.lab.subscribers import generate
from testbed.lab.versions import read_versions, release_manifests

F = facts("istio")
NET, ISTIO = F["net_istio"], F["istio"]
RAW = "https://raw.githubusercontent.com/"
SUBS = generate(3)


# ------------------------------------------------------------------ helpers: our side

def up(ingress: ING.Ingress) -> list[P.Step]:
    return P.up_plan(read_versions(), SUBS, ingress=ingress)


def _args(step: P.Step) -> list[str]:
    """kubectl args of a step without `kubectl --context <ctx>`; [] for anything else."""
    argv = step.argv or []
    if argv[:2] != ["kubectl", "--context"]:
        return []
    return argv[3:]


def _opt(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _index(steps: list[P.Step], *words: str) -> int:
    """The index of the one step whose kubectl args hold all ``words``."""
    found = [i for i, s in enumerate(steps) if _args(s) and all(w in _args(s) for w in words)]
    assert len(found) == 1, f"expected one step with {words}, found {len(found)}"
    return found[0]


def _step(steps: list[P.Step], *words: str) -> list[str]:
    return _args(steps[_index(steps, *words)])


def lab(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "testbed.lab", *args], cwd=L.REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PATH": str(bindir)})


def manifest_path(v: dict[str, str]) -> str:
    """The net-istio path (at KNATIVE_NET_ISTIO_VERSION) that versions.env's ISTIO_MANIFEST downloads."""
    url, tag = v["ISTIO_MANIFEST"], v["KNATIVE_NET_ISTIO_VERSION"]
    if url == f"{v['NET_ISTIO_RELEASE']}/istio.yaml":
        return str(NET["release"]["istio.yaml"])
    prefix = f"{RAW}{NET['repo']}/{tag}/"
    assert url.startswith(prefix), f"ISTIO_MANIFEST is neither the release's istio.yaml nor a file at {tag}: {url}"
    return url.removeprefix(prefix)


def profile_of(path: str) -> dict[str, Any]:
    [p] = [p for p in ISTIO["profiles"].values() if p["path"] == path]
    return dict(p)


def _cpu_m(q: str) -> int:
    return int(q[:-1]) if q.endswith("m") else int(float(q) * 1000)


def _mem_mi(q: str) -> int:
    units = {"Mi": 1, "Gi": 1024, "Ki": 1 / 1024}
    for u, f in units.items():
        if q.endswith(u):
            return math.ceil(float(q[:-2]) * f)
    return math.ceil(int(q) / 2**20)


def totals(profile: dict[str, Any]) -> tuple[int, int]:
    """(CPU millicores, memory MiB) requested by Istio in ``profile`` plus net-istio, as facts."""
    pods = [(profile[d]["pods"], profile[d]["cpu"], profile[d]["memory"]) for d in ISTIO["deployments"]]
    pods += [(1, r["cpu"], r["memory"]) for r in NET["requests"].values()]
    return sum(n * _cpu_m(c) for n, c, _ in pods), sum(n * _mem_mi(m) for n, _, m in pods)


# ------------------------------------------------------------------ offline: versions and manifests

def test_versions_pin_the_facts() -> None:
    v = read_versions()
    assert v["KNATIVE_NET_ISTIO_VERSION"] == NET["tag"]
    assert v["KNATIVE_NET_ISTIO_VERSION"].startswith("knative-v1.22."), "net-istio must match Knative 1.22"
    assert v["ISTIO_VERSION"] == ISTIO["version"]
    assert v["NET_ISTIO_RELEASE"] == f"https://github.com/{NET['repo']}/releases/download/{NET['tag']}"
    assert manifest_path(v) == NET["kind_profile"], "the lab applies net-istio's kind profile"


def test_istio_release_manifests_in_install_order() -> None:
    v = read_versions()
    rel = release_manifests(v, "istio")
    assert list(rel) == ["serving-crds", "serving-core", "istio", "net-istio",
                         "eventing-crds", "eventing-core", "in-memory-channel", "mt-channel-broker"]
    assert rel["net-istio"].rsplit("/", 1) == [v["NET_ISTIO_RELEASE"], "net-istio.yaml"]
    assert "net-istio.yaml" in NET["release"]
    assert rel["istio"] == v["ISTIO_MANIFEST"]
    assert "kourier" not in rel and "kourier" in release_manifests(v)


def test_ingress_module_names_are_the_facts() -> None:
    i, svc = ING.ISTIO, ISTIO["gateway_service"]
    assert i.ingress_class == NET["ingress_class"]
    assert (i.gateway_namespace, i.gateway_service) == (svc["namespace"], svc["name"]) == \
        (ISTIO["namespace"], NET["config_istio"]["default_external_gateway"]["service"])
    assert i.gateway_http_port in {p["port"] for p in svc["ports"] if p["name"].startswith("http")}
    [(key, value)] = ISTIO["crd_label"].items()
    assert f"{key}={value}" == ING.ISTIO_CRD_SELECTOR


def test_doctor_margin_covers_the_requests() -> None:
    """extra_memory_gib / extra_cpus: the kind profile's requests (istiod, gateway, net-istio), rounded up."""
    cpu_m, mem_mi = totals(profile_of(NET["kind_profile"]))
    assert (cpu_m, mem_mi) == (F["totals"]["kind"]["cpu_m"], F["totals"]["kind"]["memory_mi"])
    assert totals(ISTIO["profiles"]["ci"]) == (F["totals"]["ci"]["cpu_m"], F["totals"]["ci"]["memory_mi"])
    assert mem_mi / 1024 <= ING.ISTIO.extra_memory_gib < mem_mi / 1024 + 0.5
    assert ING.ISTIO.extra_cpus == math.ceil(cpu_m / 1000)


# ------------------------------------------------------------------ offline: the plan

def test_istio_plan_installs_in_order_with_its_waits() -> None:
    v, steps = read_versions(), up(ING.ISTIO)
    rel = release_manifests(v, "istio")
    t = "--timeout=300s"
    guard = next(i for i, s in enumerate(steps) if s.title.startswith("the cluster runs no other"))
    order = [
        guard,
        _index(steps, "apply", rel["serving-crds"]),
        _index(steps, "apply", rel["serving-core"]),
        _index(steps, "apply", rel["istio"]),
        _index(steps, "wait", "crd", "-l", ING.ISTIO_CRD_SELECTOR),
        _index(steps, "wait", "deployment", "--all", "-n", ISTIO["namespace"]),
        _index(steps, "apply", rel["net-istio"]),
        _index(steps, "wait", "deployment", "--all", "-n", NET["namespace"]),
        _index(steps, "patch", "configmap/config-network"),
        _index(steps, "patch", "configmap/config-domain"),
        _index(steps, "patch", f"service/{ISTIO['gateway_service']['name']}"),
        _index(steps, "apply", rel["eventing-crds"]),
        _index(steps, "apply", "-R"),                       # Knative Services: net-istio-webhook serves by now
    ]
    assert order == sorted(order), [steps[i].title for i in order]
    assert order[1] == guard + 1, "the guard runs before anything is applied"
    assert all(t in _args(steps[i]) for i in order[4:6] + order[7:8])


def test_istio_waits_use_the_real_names() -> None:
    steps = up(ING.ISTIO)
    crd_wait = _step(steps, "wait", "crd", "-l", ING.ISTIO_CRD_SELECTOR)
    assert "--for=condition=Established" in crd_wait
    [(key, value)] = ISTIO["crd_label"].items()
    assert _opt(crd_wait, "-l") == f"{key}={value}"
    # `deployment --all -n istio-system` covers istiod and the gateway; knative-serving's covers net-istio's
    waits = {_opt(_args(s), "-n") for s in steps if {"wait", "deployment", "--all"} <= set(_args(s))}
    assert {ISTIO["namespace"], NET["namespace"]} <= waits
    assert "kourier-system" not in waits


def test_config_network_patch_sets_the_istio_class() -> None:
    steps = up(ING.ISTIO)
    i = _index(steps, "patch", "configmap/config-network")
    args = _args(steps[i])
    assert _opt(args, "-n") == NET["namespace"] and _opt(args, "--type") == "merge"
    assert json.loads(_opt(args, "-p") or "") == {"data": {NET["ingress_class_key"]: NET["ingress_class"]}}
    assert steps[i].poll >= 60, "retried while Serving's config webhook comes up"


def test_gateway_nodeport_patch_targets_the_real_service() -> None:
    svc = ISTIO["gateway_service"]
    args = _step(up(ING.ISTIO), "patch", f"service/{svc['name']}")
    assert _opt(args, "-n") == svc["namespace"]
    assert _opt(args, "--type") is None, "strategic merge: ports merge by `port`, status-port and https stay"
    body = json.loads(_opt(args, "-p") or "")
    assert body["spec"]["type"] == "NodePort"
    [port] = body["spec"]["ports"]
    http = next(p for p in svc["ports"] if p["name"] == "http2")
    assert port == {"port": http["port"], "nodePort": L.INGRESS_NODEPORT}
    kind = yaml.safe_load(L.KIND_CONFIG.read_text())
    mapped = {m["containerPort"]: m["hostPort"] for n in kind["nodes"] for m in n.get("extraPortMappings", [])}
    assert mapped[L.INGRESS_NODEPORT] == L.INGRESS_HOSTPORT


def test_istio_dry_run_never_mentions_kourier(tmp_path: Path) -> None:
    p = lab("up", "--dry-run", "--ingress", "istio", tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "kourier" not in (p.stdout + p.stderr).lower()
    v = read_versions()
    for url in release_manifests(v, "istio").values():
        assert f"apply -f {url}" in p.stdout
    titles = [ln.split("] ", 1)[1] for ln in p.stdout.splitlines() if ln.startswith("[")]
    ours = [t for t in titles if "Istio" in t or "istio" in t or "Serving" in t]
    assert ours == ["the cluster runs no other Knative ingress than Istio", "Knative Serving CRDs",
                    "Serving CRDs established", "Knative Serving core", "Istio (CRDs, istiod, ingress gateway)",
                    "Istio CRDs established", "Istio ready", "net-istio (Knative's Istio ingress)",
                    "Serving and net-istio ready", "Serving uses Istio", f"Istio on NodePort {L.INGRESS_NODEPORT}"]


# Kourier's Serving/ingress steps as they were before --ingress existed (titles, kubectl args after
# the context; {S} = SERVING_RELEASE, {K} = KOURIER_RELEASE)
KOURIER_BEFORE = [
    ("Knative Serving CRDs", "apply -f {S}/serving-crds.yaml"),
    ("Serving CRDs established", "wait --for=condition=Established crd -l knative.dev/crd-install=true --timeout=300s"),
    ("Knative Serving core", "apply -f {S}/serving-core.yaml"),
    ("Kourier", "apply -f {K}/kourier.yaml"),
    ("Serving ready", "wait --for=condition=Available deployment --all -n knative-serving --timeout=300s"),
    ("Kourier ready", "wait --for=condition=Available deployment --all -n kourier-system --timeout=300s"),
    ("Serving uses Kourier", "patch configmap/config-network -n knative-serving --type merge "
                             "-p {\"data\":{\"ingress-class\":\"kourier.ingress.networking.knative.dev\"}}"),
    ("Knative Service URLs on 127.0.0.1.sslip.io", "patch configmap/config-domain -n knative-serving --type merge "
                                                   "-p {\"data\":{\"127.0.0.1.sslip.io\":\"\"}}"),
    ("Kourier on NodePort 31080", "patch service/kourier -n kourier-system "
                                  "-p {\"spec\":{\"type\":\"NodePort\",\"ports\":[{\"port\":80,\"nodePort\":31080}]}}"),
    ("Knative Eventing CRDs", "apply -f {E}/eventing-crds.yaml"),
]


def test_kourier_plan_is_unchanged(tmp_path: Path) -> None:
    v = read_versions()
    steps = up(ING.KOURIER)
    assert [s.title for s in steps] == [s.title for s in P.up_plan(v, SUBS)]
    assert steps[1].title.startswith("kind cluster") and steps[2].title == "Knative Serving CRDs", "no guard"
    got = [(s.title, " ".join(_args(s))) for s in steps[2:2 + len(KOURIER_BEFORE)]]
    urls = {"{S}": v["SERVING_RELEASE"], "{K}": v["KOURIER_RELEASE"], "{E}": v["EVENTING_RELEASE"]}
    want = [(t, _fill(a, urls)) for t, a in KOURIER_BEFORE]
    assert got == want
    default = lab("up", "--dry-run", tmp_path=tmp_path)
    explicit = lab("up", "--dry-run", "--ingress", "kourier", tmp_path=tmp_path)
    assert default.returncode == explicit.returncode == 0
    assert _plan_lines(default.stdout) == _plan_lines(explicit.stdout)    # prerequisite lines may vary (disk)
    assert "istio" not in default.stdout.lower()


def _fill(text: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        text = text.replace(k, v)
    return text


def _plan_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(("[", "    $ "))]


def test_an_unknown_ingress_is_refused(tmp_path: Path) -> None:
    p = lab("up", "--dry-run", "--ingress", "nginx", tmp_path=tmp_path)
    assert p.returncode == 2 and "invalid choice: 'nginx'" in p.stderr
    with pytest.raises(ING.IngressError):
        ING.get("nginx")


def test_guard_refuses_a_cluster_with_another_ingress() -> None:
    assert ING.conflict("", ING.ISTIO) is None                       # a new cluster: no class set
    assert ING.conflict(NET["ingress_class"] + "\n", ING.ISTIO) is None
    why = ING.conflict(ING.KOURIER.ingress_class, ING.ISTIO)
    assert why and "Kourier" in why and "`testbed lab down`" in why and "--ingress istio" in why
    assert "contour" in (ING.conflict("contour.ingress.networking.knative.dev", ING.ISTIO) or "")
    step = P.ingress_guard_step(ING.ISTIO)
    assert step.action is not None and "configmap/config-network" in step.show and NET["ingress_class"] in step.show


@pytest.mark.parametrize(("stdout", "stderr", "rc", "ok"), [
    ("", 'Error from server (NotFound): namespaces "knative-serving" not found', 1, True),   # a new cluster
    ("\n", "", 0, True),                                                  # Serving, no class set yet
    ("istio.ingress.networking.knative.dev\n", "", 0, True),              # a re-run
    ("kourier.ingress.networking.knative.dev\n", "", 0, False),           # made with Kourier
    ("", "The connection to the server 127.0.0.1:6443 was refused", 1, False),
])
def test_guard_runs_kubectl(stdout: str, stderr: str, rc: int, ok: bool, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard's action for real, with a kubectl that answers as a cluster in each state would."""
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f"#!/bin/sh\nprintf '%b' {json.dumps(stdout)}\nprintf '%b' {json.dumps(stderr)} >&2\nexit {rc}\n")
    kubectl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    action = P.ingress_guard_step(ING.ISTIO).action
    assert action is not None
    if ok:
        action()
    else:
        with pytest.raises(P.StepError, match=r"testbed lab down|refused"):
            action()


def test_status_shows_the_chosen_gateway(tmp_path: Path) -> None:
    steps = P.status_plan(ING.ISTIO)
    assert _step(steps, "get", "deployment,service")[-1] == ISTIO["namespace"]
    assert all(s.may_fail for s in steps)
    p = lab("status", "--dry-run", "--ingress", "istio", tmp_path=tmp_path)
    assert p.returncode == 0 and "kourier" not in p.stdout.lower() and "-n istio-system" in p.stdout


def test_lab_namespace_is_outside_the_mesh() -> None:
    """No injection label on the lab's namespace or workloads: functions run without sidecars."""
    for f in sorted((L.K8S_DIR).rglob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if not isinstance(doc, dict):
                continue
            labels = {**doc.get("metadata", {}).get("labels", {}),
                      **doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})}
            assert not set(labels) & set(ISTIO["injection_labels"]), f
            annotations = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
            assert "sidecar.istio.io/inject" not in annotations, f


def test_doctor_asks_more_for_istio() -> None:
    h = D.Host(_info={"ServerVersion": "29.1.3", "MemTotal": 8 * 2**30, "NCPU": 4})
    assert D.check_memory(h).level == "ok"
    c = D.check_memory(h, ING.ISTIO)
    assert c.level == "fail" and "with Istio" in c.fix
    assert D.lab_host_ports(ING.ISTIO)[L.INGRESS_HOSTPORT] == "Istio (kind)"
    assert D.lab_host_ports()[L.INGRESS_HOSTPORT] == "Kourier (kind)"


def test_docs_state_the_ingress_choice_and_resources() -> None:
    text = (L.REPO / "docs/lab.md").read_text()
    section = text[text.index("## Ingress: Kourier or Istio"):]
    section = section[:section.find("\n## ", 1)]
    for t in ("kind", "ci"):
        cpu_m, mem_mi = F["totals"][t]["cpu_m"], F["totals"][t]["memory_mi"]
        assert f"{cpu_m}m CPU" in section and f"{mem_mi} Mi" in section, t
    v = read_versions()
    for key in ("KNATIVE_NET_ISTIO_VERSION", "ISTIO_VERSION"):
        assert v[key] in section, key
    assert "--ingress istio" in section and "cannot be measured here" in section


# ------------------------------------------------------------------ upstream: re-derive the facts

def _load(text: str) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(text, Loader=loader) if isinstance(d, dict) and d.get("kind")]


@cache
def _docs(path: str) -> list[dict[str, Any]]:
    """The objects of one file, or of every YAML file directly under a directory (`ko resolve -f dir/`)."""
    if not path.endswith("/"):
        return _load(upstream_text(NET["repo"], NET["tag"], path))
    d = path.rstrip("/")
    files = [f for f in upstream_files(NET["repo"], NET["tag"], d)
             if posixpath.dirname(f) == d and f.endswith((".yaml", ".yml"))]
    return [doc for f in files for doc in _load(upstream_text(NET["repo"], NET["tag"], f))]


def _of(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _const(text: str, name: str) -> str:
    m = re.search(rf"\b{re.escape(name)}\s*=\s*\"([^\"]*)\"", text)
    assert m, f"no constant {name}"
    return m.group(1)


def _requests(dep: dict[str, Any]) -> tuple[str, str]:
    [c] = dep["spec"]["template"]["spec"]["containers"]
    r = c["resources"]["requests"]
    return str(r["cpu"]), str(r["memory"])


def _ports(svc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: p[k] for k in ("name", "port", "targetPort")} for p in svc["spec"]["ports"]]


class TestNetIstioUpstream:
    R, T = NET["repo"], NET["tag"]

    def text(self, path: str) -> str:
        return upstream_text(self.R, self.T, path)

    def test_pin_is_the_newest_knative_1_22_tag(self) -> None:
        d = require_upstream(self.R, self.T)
        tags = subprocess.run(["git", "--git-dir", str(d), "tag", "-l", "knative-v1.22.*"], capture_output=True,
                              text=True, check=True).stdout.split()
        assert max(tags, key=lambda t: int(t.rsplit(".", 1)[1])) == read_versions()["KNATIVE_NET_ISTIO_VERSION"]

    def test_release_assets(self) -> None:
        rel = self.text("hack/release.sh")
        [(name, path)] = [(k, v) for k, v in NET["release"].items() if k != "istio.yaml"]
        assert f'["{name}"]="{path.rstrip("/")}"' in rel
        assert 'ko resolve ${KO_FLAGS} -f ${config}/' in rel
        m = re.search(r'ISTIO_YAML="\$\(dirname \$0\)/\.\./([^"]+)"', rel)
        assert m and m.group(1) == NET["release"]["istio.yaml"]
        assert "all_yamls+=(${ISTIO_YAML})" in rel

    def test_kind_profile_is_what_net_istios_kind_e2e_applies(self) -> None:
        wf = yaml.safe_load(self.text(".github/workflows/kind-e2e.yaml"))
        assert "no-mesh" in wf["jobs"]["test"]["strategy"]["matrix"]["istio-profile"]
        assert "kubectl apply -f ./third_party/istio-latest/istio-kind-${{ matrix.istio-profile }}" \
            in self.text(".github/workflows/kind-e2e.yaml")
        d = posixpath.dirname(NET["kind_profile"])
        assert upstream_files(self.R, self.T, d) == [NET["kind_profile"]], "the profile is istio.yaml alone"

    def test_istio_version(self) -> None:
        assert re.search(rf'^ISTIO_VERSION="{re.escape(ISTIO["version"])}"$', self.text("hack/update-deps.sh"), re.M)
        assert re.search(rf"^\s*istio\.io/client-go {re.escape(ISTIO['client_go'])}$", self.text("go.mod"), re.M)
        for profile in ISTIO["profiles"].values():
            images = {c["image"] for d in _of(_docs(profile["path"]), "Deployment").values()
                      for c in d["spec"]["template"]["spec"]["containers"]}
            assert sorted(images) == ISTIO["images"], profile["path"]
            assert all(i.endswith(f":{ISTIO['version']}") for i in images)

    @pytest.mark.parametrize("name", sorted(ISTIO["profiles"]))
    def test_istio_objects(self, name: str) -> None:
        profile = ISTIO["profiles"][name]
        docs = _docs(profile["path"])
        assert list(_of(docs, "Namespace")) == [ISTIO["namespace"]]
        deps = _of(docs, "Deployment")
        assert sorted(deps) == ISTIO["deployments"]
        assert {d["metadata"]["namespace"] for d in deps.values()} == {ISTIO["namespace"]}
        crds = _of(docs, "CustomResourceDefinition")
        assert sorted(crds) == ISTIO["crds"]
        for crd in crds.values():
            labels = crd["metadata"].get("labels", {})
            assert ISTIO["crd_label"].items() <= labels.items()
            assert ("knative.dev/crd-install" in labels) == ISTIO["crd_install_label_present"]
        istio_groups = {c["spec"]["group"] for c in crds.values()}
        custom = [d for d in docs if d["apiVersion"].split("/")[0] in istio_groups]
        assert len(custom) == ISTIO["custom_resources"], "one `kubectl apply` is safe only without Istio CRs"
        svc = _of(docs, "Service")[ISTIO["gateway_service"]["name"]]
        f = ISTIO["gateway_service"]
        assert (svc["metadata"]["namespace"], svc["spec"]["type"], svc["spec"]["selector"]) == \
            (f["namespace"], f["type"], f["selector"])
        assert _ports(svc) == f["ports"]
        gw_labels = deps[f["name"]]["spec"]["template"]["metadata"]["labels"]
        assert f["selector"].items() <= gw_labels.items()

    @pytest.mark.parametrize("name", sorted(ISTIO["profiles"]))
    def test_istio_requests_and_replicas(self, name: str) -> None:
        profile = ISTIO["profiles"][name]
        docs = _docs(profile["path"])
        hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in _of(docs, "HorizontalPodAutoscaler").values()}
        for dep_name, dep in _of(docs, "Deployment").items():
            replicas = int(dep["spec"].get("replicas", 1))
            hpa = hpas.get(dep_name, {}).get("spec", {})
            pods, max_pods = max(replicas, hpa.get("minReplicas", 0)), hpa.get("maxReplicas", replicas)
            cpu, mem = _requests(dep)
            assert {"pods": pods, "max_pods": max_pods, "cpu": cpu, "memory": mem} == profile[dep_name], dep_name

    def test_sidecar_injection_needs_labels_the_lab_does_not_set(self) -> None:
        for profile in ISTIO["profiles"].values():
            hooks = _of(_docs(profile["path"]), "MutatingWebhookConfiguration")
            keys: set[str] = set()
            for cfg in hooks.values():
                for w in cfg["webhooks"]:
                    # every injection webhook requires a label to be present (In / no NotIn-only selector)
                    required = [e["key"] for sel in (w.get("namespaceSelector"), w.get("objectSelector")) if sel
                                for e in sel.get("matchExpressions", []) if e["operator"] == "In"]
                    assert required, w["name"]
                    keys |= set(required)
            assert keys <= set(ISTIO["injection_labels"])

    def test_net_istio_workloads_and_requests(self) -> None:
        docs = _docs(NET["release"]["net-istio.yaml"])
        deps = _of(docs, "Deployment")
        assert sorted(deps) == NET["deployments"]
        for name, dep in deps.items():
            assert dep["metadata"]["namespace"] == NET["namespace"]
            assert "replicas" not in dep["spec"]
            cpu, mem = _requests(dep)
            assert {"cpu": cpu, "memory": mem} == NET["requests"][name]

    def test_net_istio_istio_resources_and_gateways(self) -> None:
        docs = _docs(NET["release"]["net-istio.yaml"])
        crds = {c.split(".", 1)[1] for c in ISTIO["crds"]}
        found: dict[str, list[str]] = {}
        for d in docs:
            if d["apiVersion"].split("/")[0] in crds:
                found.setdefault(d["kind"], []).append(d["metadata"]["name"])
        assert {k: sorted(v) for k, v in found.items()} == NET["istio_resources"]
        for name, f in NET["gateways"].items():
            gw = _of(docs, "Gateway")[name]
            [server] = gw["spec"]["servers"]
            assert (gw["metadata"]["namespace"], gw["spec"]["selector"], server["port"]["number"]) == \
                (f["namespace"], f["selector"], f["port"])
        f = NET["local_gateway_service"]
        svc = _of(docs, "Service")[f["name"]]
        assert (svc["metadata"]["namespace"], svc["spec"]["type"], svc["spec"]["selector"]) == \
            (f["namespace"], f["type"], f["selector"])
        assert _ports(svc) == f["ports"]

    def test_net_istio_webhooks(self) -> None:
        docs = _docs(NET["release"]["net-istio.yaml"])
        for name, f in NET["webhooks"].items():
            [w] = _of(docs, f["kind"])[name]["webhooks"]
            assert (w["name"], w["failurePolicy"], w["objectSelector"]) == (name, f["failurePolicy"], f["objectSelector"])
            assert w["clientConfig"]["service"] == {"name": "net-istio-webhook", "namespace": NET["namespace"]}
            assert "rules" not in w, "rules are written by the webhook pod at run time"
        cm = _of(docs, "ConfigMap")["config-istio"]
        labels = cm["metadata"]["labels"]
        assert {k: labels[k] for k in NET["config_istio"]["labels"]} == NET["config_istio"]["labels"]
        assert sorted(cm["data"]) == NET["config_istio"]["data_keys"]
        config_hook = NET["webhooks"]["config.webhook.istio.networking.internal.knative.dev"]
        assert config_hook["objectSelector"]["matchLabels"].items() <= labels.items()

    def test_config_istio_defaults(self) -> None:
        src = self.text("pkg/reconciler/ingress/config/istio.go")
        ext, local = NET["config_istio"]["default_external_gateway"], NET["config_istio"]["default_local_gateway"]
        assert _const(src, "KnativeIngressGateway") == ext["name"]
        assert _const(src, "IstioIngressGateway") == ext["service"]
        assert _const(src, "KnativeLocalGateway") == local["name"] == local["service"]
        assert _const(src, "IstioNamespace") == ext["service_namespace"] == local["service_namespace"] \
            == ISTIO["namespace"]
        assert "ServiceURL: network.GetServiceHostname(IstioIngressGateway, IstioNamespace)" in src
        assert "ServiceURL: network.GetServiceHostname(KnativeLocalGateway, IstioNamespace)" in src
        assert "default:\n\t\tdefaultValues(ret)" in src, "an empty config-istio takes the defaults"

    def test_ingress_class(self) -> None:
        src = self.text("vendor/knative.dev/networking/pkg/config/config.go")
        assert _const(src, "IstioIngressClassName") == NET["ingress_class"]
        assert _const(src, "DefaultIngressClassKey") == NET["ingress_class_key"]
        ctl = self.text("pkg/reconciler/ingress/controller.go")
        assert "AnnotationFilterFunc(networking.IngressClassAnnotationKey, netconfig.IstioIngressClassName, true)" in ctl

    def test_kubernetes_minimum(self) -> None:
        src = self.text("vendor/knative.dev/pkg/version/version.go")
        assert _const(src, "defaultMinimumVersion") == NET["kubernetes_minimum"] == \
            facts("knative")["kubernetes_minimum"]
