"""Offline checks of the lab's Compose files and Kubernetes/Knative manifests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from testbed.lab import checks, plan
from testbed.lab import layout as L
from testbed.lab.subscribers import generate
from testbed.lab.versions import read_versions

COMPOSE_FILES = [L.COMPOSE_DIR / "docker-compose.yaml", L.COMPOSE_DIR / "docker-compose.tap.yaml"]
K8S_DIRS = [L.K8S_DIR / "detector", L.K8S_DIR / "install", L.K8S_DIR / "knative"]


@pytest.fixture(scope="module")
def crd_schemas(shared: Path) -> dict:
    schemas = checks.load_crd_schemas(shared / "knative")
    assert ("serving.knative.dev/v1", "Service") in schemas
    assert ("eventing.knative.dev/v1", "Trigger") in schemas
    return schemas


def k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for f in checks.manifest_files(*K8S_DIRS):
        for i, doc in checks.yaml_documents(f):
            docs.append((f"{f.relative_to(L.REPO)}#{i}", doc))
    return docs


# ------------------------------------------------------------------ Compose

@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_validates_against_the_compose_spec(path: Path, shared: Path) -> None:
    assert checks.compose_errors(path, shared / "compose-spec/compose-spec.json") == []


def test_compose_spec_check_rejects_a_broken_file(tmp_path: Path, shared: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"services": {"x": {"image": "a:1", "cap_add": "NET_ADMIN", "bogus": 1}}}))
    errs = checks.compose_errors(bad, shared / "compose-spec/compose-spec.json")
    assert any("bogus" in e for e in errs) and any("cap_add" in e for e in errs)


def _compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_compose_wiring_is_consistent() -> None:
    base = _compose(COMPOSE_FILES[0])
    services, networks = base["services"], base["networks"]
    seen: dict[str, str] = {}
    import ipaddress
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for net, cfg in (svc.get("networks") or {}).items():
            assert net in networks, f"{name} on unknown network {net}"
            ip = (cfg or {}).get("ipv4_address")
            if ip:
                subnet = networks[net]["ipam"]["config"][0]["subnet"]
                dynamic = networks[net]["ipam"]["config"][0]["ip_range"]
                assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnet), f"{name}: {ip} not in {subnet}"
                assert ipaddress.ip_address(ip) not in ipaddress.ip_network(dynamic), f"{name}: {ip} in {dynamic}"
                assert ip not in seen, f"{ip} used by {seen.get(ip)} and {name}"
                seen[ip] = name
    # every config file a service mounts exists in the repository
    for over in COMPOSE_FILES:
        for name, svc in _compose(over)["services"].items():
            for vol in svc.get("volumes", []):
                src = vol.split(":", 1)[0]
                if src.startswith("."):
                    assert (L.COMPOSE_DIR / src).exists(), f"{over.name}: {name} mounts missing {src}"


def test_least_privilege() -> None:
    base = _compose(COMPOSE_FILES[0])["services"]
    tap = _compose(COMPOSE_FILES[1])["services"]
    with_net_admin = {n for n, s in base.items() if "NET_ADMIN" in s.get("cap_add", [])}
    with_tun = {n for n, s in base.items() if any("/dev/net/tun" in d for d in s.get("devices", []))}
    ues = {n for n in base if n.startswith("ue")}
    assert with_net_admin == with_tun == {"upf"} | ues
    for n, s in {**base, **tap}.items():
        assert not s.get("privileged"), f"{n} is privileged"
        assert "ALL" not in s.get("cap_add", []), f"{n} adds ALL capabilities"
        assert s.get("network_mode") in (None, "service:upf"), n
    for n in ("tap", "tap-n6"):
        assert tap[n]["network_mode"] == "service:upf"
        assert tap[n]["cap_drop"] == ["ALL"] and tap[n]["cap_add"] == ["NET_RAW"]
        assert "user" not in tap[n], "the tap image runs as its own non-root user"


def test_tap_streams_to_the_detector_nodeport_on_the_kind_network() -> None:
    over = _compose(COMPOSE_FILES[1])
    # the UPF (and so the tap, in its namespace) joins kind's network at run time (`docker network
    # connect`, testbed/lab/plan.py), so the tap file never changes `upf` (tests/lab/test_plan.py)
    steps = plan.up_plan(read_versions(), generate(1))
    assert any(s.title.startswith(f"UPF joins Docker network {L.KIND_NETWORK}") for s in steps)
    svc = yaml.safe_load((L.K8S_DIR / "detector/40-service.yaml").read_text())
    node_port = svc["spec"]["ports"][0]["nodePort"]
    kind = yaml.safe_load(L.KIND_CONFIG.read_text())
    for n in ("tap", "tap-n6"):
        cmd = over["services"][n]["command"]
        url = cmd[cmd.index("--detector") + 1]
        assert url == f"http://{kind['name']}-control-plane:{node_port}"


# ------------------------------------------------------------------ Kubernetes / Knative

def test_there_are_knative_objects_to_check() -> None:
    kinds = {d.get("kind") for _, d in k8s_documents() if checks.is_knative(d)}
    assert "SinkBinding" in kinds


@pytest.mark.parametrize("where,doc", [d for d in k8s_documents() if checks.is_knative(d[1])],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_knative_object_validates_against_its_crd(where: str, doc: dict, crd_schemas: dict) -> None:
    assert checks.knative_errors(doc, crd_schemas, where) == []


@pytest.mark.parametrize("where,doc", [d for d in k8s_documents() if not checks.is_knative(d[1])],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_core_object_has_only_known_fields(where: str, doc: dict) -> None:
    assert checks.core_errors(doc, where) == []


def test_crd_check_catches_unknown_fields_and_mixed_filter_dialects(crd_schemas: dict) -> None:
    trigger = {
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": "t"},
        "spec": {"broker": "default", "subscriber": {"uri": "http://x"}, "bogus": 1,
                 "filters": [{"exact": {"type": "a"}, "prefix": {"type": "b"}},
                             {"all": [{"suffix": {"type": "c"}, "cesql": "true"}]},
                             {"not": {"exact": {"type": "d"}}}]},
    }
    errs = checks.knative_errors(trigger, crd_schemas, "t")
    assert any("bogus" in e for e in errs)
    assert any("filters[0]" in e and "2 dialects" in e for e in errs)
    assert any("filters[1].all[0]" in e for e in errs)
    assert not any("filters[2]" in e for e in errs)
    # delivery.timeout: not in the CRD schema but accepted by Knative 1.22 (beta, on by default)
    trigger["spec"] = {"broker": "default", "subscriber": {"uri": "http://x"},
                       "delivery": {"retry": 2, "timeout": "PT5S"}}
    assert checks.knative_errors(trigger, crd_schemas, "t") == []
    trigger["spec"]["delivery"]["timeot"] = "PT5S"
    assert any("timeot" in e for e in checks.knative_errors(trigger, crd_schemas, "t"))
    svc = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": {"template": {"spec": {"containers": [{"image": "a:1", "imagePolicy": "Always"}]}}}}
    assert checks.knative_errors(svc, crd_schemas, "s")
    assert checks.knative_errors({**svc, "apiVersion": "serving.knative.dev/v2"}, crd_schemas, "s")


def test_channel_and_subscriptions_validate_against_their_crds(crd_schemas: dict) -> None:
    """k8s/knative/channel.yaml (the Channel + Subscription path) against the pinned Eventing CRDs
    channel.yaml and subscription.yaml; every Subscription names a Channel of the file."""
    path = L.K8S_DIR / "knative" / "channel.yaml"
    docs = [doc for _, doc in checks.yaml_documents(path)]
    for key in ("Channel", "Subscription"):
        assert ("messaging.knative.dev/v1", key) in crd_schemas
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Channel") >= 1 and kinds.count("Subscription") >= 2
    for i, doc in enumerate(docs):
        assert checks.knative_errors(doc, crd_schemas, f"{path.name}#{i}") == []
    channels = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "Channel"}
    for sub in (d for d in docs if d["kind"] == "Subscription"):
        ref = sub["spec"]["channel"]
        assert (ref["apiVersion"], ref["kind"]) == ("messaging.knative.dev/v1", "Channel")
        assert (sub["metadata"]["namespace"], ref["name"]) in channels
        assert "subscriber" in sub["spec"] or "reply" in sub["spec"]


def test_eventtypes_validate_against_their_crd_and_name_a_broker_of_the_lab(crd_schemas: dict) -> None:
    """k8s/knative/eventtypes.yaml (generated by `python -m detector eventtypes --write`) against the
    pinned eventtype.yaml CRD, in its storage version; each names the Broker of broker.yaml."""
    path = L.K8S_DIR / "knative" / "eventtypes.yaml"
    docs = [doc for _, doc in checks.yaml_documents(path)]
    assert len(docs) >= 20 and {d["kind"] for d in docs} == {"EventType"}
    assert ("eventing.knative.dev/v1beta2", "EventType") in crd_schemas
    broker = yaml.safe_load((L.K8S_DIR / "knative" / "broker.yaml").read_text())
    for i, doc in enumerate(docs):
        assert checks.knative_errors(doc, crd_schemas, f"{path.name}#{i}") == []
        assert doc["apiVersion"] == "eventing.knative.dev/v1beta2"
        assert doc["metadata"]["namespace"] == broker["metadata"]["namespace"]
        assert doc["spec"]["reference"]["name"] == broker["metadata"]["name"]
    typo = {**docs[0], "spec": {**docs[0]["spec"], "sourec": "/x"}}
    assert any("sourec" in e for e in checks.knative_errors(typo, crd_schemas, "typo"))


def test_crd_check_catches_a_filter_on_a_subscription_and_channel_typos(crd_schemas: dict) -> None:
    sub = {"apiVersion": "messaging.knative.dev/v1", "kind": "Subscription", "metadata": {"name": "s"},
           "spec": {"channel": {"apiVersion": "messaging.knative.dev/v1", "kind": "Channel", "name": "c"},
                    "subscriber": {"uri": "http://x"}, "delivery": {"retry": 1, "timeout": "PT1S"}}}
    assert checks.knative_errors(sub, crd_schemas, "s") == []
    sub["spec"]["filter"] = {"attributes": {"type": "mec.app.buy"}}  # a Subscription has no filter
    assert any("filter" in e for e in checks.knative_errors(sub, crd_schemas, "s"))
    ch = {"apiVersion": "messaging.knative.dev/v1", "kind": "Channel", "metadata": {"name": "c"},
          "spec": {"channelTemplate": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel"}}}
    assert checks.knative_errors(ch, crd_schemas, "c") == []
    ch["spec"]["chanelTemplate"] = ch["spec"].pop("channelTemplate")
    assert any("chanelTemplate" in e for e in checks.knative_errors(ch, crd_schemas, "c"))


def test_core_check_catches_unknown_fields_and_types() -> None:
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
           "spec": {"replica": 1, "template": {"spec": {"containers": [
               {"name": "c", "image": "a:1", "ports": [{"containerPort": "80"}]}]}}}}
    errs = checks.core_errors(dep, "d")
    assert any("replica" in e for e in errs) and any("containerPort" in e for e in errs)


def test_sinkbinding_points_at_the_broker_the_functions_use() -> None:
    sb = yaml.safe_load((L.K8S_DIR / "detector/10-sinkbinding.yaml").read_text())
    ref = sb["spec"]["sink"]["ref"]
    ns = sb["metadata"]["namespace"]
    assert (ref["kind"], ref["name"], ns) == ("Broker", L.BROKER, L.NAMESPACE)
    assert sb["spec"]["subject"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "detector"}
    brokers = [(d["metadata"]["name"], d["metadata"].get("namespace")) for _, d in k8s_documents()
               if d.get("kind") == "Broker"]
    if not (L.K8S_DIR / "knative").is_dir():
        pytest.skip("k8s/knative/ (Broker, Triggers, functions) not in the tree yet")
    assert (L.BROKER, L.NAMESPACE) in brokers
    triggers = [d for _, d in k8s_documents() if d.get("kind") == "Trigger"]
    assert triggers and all(t["spec"]["broker"] == L.BROKER for t in triggers)


# ------------------------------------------------------------------ pinning

def test_every_compose_image_is_pinned() -> None:
    for path in COMPOSE_FILES:
        for service, image in checks.compose_images(_compose(path)):
            assert checks.pin_problem(image) is None, f"{path.name}: {service}: {checks.pin_problem(image)}"


def test_every_pod_image_is_pinned() -> None:
    images = [(w, img) for w, d in k8s_documents() for img in checks.pod_images(d)]
    assert images
    for where, img in images:
        assert checks.pin_problem(img) is None, f"{where}: {checks.pin_problem(img)}"


def test_every_dockerfile_base_is_pinned() -> None:
    files = sorted(L.DOCKER_DIR.glob("*.Dockerfile")) + sorted(L.COMPOSE_DIR.rglob("*.Dockerfile"))
    assert len(files) >= 3
    for f in files:
        bases = checks.dockerfile_froms(f)
        assert bases, f"{f}: no FROM"
        for b in bases:
            assert checks.pin_problem(b) is None, f"{f.relative_to(L.REPO)}: {checks.pin_problem(b)}"


@pytest.mark.parametrize("image,ok", [
    ("mongo:4.4.29", True), ("python:3.11.13-slim-bookworm", True),
    ("kindest/node:v1.34.0@sha256:" + "a" * 64, True), ("busybox@sha256:" + "0" * 64, True),
    ("mongo", False), ("mongo:latest", False), ("ghcr.io/x/y:main", False), ("localhost:5000/x", False),
    ("${IMAGE}", False),
])
def test_pin_rule(image: str, ok: bool) -> None:
    assert (checks.pin_problem(image) is None) is ok


def test_kind_node_image_agrees_with_versions_and_supports_knative_1_22() -> None:
    v = read_versions()
    kind = yaml.safe_load(L.KIND_CONFIG.read_text())
    (node,) = kind["nodes"]
    assert node["image"] == v["KIND_NODE_IMAGE"]
    tag = node["image"].split(":", 1)[1].split("@")[0]
    major, minor = (int(x) for x in tag.lstrip("v").split(".")[:2])
    assert (major, minor) >= (1, 34), "Knative 1.22 needs Kubernetes >= 1.34"
    assert "@sha256:" in node["image"]
    ports = {m["containerPort"]: m for m in node["extraPortMappings"]}
    assert set(ports) == {L.KOURIER_NODEPORT, L.BROKER_NODEPORT, L.DETECTOR_NODEPORT}
    assert all(m["listenAddress"] == "127.0.0.1" for m in ports.values())


def test_release_versions_match_the_shared_crds(shared: Path) -> None:
    v = read_versions()
    have = {p.name for p in (shared / "knative").iterdir()}
    assert f"serving-v{v['KNATIVE_SERVING_VERSION'].removeprefix('knative-v')}" in have
    assert f"eventing-v{v['KNATIVE_EVENTING_VERSION'].removeprefix('knative-v')}" in have
    for key in ("KNATIVE_SERVING_VERSION", "KNATIVE_KOURIER_VERSION", "KNATIVE_EVENTING_VERSION"):
        assert v[key].startswith("knative-v1.22."), key


def test_no_accidental_compose_interpolation() -> None:
    # Compose expands $VAR / ${VAR}; a shell `$` meant for the container must be written `$$`
    import re
    for path in COMPOSE_FILES:
        text = path.read_text().replace("$$", "")
        assert not re.search(r"\$", text), f"{path.name}: single $ would be interpolated by Compose"


# ------------------------------------------------------------------ one definition, real paths, newest patch

def test_each_namespace_is_defined_once() -> None:
    """Two Namespace objects for `mec` undo each other's labels on every `kubectl apply` (client-side
    apply drops labels that the last-applied configuration of the other file had)."""
    seen: dict[str, str] = {}
    for where, doc in k8s_documents():
        if doc.get("kind") == "Namespace":
            name = doc["metadata"]["name"]
            assert name not in seen, f"Namespace {name} defined in {seen.get(name)} and {where}"
            seen[name] = where
    assert seen == {L.NAMESPACE: "k8s/detector/00-namespace.yaml#0"}


def test_every_path_named_in_a_lab_file_exists() -> None:
    """Comments and docs in compose/, k8s/ and docker/ name repository files: each must exist."""
    import re

    files = [*L.COMPOSE_DIR.rglob("*.yaml"), *L.K8S_DIR.rglob("*.yaml"), L.VERSIONS_ENV,
             *L.DOCKER_DIR.glob("*"), *L.COMPOSE_DIR.rglob("*.sh")]
    pattern = re.compile(r"\b((?:compose|k8s|docker|testbed|docs|upf_tap|detector)/[\w./-]+\.(?:ya?ml|py|sh|md|env|js|conf))\b")
    for f in files:
        for m in pattern.finditer(f.read_text()):
            rel = m.group(1)
            if f.parent.name == "compose" and rel.startswith("docker/") and not (L.REPO / rel).exists():
                continue
            assert (L.REPO / rel).exists() or (f.parent / rel).exists(), f"{f.relative_to(L.REPO)} names {rel}"


@pytest.mark.parametrize(("key", "repo"), [
    ("KNATIVE_SERVING_VERSION", "knative/serving"),
    ("KNATIVE_KOURIER_VERSION", "knative-extensions/net-kourier"),
    ("KNATIVE_EVENTING_VERSION", "knative/eventing"),
])
def test_knative_pins_are_the_newest_patch_of_their_minor(key: str, repo: str) -> None:
    """The release tags of the real repositories: a pin behind the newest 1.22.x misses its fixes."""
    import subprocess

    from labfacts import require_upstream

    pin = read_versions()[key]
    d = require_upstream(repo, pin)
    minor = pin.rsplit(".", 1)[0]
    tags = subprocess.run(["git", "--git-dir", str(d), "tag", "-l", f"{minor}.*"], capture_output=True,
                          text=True, check=True).stdout.split()
    newest = max(tags, key=lambda t: int(t.rsplit(".", 1)[1]))
    assert pin == newest, f"{key}={pin}, but {repo} has released {newest}"
