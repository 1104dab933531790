"""HTTP delivery rules shared by every sender in the pipeline (tap -> detector, detector -> sink,
local broker -> subscriber).

Knative's delivery retries 404 (the Broker or Channel not known yet), 408, 409, 429 and every
5xx, and so do we (DESIGN.md, Contract 2); other 4xx are final (dead letter).
"""

from __future__ import annotations

RETRYABLE_4XX = frozenset({404, 408, 409, 429})


def is_retryable(status: int) -> bool:
    """True for the answers a sender retries (with backoff): 404, 408, 409, 429 and 5xx."""
    return status >= 500 or status in RETRYABLE_4XX
