"""`testbed lab doctor`: can this host run the Compose + kind lab? One line per check, with the fix.

`testbed lab up` runs the same checks first (those for the halves it starts) and stops on a
failure. Every check reads the host through a `Host` (commands, /proc, /sys, /dev), so tests
can run each one on this machine for real and on prepared trees and command outputs.

Levels: ``ok``; ``warn`` (the lab may work, slowly or partly); ``fail`` (it cannot work).
What each check prevents is in `PREVENTS` (and in docs/lab.md, which a test keeps in step).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import constants as C
from testbed.lab import ingress as ING
from testbed.lab import layout as L
from testbed.lab.ingress import Ingress
from testbed.lab.versions import version_tuple

DOCKER_MIN = (24, 0, 0)
COMPOSE_MIN = (2, 20, 0)     # depends_on conditions incl. service_completed_successfully, `ps --format json`
KUBECTL_MIN_MINOR = 33       # version skew: kubectl within one minor of the v1.34 node
# kind's known issues ("Pod errors due to too many open files"): the values it recommends
INOTIFY_MIN = {"max_user_watches": 524288, "max_user_instances": 512}
DISK_MIN_GB, DISK_WARN_GB = 10.0, 20.0
MEM_MIN_GB, MEM_WARN_GB = 6.0, 8.0
CPU_WARN = 4
CONTAINERD_SNAPSHOTTER = "io.containerd.snapshotter.v1"

PREVENTS = {
    "docker": "every step: the lab is containers (Compose) and a kind node (a container)",
    "image store": "`kind load docker-image` failing with `ctr: content digest … not found` "
                   "(kind#3795, Docker 29's containerd image store)",
    "rootless": "the UPF and UEs failing to create TUN devices under rootless Docker",
    "docker compose": "`depends_on: condition: service_completed_successfully` and `ps --format json` "
                      "unknown to Compose < 2.20",
    "kind": "a cluster too old for Knative 1.22 (needs Kubernetes >= 1.34)",
    "kubectl": "install and wait steps failing on an old or missing kubectl",
    "sctp": "the gNB's N2 (NGAP over SCTP) never coming up: containers cannot load kernel modules",
    "tun": "the UPF's ogstun and each UE's uesimtun0 failing with `open /dev/net/tun`",
    "ip_forward": "the kind node pulling no images and containers reaching nothing beyond their bridge",
    "avx": "MongoDB >= 5 dying with `illegal instruction` on a CPU without AVX",
    "networks": "the lab's Docker networks shadowing a LAN, VPN or another Docker network "
                "(or `Pool overlaps with other one on this address space`)",
    "ports": "`bind: address already in use` for the kind port mappings or the WebUI",
    "inotify": "kind's pods failing with `too many open files`",
    "disk": "image pulls and builds failing half-way for want of space",
    "memory": "Knative and the 5G core being OOM-killed or starved",
}


@dataclass(frozen=True)
class Check:
    name: str
    level: str             # ok | warn | fail
    message: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.level != "fail"

    def line(self) -> str:
        head = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[self.level]
        return f"{head}  {self.name}: {self.message}" + (f" — fix: {self.fix}" if self.fix else "")


@dataclass
class Host:
    """Where the checks look. Defaults are this machine; tests substitute parts."""

    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    tun: Path = Path("/dev/net/tun")
    euid: int = field(default_factory=os.geteuid)
    runner: Callable[[list[str], float], tuple[int, str]] | None = None
    _info: dict[str, Any] | None = field(default=None, repr=False)

    def run(self, argv: list[str], timeout: float = 20.0) -> tuple[int, str]:
        if self.runner is not None:
            return self.runner(argv, timeout)
        if shutil.which(argv[0]) is None:
            return 127, f"{argv[0]}: not found in PATH"
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            return 127, str(e)
        return p.returncode, (p.stdout + ("\n" + p.stderr if p.stderr else "")).strip()

    def docker_info(self) -> dict[str, Any]:
        """`docker info` as JSON, {} when the engine does not answer (asked once)."""
        if self._info is None:
            rc, out = self.run(["docker", "info", "--format", "{{json .}}"])
            info: dict[str, Any] = {}
            if rc == 0:
                try:
                    first = out.splitlines()[0] if out else "{}"
                    parsed = json.loads(first)
                    info = parsed if isinstance(parsed, dict) else {}
                except (json.JSONDecodeError, IndexError):
                    info = {}
            self._info = info if info.get("ServerVersion") else {}
        return self._info


# ------------------------------------------------------------------ Docker and tools

def check_docker(h: Host) -> Check:
    info = h.docker_info()
    if not info:
        rc, _ = h.run(["docker", "version", "--format", "{{.Client.Version}}"])
        if rc == 127:
            return Check("docker", "fail", "not found in PATH", "install Docker Engine (docs.docker.com/engine/install)")
        return Check("docker", "fail", "the Docker engine does not answer",
                     "start it (`sudo systemctl start docker`) or add yourself to the docker group")
    have = version_tuple(str(info["ServerVersion"]))
    if have and have < DOCKER_MIN:
        return Check("docker", "fail", f"engine {info['ServerVersion']} is too old",
                     f"upgrade to Docker Engine >= {'.'.join(map(str, DOCKER_MIN[:2]))}")
    return Check("docker", "ok", f"engine {info['ServerVersion']} ({info.get('OperatingSystem', '?')})")


def uses_containerd_store(info: dict[str, Any]) -> bool:
    """Docker's containerd image store (the default on fresh Docker 29 installs)."""
    status = info.get("DriverStatus") or []
    return any(isinstance(p, list) and len(p) == 2 and p[1] == CONTAINERD_SNAPSHOTTER for p in status)


