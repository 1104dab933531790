"""The lab's kind cluster config, node image and image loading against kind v0.30.0 (tests/lab/facts/kind.yaml).

Offline tests check k8s/kind/cluster.yaml, k8s/install/versions.env and the plan's `kind` steps
against the committed facts; upstream tests re-derive the facts from kind's source at the tag
(skipped when the snapshot is absent).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from typing import Any

import pytest
import yaml
from labfacts import facts, require_upstream, upstream_text

from testbed.lab import layout as L
from testbed.lab.subscribers import generate
from testbed.lab.versions import read_versions, version_tuple

F = facts("kind")
CFG = F["config"]
LOAD = F["load_docker_image"]


def _cluster() -> dict[str, Any]:
    return yaml.safe_load(L.KIND_CONFIG.read_text())


@pytest.fixture(scope="module")
def plan() -> list[Any]:
    from testbed.lab.plan import up_plan
    return up_plan(read_versions(), generate(3))


def _commands(plan: list[Any]) -> list[list[str]]:
    """Each step's command line: its argv, or for a local action the command its --dry-run text shows."""
    out = []
    for step in plan:
        if step.argv:
            out.append(step.argv)
        elif step.show.startswith("kind "):
            out.append(shlex.split(step.show.split("#", 1)[0]))
    return out


# ------------------------------------------------------------------ offline

def test_kind_version_is_the_one_the_facts_describe() -> None:
    assert read_versions()["KIND_MIN_VERSION"] == F["tag"]


def test_node_image_is_kinds_default() -> None:
    """versions.env and cluster.yaml pin kind v0.30.0's default node image, tag and digest."""
    image = read_versions()["KIND_NODE_IMAGE"]
    assert image == F["default_node_image"]
    assert [n.get("image", F["default_node_image"]) for n in _cluster()["nodes"]] == [image] * len(_cluster()["nodes"])
    assert re.fullmatch(r"kindest/node:v1\.34\.\d+@sha256:[0-9a-f]{64}", image)


def test_node_kubernetes_meets_knatives_minimum() -> None:
    tag = F["default_node_image"].split(":", 1)[1].split("@", 1)[0]
    assert version_tuple(tag) >= version_tuple(facts("knative")["kubernetes_minimum"])


def test_cluster_config_uses_only_real_fields() -> None:
    c = _cluster()
    assert (c["apiVersion"], c["kind"]) == (CFG["apiVersion"], CFG["kind"])
    assert set(c) <= set(CFG["cluster_fields"])        # kind decodes strictly: unknown fields fail
    for n in c["nodes"]:
        assert set(n) <= set(CFG["node_fields"])
        assert n.get("role", CFG["node_defaults"]["role"]) in CFG["roles"]
        for m in n.get("extraPortMappings", []):
            assert set(m) <= set(CFG["port_mapping_fields"])
            assert m.get("protocol", "TCP") in CFG["protocols"]
            lo, hi = CFG["port_range"]
            assert lo <= m["containerPort"] <= hi and lo <= m.get("hostPort", 0) <= hi


def test_port_mappings_are_distinct_and_local() -> None:
    for n in _cluster()["nodes"]:
        keys = [(m.get("listenAddress", CFG["listen_address_default"]), m.get("hostPort"), m.get("protocol", "TCP"))
                for m in n.get("extraPortMappings", [])]
        assert len(keys) == len(set(keys)), CFG["duplicate_mapping_error"]
        # explicit, since kind's default would publish on every host address
        assert all(addr == "127.0.0.1" for addr, _, _ in keys)


def test_kind_steps_name_the_configured_cluster(plan: list[Any]) -> None:
    name = _cluster()["name"]
    assert name == L.CLUSTER
    loads = [argv for argv in _commands(plan) if argv[:2] == ["kind", "load"]]
    assert loads
    for argv in loads:
        assert argv[argv.index("--name") + 1] == name


def test_loaded_images_are_built_earlier_in_the_plan(plan: list[Any]) -> None:
    """`kind load docker-image` first `docker image inspect`s each image: it must be built before."""
    built: set[str] = set()
    loads = 0
    for argv in _commands(plan):
        if argv[:2] == ["docker", "build"] and "-t" in argv:
            built.add(argv[argv.index("-t") + 1])
        if argv[:3] == ["kind", "load", "docker-image"]:
            loads += 1
            images = argv[3:argv.index("--name")]
            assert images and set(images) <= built, f"{images}: {LOAD['steps'][0]}"
    assert loads


