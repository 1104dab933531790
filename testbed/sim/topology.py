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

With two MEC sites (``sites=2``, issue 18; docs/sim-sites.md) site 1 keeps every name and
address above and site 2 adds ``mec<id>-gnb2`` and ``mec<id>-upf2`` (its own N3, N4, N6 and
``ogstun`` with the 10.46.0.0/16 pool). N3, N4 and N6 then are LAN segments: Linux bridges
in a switch namespace ``mec<id>-sw`` join the veths, so each gNB reaches each UPF, the one SMF
reaches both UPFs from one address, and the DN is reachable from both UPFs' N6::

    gnb  n3 .100.10 ─┐                 ┌─ n3 .100.20 upf  n4 .104.20 ─┐      ┌─ n6 10.200.0.1 upf
    gnb2 n3 .100.11 ─┤ br-n3 (mec-sw)  ├─ n3 .100.21 upf2 n4 .104.21 ─┤br-n4 │  n6 10.200.0.2 upf2
                     └─────────────────┘          smf n4 .104.10 ─────┘      └─ br-n6 ─ dn n6

Inside the gNB and UPF namespaces the links keep their names (n3, n4, n6), so the tap
listens on the same interfaces at either site.

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
from dataclasses import dataclass, field
from pathlib import Path

from testbed.constants import SITE_UE_GATEWAYS_V4, SITE_UE_POOLS_V4, UE_GATEWAY_V4, UE_POOL_V4, site_ue_ipv4
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

# --- MEC sites (issue 18): site 1 is the addresses above, unchanged; site k's nodes below ---
SITES = (1, 2)
SITE_GNB_N3_IP = {1: GNB_N3_IP, 2: "192.168.100.11"}
SITE_UPF_N3_IP = {1: UPF_N3_IP, 2: "192.168.100.21"}
SITE_UPF_N4_IP = {1: UPF_N4_IP, 2: "192.168.104.21"}
SITE_UPF_N6_IP = {1: UPF_N6_IP, 2: "10.200.0.2"}
# TEID spaces kept apart per node, so a capture tells at a glance whose tunnel it is
# (a receiver's TEIDs need only be unique at that receiver; this is for the reader)
SITE_GNB_FIRST_DL_TEID = {1: 0x100, 2: 0x0200_0100}
SITE_UPF_FIRST_TEID = {1: 0x1, 2: 0x0200_0001}
# bridge FDB ageing (centiseconds): far beyond any lab's life, so a quiet station is never
# forgotten and its unicast never flooded to the other site's capture
BRIDGE_AGEING_CS = 864_000_000   # 100 days

# --- names ---
LAB_PREFIX = "mec"
IF_N3 = "n3"
IF_N4 = "n4"
IF_N6 = "n6"
UPF_TUN = "ogstun"
UPF_TUN_PREFIX_LEN = int(UE_POOL_V4.split("/")[1])
SWITCH_ROLE = "sw"             # the namespace holding the N3/N4/N6 bridges (two-site labs)
BRIDGES = ("br-n3", "br-n4", "br-n6")


def site_role(kind: str, site: int) -> str:
    """Namespace role of a site's gNB or UPF: gnb/upf for site 1 (today's names), gnb2/upf2, …"""
    return kind if site == 1 else f"{kind}{site}"