def check_image_store(h: Host) -> Check:
    info = h.docker_info()
    if not info:
        return Check("image store", "warn", "unknown (no Docker engine)")
    if uses_containerd_store(info):
        return Check("image store", "ok", "containerd image store: images go to kind by "
                     "`docker image save --platform` + `kind load image-archive` (kind#3795)")
    return Check("image store", "ok", f"classic graph driver {info.get('Driver', '?')}: `kind load docker-image` works")


def check_rootless(h: Host) -> Check:
    opts = [str(o) for o in (h.docker_info().get("SecurityOptions") or [])]
    if any("name=rootless" in o for o in opts):
        return Check("rootless", "fail", "Docker runs rootless", "use rootful Docker: TUN devices and SCTP need it")
    if not h.docker_info():
        return Check("rootless", "warn", "unknown (no Docker engine)")
    return Check("rootless", "ok", "rootful Docker")


def check_compose(h: Host) -> Check:
    rc, out = h.run(["docker", "compose", "version", "--short"])
    have = version_tuple(out)
    if rc != 0 or not have:
        return Check("docker compose", "fail", "the Compose v2 plugin is missing", "install docker-compose-plugin")
    if have < COMPOSE_MIN:
        return Check("docker compose", "fail", f"{out} is too old",
                     f"install Compose >= {'.'.join(map(str, COMPOSE_MIN))}")
    return Check("docker compose", "ok", out)


def check_kind(h: Host, min_version: str) -> Check:
    rc, out = h.run(["kind", "version"])
    if rc == 127:
        return Check("kind", "fail", "not found in PATH", f"install kind >= {min_version} (kind.sigs.k8s.io)")
    have, want = version_tuple(out), version_tuple(min_version)
    if rc != 0 or not have:
        return Check("kind", "fail", f"`kind version` failed ({out or 'no output'})", "reinstall kind")
    if have < want:
        return Check("kind", "fail", f"{out} is too old (Knative 1.22 needs Kubernetes >= 1.34)",
                     f"install kind >= {min_version}")
    return Check("kind", "ok", out)


def check_kubectl(h: Host) -> Check:
    rc, out = h.run(["kubectl", "version", "--client", "-o", "json"])
    if rc == 127:
        return Check("kubectl", "fail", "not found in PATH", "install kubectl >= 1.33 (kubernetes.io/docs/tasks/tools)")
    try:
        minor = int(re.sub(r"\D", "", str(json.loads(out)["clientVersion"]["minor"])))
    except (ValueError, KeyError, TypeError):
        return Check("kubectl", "warn", f"version unknown ({out.splitlines()[0] if out else 'no output'})")
    if minor < KUBECTL_MIN_MINOR:
        return Check("kubectl", "fail", f"1.{minor} is too old for a v1.34 cluster", "install kubectl >= 1.33")
    return Check("kubectl", "ok", f"client 1.{minor}")


