"""Namespaces, veth links, TUN devices, addresses and routes of one sim lab.

Layout (one namespace per node, every name prefixed with ``mec<lab_id>-`` so that
several labs coexist; link and TUN names are the same in every lab because each
lives inside its own namespace)::

    mec<id>-ue<n>  uesimtun<n-1> (UE n's IP/32, default route)       one namespace per UE
        :  (the gNB process holds the TUN fd: the "radio")
    mec<id>-gnb    n3 192.168.100.10 ══ N3 (GTP-U) ══ n3 192.168.100.20   mec<id>-upf
    mec<id>-smf    n4 192.168.104.10 ── N4 (PFCP)  ── n4 192.168.104.20   mec<id>-upf
                                    ogstun 10.45.0.1/16 (UPF's N6 side) ─ kernel routing
    mec<id>-dn     n6 10.200.0.10/.11/.53 ── N6 ── n6 10.200.0.1          mec<id>-upf

Teardown deletes every namespace named mec<id>-<role> of the lab, after
killing whatever still runs inside it: a namespace (and its links) only goes away
once no process or socket holds it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from testbed.constants import UE_GATEWAY_V4, UE_POOL_V4, ue_ipv4
from testbed.sim.tun import in_netns

# --- link subnets and DN addresses (the lead may move these to testbed/constants.py) ---
N3_PREFIX_LEN = 24
GNB_N3_IP = "192.168.100.10"
UPF_N3_IP = "192.168.100.20"
N4_PREFIX_LEN = 24
SMF_N4_IP = "192.168.104.10"
UPF_N4_IP = "192.168.104.20"
N6_PREFIX_LEN = 24
DN_SUBNET = "10.200.0.0/24"
UPF_N6_IP = "10.200.0.1"
SHOP_IP = "10.200.0.10"      # the main application, shop.mec.local
MQTT_IP = "10.200.0.11"      # mosquitto, mqtt.mec.local
DNS_IP = "10.200.0.53"       # dnsmasq, answers *.mec.local
DN_DOMAIN = "mec.local"
SHOP_HOST = "shop." + DN_DOMAIN
MQTT_HOST = "mqtt." + DN_DOMAIN
SHOP_PORT = 80
MQTT_BROKER_PORT = 1883

# --- names ---
LAB_PREFIX = "mec"
IF_N3 = "n3"
IF_N4 = "n4"
IF_N6 = "n6"
UPF_TUN = "ogstun"
UPF_TUN_PREFIX_LEN = int(UE_POOL_V4.split("/")[1])

# --- MTU: the UE's packets must fit in one N3 frame once tunnelled ---
N3_MTU = 1500
# outer IPv4 20 + UDP 8 + GTP-U 8 + optional fields (seq, N-PDU, next type) 4
# + PDU Session Container (TS 38.415) 4 = 44 bytes
GTPU_OVERHEAD = 20 + 8 + 8 + 4 + 4
UE_MTU = N3_MTU - GTPU_OVERHEAD   # 1456, on uesimtun* and on ogstun

LAB_ID_RE = re.compile(r"^[a-z0-9]{1,8}$")
NETNS_ETC = Path("/etc/netns")   # `ip netns exec` bind-mounts files from here (resolv.conf)


class TopologyError(RuntimeError):
    """A namespace/link command failed; the message is one line."""


def check_lab_id(lab_id: str) -> str:
    if not LAB_ID_RE.match(lab_id):
        raise TopologyError(f"bad lab id {lab_id!r}: use 1-8 lower-case letters or digits")
    return lab_id


def ns_prefix(lab_id: str) -> str:
    return f"{LAB_PREFIX}{lab_id}-"


def ns_name(lab_id: str, role: str) -> str:
    """Namespace of a node: role is gnb, upf, smf, dn or ue<n>."""
    return ns_prefix(lab_id) + role


def ue_ns(lab_id: str, n: int) -> str:
    return ns_name(lab_id, f"ue{n}")


def ue_tun(n: int) -> str:
    """TUN of UE n (n from 1): uesimtun0 for the first UE, as UERANSIM names it."""
    return f"uesimtun{n - 1}"


def _run(argv: list[str], stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise TopologyError(f"{' '.join(argv[:6])}: {err[-1] if err else 'exit ' + str(proc.returncode)}")
    return proc.stdout


def _ip_batch(ns: str, lines: Iterable[str]) -> None:
    """Many `ip` commands inside one namespace in one process (fast with many UEs)."""
    _run(["ip", "-n", ns, "-batch", "-"], stdin="\n".join(lines) + "\n")


def _sysctl(ns: str, *settings: str) -> None:
    """Set net.* sysctls of a namespace (/proc/sys/net follows the calling thread's namespace)."""
    with in_netns(ns):
        for setting in settings:
            key, value = setting.split("=", 1)
            try:
                Path("/proc/sys", *key.split(".")).write_text(value + "\n")
            except OSError as e:
                raise TopologyError(f"sysctl {key} in {ns}: {e.strerror or e}") from e


def list_netns() -> list[str]:
    out = _run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ours(lab_id: str) -> re.Pattern[str]:
    # exact role names only: another tool's "mec<something>-…" namespace is never ours
    return re.compile(re.escape(ns_prefix(lab_id)) + r"(gnb|upf|smf|dn|ue[0-9]+)$")


def lab_netns(lab_id: str) -> list[str]:
    """Namespaces of this lab that exist now."""
    ours = _ours(lab_id)
    return [ns for ns in list_netns() if ours.match(ns)]


def netns_pids(ns: str) -> list[int]:
    try:
        out = _run(["ip", "netns", "pids", ns])
    except TopologyError:
        return []
    return [int(p) for p in out.split() if p.isdigit()]


def kill_pids(pids: Iterable[int], grace: float = 3.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL what is left."""
    pids = [p for p in pids if p != os.getpid()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in alive:
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)   # reap our own children so they do not linger as zombies
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@dataclass
class Topology:
    lab_id: str
    ues: int

    def __post_init__(self) -> None:
        check_lab_id(self.lab_id)
        if not 1 <= self.ues <= 1000:
            raise TopologyError(f"bad UE count {self.ues}: use 1..1000")

    @property
    def gnb_ns(self) -> str:
        return ns_name(self.lab_id, "gnb")

    @property
    def upf_ns(self) -> str:
        return ns_name(self.lab_id, "upf")

    @property
    def smf_ns(self) -> str:
        return ns_name(self.lab_id, "smf")

    @property
    def dn_ns(self) -> str:
        return ns_name(self.lab_id, "dn")

    def ue_namespaces(self) -> list[str]:
        return [ue_ns(self.lab_id, n) for n in range(1, self.ues + 1)]

    def namespaces(self) -> list[str]:
        return [self.gnb_ns, self.upf_ns, self.smf_ns, self.dn_ns, *self.ue_namespaces()]

    def build(self) -> None:
        """Create everything. On error, raises; the caller tears down (teardown is idempotent)."""
        existing = lab_netns(self.lab_id)
        if existing:
            raise TopologyError(f"lab {self.lab_id} already exists ({existing[0]}): run `testbed sim down`")
        for ns in self.namespaces():
            _run(["ip", "netns", "add", ns])
        for ns in (self.gnb_ns, self.upf_ns, self.smf_ns, self.dn_ns):
            # no IPv6 on the core links: keeps N3/N4/N6 free of ND/MLD chatter
            _sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        _sysctl(self.upf_ns, "net.ipv4.ip_forward=1")
        # veths created directly inside their namespaces: no name clash in the root namespace
        _run(["ip", "link", "add", IF_N3, "netns", self.gnb_ns, "type", "veth",
              "peer", "name", IF_N3, "netns", self.upf_ns])
        _run(["ip", "link", "add", IF_N4, "netns", self.smf_ns, "type", "veth",
              "peer", "name", IF_N4, "netns", self.upf_ns])
        _run(["ip", "link", "add", IF_N6, "netns", self.dn_ns, "type", "veth",
              "peer", "name", IF_N6, "netns", self.upf_ns])
        _ip_batch(self.gnb_ns, [
            "link set lo up",
            f"link set {IF_N3} mtu {N3_MTU} up",
            f"addr add {GNB_N3_IP}/{N3_PREFIX_LEN} dev {IF_N3}",
        ])
        _ip_batch(self.smf_ns, [
            "link set lo up",
            f"link set {IF_N4} up",
            f"addr add {SMF_N4_IP}/{N4_PREFIX_LEN} dev {IF_N4}",
        ])
        _ip_batch(self.upf_ns, [
            "link set lo up",
            f"link set {IF_N3} mtu {N3_MTU} up",
            f"addr add {UPF_N3_IP}/{N3_PREFIX_LEN} dev {IF_N3}",
            f"link set {IF_N4} up",
            f"addr add {UPF_N4_IP}/{N4_PREFIX_LEN} dev {IF_N4}",
            f"link set {IF_N6} up",
            f"addr add {UPF_N6_IP}/{N6_PREFIX_LEN} dev {IF_N6}",
            f"tuntap add {UPF_TUN} mode tun",
            f"link set {UPF_TUN} mtu {UE_MTU} up",
            f"addr add {UE_GATEWAY_V4}/{UPF_TUN_PREFIX_LEN} dev {UPF_TUN}",
        ])
        _ip_batch(self.dn_ns, [
            "link set lo up",
            f"link set {IF_N6} up",
            f"addr add {SHOP_IP}/{N6_PREFIX_LEN} dev {IF_N6}",
            f"addr add {MQTT_IP}/{N6_PREFIX_LEN} dev {IF_N6}",
            f"addr add {DNS_IP}/{N6_PREFIX_LEN} dev {IF_N6}",
            f"route add {UE_POOL_V4} via {UPF_N6_IP}",
        ])
        for n in range(1, self.ues + 1):
            ns, tun = ue_ns(self.lab_id, n), ue_tun(n)
            _ip_batch(ns, [
                "link set lo up",
                f"tuntap add {tun} mode tun",
                f"link set {tun} mtu {UE_MTU} up",
                f"addr add {ue_ipv4(n)}/32 dev {tun}",
                f"route add default dev {tun}",
            ])
            etc = NETNS_ETC / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(f"nameserver {DNS_IP}\nsearch {DN_DOMAIN}\n")

    def teardown(self) -> list[str]:
        return teardown_lab(self.lab_id)


def teardown_lab(lab_id: str) -> list[str]:
    """Remove every namespace (and so every link and TUN) of the lab; never raises.

    Returns the problems met (empty when all went away).
    """
    problems: list[str] = []
    ours = _ours(check_lab_id(lab_id))
    try:
        names = lab_netns(lab_id)
    except TopologyError as e:
        return [str(e)]
    for ns in names:
        kill_pids(netns_pids(ns))
    for ns in names:
        try:
            _run(["ip", "netns", "del", ns])
        except TopologyError as e:
            problems.append(str(e))
    if NETNS_ETC.is_dir():
        for d in NETNS_ETC.iterdir():
            if ours.match(d.name):
                shutil.rmtree(d, ignore_errors=True)
    left = lab_netns(lab_id)
    if left:
        problems.append(f"namespaces still present: {', '.join(left)}")
    return problems
