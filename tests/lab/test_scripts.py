"""The shell entrypoints shipped for the UPF and the tap: syntax, and the tap's interface lookup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.lab import layout as L

UPF_ENTRY = L.COMPOSE_DIR / "upf/entrypoint.sh"
TAP_ENTRY = L.DOCKER_DIR / "tap-entrypoint.sh"


def test_upf_entrypoint_parses_and_never_writes_proc_sys() -> None:
    subprocess.run(["bash", "-n", str(UPF_ENTRY)], check=True)
    text = UPF_ENTRY.read_text()
    assert "sysctl -w" not in text and "> /proc/sys" not in text and ">/proc/sys" not in text


def test_tap_entrypoint_parses_as_posix_sh() -> None:
    sh = shutil.which("dash") or "sh"
    subprocess.run([sh, "-n", str(TAP_ENTRY)], check=True)


def test_tap_entrypoint_needs_interfaces() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_")}
    p = subprocess.run(["sh", str(TAP_ENTRY), "--point", "n3"], env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "TAP_SUBNETS" in p.stderr


def test_tap_entrypoint_gives_up_on_a_missing_named_interface() -> None:
    env = {**os.environ, "TAP_IFACES": "nosuchif0", "TAP_WAIT_S": "1"}
    p = subprocess.run(["sh", str(TAP_ENTRY)], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "nosuchif0 did not appear" in p.stderr


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mectap-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ns = ["ip", "-n", name]
        subprocess.run([*ns, "link", "add", "n3x", "type", "veth", "peer", "name", "n3y"], check=True)
        subprocess.run([*ns, "addr", "add", "192.168.100.20/24", "dev", "n3x"], check=True)
        subprocess.run([*ns, "addr", "add", "10.100.0.20/24", "dev", "n3y"], check=True)
        subprocess.run([*ns, "link", "set", "n3x", "up"], check=True)
        subprocess.run([*ns, "link", "set", "n3y", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.root
def test_tap_entrypoint_finds_interfaces_by_subnet(netns: str) -> None:
    env = {**os.environ, "TAP_SUBNETS": "10.200.0.0/24"}
    p = subprocess.run(["ip", "netns", "exec", netns, "sh", str(TAP_ENTRY)], env=env,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "no interface has an address in 10.200.0.0/24" in p.stderr
    bindir = str(Path(sys.executable).parent)        # where this environment's upf-tap lives
    path = f"{bindir}:{os.environ.get('PATH', '')}"
    if shutil.which("upf-tap", path=path) is None:
        pytest.skip("upf-tap is not installed yet: the lookup's success path execs it")
    env = {**os.environ, "PATH": path, "TAP_SUBNETS": "192.168.100.0/24,10.100.0.0/24"}
    p = subprocess.run(["ip", "netns", "exec", netns, "sh", str(TAP_ENTRY), "--help"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert "upf-tap live --help --iface n3x --iface n3y" in p.stderr
    assert p.returncode == 0, p.stderr


def _upf_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "UE_POOL": "10.45.0.0/16", "UE_GATEWAY": "10.45.0.1", "UE_PREFIXLEN": "16",
            "OGSTUN": "ogstun", "OGSTUN_MTU": "1400", "ENABLE_NAT": "false", **extra}


@pytest.mark.root
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun here")
def test_upf_entrypoint_builds_ogstun_in_a_namespace(netns: str) -> None:
    run = ["ip", "netns", "exec", netns, "bash", str(UPF_ENTRY)]
    # ip_forward is off in a fresh namespace: the entrypoint refuses, saying what to set
    p = subprocess.run([*run, "true"], env=_upf_env(), capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "net.ipv4.ip_forward is 0" in p.stderr
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
    p = subprocess.run([*run, "ip", "-o", "addr", "show", "dev", "ogstun"], env=_upf_env(),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "inet 10.45.0.1/16" in p.stdout          # exec "$@" ran after the setup
    link = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "ogstun"], capture_output=True,
                          text=True, check=True).stdout
    assert "mtu 1400" in link and "UP" in link
    # a second start (container restart) finds ogstun and keeps one address
    p = subprocess.run([*run, "ip", "-o", "-4", "addr", "show", "dev", "ogstun"], env=_upf_env(),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.count("inet ") == 1
