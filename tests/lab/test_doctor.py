"""`testbed lab doctor`: each check on this machine for real, and on prepared trees and programs.

Kernel facts are read from files laid out as /proc and /sys lay them out; route overlaps are
found in real network namespaces; Docker's answers come from a stand-in `docker` on PATH that
prints what the real CLI prints (the JSON of `docker info --format '{{json .}}'`), since no
engine runs here.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.lab import doctor as D
from testbed.lab import layout as L

DOCKER_INFO_CONTAINERD = {
    "ServerVersion": "29.1.3", "OperatingSystem": "Ubuntu 24.04.3 LTS", "Driver": "overlayfs",
    "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]], "MemTotal": 16 * 2**30, "NCPU": 8,
    "DockerRootDir": "/", "SecurityOptions": ["name=apparmor", "name=seccomp,profile=builtin"],
}


def lab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed.lab", *args], cwd=L.REPO, capture_output=True,
                          text=True, timeout=120, env=env)


def fake_docker(bindir: Path, info: dict | None, networks: list[dict] | None = None,
                ps: str = "") -> None:
    """A `docker` that answers info / network ls / network inspect / ps as the real CLI does."""
    bindir.mkdir(parents=True, exist_ok=True)
    data = bindir / "docker-data"
    data.mkdir(exist_ok=True)
    (data / "info").write_text(json.dumps(info) if info else "")
    (data / "networks").write_text(json.dumps(networks or []))
    (data / "ps").write_text(ps)
    script = f"""#!/bin/sh