def test_kind_3795_is_recognised_by_its_real_signature() -> None:
    kindload = pytest.importorskip("testbed.lab.kindload")
    issue = F["issue_3795"]
    output = "\n".join(issue["signature"]).replace("<node>", f"{L.CLUSTER}-control-plane").replace("<hex>", "ab" * 32)
    assert kindload.is_kind_3795(output)
    assert not kindload.is_kind_3795('ERROR: image: "dev.local/x:1" not present locally')


def test_kind_3795_workaround_fits_kind_v0_30() -> None:
    """The fallback saves one platform to a file (image-archive reads no stdin at v0.30.0) and loads that."""
    kindload = pytest.importorskip("testbed.lab.kindload")
    save, load = kindload.archive_commands("dev.local/x:1", L.CLUSTER, "/tmp/x.tar", "linux/amd64")
    assert save[:3] == ["docker", "image", "save"] and "--platform" in save and "/tmp/x.tar" in save
    assert load[:3] == ["kind", "load", "image-archive"]
    archive = load[3]
    assert archive == "/tmp/x.tar" and (archive != "-" or LOAD["image_archive_stdin"])
    assert load[load.index("--name") + 1] == L.CLUSTER


def test_issue_3795_signature_matches_its_example() -> None:
    """The regex the lab can use to recognise kubernetes-sigs/kind#3795 matches the recorded output."""
    issue = F["issue_3795"]
    example = issue["signature"][1].replace("<hex>", "0" * 64)
    assert re.search(issue["signature_regex"], example)
    assert " ".join(LOAD["import_argv"]) in issue["signature"][0]


# ------------------------------------------------------------------ upstream

R, T = F["repo"], F["tag"]


def _git(tag: str, *args: str) -> str:
    d = require_upstream(R, tag)
    return subprocess.run(["git", "--git-dir", str(d), *args], capture_output=True, text=True, check=True).stdout


def _default_image(tag: str) -> str:
    m = re.search(r'const Image = "([^"]+)"', upstream_text(R, tag, "pkg/apis/config/defaults/image.go"))
    assert m
    return m.group(1)


def _struct_yaml_fields(src: str, name: str) -> list[str]:
    m = re.search(rf"^type {name} struct \{{(.*?)^\}}", src, re.S | re.M)
    assert m, name
    body = m.group(1)
    fields = re.findall(r'yaml:"(\w+)', body)
    if re.search(r"^\s*TypeMeta\s+`yaml:\",inline\"", body, re.M):
        fields = [*_struct_yaml_fields(src, "TypeMeta"), *fields]
    return fields


def _func(text: str, name: str) -> str:
    m = re.search(rf"^func (\([^)]*\) )?{re.escape(name)}\(.*?^}}", text, re.S | re.M)
    assert m, f"no func {name}"
    return m.group(0)


def test_upstream_default_node_images() -> None:
    assert _default_image(T) == F["default_node_image"]
    for tag, image in F["default_node_image_by_tag"].items():
        require_upstream(R, tag)
        assert _default_image(tag) == image, tag


def test_upstream_config_types() -> None:
    types = upstream_text(R, T, "pkg/apis/config/v1alpha4/types.go")
    assert _struct_yaml_fields(types, "Cluster") == CFG["cluster_fields"]
    assert _struct_yaml_fields(types, "Node") == CFG["node_fields"]
    assert _struct_yaml_fields(types, "PortMapping") == CFG["port_mapping_fields"]
    assert re.findall(r'^\s*\w+Role NodeRole = "([^"]+)"', types, re.M) == CFG["roles"]
    assert re.findall(r'^\s*PortMappingProtocol\w+ PortMappingProtocol = "([^"]+)"', types, re.M) == CFG["protocols"]


