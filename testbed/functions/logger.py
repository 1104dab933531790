"""logger: writes every event it gets as one JSON line (to $FN_LOG_FILE, default
events.jsonl in $FN_STATE_DIR) and to stdout. Never replies."""

from __future__ import annotations

import base64
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from testbed.functions.store import append_jsonl
from testbed.functions.warmup import is_warmup


def handle(event: dict[str, Any]) -> None:
    if is_warmup(event):   # pre-warm after a move: not an event of the UE's activity
        return None
    data = event.get("data")
    if isinstance(data, bytes):
        data = {"base64": base64.b64encode(data).decode()}
    record = {
        "received": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "service": os.environ.get("K_SERVICE", "logger"),
        "attributes": event["attributes"],
        "data": data,
    }
    append_jsonl(os.environ.get("FN_LOG_FILE", "events.jsonl"), record)
    print(json.dumps(record, separators=(",", ":"), sort_keys=True), file=sys.stdout, flush=True)
    return None