def switch_port(link: str, role: str) -> str:
    """Name of a node's veth end inside the switch namespace: n3-gnb1, n3-upf2, n4-smf, n6-dn, …"""
    return f"{link}-{role if role[-1].isdigit() or role in ('smf', 'dn') else role + '1'}"

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
    """Namespace of a node: role is gnb, upf, smf, dn, ue<n>; gnb2, upf2 and sw in a two-site lab."""
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
    return re.compile(re.escape(ns_prefix(lab_id)) + r"(gnb[0-9]*|upf[0-9]*|smf|dn|sw|ue[0-9]+)$")


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
    sites: int = 1
    ue_sites: dict[int, int] = field(default_factory=dict)   # UE n -> the site it starts at (default 1)

    def __post_init__(self) -> None:
        check_lab_id(self.lab_id)
        if not 1 <= self.ues <= 1000:
            raise TopologyError(f"bad UE count {self.ues}: use 1..1000")
        if self.sites not in SITES:
            raise TopologyError(f"bad site count {self.sites}: use 1 or 2")
        for n, site in self.ue_sites.items():
            if not 1 <= n <= self.ues or not 1 <= site <= self.sites:
                raise TopologyError(f"UE {n} cannot start at site {site} (UEs 1..{self.ues}, sites 1..{self.sites})")

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

    @property
    def switch_ns(self) -> str:
        return ns_name(self.lab_id, SWITCH_ROLE)

    def site_gnb_ns(self, site: int) -> str:
        return ns_name(self.lab_id, site_role("gnb", site))

    def site_upf_ns(self, site: int) -> str:
        return ns_name(self.lab_id, site_role("upf", site))

    def ue_site(self, n: int) -> int:
        return self.ue_sites.get(n, 1)

    def ue_namespaces(self) -> list[str]:
        return [ue_ns(self.lab_id, n) for n in range(1, self.ues + 1)]

    def namespaces(self) -> list[str]:
        if self.sites == 1:
            return [self.gnb_ns, self.upf_ns, self.smf_ns, self.dn_ns, *self.ue_namespaces()]
        sites = range(1, self.sites + 1)
        return [*(self.site_gnb_ns(k) for k in sites), *(self.site_upf_ns(k) for k in sites),
                self.smf_ns, self.dn_ns, self.switch_ns, *self.ue_namespaces()]

    def build(self) -> None:
        """Create everything. On error, raises; the caller tears down (teardown is idempotent)."""
        existing = lab_netns(self.lab_id)
        if existing:
            raise TopologyError(f"lab {self.lab_id} already exists ({existing[0]}): run `testbed sim down`")
        for ns in self.namespaces():
            _run(["ip", "netns", "add", ns])
        if self.sites > 1:
            self._build_sites()
            return
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
        self._build_ues()

    def _build_ues(self) -> None:
        # a two-site lab's UE TUNs are multi-queue: during a handover the target gNB attaches
        # its queue before the source lets go of its own, so the radio has no gap
        mq = " multi_queue" if self.sites > 1 else ""
        for n in range(1, self.ues + 1):
            ns, tun = ue_ns(self.lab_id, n), ue_tun(n)
            _ip_batch(ns, [
                "link set lo up",
                f"tuntap add {tun} mode tun{mq}",
                f"link set {tun} mtu {UE_MTU} up",
                f"addr add {site_ue_ipv4(n, self.ue_site(n))}/32 dev {tun}",
                f"route add default dev {tun}",
            ])
            etc = NETNS_ETC / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(f"nameserver {DNS_IP}\nsearch {DN_DOMAIN}\n")

    def _build_sites(self) -> None:
        """Two MEC sites: N3, N4 and N6 are bridges in the switch namespace (see the module docstring)."""
        sites = range(1, self.sites + 1)
        gnbs = [(site_role("gnb", k), self.site_gnb_ns(k)) for k in sites]
        upfs = [(site_role("upf", k), self.site_upf_ns(k)) for k in sites]
        for _, ns in [*gnbs, *upfs, ("smf", self.smf_ns), ("dn", self.dn_ns), ("sw", self.switch_ns)]:
            _sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        for _, ns in upfs:
            _sysctl(ns, "net.ipv4.ip_forward=1")
        sw = self.switch_ns
        _ip_batch(sw, ["link set lo up", *(f"link add {br} type bridge ageing_time {BRIDGE_AGEING_CS}"
                                           for br in BRIDGES)])
        ports: list[str] = []
        for link, members in ((IF_N3, [*gnbs, *upfs]), (IF_N4, [("smf", self.smf_ns), *upfs]),
                              (IF_N6, [("dn", self.dn_ns), *upfs])):
            for role, ns in members:
                port = switch_port(link, role)
                _run(["ip", "link", "add", link, "netns", ns, "type", "veth", "peer", "name", port, "netns", sw])
                mtu = f" mtu {N3_MTU}" if link == IF_N3 else ""
                ports.append(f"link set {port}{mtu} master br-{link} up")
        _ip_batch(sw, [*ports, *(f"link set {br} up" for br in BRIDGES)])
        for k, (_, ns) in zip(sites, gnbs, strict=True):
            _ip_batch(ns, [
                "link set lo up",
                f"link set {IF_N3} mtu {N3_MTU} up",
                f"addr add {SITE_GNB_N3_IP[k]}/{N3_PREFIX_LEN} dev {IF_N3}",
            ])
        _ip_batch(self.smf_ns, [
            "link set lo up",
            f"link set {IF_N4} up",
            f"addr add {SMF_N4_IP}/{N4_PREFIX_LEN} dev {IF_N4}",
        ])
        for k, (_, ns) in zip(sites, upfs, strict=True):
            pool = SITE_UE_POOLS_V4[k]
            _ip_batch(ns, [
                "link set lo up",
                f"link set {IF_N3} mtu {N3_MTU} up",
                f"addr add {SITE_UPF_N3_IP[k]}/{N3_PREFIX_LEN} dev {IF_N3}",
                f"link set {IF_N4} up",
                f"addr add {SITE_UPF_N4_IP[k]}/{N4_PREFIX_LEN} dev {IF_N4}",
                f"link set {IF_N6} up",
                f"addr add {SITE_UPF_N6_IP[k]}/{N6_PREFIX_LEN} dev {IF_N6}",
                f"tuntap add {UPF_TUN} mode tun",
                f"link set {UPF_TUN} mtu {UE_MTU} up",
                f"addr add {SITE_UE_GATEWAYS_V4[k]}/{pool.split('/')[1]} dev {UPF_TUN}",
            ])
        _ip_batch(self.dn_ns, [
            "link set lo up",
            f"link set {IF_N6} up",
            f"addr add {SHOP_IP}/{N6_PREFIX_LEN} dev {IF_N6}",
            f"addr add {MQTT_IP}/{N6_PREFIX_LEN} dev {IF_N6}",
            f"addr add {DNS_IP}/{N6_PREFIX_LEN} dev {IF_N6}",
            # each site's pool back through that site's UPF
            *(f"route add {SITE_UE_POOLS_V4[k]} via {SITE_UPF_N6_IP[k]}" for k in sites),
        ])
        self._build_ues()

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


# --- a UE's addresses during an SSC mode 3 move (the lab plays the UE's NAS here) ---

def ue_use_address(lab_id: str, n: int, ip: str) -> None:
    """Give UE n a new PDU session's address and make it the source of new traffic.

    The old address stays on the TUN, so flows bound to it go on over the old session
    until it is released (make-before-break).
    """
    _ip_batch(ue_ns(lab_id, n), [f"addr replace {ip}/32 dev {ue_tun(n)}",
                                 f"route replace default dev {ue_tun(n)} src {ip}"])


def ue_drop_address(lab_id: str, n: int, ip: str) -> None:
    """The released PDU session's address goes away (its flows break, as with SSC mode 3)."""
    _ip_batch(ue_ns(lab_id, n), [f"addr del {ip}/32 dev {ue_tun(n)}"])
