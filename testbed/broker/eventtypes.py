"""EventTypes: the catalogue of CloudEvent types declared for the Brokers and Channels.

Knative's EventType is a registry entry for discovery ("EventType represents a type of event that
can be consumed from a resource", eventtype.yaml CRD): the ingress does not refuse an event whose
type no EventType declares (with the alpha `eventtype-auto-create` feature it even creates one for
it). The local broker does the same and delivers such an event, but says so: one log line per type
at most every `WARN_EVERY` seconds, and a count per type (`undeclared_types` in /_local/stats).

Which EventTypes count for an ingress (my choice, nothing in Knative checks this):
- those of its namespace whose `reference` names it (a Channel and an InMemoryChannel of one name
  are the same address), plus those of the namespace that name nothing;
- when none names it, every EventType of the namespace (the project declares its types for the
  Broker only; a Channel in front of it carries the same events);
- when the namespace has none, nothing is checked.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from testbed.broker.manifests import CHANNEL_KINDS, EventType

log = logging.getLogger("testbed.broker")

WARN_EVERY = 60.0   # seconds between two warnings about the same undeclared type


def _kind_group(kind: str) -> str:
    return "Channel" if kind in CHANNEL_KINDS else kind


def _names(et: EventType, namespace: str, kind: str, name: str) -> bool:
    ref = et.reference
    return ref is not None and (ref.namespace, _kind_group(ref.kind), ref.name) == (namespace, _kind_group(kind), name)


class EventTypeRegistry:
    """The manifests' EventTypes; `check` is called for every event an ingress accepts."""

    def __init__(self, eventtypes: Iterable[EventType], *, warn_every: float = WARN_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.eventtypes = sorted(eventtypes, key=lambda et: (et.namespace, et.name))
        self.warn_every = warn_every
        self.clock = clock
        self.undeclared: Counter[str] = Counter()
        self._declared: dict[tuple[str, str, str], frozenset[str] | None] = {}
        self._last_warning: dict[str, float] = {}
        self._unreported: Counter[str] = Counter()   # undeclared events since the last warning, per type

    def declared_for(self, namespace: str, kind: str, name: str) -> frozenset[str] | None:
        """The types declared for the Broker or Channel `namespace/name`; None: nothing to check."""
        key = (namespace, _kind_group(kind), name)
        if key not in self._declared:
            in_ns = [et for et in self.eventtypes if (et.reference.namespace if et.reference else et.namespace)
                     == namespace]
            own = [et for et in in_ns if _names(et, namespace, kind, name)]
            if own:
                own += [et for et in in_ns if et.reference is None]
            chosen = own or in_ns
            self._declared[key] = frozenset(et.type for et in chosen) if chosen else None
        return self._declared[key]

    def check(self, namespace: str, kind: str, name: str, event_type: str) -> bool:
        """Whether `event_type` is declared for that ingress; if not, count it and maybe warn."""
        declared = self.declared_for(namespace, kind, name)
        if declared is None or event_type in declared:
            return True
        self.undeclared[event_type] += 1
        self._unreported[event_type] += 1
        now = self.clock()
        last = self._last_warning.get(event_type)
        if last is None or now - last >= self.warn_every:
            self._last_warning[event_type] = now
            n = self._unreported.pop(event_type)
            log.warning("event type %r is declared by no EventType for %s %s/%s (%d event(s) since the last "
                        "warning): delivered anyway, as Knative does", event_type, kind, namespace, name, n)
        return False

    def listing(self) -> list[dict[str, Any]]:
        """Each EventType as /_local/eventtypes shows it."""
        out = []
        for et in self.eventtypes:
            ref = et.reference
            out.append({"namespace": et.namespace, "name": et.name, "apiVersion": et.api_version, "type": et.type,
                        "source": et.source, "description": et.description,
                        "reference": None if ref is None else {"apiVersion": ref.api_version, "kind": ref.kind,
                                                               "namespace": ref.namespace, "name": ref.name}})
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"eventtypes": self.listing(), "undeclared_types": dict(sorted(self.undeclared.items()))}
