"""The lab's one subscriber list: compose/subscribers.yaml.

It is also the tap's static identity file, so its format is that file's: a list of
``{supi, ip, dnn, snssai}``. Keys (K, OPc, AMF field) are the same for every lab
subscriber and come from testbed/constants.py. Provisioning, the UERANSIM UE configs
and the UE services of the compose file are all rendered from this list.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from testbed import constants as C

SUPI_RE = re.compile(r"^imsi-(\d{15})$")
MAX_UES = 150                    # radio addresses 192.168.100.101-250 (see layout.ue_radio_addr)


class SubscriberError(ValueError):
    """The subscriber list is unusable; the message says which entry and why."""


@dataclass(frozen=True)
class Subscriber:
    n: int            # 1-based position: ue<n> service, ue<n>.yaml
    supi: str
    ip: str
    dnn: str
    snssai: str

    @property
    def imsi(self) -> str:
        return self.supi.removeprefix("imsi-")

    @property
    def msin(self) -> str:
        return self.imsi[len(C.PLMN):]

    @property
    def sst(self) -> int:
        return int(self.snssai.split("-", 1)[0])

    @property
    def sd(self) -> str | None:
        parts = self.snssai.split("-", 1)
        return parts[1] if len(parts) == 2 else None

    def as_entry(self) -> dict[str, str]:
        return {"supi": self.supi, "ip": self.ip, "dnn": self.dnn, "snssai": self.snssai}


def default_snssai() -> str:
    """The lab's slice as an identity string: "<sst>" (no SD: the lab shows one slice)."""
    return str(C.SST)


def generate(count: int) -> list[Subscriber]:
    """``count`` subscribers from the constants: supi(n), ue_ipv4(n), DNN, sst."""
    if not 1 <= count <= MAX_UES:
        raise SubscriberError(f"number of UEs must be 1..{MAX_UES}, not {count}")
    return [Subscriber(n, C.supi(n), C.ue_ipv4(n), C.DNN, default_snssai()) for n in range(1, count + 1)]


def validate(entries: object) -> list[Subscriber]:
    """Check a parsed list and number it; raise SubscriberError naming the bad entry."""
    if not isinstance(entries, list) or not entries:
        raise SubscriberError("subscriber list must be a non-empty YAML list of {supi, ip, dnn, snssai}")
    if len(entries) > MAX_UES:
        raise SubscriberError(f"at most {MAX_UES} subscribers (got {len(entries)})")
    pool = ipaddress.ip_network(C.UE_POOL_V4)
    gateway = ipaddress.ip_address(C.UE_GATEWAY_V4)
    seen_supi: set[str] = set()
    seen_ip: set[str] = set()
    out: list[Subscriber] = []
    for i, e in enumerate(entries, 1):
        where = f"subscriber #{i}"
        if not isinstance(e, dict) or set(e) != {"supi", "ip", "dnn", "snssai"}:
            raise SubscriberError(f"{where}: needs exactly the keys supi, ip, dnn, snssai")
        supi, ip, dnn, snssai = (str(e[k]) for k in ("supi", "ip", "dnn", "snssai"))
        m = SUPI_RE.match(supi)
        if not m or not m.group(1).startswith(C.PLMN):
            raise SubscriberError(f"{where}: supi {supi!r} is not imsi-{C.PLMN}<10 digits>")
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise SubscriberError(f"{where}: ip {ip!r} is not an IPv4 address") from None
        if addr not in pool or addr in (gateway, pool.network_address, pool.broadcast_address):
            raise SubscriberError(f"{where}: ip {ip} is not a usable host of {C.UE_POOL_V4}")
        if dnn != C.DNN:
            raise SubscriberError(f"{where}: dnn {dnn!r} is not served by the lab's SMF/UPF ({C.DNN!r})")
        if snssai != default_snssai():
            raise SubscriberError(f"{where}: snssai {snssai!r} is not the lab's slice {default_snssai()!r}")
        if supi in seen_supi or ip in seen_ip:
            raise SubscriberError(f"{where}: duplicate supi or ip ({supi}, {ip})")
        seen_supi.add(supi)
        seen_ip.add(ip)
        out.append(Subscriber(i, supi, ip, dnn, snssai))
    return out


def load(path: Path) -> list[Subscriber]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SubscriberError(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SubscriberError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    return validate(data)


def dump(subs: list[Subscriber]) -> str:
    head = (
        "# The lab's subscribers: one list for provisioning (compose/provision/), the UERANSIM UE\n"
        "# configs (compose/configs/ueransim/), the UE services of docker-compose.yaml and the\n"
        "# tap's static identity file (this file, mounted as is). K/OPc come from testbed/constants.py.\n"
        "# After editing, run `testbed lab render` to regenerate the files that depend on it.\n"
    )
    return head + yaml.safe_dump([s.as_entry() for s in subs], sort_keys=False)
