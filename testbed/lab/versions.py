"""Pinned kind/Knative/Istio versions and release URLs, read from k8s/install/versions.env (their one place)."""

from __future__ import annotations

import re
from pathlib import Path

from testbed.lab.layout import VERSIONS_ENV

_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")
_REF = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")

REQUIRED = (
    "KIND_MIN_VERSION", "KIND_NODE_IMAGE",
    "KNATIVE_SERVING_VERSION", "KNATIVE_KOURIER_VERSION", "KNATIVE_EVENTING_VERSION",
    "SERVING_RELEASE", "KOURIER_RELEASE", "EVENTING_RELEASE",
    "KNATIVE_NET_ISTIO_VERSION", "ISTIO_VERSION", "NET_ISTIO_RELEASE", "ISTIO_MANIFEST",
)


class VersionsError(ValueError):
    pass


def read_versions(path: Path = VERSIONS_ENV) -> dict[str, str]:
    """KEY=VALUE lines (shell-compatible subset: no quotes, ${KEY} refers to an earlier key)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise VersionsError(f"cannot read {path}: {e.strerror}") from None
    values: dict[str, str] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise VersionsError(f"{path}:{no}: not KEY=VALUE: {line!r}")
        key, value = m.groups()

        def expand(ref: re.Match[str], no: int = no) -> str:
            if ref.group(1) not in values:
                raise VersionsError(f"{path}:{no}: ${{{ref.group(1)}}} is not defined above")
            return values[ref.group(1)]

        values[key] = _REF.sub(expand, value)
    missing = [k for k in REQUIRED if k not in values]
    if missing:
        raise VersionsError(f"{path}: missing {', '.join(missing)}")
    return values


def release_manifests(v: dict[str, str], ingress: str = "kourier") -> dict[str, str]:
    """Every release YAML the lab applies with this ingress, by short name, in install order."""
    return {
        "serving-crds": f"{v['SERVING_RELEASE']}/serving-crds.yaml",
        "serving-core": f"{v['SERVING_RELEASE']}/serving-core.yaml",
        **ingress_manifests(v, ingress),
        "eventing-crds": f"{v['EVENTING_RELEASE']}/eventing-crds.yaml",
        "eventing-core": f"{v['EVENTING_RELEASE']}/eventing-core.yaml",
        "in-memory-channel": f"{v['EVENTING_RELEASE']}/in-memory-channel.yaml",
        "mt-channel-broker": f"{v['EVENTING_RELEASE']}/mt-channel-broker.yaml",
    }


def ingress_manifests(v: dict[str, str], ingress: str) -> dict[str, str]:
    """The YAMLs of one Knative ingress (testbed.lab.ingress), in install order."""
    if ingress == "kourier":
        return {"kourier": f"{v['KOURIER_RELEASE']}/kourier.yaml"}
    if ingress == "istio":
        return {"istio": v["ISTIO_MANIFEST"], "net-istio": f"{v['NET_ISTIO_RELEASE']}/net-istio.yaml"}
    raise VersionsError(f"no manifests for ingress {ingress!r}")


def version_tuple(text: str) -> tuple[int, ...]:
    """'v0.30.0' or 'kind v0.31.0 go1.24 linux/amd64' -> (0, 30, 0); () when there is none."""
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else ()
