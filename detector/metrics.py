"""Prometheus text exposition, written by hand: a few counters, gauges and one histogram."""

from __future__ import annotations

from collections.abc import Callable

# Delivery latency buckets (seconds): from sub-millisecond local sinks to minutes of outage.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for i, b in enumerate(self.bounds):
            if value <= b:
                self.counts[i] += 1
                break

    def lines(self, name: str) -> list[str]:
        out = []
        acc = 0
        for b, c in zip(self.bounds, self.counts, strict=True):
            acc += c
            out.append(f'{name}_bucket{{le="{b:g}"}} {acc}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    """Counters are plain attributes (cheap to bump on the hot path); gauges are read at scrape time."""

    def __init__(self) -> None:
        self.ingest_requests = 0
        self.ingest_accepted = 0      # AppEvents (or CloudEvents) durably accepted
        self.ingest_rejected = 0      # lines refused (bad JSON, schema)
        self.ingest_duplicates = 0    # AppEvents skipped as already seen
        self.unauthorized = 0
        self.emitted = 0              # CloudEvents written to the outbox
        self.dropped = 0              # AppEvents dropped by a rule or by `unmatched: drop`
        self.suppressed = 0           # emissions held back by debounce / rate limit
        self.delivered = 0
        self.retried = 0
        self.dead_lettered = 0
        self.sources_created = 0
        self.sources_expired = 0
        self.latency = Histogram()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def gauge(self, name: str, help_text: str, fn: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, fn)

    def render(self) -> str:
        counters = (
            ("detector_ingest_requests_total", "ingest HTTP requests", self.ingest_requests),
            ("detector_ingest_accepted_total", "events durably accepted", self.ingest_accepted),
            ("detector_ingest_rejected_total", "NDJSON lines refused", self.ingest_rejected),
            ("detector_ingest_duplicates_total", "AppEvents skipped as duplicates", self.ingest_duplicates),
            ("detector_unauthorized_total", "requests refused for a missing or wrong token", self.unauthorized),
            ("detector_cloudevents_emitted_total", "CloudEvents written to the outbox", self.emitted),
            ("detector_events_dropped_total", "AppEvents dropped by rules", self.dropped),
            ("detector_events_suppressed_total", "emissions held back by debounce or rate limit", self.suppressed),
            ("detector_delivered_total", "CloudEvents the sink accepted", self.delivered),
            ("detector_retries_total", "delivery attempts that will be retried", self.retried),
            ("detector_dead_lettered_total", "CloudEvents moved to the dead-letter table", self.dead_lettered),
            ("detector_sources_created_total", "UE sources created", self.sources_created),
            ("detector_sources_expired_total", "UE sources expired", self.sources_expired),
        )
        out: list[str] = []
        for name, help_text, value in counters:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        for name, (help_text, fn) in self.gauges.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {fn():g}"]
        hname = "detector_delivery_latency_seconds"
        out += [f"# HELP {hname} time from durable ingest to the sink's 2xx", f"# TYPE {hname} histogram"]
        out += self.latency.lines(hname)
        return "\n".join(out) + "\n"
