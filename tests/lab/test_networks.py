"""The lab's Docker networks: one user-editable place, no collision with Docker's own pools.

Facts: tests/lab/facts/docker.yaml (moby/moby docker-v29.7.2 daemon/libnetwork/ipamutils/utils.go:
the default address pools; docker/compose v2.40.3 pkg/compose/hash.go and convergence.go: what
makes Compose recreate a container).
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from labfacts import facts, upstream_text

from testbed import constants as C
from testbed.lab import layout as L

DOCKER = facts("docker")


def test_default_subnets_avoid_dockers_pools_kind_and_the_ue_pool() -> None:
    pools = [ipaddress.ip_network(p["base"]) for p in DOCKER["default_address_pools"]]
    kubernetes = [ipaddress.ip_network(n) for n in ("10.96.0.0/12", "10.244.0.0/16")]  # kind's service/pod CIDRs
    ue_pool = ipaddress.ip_network(C.UE_POOL_V4)
    for name, cidr in L.DEFAULT_NETWORKS.items():
        net = ipaddress.ip_network(cidr)
        for other in [*pools, *kubernetes, ue_pool]:
            assert not net.overlaps(other), f"{name} {net} overlaps {other}"
        assert not net.overlaps(ipaddress.ip_network("192.168.100.0/24"))


def test_the_committed_networks_file_is_the_source_of_every_address() -> None:
    assert L.NETWORKS_ERROR == ""
    assert L.load_networks() == L.NETWORKS
    nets = {k: ipaddress.ip_network(v) for k, v in L.NETWORKS.items()}
    for svc, by_net in L.ADDR.items():
        for net, addr in by_net.items():
            assert ipaddress.ip_address(addr) in nets[net], (svc, net, addr)
    compose = yaml.safe_load((L.COMPOSE_DIR / "docker-compose.yaml").read_text())
    assert {k: v["ipam"]["config"][0]["subnet"] for k, v in compose["networks"].items()} == L.NETWORKS
    for k, v in compose["networks"].items():
        rng = ipaddress.ip_network(v["ipam"]["config"][0]["ip_range"])
        assert rng.subnet_of(nets[k])
        static = [ipaddress.ip_address(a[k]) for a in L.ADDR.values() if k in a]
        assert not any(a in rng for a in static), f"{k}: a static address lies in Docker's dynamic range"
    # nothing in compose/ still names an address outside these networks and the UE pool
    allowed = [*nets.values(), ipaddress.ip_network(C.UE_POOL_V4), ipaddress.ip_network("127.0.0.0/8"),
               ipaddress.ip_network("0.0.0.0/32")]
    for f in [*sorted(L.COMPOSE_DIR.rglob("*.yaml")), L.COMPOSE_DIR / "dn/dnsmasq.conf"]:
        text = "\n".join(ln.split("#", 1)[0] for ln in f.read_text().splitlines())    # comments hold examples
        for m in re.finditer(r"\b(\d{1,3}(?:\.\d{1,3}){3})(?:/\d+)?\b", text):
            ip = ipaddress.ip_address(m.group(1))
            assert any(ip in n for n in allowed), f"{f.relative_to(L.REPO)}: {ip} is outside the lab's networks"


@pytest.mark.parametrize(("data", "why"), [
    ({"core": "10.1.0.0/24", "ran": "10.1.0.0/25", "n6": "10.2.0.0/24"}, "ran: 10.1.0.0/25 must be an IPv4"),
    ({"core": "10.1.0.0/24", "ran": "10.1.0.0/24", "n6": "10.2.0.0/24"}, "overlaps network"),
    ({"core": "10.45.3.0/24", "ran": "10.1.1.0/24", "n6": "10.2.0.0/24"}, "overlaps the UE pool"),
    ({"core": "10.1.0.1/24", "ran": "10.1.1.0/24", "n6": "10.2.0.0/24"}, "has host bits set"),
    ({"core": "fd00::/64", "ran": "10.1.1.0/24", "n6": "10.2.0.0/24"}, "must be an IPv4"),
    ({"core": "10.1.0.0/24", "ran": "10.1.1.0/24"}, "needs exactly the keys"),
    (["10.1.0.0/24"], "needs exactly the keys"),
])
def test_bad_networks_are_refused_with_the_reason(data: object, why: str) -> None:
    with pytest.raises(L.LayoutError, match=re.escape(why)):
        L.parse_networks(data)


def _copy_tree(dst: Path) -> Path:
    """The parts of the checkout that `testbed lab render` reads and writes."""
    for d in ("testbed", "upf_tap", "detector", "compose", "k8s", "docker"):
        shutil.copytree(L.REPO / d, dst / d, ignore=shutil.ignore_patterns("__pycache__", "secrets"))
    return dst


def test_one_override_moves_every_address(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path / "repo")
    run = lambda *a: subprocess.run([sys.executable, "-m", "testbed.lab", *a], cwd=root,  # noqa: E731
                                    capture_output=True, text=True, timeout=120,
                                    env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    p = run("render", "--network", "ran=10.77.2.0/24", "--network", "core=10.77.1.0/24")
    assert p.returncode == 0, p.stderr
    assert yaml.safe_load((root / "compose/networks.yaml").read_text()) == {
        "core": "10.77.1.0/24", "ran": "10.77.2.0/24", "n6": L.NETWORKS["n6"]}
    gnb = yaml.safe_load((root / "compose/configs/ueransim/gnb.yaml").read_text())
    assert gnb["linkIp"] == gnb["ngapIp"] == gnb["gtpIp"] == "10.77.2.10"
    assert gnb["amfConfigs"][0]["address"] == "10.77.2.5"
    smf = yaml.safe_load((root / "compose/configs/open5gs/smf.yaml").read_text())
    assert smf["smf"]["pfcp"]["client"]["upf"][0]["address"] == "10.77.1.20"
    compose = (root / "compose/docker-compose.yaml").read_text()
    tap = (root / "compose/docker-compose.tap.yaml").read_text()
    for old in (L.NETWORKS["ran"].rsplit(".", 1)[0] + ".", L.NETWORKS["core"].rsplit(".", 1)[0] + "."):
        assert old not in compose + tap + (root / "compose/configs/open5gs/amf.yaml").read_text()
    assert "TAP_SUBNETS: 10.77.2.0/24,10.77.1.0/24" in tap
    assert run("render", "--check").returncode == 0
    # a bad value changes nothing and says why in one line
    before = (root / "compose/networks.yaml").read_text()
    p = run("render", "--network", "n6=10.77.2.0/24")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "overlaps network n6" in p.stderr
    assert (root / "compose/networks.yaml").read_text() == before
    # a broken file is reported by every command, in one line, without a traceback
    (root / "compose/networks.yaml").write_text("core: [\n")
    for cmd in (["render", "--check"], ["up", "--dry-run"]):
        p = run(*cmd)
        assert p.returncode == 2 and "not valid YAML" in p.stderr and "Traceback" not in p.stderr


def test_docker_default_pools_as_in_moby() -> None:
    """moby/moby docker-v29.7.2 daemon/libnetwork/ipamutils/utils.go: localScopeDefaultNetworks."""
    text = upstream_text("moby/moby", "docker-v29.7.2", "daemon/libnetwork/ipamutils/utils.go")
    local = text[text.index("localScopeDefaultNetworks"):text.index("globalScopeDefaultNetworks")]
    found = [{"base": b, "size": int(s)} for b, s in re.findall(r'MustParsePrefix\("([^"]+)"\), (\d+)', local)]
    assert found == DOCKER["default_address_pools"]


def test_compose_recreates_on_config_hash_not_on_extra_networks() -> None:
    """docker/compose v2.40.3 pkg/compose/hash.go ServiceHash and convergence.go mustRecreate."""
    hash_go = upstream_text("docker/compose", "v2.40.3", "pkg/compose/hash.go")
    body = hash_go[hash_go.index("func ServiceHash"):hash_go.index("func NetworkHash")]
    cleared = re.findall(r"\bo\.([A-Za-z.]+) = ", body)
    assert sorted(cleared) == sorted(DOCKER["compose_recreate"]["hash_ignores"])
    conv = upstream_text("docker/compose", "v2.40.3", "pkg/compose/convergence.go")
    check = conv[conv.index("func checkExpectedNetworks"):conv.index("func checkExpectedVolumes")]
    assert "for net := range expected.Networks" in check        # looks for expected networks only
    assert "configHash, err := ServiceHash(expected)" in conv