# ------------------------------------------------------------------ kernel and CPU

def _sctp_loaded(h: Host) -> bool:
    return (h.proc / "net/sctp").exists() or (h.sys / "module/sctp").exists()


def check_sctp(h: Host, *, try_load: bool = True) -> Check:
    if _sctp_loaded(h):
        return Check("sctp", "ok", "sctp kernel module loaded")
    if try_load and h.euid == 0:
        rc, out = h.run(["modprobe", "sctp"])
        if rc == 0 and _sctp_loaded(h):
            return Check("sctp", "ok", "sctp kernel module loaded now (modprobe sctp)",
                         "to keep it: echo sctp > /etc/modules-load.d/sctp.conf")
        why = out.splitlines()[-1] if out else f"exit {rc}"
        return Check("sctp", "fail", f"kernel module not loaded and `modprobe sctp` failed ({why})",
                     "this kernel has no SCTP: use a Linux host whose kernel has it (linux-modules-extra on Ubuntu)")
    return Check("sctp", "fail", "kernel module not loaded",
                 "sudo modprobe sctp (and add sctp to /etc/modules-load.d/ to keep it)")


def check_tun(h: Host) -> Check:
    try:
        mode = h.tun.stat().st_mode
    except OSError:
        return Check("tun", "fail", f"{h.tun} missing", "sudo modprobe tun")
    if not stat.S_ISCHR(mode):
        return Check("tun", "fail", f"{h.tun} is not a character device", "sudo rm it, then sudo modprobe tun")
    return Check("tun", "ok", f"{h.tun} present")


def check_ip_forward(h: Host) -> Check:
    try:
        value = (h.proc / "sys/net/ipv4/ip_forward").read_text().strip()
    except OSError:
        return Check("ip_forward", "warn", "cannot read net.ipv4.ip_forward")
    if value != "1":
        return Check("ip_forward", "fail", "net.ipv4.ip_forward is 0 (Docker normally sets it: is it run "
                     "with --ip-forward=false?)", "sudo sysctl -w net.ipv4.ip_forward=1")
    return Check("ip_forward", "ok", "net.ipv4.ip_forward = 1")


def mongo_needs_avx(image: str = L.MONGO_IMAGE) -> bool:
    m = re.search(r":(\d+)\.", image)
    return m is not None and int(m.group(1)) >= 5


def check_avx(h: Host, image: str = L.MONGO_IMAGE) -> Check:
    try:
        cpuinfo = (h.proc / "cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    has_avx = any(ln.startswith("flags") and "avx" in ln.split(":", 1)[-1].split()
                  for ln in cpuinfo.splitlines())
    if not mongo_needs_avx(image):
        return Check("avx", "ok", f"not needed by {image} (CPU AVX: {'yes' if has_avx else 'no'})")
    if not has_avx:
        return Check("avx", "fail", f"{image} needs AVX and this CPU has none",
                     "pin mongo:4.4.x in testbed/lab/layout.py (MONGO_IMAGE) and re-render")
    return Check("avx", "ok", f"{image} needs AVX: present")


# ------------------------------------------------------------------ addresses and ports

def host_routes(h: Host) -> list[tuple[ipaddress.IPv4Network, str]]:
    """(destination, device) of the host's IPv4 routes in every table, default routes left out."""
    rc, out = h.run(["ip", "-j", "-4", "route", "show", "table", "all"])
    if rc != 0:
        return []
    try:
        rows = json.loads(out or "[]")
    except json.JSONDecodeError:
        return []
    routes = []
    for r in rows:
        dst = str(r.get("dst", ""))
        if not dst or dst == "default" or r.get("type") in ("broadcast", "local", "multicast"):
            continue
        try:
            routes.append((ipaddress.IPv4Network(dst, strict=False), str(r.get("dev", ""))))
        except ValueError:
            continue
    return routes


