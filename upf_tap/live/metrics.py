"""Prometheus text exposition (format 0.0.4) of the live tap's counters.

``render(snapshot)`` is a pure function (tested directly and over HTTP);
``MetricsServer`` serves it on GET /metrics from a daemon thread, asking a
callback for a fresh snapshot on each scrape so the capture loop never waits.

Written by hand rather than with prometheus_client: its exposition writes every
sample as a Go float (``811.0``, ``1.23456789e+08``) while these counters are exact
integers and are read as such, and it renders a typical snapshot about ten times
slower (0.5 ms against 46 us per scrape, in the process that captures). Names, types, HELP texts and label escaping follow the same format 0.0.4.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "upf_tap_"


@dataclass
class Snapshot:
    packets: Counter[str] = field(default_factory=Counter)        # by interface (frames handed to the tap)
    bytes: Counter[str] = field(default_factory=Counter)          # by interface
    kernel_packets: Counter[str] = field(default_factory=Counter)  # by interface (PACKET_STATISTICS)
    kernel_drops: Counter[str] = field(default_factory=Counter)   # by interface
    events: Counter[str] = field(default_factory=Counter)         # by kind
    drops: Counter[str] = field(default_factory=Counter)          # by reason (tap + sender)
    flows: int = 0      # active flows
    sessions: int = 0   # PDU sessions up and not down
    workers: int = 1
    sender: dict[str, int] = field(default_factory=dict)  # DetectorSender.counters(); empty without one


# The detector sender's families, shown when there is a sender (its losses are in drops_total):
# (key in DetectorSender.counters(), family, type, help)
SENDER_FAMILIES = (
    ("sent", "sender_events_sent_total", "counter", "AppEvents the detector accepted (2xx)."),
    ("posts", "sender_posts_total", "counter", "POSTs the detector accepted."),
    ("retries", "sender_retries_total", "counter",
     "POSTs retried after a connection or TLS error, or 404/408/409/429/5xx."),
    ("tls_errors", "sender_tls_errors_total", "counter",
     "TLS handshakes with the detector that failed (certificate not verified, name mismatch)."),
    ("spool.spooled", "spool_events_total", "counter", "AppEvents written to the on-disk spool."),
    ("spool.torn_tails", "spool_torn_tails_total", "counter",
     "Torn records found at the end of a spool segment (after a crash) and cut off."),
    ("spool.corrupt", "spool_corrupt_records_total", "counter",
     "Spool records that failed their checksum (the rest of their segment is skipped)."),
    ("spool.bytes", "spool_bytes", "gauge", "Bytes of spool segments on disk."),
    ("spool.pending_bytes", "spool_pending_bytes", "gauge",
     "Bytes of spooled AppEvents the detector has not acknowledged yet."),
)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(out: list[str], name: str, kind: str, help_: str, label: str | None,
            values: Mapping[str, int] | int) -> None:
    full = PREFIX + name
    out.append(f"# HELP {full} {help_}")
    out.append(f"# TYPE {full} {kind}")
    if not isinstance(values, Mapping):
        out.append(f"{full} {int(values)}")
        return
    assert label is not None
    for k in sorted(values):
        out.append(f'{full}{{{label}="{_esc(str(k))}"}} {int(values[k])}')


def render(s: Snapshot) -> str:
    out: list[str] = []
    _family(out, "packets_total", "counter", "Frames captured and handed to the decoder.", "iface", s.packets)
    _family(out, "bytes_total", "counter", "Bytes of captured frames.", "iface", s.bytes)
    _family(out, "kernel_packets_total", "counter",
            "Packets the kernel offered to the capture sockets (PACKET_STATISTICS, drops included).",
            "iface", s.kernel_packets)
    _family(out, "kernel_drops_total", "counter",
            "Packets the kernel dropped because a capture ring was full.", "iface", s.kernel_drops)
    _family(out, "events_total", "counter", "AppEvents emitted, by kind.", "kind", s.events)
    _family(out, "drops_total", "counter",
            "Packets or events the tap dropped or could not decode, by reason.", "reason", s.drops)
    _family(out, "flows", "gauge", "Flows in the flow tables.", None, s.flows)
    _family(out, "sessions", "gauge", "PDU sessions seen up and not yet down.", None, s.sessions)
    _family(out, "workers", "gauge", "Capture worker processes.", None, s.workers)
    for key, name, kind, help_ in SENDER_FAMILIES:
        if key in s.sender:
            _family(out, name, kind, help_, None, s.sender[key])
    return "\n".join(out) + "\n"


class MetricsServer:
    """GET /metrics on (addr, port); port 0 picks a free one (see ``.port``)."""

    def __init__(self, addr: str, port: int, snapshot: Callable[[], Snapshot]) -> None:
        get = snapshot

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = render(get()).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
                pass

        self.httpd = ThreadingHTTPServer((addr, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
