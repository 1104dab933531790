"""Names, addresses, images and paths of the Docker Compose + kind lab (one place for them).

Identity (PLMN, DNN, pools, keys) comes from testbed/constants.py; protocol ports from
upf_tap/constants.py. What is here is only the lab's own wiring: which container has
which static address on which Docker network, the pinned images, and the kind names.
Static addresses keep every config file explicit and checkable offline, and spare the
NFs from Docker DNS races at start-up.
"""

from __future__ import annotations

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


# Docker networks: core = SBI + N4, ran = N2 + N3 + UERANSIM's radio link, n6 = the DN
NETWORKS = {
    "core": "10.100.0.0/24",
    "ran": "192.168.100.0/24",
    "n6": "10.200.0.0/24",
}

# where Docker may pick addresses for containers without a static one (one-shot provision):
# kept apart from the static addresses below, which Docker does not reserve in advance
DYNAMIC_RANGES = {
    "core": "10.100.0.128/25",
    "ran": "192.168.100.32/27",
    "n6": "10.200.0.128/25",
}

# (network -> address) per service; the UPF is on all three
ADDR: dict[str, dict[str, str]] = {
    "mongo": {"core": "10.100.0.2"},
    "nrf": {"core": "10.100.0.10"},
    "scp": {"core": "10.100.0.11"},
    "ausf": {"core": "10.100.0.12"},
    "udm": {"core": "10.100.0.13"},
    "udr": {"core": "10.100.0.14"},
    "pcf": {"core": "10.100.0.15"},
    "nssf": {"core": "10.100.0.16"},
    "bsf": {"core": "10.100.0.17"},
    "amf": {"core": "10.100.0.18", "ran": "192.168.100.5"},
    "smf": {"core": "10.100.0.19"},
    "upf": {"core": "10.100.0.20", "ran": "192.168.100.20", "n6": "10.200.0.2"},
    "webui": {"core": "10.100.0.30"},
    "gnb": {"ran": "192.168.100.10"},
    "app": {"n6": "10.200.0.10"},
    "dns": {"n6": "10.200.0.53"},
    "mqtt": {"n6": "10.200.0.20"},
}


def ue_radio_addr(n: int) -> str:
    """The n-th UE container's address on the ran network (UERANSIM's radio link simulation)."""
    return f"192.168.100.{100 + n}"


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
KOURIER_NODEPORT = 31080
BROKER_NODEPORT = 31081
DETECTOR_NODEPORT = 30880
DETECTOR_PORT = 8080
KOURIER_HOSTPORT = 8080
BROKER_HOSTPORT = 8081
DETECTOR_HOSTPORT = 8880
DETECTOR_URL = f"http://{KIND_NODE}:{DETECTOR_NODEPORT}"   # as the tap sees it on the kind network
