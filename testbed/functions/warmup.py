"""Warm-up events: the detector's pre-warm (docs/detector.md, "Mobility") sends a MEC site's
broker one CloudEvent per function type a UE used recently, with the extension `mecwarmup:
"true"`, when the UE moves there. Its only purpose is to make Knative scale the function from
zero (the request goes through the activator); the function answers it 200 at once, with no
reply and without acting: no order, no log line, no cache entry.

`serve` answers warm-ups before the handler runs; the handlers check too, for callers that use
them directly. The name is the detector's `detector.mobility.WARMUP_EXTENSION` (a test keeps
them equal; the functions' images carry no detector code).
"""

from __future__ import annotations

from typing import Any

WARMUP_EXTENSION = "mecwarmup"


def is_warmup(event: dict[str, Any]) -> bool:
    """The event is a warm-up (its `mecwarmup` attribute is true, as text or as a boolean)."""
    v = (event.get("attributes") or {}).get(WARMUP_EXTENSION)
    return v is True or (isinstance(v, str) and v.strip().lower() == "true")
