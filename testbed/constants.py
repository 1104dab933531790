"""Lab identity and addressing: the one place where sim, lab and tests get them.

Values follow DESIGN.md ("Identity and lab constants"): the Open5GS and UERANSIM
sample subscriber keys, PLMN 999/70, TAC 1, S-NSSAI sst 1, DNN "internet".
"""

from __future__ import annotations

import ipaddress

from upf_tap import constants as _tap

MCC = "999"
MNC = "70"
PLMN = MCC + MNC
TAC = 1
SST = 1
SD = "000001"  # only where a second slice is shown
DNN = "internet"

# the UE pools are the tap's defaults, defined in the product (upf_tap.constants): the lab
# imports the product, never the reverse
UE_POOL_V4 = _tap.UE_POOL_V4
UE_GATEWAY_V4 = "10.45.0.1"
UE_POOL_V6 = _tap.UE_POOL_V6
UE_POOLS = _tap.DEFAULT_UE_POOLS

SUBSCRIBER_K = "465B5CE8B199B49FAA5F0A2EE238A6BC"
SUBSCRIBER_OPC = "E8ED289DEBA952E4283B54E88E6183CA"
AMF_FIELD = "8000"
FIRST_MSIN = 1  # imsi-999700000000001


def supi(n: int) -> str:
    """SUPI of the n-th subscriber (n from 1): imsi-<mcc><mnc><10-digit msin>."""
    return f"imsi-{PLMN}{FIRST_MSIN + n - 1:010d}"


def ue_ipv4(n: int) -> str:
    """Address the sim's SMF gives the n-th UE (n from 1): 10.45.0.2, 10.45.0.3, ..."""
    host = n + 1
    return f"10.45.{host // 256}.{host % 256}"


# --- MEC sites (issue 18): site 1 is the pool above; each further site's UPF has its own
# pool, so an SSC mode 3 move to another site gives the UE a new address there ---
SITE_UE_POOLS_V4 = {1: UE_POOL_V4, 2: "10.46.0.0/16"}
SITE_UE_GATEWAYS_V4 = {1: UE_GATEWAY_V4, 2: "10.46.0.1"}


def site_ue_ipv4(n: int, site: int = 1) -> str:
    """Address the sim's SMF gives the n-th UE at a site's UPF: 10.45.0.2 at site 1, 10.46.0.2 at site 2, ..."""
    net = ipaddress.IPv4Network(SITE_UE_POOLS_V4[site])
    return str(net.network_address + n + 1)
