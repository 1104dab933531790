"""Names, addresses, images and paths of the Docker Compose + kind lab (one place for them).

Identity (PLMN, DNN, pools, keys) comes from testbed/constants.py; protocol ports from
upf_tap/constants.py. What is here is only the lab's own wiring: which container has
which static address on which Docker network, the pinned images, and the kind names.
Static addresses keep every config file explicit and checkable offline, and spare the
NFs from Docker DNS races at start-up.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from testbed import __version__

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
K8S_DIR = REPO / "k8s"
DOCKER_DIR = REPO / "docker"
KIND_CONFIG = K8S_DIR / "kind" / "cluster.yaml"
VERSIONS_ENV = K8S_DIR / "install" / "versions.env"
SUBSCRIBERS_FILE = COMPOSE_DIR / "subscribers.yaml"

PROJECT = "mec-lab"              # compose project name and container-name prefix
DEFAULT_UES = 3                  # subscribers written by `testbed lab render` without --ues

# pinned third-party images (tags checked against the projects' own compose examples)
OPEN5GS_IMAGE = "gradiant/open5gs:2.7.5"
OPEN5GS_WEBUI_IMAGE = "gradiant/open5gs-webui:2.7.5"
UERANSIM_IMAGE = "gradiant/ueransim:3.2.6"
# 4.4 runs on CPUs without AVX (MongoDB >= 5 needs AVX) and still ships the `mongo` shell
MONGO_IMAGE = "mongo:4.4.29"
MOSQUITTO_IMAGE = "eclipse-mosquitto:2.0.18"
PYTHON_IMAGE = "python:3.11.13-slim-bookworm"
ALPINE_IMAGE = "alpine:3.20.3"

# images the lab builds; dev.local/ makes Knative skip tag-to-digest resolution for them
LOCAL_IMAGE_PREFIX = "dev.local/mec-testbed"
LOCAL_IMAGE_TAG = __version__
TAP_IMAGE = f"{LOCAL_IMAGE_PREFIX}/tap:{LOCAL_IMAGE_TAG}"
DETECTOR_IMAGE = f"{LOCAL_IMAGE_PREFIX}/detector:{LOCAL_IMAGE_TAG}"
DNS_IMAGE = f"{LOCAL_IMAGE_PREFIX}/dn-dns:{LOCAL_IMAGE_TAG}"


# Docker networks: core = SBI + N4, ran = N2 + N3 + UERANSIM's radio link, n6 = the DN.
# Their subnets are the user's to choose in ONE place, compose/networks.yaml (then `testbed lab
# render`); the defaults sit in 10.33.0.0/16, outside Docker's default address pools
# (172.17-31.0.0/16, 192.168.0.0/16 in /20s), kind's and Kubernetes' defaults (10.96.0.0/12,
# 10.244.0.0/16), k3s (10.42-43), the Open5GS UE pool (10.45.0.0/16), cloud VPC defaults
# (AWS 172.31, Azure 10.0-1, GCP auto mode 10.128.0.0/9) and the usual home LANs.
# `testbed lab doctor` checks them against the host's routes and Docker networks before a start.
NETWORK_NAMES = ("core", "ran", "n6")
DEFAULT_NETWORKS = {"core": "10.33.1.0/24", "ran": "10.33.2.0/24", "n6": "10.33.3.0/24"}
NETWORKS_FILE = COMPOSE_DIR / "networks.yaml"

# host numbers inside each network's subnet, per service; the UPF is on all three
HOSTS: dict[str, dict[str, int]] = {
    "mongo": {"core": 2},
    "nrf": {"core": 10},
    "scp": {"core": 11},
    "ausf": {"core": 12},
    "udm": {"core": 13},
    "udr": {"core": 14},
    "pcf": {"core": 15},
    "nssf": {"core": 16},
    "bsf": {"core": 17},
    "amf": {"core": 18, "ran": 5},
    "smf": {"core": 19},
    "upf": {"core": 20, "ran": 20, "n6": 2},
    "webui": {"core": 30},
    "gnb": {"ran": 10},
    "app": {"n6": 10},
    "dns": {"n6": 53},
    "mqtt": {"n6": 20},
}
UE_RADIO_HOST0 = 100             # ue<n> is host 100+n on the ran network
# where Docker may pick addresses for containers without a static one (the one-shot provision),
# as (first host, prefix length inside a /24): kept apart from the static hosts above, which
# Docker does not reserve in advance
DYNAMIC_HOSTS = {"core": (128, 25), "ran": (32, 27), "n6": (128, 25)}


class LayoutError(ValueError):
    """compose/networks.yaml is unusable; the message says which entry and why."""


def parse_networks(data: object, where: str = "networks") -> dict[str, str]:
    """Validate {core, ran, n6: CIDR}: IPv4, /24 or larger, no overlap with each other or the UE pools."""
    from testbed import constants as C

    if not isinstance(data, dict) or set(data) != set(NETWORK_NAMES):
        raise LayoutError(f"{where}: needs exactly the keys {', '.join(NETWORK_NAMES)} (each a CIDR)")
    nets: dict[str, ipaddress.IPv4Network] = {}
    for name in NETWORK_NAMES:
        try:
            net = ipaddress.ip_network(str(data[name]), strict=True)
        except ValueError as e:
            raise LayoutError(f"{where}: {name}: {e}") from None
        if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 24:
            raise LayoutError(f"{where}: {name}: {net} must be an IPv4 network of /24 or larger "
                              "(the lab numbers hosts up to .250)")
        nets[name] = net
    others = {"the UE pool": ipaddress.ip_network(C.UE_POOL_V4), **{f"network {k}": v for k, v in nets.items()}}
    for name, net in nets.items():
        for what, other in others.items():
            if what != f"network {name}" and net.overlaps(other):
                raise LayoutError(f"{where}: {name}: {net} overlaps {what} ({other})")
    return {k: str(v) for k, v in nets.items()}


def load_networks(path: Path = NETWORKS_FILE) -> dict[str, str]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return dict(DEFAULT_NETWORKS)
    except OSError as e:
        raise LayoutError(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise LayoutError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    return parse_networks(data, str(path))


def networks_yaml(nets: dict[str, str]) -> str:
    """The text of compose/networks.yaml for these subnets."""
    head = ("# The lab's Docker networks, the one place to change them: edit, then `testbed lab render`\n"
            "# (or `testbed lab render --network ran=10.1.2.0/24`). Each an IPv4 /24 or larger;\n"
            "# `testbed lab doctor` checks them against the host's routes and Docker networks.\n"
            "#   core: SBI + N4 (PFCP)   ran: N2 (NGAP) + N3 (GTP-U) + UERANSIM's radio link   n6: the DN\n")
    return head + "".join(f"{k}: {nets[k]}\n" for k in NETWORK_NAMES)


try:
    NETWORKS = load_networks()
    NETWORKS_ERROR = ""
except LayoutError as _e:        # reported by every `testbed lab` command (cli.run_lab), not at import
    NETWORKS, NETWORKS_ERROR = dict(DEFAULT_NETWORKS), str(_e)


def host_addr(net: str, host: int, nets: dict[str, str] | None = None) -> str:
    return str(ipaddress.ip_network((nets or NETWORKS)[net])[host])


def addresses(nets: dict[str, str]) -> dict[str, dict[str, str]]:
    """(network -> address) per service, for these subnets."""
    return {svc: {net: host_addr(net, h, nets) for net, h in hosts.items()} for svc, hosts in HOSTS.items()}


ADDR = addresses(NETWORKS)
DYNAMIC_RANGES = {net: f"{host_addr(net, first)}/{plen}" for net, (first, plen) in DYNAMIC_HOSTS.items()}


def ue_radio_addr(n: int) -> str:
    """The n-th UE container's address on the ran network (UERANSIM's radio link simulation)."""
    return host_addr("ran", UE_RADIO_HOST0 + n)


SBI_PORT = 7777
METRICS_PORT = 9090
WEBUI_PORT = 9999
APP_PORT = 80
MTU = 1400                       # inner MTU given to UEs; leaves room for GTP-U on a 1500 link
OGSTUN = "ogstun"
DN_DOMAIN = "mec.local"
APP_HOST = f"shop.{DN_DOMAIN}"

# kind / Knative
CLUSTER = "mec-lab"
NAMESPACE = "mec"
BROKER = "default"
KIND_NETWORK = "kind"            # the Docker network kind puts its nodes on
KIND_NODE = f"{CLUSTER}-control-plane"
INGRESS_NODEPORT = 31080        # the Knative ingress's gateway (Kourier or Istio, testbed/lab/ingress.py)
KOURIER_NODEPORT = INGRESS_NODEPORT
BROKER_NODEPORT = 31081
DETECTOR_NODEPORT = 30880
DETECTOR_PORT = 8080
INGRESS_HOSTPORT = 8080         # kind maps INGRESS_NODEPORT here (k8s/kind/cluster.yaml)
KOURIER_HOSTPORT = INGRESS_HOSTPORT
BROKER_HOSTPORT = 8081
DETECTOR_HOSTPORT = 8880
DETECTOR_URL = f"http://{KIND_NODE}:{DETECTOR_NODEPORT}"   # as the tap sees it on the kind network