d={data}
case "$1 $2" in
  "info --format") [ -s $d/info ] || {{ echo "Cannot connect to the Docker daemon" >&2; exit 1; }}; cat $d/info ;;
  "version --format") echo 29.1.3 ;;
  "network ls") python3 -c "import json; [print(n['Id']) for n in json.load(open('$d/networks'))]" ;;
  "network inspect") cat $d/networks ;;
  "ps --format") cat $d/ps ;;
  "compose version") echo 2.40.3 ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"""
    exe = bindir / "docker"
    exe.write_text(script)
    exe.chmod(0o755)


# ------------------------------------------------------------------ kernel, devices, CPU

def test_sctp_tun_forwarding_inotify_avx_from_proc_and_sys(tmp_path: Path) -> None:
    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    (proc / "sys/net/ipv4").mkdir(parents=True)
    (proc / "sys/fs/inotify").mkdir(parents=True)
    (sys_ / "module").mkdir(parents=True)
    h = D.Host(proc=proc, sys=sys_, tun=tmp_path / "nope", euid=1000)
    c = D.check_sctp(h)
    assert c.level == "fail" and "modprobe sctp" in c.fix
    (sys_ / "module/sctp").mkdir()
    assert D.check_sctp(h).level == "ok"
    assert D.check_tun(h).level == "fail"
    (tmp_path / "plain").write_text("")
    assert "not a character device" in D.check_tun(D.Host(tun=tmp_path / "plain")).message
    assert D.check_tun(D.Host(tun=Path("/dev/null"))).level == "ok"          # a character device
    (proc / "sys/net/ipv4/ip_forward").write_text("0\n")
    assert D.check_ip_forward(h).level == "fail"
    (proc / "sys/net/ipv4/ip_forward").write_text("1\n")
    assert D.check_ip_forward(h).level == "ok"
    (proc / "sys/fs/inotify/max_user_watches").write_text("8192\n")
    (proc / "sys/fs/inotify/max_user_instances").write_text("512\n")
    c = D.check_inotify(h)
    assert c.level == "warn" and "max_user_watches=8192" in c.message and "524288" in c.fix
    (proc / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu sse2 sse4_2\n")
    assert D.check_avx(h, "mongo:4.4.29").level == "ok"          # 4.4 runs without AVX
    assert D.check_avx(h, "mongo:7.0.14").level == "fail"
    (proc / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2\n")
    assert D.check_avx(h, "mongo:7.0.14").level == "ok"


def test_sctp_is_loaded_with_modprobe_where_it_can_be(tmp_path: Path) -> None:
    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    (sys_ / "module").mkdir(parents=True)
    calls = []

    def runner(argv: list[str], timeout: float) -> tuple[int, str]:
        calls.append(argv)
        (sys_ / "module/sctp").mkdir()          # what a successful modprobe leaves
        return 0, ""

    c = D.check_sctp(D.Host(proc=proc, sys=sys_, euid=0, runner=runner))
    assert calls == [["modprobe", "sctp"]] and c.level == "ok" and "modules-load.d" in c.fix


def test_this_machine_sctp_check_tells_the_truth() -> None:
    """No kernel SCTP here: the check must say so (and try modprobe as root), never claim ok."""
    loaded = Path("/proc/net/sctp").exists() or Path("/sys/module/sctp").exists()
    c = D.check_sctp(D.Host(), try_load=False)
    assert (c.level == "ok") == loaded


# ------------------------------------------------------------------ Docker's answers

def test_docker_checks_read_docker_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_docker(tmp_path / "bin", DOCKER_INFO_CONTAINERD)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    h = D.Host()
    assert D.check_docker(h).message.startswith("engine 29.1.3")
    c = D.check_image_store(h)
    assert c.level == "ok" and "image-archive" in c.message and "3795" in c.message
    assert D.check_rootless(h).level == "ok"
    assert D.check_compose(h).message == "2.40.3"
    assert D.check_memory(h).message == "16.0 GiB, 8 CPUs"
    old = {**DOCKER_INFO_CONTAINERD, "ServerVersion": "20.10.24", "DriverStatus": [["Backing Filesystem", "extfs"]],
           "Driver": "overlay2", "SecurityOptions": ["name=seccomp", "name=rootless"], "MemTotal": 4 * 2**30}
    fake_docker(tmp_path / "bin", old)
    h = D.Host()
    assert D.check_docker(h).level == "fail" and "too old" in D.check_docker(h).message
    assert "docker-image` works" in D.check_image_store(h).message
    assert D.check_rootless(h).level == "fail"
    assert D.check_memory(h).level == "fail"


def test_no_engine_is_one_failure_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_docker(tmp_path / "bin", None)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    c = D.check_docker(D.Host())
    assert c.level == "fail" and "does not answer" in c.message and "systemctl start docker" in c.fix


def test_overlap_with_docker_networks_but_not_with_the_labs_own(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    nets = [
        {"Name": "bridge", "Id": "a" * 64, "IPAM": {"Config": [{"Subnet": "172.17.0.0/16"}]}},
        {"Name": "kind", "Id": "b" * 64, "IPAM": {"Config": [{"Subnet": "fc00:f853:ccd:e793::/64"},
                                                               {"Subnet": L.NETWORKS["n6"]}]}},
        {"Name": f"{L.PROJECT}_ran", "Id": "c" * 64, "IPAM": {"Config": [{"Subnet": L.NETWORKS["ran"]}]}},
    ]
    fake_docker(tmp_path / "bin", DOCKER_INFO_CONTAINERD, nets)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    problems = D.network_overlaps(L.NETWORKS, [], D.docker_networks(D.Host()))
    assert problems == [f"n6 {L.NETWORKS['n6']} overlaps Docker network kind ({L.NETWORKS['n6']})"]
    # the lab's own bridge route is no collision
    import ipaddress
    own_route = [(ipaddress.IPv4Network(L.NETWORKS["ran"]), "br-" + "c" * 12)]
    assert D.network_overlaps({"ran": L.NETWORKS["ran"]}, own_route, D.docker_networks(D.Host())) == []


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    name = f"mecdoc{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.root
def test_doctor_finds_a_route_that_shadows_a_lab_network(netns: str, tmp_path: Path) -> None:
    """A host whose LAN is the lab's ran subnet: a real interface and route in a namespace."""
    ns = ["ip", "netns", "exec", netns]
    ran = L.NETWORKS["ran"]
    lan_ip = L.host_addr("ran", 77)
    subprocess.run([*ns, "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1"], check=True)
    subprocess.run([*ns, "ip", "addr", "add", f"{lan_ip}/{ran.split('/')[1]}", "dev", "lan0"], check=True)
    for dev in ("lan0", "lan1"):
        subprocess.run([*ns, "ip", "link", "set", dev, "up"], check=True)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    p = subprocess.run([*ns, sys.executable, "-m", "testbed.lab", "doctor", "--skip-k8s"], cwd=L.REPO,
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 1
    line = next(ln for ln in p.stdout.splitlines() if "networks:" in ln)
    assert line.startswith("FAIL") and f"ran {ran} overlaps the host route {ran} dev lan0" in line
    assert "compose/networks.yaml" in line
    # the same namespace without that LAN: no overlap
    subprocess.run([*ns, "ip", "link", "del", "lan0"], check=True)
    p = subprocess.run([*ns, sys.executable, "-m", "testbed.lab", "doctor", "--skip-k8s"], cwd=L.REPO,
                       capture_output=True, text=True, timeout=120, env=env)
    assert next(ln for ln in p.stdout.splitlines() if "networks:" in ln).startswith("ok")


def test_a_busy_port_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        c = D.check_ports(D.Host(runner=lambda a, t: (1, "")), {port: "test service"})
        assert c.level == "fail" and f"127.0.0.1:{port} (test service)" in c.message
    assert D.check_ports(D.Host(runner=lambda a, t: (1, "")), {port: "test service"}).level == "ok"


def test_a_port_held_by_the_lab_itself_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        fake_docker(tmp_path / "bin", DOCKER_INFO_CONTAINERD,
                    ps=f"{L.CLUSTER}-control-plane\t127.0.0.1:{port}->31080/tcp\n")
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
        assert D.check_ports(D.Host(), {port: "Kourier (kind)"}).level == "ok"


# ------------------------------------------------------------------ the command

def test_doctor_command_one_line_per_check_and_exit_1_here() -> None:
    """This machine has no Docker engine and no kernel SCTP: the lab cannot run, and doctor says why."""
    p = lab("doctor")
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    checks = lines[:-1]
    assert all(ln[:4] in ("ok  ", "WARN", "FAIL") for ln in checks), checks
    names = [ln[6:].split(":", 1)[0] for ln in checks]
    assert set(names) == set(D.PREVENTS), names
    assert any(ln.startswith("FAIL  docker:") for ln in checks)
    assert all(" — fix: " in ln for ln in checks if ln.startswith("FAIL"))
    assert lines[-1].startswith(f"{len(checks)} checks:") and "failed" in lines[-1]


def test_every_check_is_explained_in_docs_lab_md() -> None:
    text = (L.REPO / "docs/lab.md").read_text()
    section = text[text.index("## `testbed lab doctor`"):]
    for name in D.PREVENTS:
        assert f"| {name} |" in section, f"docs/lab.md: the doctor table has no row for {name!r}"


def test_up_runs_the_doctor_first(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}       # nothing: no docker, no kind, no ip
    p = lab("up", env=env)
    assert p.returncode == 2
    assert "FAIL  docker: not found in PATH" in p.stderr
    assert "[1/" not in p.stderr                      # no step ran


def test_tun_on_this_machine() -> None:
    dev = Path("/dev/net/tun")
    want = dev.exists() and stat.S_ISCHR(dev.stat().st_mode)
    assert (D.check_tun(D.Host()).level == "ok") == want