def docker_networks(h: Host) -> list[tuple[str, str, list[ipaddress.IPv4Network]]]:
    """(name, id, IPv4 subnets) of every Docker network ([] without an engine)."""
    if not h.docker_info():
        return []
    rc, ids = h.run(["docker", "network", "ls", "-q"])
    if rc != 0 or not ids.split():
        return []
    rc, out = h.run(["docker", "network", "inspect", *ids.split()])
    if rc != 0:
        return []
    try:
        rows = json.loads(out)
    except json.JSONDecodeError:
        return []
    nets = []
    for n in rows:
        subnets = []
        for cfg in ((n.get("IPAM") or {}).get("Config") or []):
            try:
                net = ipaddress.ip_network(str(cfg.get("Subnet", "")), strict=False)
            except ValueError:
                continue
            if isinstance(net, ipaddress.IPv4Network):
                subnets.append(net)
        nets.append((str(n.get("Name", "")), str(n.get("Id", "")), subnets))
    return nets


def network_overlaps(lab: dict[str, str], routes: Iterable[tuple[ipaddress.IPv4Network, str]],
                     dnets: Iterable[tuple[str, str, list[ipaddress.IPv4Network]]],
                     project: str = L.PROJECT) -> list[str]:
    """One line per lab network that overlaps a host route or another Docker network.

    The lab's own networks (Compose names them <project>_<name>) and the routes of their
    bridges (br-<network id[:12]>) are left out, so a running lab does not collide with itself.
    """
    dnets = list(dnets)
    own = {f"{project}_{name}" for name in lab}
    own_bridges = {f"br-{nid[:12]}" for name, nid, _ in dnets if name in own}
    problems = []
    for name, cidr in lab.items():
        mine = ipaddress.IPv4Network(cidr)
        for dst, dev in routes:
            if dev not in own_bridges and mine.overlaps(dst):
                problems.append(f"{name} {mine} overlaps the host route {dst} dev {dev}")
        for dname, _, subnets in dnets:
            if dname in own:
                continue
            for s in subnets:
                if mine.overlaps(s):
                    problems.append(f"{name} {mine} overlaps Docker network {dname} ({s})")
    return problems


def check_networks(h: Host, lab: dict[str, str] | None = None) -> Check:
    lab = lab or L.NETWORKS
    if L.NETWORKS_ERROR and lab is L.NETWORKS:
        return Check("networks", "fail", L.NETWORKS_ERROR, f"correct {L.NETWORKS_FILE.name}")
    routes = host_routes(h)
    problems = network_overlaps(lab, routes, docker_networks(h))
    pool = ipaddress.ip_network(C.UE_POOL_V4)
    problems += [f"UE pool {pool} overlaps the host route {dst} dev {dev}"
                 for dst, dev in routes if pool.overlaps(dst) and dev != L.OGSTUN]
    where = ", ".join(f"{k} {v}" for k, v in lab.items())
    if problems:
        return Check("networks", "fail", "; ".join(problems[:3]) + (" …" if len(problems) > 3 else ""),
                     "choose free subnets in compose/networks.yaml (or `testbed lab render --network "
                     "NAME=CIDR`), then `testbed lab render`")
    return Check("networks", "ok", f"{where}: no overlap with host routes or Docker networks")


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def lab_host_ports(ingress: Ingress = ING.DEFAULT) -> dict[int, str]:
    return {L.INGRESS_HOSTPORT: f"{ingress.title} (kind)", L.BROKER_HOSTPORT: "Broker ingress (kind)",
            L.DETECTOR_HOSTPORT: "detector ingest (kind)", L.WEBUI_PORT: "Open5GS WebUI"}


def check_ports(h: Host, ports: dict[int, str] | None = None,
                is_free: Callable[[int], bool] = _port_free) -> Check:
    ports = ports or lab_host_ports()
    busy = [p for p in ports if not is_free(p)]
    if busy and h.docker_info():
        # held by the lab itself (a re-run of `up`): the kind node or a mec-lab container publishes it
        rc, out = h.run(["docker", "ps", "--format", "{{.Names}}\t{{.Ports}}"])
        ours = set()
        for line in out.splitlines() if rc == 0 else []:
            name, _, published = line.partition("\t")
            if name.startswith((L.PROJECT, L.CLUSTER)):
                ours |= {p for p in busy if f":{p}->" in published}
        busy = [p for p in busy if p not in ours]
    if busy:
        what = ", ".join(f"127.0.0.1:{p} ({ports[p]})" for p in busy)
        return Check("ports", "fail", f"in use by another program: {what}",
                     "stop that program (`ss -ltnp` shows it), or change the ports in testbed/lab/layout.py "
                     "and k8s/kind/cluster.yaml")
    return Check("ports", "ok", "free (or the lab's own): " + ", ".join(str(p) for p in ports))


