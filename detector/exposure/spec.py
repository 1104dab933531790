"""The subset of Nupf_EventExposure that the detector implements, as facts.

The schemas are hand-written in detector/openapi.yaml (components whose `x-3gpp-source` names the
3GPP file and schema they come from, e.g. `TS29564_Nupf_EventExposure.yaml#/components/schemas/
UpfEventSubscription`); the API document serves them and this module reads them from there, so the
validator, the served document and the facts cannot drift apart. The 3GPP files themselves are not
in this repository (3GPP copyright): tests/detector/test_exposure_spec.py checks this subset against
them when a snapshot is present (MEC_UPSTREAM, default /work/.mirror).

`NOT_IMPLEMENTED` lists the TS 29.564 attributes a request may carry that this UPF refuses (a 400
naming them) because honouring them needs what the tap does not see; `IGNORED` those it accepts and
ignores because they are only hints. The test checks that every name there exists upstream too.
"""

from __future__ import annotations

import functools
from typing import Any

from detector.openapi import document

SOURCE_KEY = "x-3gpp-source"
SPEC_VERSION = "3GPP TS 29.564 V18.4.0"
API_PREFIX = "/nupf-ee/v1"
COLLECTION = API_PREFIX + "/ee-subscriptions"

EE_FILE = "TS29564_Nupf_EventExposure.yaml"
CD_FILE = "TS29571_CommonData.yaml"
SM_FILE = "TS29512_Npcf_SMPolicyControl.yaml"
UPSTREAM_REPO = "open6gc/open6gc-api-specs"   # the snapshot the facts were read from (HEAD 5fea19e)

# EventType
USER_DATA_USAGE_MEASURES = "USER_DATA_USAGE_MEASURES"
# UpfEventTrigger
ONE_TIME = "ONE_TIME"
PERIODIC = "PERIODIC"
# MeasurementType
VOLUME = "VOLUME_MEASUREMENT"
THROUGHPUT = "THROUGHPUT_MEASUREMENT"
APP_INFO = "APPLICATION_RELATED_INFO"
# GranularityOfMeasurement
PER_APPLICATION = "PER_APPLICATION"
PER_SESSION = "PER_SESSION"
PER_FLOW = "PER_FLOW"
# DnProtocol
DNS_QNAME = "DNS_QNAME"
TLS_SNI = "TLS_SNI"
# FlowDirection (TS 29.512)
BIDIRECTIONAL = "BIDIRECTIONAL"

# (schema, attribute) -> why this UPF refuses a request that carries it
NOT_IMPLEMENTED: dict[tuple[str, str], str] = {
    ("UpfEventSubscription", "gpsi"): "the tap sees no GPSI (MSISDN / external id): target the UE by supi or ueIpAddress",
    ("UpfEventSubscription", "pei"): "the tap does not correlate the PEI (IMEI) to user-plane traffic",
    ("UpfEvent", "trafficFilters"): "packet filters (FlowInformation) are not evaluated: use appIds or "
                                    "granularityOfMeasurement PER_FLOW",
    ("UpfEventMode", "sampRatio"): "sampling is not implemented (every matching UE is reported)",
    ("UpfEventMode", "partitioningCriteria"): "partitioning is not implemented",
    ("UpfEventMode", "notifFlag"): "muting (ACTIVATE / DEACTIVATE / RETRIEVAL) is not implemented",
    ("UpfEventMode", "mutingExcInstructions"): "muting is not implemented",
}
# (schema, attribute) -> why it is accepted and has no effect
IGNORED: dict[tuple[str, str], str] = {
    ("UpfEvent", "immediateFlag"): "nothing is measured before the subscription exists, so the 201 has no reportList",
    ("UpfEvent", "reportingSuggestionInfo"): "a hint: reports go out as soon as the trigger says",
    ("UpfEventMode", "mutingNotSettings"): "read-only (set by the UPF): muting is not implemented",
    ("CreateEventSubscription", "supportedFeatures"): "no optional feature is implemented: the 201 answers \"0\"",
}
# the event types of TS 29.564 that are refused, and why
EVENT_TYPES_LEFT_OUT: dict[str, str] = {
    "QOS_MONITORING": "the tap measures no packet delay or congestion (it sees one side of the UPF, no timestamps "
                      "from the gNB), so it cannot report QoS monitoring honestly",
    "USER_DATA_USAGE_TRENDS": "needs history and analytics the detector does not keep",
    "TSC_MNGT_INFO": "time-sensitive communication is not part of this lab",
}


@functools.cache
def subset() -> dict[str, dict[str, Any]]:
    """The implemented subset: schema name -> JSON Schema (2020-12; local `#/components/schemas/…` refs)."""
    schemas = document()["components"]["schemas"]
    return {name: s for name, s in schemas.items() if isinstance(s, dict) and SOURCE_KEY in s}


def source_of(name: str) -> tuple[str, str]:
    """(3GPP file, schema name) a schema of the subset comes from."""
    ref = subset()[name][SOURCE_KEY]
    file, _, pointer = ref.partition("#")
    return file, pointer.rsplit("/", 1)[-1]


def enum_of(name: str) -> list[str]:
    return list(subset()[name]["enum"])
