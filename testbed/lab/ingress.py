"""The two Knative Serving ingresses the lab can install: Kourier (the default, lighter) or Istio.

Istio is the seed paper's ingress: requests reach the functions through the Istio ingress gateway,
with the Activator holding them while the Autoscaler scales a function from zero. Both expose their
gateway's HTTP port on the same NodePort, which kind maps to the host (k8s/kind/cluster.yaml), so
Knative Service URLs are the same with either. One ingress per cluster: switching needs a new one.

Every name here is checked against the real sources at the pinned tags: Kourier in
tests/lab/test_facts_knative.py, Istio and net-istio in tests/lab/test_istio.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ingress:
    name: str                  # the value of `--ingress`
    title: str                 # for step titles and messages
    ingress_class: str         # config-network `ingress-class` (knative.dev/networking pkg/config)
    gateway_namespace: str
    gateway_service: str       # the Service patched to the lab's NodePort
    gateway_http_port: int     # its HTTP port (Service `port`, not the container's)
    # CPU and memory the ingress requests beyond the doctor's Kourier baseline (its manifests'
    # resource requests, rounded up): `testbed lab doctor --ingress` raises its thresholds by these
    extra_memory_gib: float = 0.0
    extra_cpus: int = 0


KOURIER = Ingress("kourier", "Kourier", "kourier.ingress.networking.knative.dev",
                  gateway_namespace="kourier-system", gateway_service="kourier", gateway_http_port=80)

# istiod 500m/2048Mi + istio-ingressgateway 100m/256Mi (one replica each in net-istio's kind profile)
# + net-istio-controller 30m/40Mi + net-istio-webhook 20m/20Mi = 650m CPU, 2364Mi
ISTIO = Ingress("istio", "Istio", "istio.ingress.networking.knative.dev",
                gateway_namespace="istio-system", gateway_service="istio-ingressgateway", gateway_http_port=80,
                extra_memory_gib=2.5, extra_cpus=1)

# what `kubectl wait --for=condition=Established` selects Istio's CRDs by: the CRDs in Istio's
# manifests carry app.kubernetes.io/part-of=istio, not knative.dev/crd-install (see test_istio.py)
ISTIO_CRD_SELECTOR = "app.kubernetes.io/part-of=istio"

INGRESSES = {i.name: i for i in (KOURIER, ISTIO)}
DEFAULT = KOURIER


class IngressError(ValueError):
    pass


def get(name: str) -> Ingress:
    try:
        return INGRESSES[name]
    except KeyError:
        raise IngressError(f"unknown ingress {name!r}: one of {', '.join(INGRESSES)}") from None


def conflict(current_class: str, wanted: Ingress) -> str | None:
    """Why a cluster whose config-network says ``current_class`` cannot take ``wanted``; None if it can."""
    current = current_class.strip()
    if not current or current == wanted.ingress_class:
        return None
    others = [i for i in INGRESSES.values() if i.ingress_class == current]
    what = f"{others[0].title} ({current})" if others else current
    return (f"this cluster's Knative Serving already uses {what}; one ingress per cluster: "
            f"`testbed lab down`, then `testbed lab up --ingress {wanted.name}`")