# ------------------------------------------------------------------ resources

def check_inotify(h: Host) -> Check:
    low = []
    for key, want in INOTIFY_MIN.items():
        try:
            have = int((h.proc / "sys/fs/inotify" / key).read_text().strip())
        except (OSError, ValueError):
            continue
        if have < want:
            low.append(f"fs.inotify.{key}={have} (< {want})")
    if low:
        return Check("inotify", "warn", ", ".join(low),
                     "sudo sysctl -w " + " ".join(f"fs.inotify.{k}={v}" for k, v in INOTIFY_MIN.items()))
    return Check("inotify", "ok", "limits as kind recommends")


def check_disk(h: Host) -> Check:
    root = str(h.docker_info().get("DockerRootDir") or "/var/lib/docker")
    path = Path(root)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return Check("disk", "warn", f"cannot stat {root}")
    free = st.f_bavail * st.f_frsize / 1e9
    if free < DISK_MIN_GB:
        return Check("disk", "fail", f"{free:.1f} GB free on {path}", f"free at least {DISK_MIN_GB:.0f} GB "
                     "(`docker system prune`)")
    if free < DISK_WARN_GB:
        return Check("disk", "warn", f"{free:.1f} GB free on {path}", f"{DISK_WARN_GB:.0f} GB is comfortable")
    return Check("disk", "ok", f"{free:.0f} GB free on {path}")


def check_memory(h: Host, ingress: Ingress = ING.DEFAULT) -> Check:
    """Docker's memory and CPUs against what the lab needs, more with a heavier ingress (Istio)."""
    info = h.docker_info()
    total = float(info.get("MemTotal") or 0) / 2**30     # Docker's view: the VM's on Docker Desktop
    if not total:
        try:
            kb = next(int(ln.split()[1]) for ln in (h.proc / "meminfo").read_text().splitlines()
                      if ln.startswith("MemTotal:"))
            total = kb / 2**20
        except (OSError, StopIteration, ValueError, IndexError):
            return Check("memory", "warn", "unknown")
    cpus = int(info.get("NCPU") or os.cpu_count() or 1)
    need, comfortable = MEM_MIN_GB + ingress.extra_memory_gib, MEM_WARN_GB + ingress.extra_memory_gib
    cpu_warn = CPU_WARN + ingress.extra_cpus
    text = f"{total:.1f} GiB, {cpus} CPUs"
    with_what = f" with {ingress.title}" if ingress.extra_memory_gib or ingress.extra_cpus else ""
    if total < need:
        return Check("memory", "fail", text, f"give Docker at least {need:g} GiB{with_what}")
    if total < comfortable or cpus < cpu_warn:
        return Check("memory", "warn", text, f"{comfortable:g} GiB and {cpu_warn} CPUs are comfortable{with_what}")
    return Check("memory", "ok", text)


# ------------------------------------------------------------------ which checks a command runs

def checks_for(command: str, *, k8s: bool, compose: bool, kind_min: str, host: Host | None = None,
               ingress: Ingress = ING.DEFAULT) -> list[Check]:
    """The checks a command needs; ``k8s``/``compose`` say which halves of the lab it touches."""
    h = host or Host()
    out: list[Check] = []
    if compose or k8s:
        out.append(check_docker(h))
    if command not in ("doctor", "up"):
        if compose:
            out.append(check_compose(h))
        if k8s:
            out += [check_kind(h, kind_min), check_kubectl(h)]
        return out
    out += [check_image_store(h), check_rootless(h)]
    if compose:
        out.append(check_compose(h))
    if k8s:
        out += [check_kind(h, kind_min), check_kubectl(h)]
    if compose:
        out += [check_sctp(h), check_tun(h), check_avx(h)]
    out += [check_ip_forward(h), check_networks(h), check_ports(h, lab_host_ports(ingress))]
    if k8s:
        out.append(check_inotify(h))
    out += [check_disk(h), check_memory(h, ingress if k8s else ING.DEFAULT)]
    return out