def test_upstream_config_decoding_and_validation() -> None:
    load = upstream_text(R, T, "pkg/internal/apis/config/encoding/load.go")
    assert f'case "{CFG["apiVersion"]}":' in load and f'tm.Kind != "{CFG["kind"]}"' in load
    assert "yamlUnmarshalStrict(raw, cfg)" in load and CFG["strict"]
    validate = upstream_text(R, T, "pkg/internal/apis/config/validate.go")
    lo, hi = CFG["port_range"]
    assert f"port < {lo} || port > {hi}" in validate
    assert f'"{CFG["duplicate_mapping_error"]}"' in validate
    defaults = _func(upstream_text(R, T, "pkg/apis/config/v1alpha4/default.go"), "SetDefaultsNode")
    assert "obj.Image = defaults.Image" in defaults and "obj.Role = ControlPlaneRole" in defaults
    provision = upstream_text(R, T, "pkg/cluster/internal/providers/docker/provision.go")
    assert re.search(rf'if pm.ListenAddress == "" {{.*?pm.ListenAddress = "{re.escape(CFG["listen_address_default"])}"',
                     provision, re.S)


def test_upstream_load_docker_image() -> None:
    cmd = upstream_text(R, T, "pkg/cmd/kind/load/docker-image/docker-image.go")
    save = _func(cmd, "save")
    assert '"' + '", "'.join(LOAD["save_argv"][1:]) + '"' in save and "--platform" not in cmd
    assert '"image", "inspect"' in _func(cmd, "imageID") and "not present locally" in cmd
    assert "nodeutils.LoadImageArchive(node, f)" in _func(cmd, "loadImage")
    util = upstream_text(R, T, "pkg/cluster/nodeutils/util.go")
    m = re.search(r'n\.Command\(((?:"[^"]*", )+)"--snapshotter="\+snapshotter, "-"\)\.SetStdin\(image\)',
                  _func(util, "LoadImageArchive"))
    assert m
    assert re.findall(r'"([^"]*)"', m.group(1)) == LOAD["import_argv"]
    assert '"containerd", "config", "dump"' in _func(util, "getSnapshotter")
    archive = upstream_text(R, T, "pkg/cmd/kind/load/image-archive/image-archive.go")
    assert ("nodeutils.LoadImageArchive(" in archive) == LOAD["image_archive_uses_same_import"]
    assert ("os.Stat(imageTarPath)" in archive) == (not LOAD["image_archive_stdin"])


def test_upstream_load_path_history() -> None:
    paths = ["--", "pkg/cluster/nodeutils/", "pkg/cmd/kind/load/"]
    older, newer = F["source"][0]["compared_with"]
    require_upstream(R, older)
    require_upstream(R, newer)
    assert _git(T, "log", "--format=%h", f"{older}..{T}", *paths).split() == LOAD["commits_v0_29_0_to_v0_30_0"]
    assert _git(T, "log", "--format=%h", f"{T}..{newer}", *paths).split() == LOAD["commits_v0_30_0_to_v0_31_0"]
    last = _git(T, "log", "-1", "--format=%h %s (%ad)", "--date=short", T, *paths).strip()
    assert _same_commit(last, LOAD["last_change_before_v0_30_0"])
    first = _git(T, "log", "--reverse", "--format=%h %s (%ad)", "--date=short", "-S--all-platforms", T,
                 "--", "pkg/cluster/nodeutils/util.go").splitlines()[0]
    assert _same_commit(first, LOAD["all_platforms_since"])


def _same_commit(line: str, fact: str) -> bool:
    """'<abbrev> <subject> (<date>)' lines naming the same commit (abbreviations may differ in length)."""
    (h1, rest1), (h2, rest2) = line.split(" ", 1), fact.split(" ", 1)
    return (h1.startswith(h2) or h2.startswith(h1)) and rest1 == rest2


def test_upstream_failure_text_parts() -> None:
    """kind's own parts of the #3795 output: the ERROR line, the wrapped command, the Command Output line."""
    sig = F["issue_3795"]["signature"]
    main = upstream_text(R, T, "cmd/kind/app/main.go")
    assert 'logger.Errorf("ERROR: %v", err)' in main and 'Command Output: %s' in main
    assert 'errors.Wrap(err, "failed to load image")' in upstream_text(R, T, "pkg/cluster/nodeutils/util.go")
    assert r'command \"%s\" failed with error: %v' in upstream_text(R, T, "pkg/exec/types.go")
    assert sig[0].startswith('ERROR: failed to load image: command "docker exec --privileged -i <node> ctr ')
    assert sig[0].endswith('" failed with error: exit status 1') and sig[1].startswith("Command Output: ctr: ")
