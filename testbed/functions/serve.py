"""A tiny CloudEvents-over-HTTP server for the sample functions (standard library only).

    python -m testbed.functions.serve buy [--host 0.0.0.0] [--port 8080]

The same code runs in the function's container (Knative sets PORT) and under the local
function runner. A handler module `testbed.functions.<name>` defines
`handle(event: dict) -> dict | None`, where an event is
`{"attributes": {...}, "data": <JSON value, text or bytes>}`; a returned dict of the
same shape is the reply, written in binary mode with 200 (no reply: 202, empty body).
A request that is not a CloudEvent gets 400; a handler exception gets 500. A warm-up event
(extension `mecwarmup: "true"`, testbed/functions/warmup.py) gets 200 with no body at once: the
handler does not run, and it is journalled apart (warmups.jsonl), so that invocations.jsonl stays
the list of actions while the first real event after it is rightly not a cold start.

Tracing: each invocation is logged on stdout (one JSON line; FN_ACCESS_LOG=0 turns it off) and,
with FN_JOURNAL=1, journalled, both with the event's `traceparent` (the CloudEvents Distributed
Tracing extension); a reply continues the trace (its `traceparent` names the function's span).
With OTEL_EXPORTER_OTLP_ENDPOINT set, the spans of the event's way here are exported: `delivery`
and `broker.accept` (from its `mecingesttime` / `knativearrivaltime` stamps) and `function`.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

from mec_common.tracing import (
    OtlpSpans,
    SpanRecord,
    TraceContext,
    downstream_spans,
    epoch_ns,
    otlp_from_env,
    parse_traceparent,
    rfc3339_ns,
)
from testbed.functions.store import append_jsonl
from testbed.functions.warmup import is_warmup

Handler = Callable[[dict[str, Any]], dict[str, Any] | None]
REQUIRED = ("id", "source", "specversion", "type")
MAX_BODY = 4 * 1024 * 1024
INVOCATIONS = "invocations.jsonl"   # the journal of actions (FN_JOURNAL)
WARMUPS = "warmups.jsonl"           # the journal of warm-ups answered (FN_JOURNAL)
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


class BadEvent(ValueError):
    pass


def _is_json(ctype: str) -> bool:
    media = ctype.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


def decode_event(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """Binary or structured mode (JSON format) to {"attributes", "data"}."""
    h = {k.lower(): v for k, v in headers.items()}
    ctype = h.get("content-type", "")
    if ctype.lower().startswith("application/cloudevents+json"):
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise BadEvent(f"structured event is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise BadEvent("structured event is not a JSON object")
        attrs = {k: v for k, v in obj.items() if k not in ("data", "data_base64")}
        data: Any = obj.get("data")
        if "data_base64" in obj:
            data = base64.b64decode(obj["data_base64"])
    elif "ce-specversion" in h:
        attrs = {k[3:]: unquote(v) for k, v in h.items() if k.startswith("ce-")}
        if ctype:
            attrs["datacontenttype"] = ctype
        data = None
        if body:
            if _is_json(ctype) or not ctype:
                try:
                    data = json.loads(body)
                except ValueError:
                    data = body
            elif ctype.lower().startswith("text/"):
                data = body.decode("utf-8", "replace")
            else:
                data = body
    else:
        raise BadEvent("not a CloudEvent (no ce-specversion header, not structured mode)")
    missing = [a for a in REQUIRED if not attrs.get(a)]
    if missing:
        raise BadEvent(f"missing required attribute(s): {', '.join(missing)}")
    return {"attributes": attrs, "data": data}


def invocation_spans(service: str, attrs: dict[str, Any], started: float, finished: float) -> list[SpanRecord]:
    """The spans from the detector's to this function's (mec_common.tracing.downstream_spans);
    none when the event carries no valid `traceparent`."""
    ce = parse_traceparent(attrs.get("traceparent"), attrs.get("tracestate"))
    if ce is None:
        return []
    return downstream_spans(ce, service, ingest_ns=rfc3339_ns(attrs.get("mecingesttime")),
                            arrival_ns=rfc3339_ns(attrs.get("knativearrivaltime")),
                            start_ns=epoch_ns(started) or 0, end_ns=epoch_ns(finished) or 0,
                            attributes={"cloudevents.event_id": str(attrs.get("id")),
                                        "cloudevents.event_type": str(attrs.get("type"))})


def reply_trace(spans: list[SpanRecord], ce: TraceContext | None) -> str | None:
    """A reply's `traceparent`: the function's span, in the event's trace."""
    if ce is None or not spans:
        return None
    return TraceContext(ce.trace_id, spans[-1].span_id, ce.flags).traceparent()


def encode_reply(event: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """A reply in binary mode; dict/list data is written as JSON."""
    attrs = dict(event["attributes"])
    attrs.setdefault("specversion", "1.0")
    data = event.get("data")
    headers: dict[str, str] = {}
    if data is None:
        body = b""
    elif isinstance(data, bytes):
        body = data
        attrs.setdefault("datacontenttype", "application/octet-stream")
    elif isinstance(data, str):
        body = data.encode()
        attrs.setdefault("datacontenttype", "text/plain; charset=utf-8")
    else:
        body = json.dumps(data, separators=(",", ":")).encode()
        attrs.setdefault("datacontenttype", "application/json")
    for name, value in attrs.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if name == "datacontenttype":
            headers["Content-Type"] = text
        else:
            headers[f"ce-{name}"] = quote(text, safe=_SAFE)
    return headers, body


def make_handler_class(handle: Handler, name: str) -> type[BaseHTTPRequestHandler]:
    class FunctionHTTPHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = f"mec-fn-{name}/0.1"
        # one buffered write per answer and no Nagle: otherwise headers and body leave in
        # two segments and delayed ACKs add ~40 ms to every keep-alive request
        wbufsize = 64 * 1024
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet: functions log their own way
            pass

        def _send(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path in ("/healthz", "/readyz"):
                self._send(200, {"Content-Type": "text/plain"}, b"ok\n")
            else:
                self._send(404, {"Content-Type": "text/plain"}, b"POST CloudEvents here\n")

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self._send(413 if length > MAX_BODY else 400, {"Content-Type": "text/plain"}, b"bad body length\n")
                self.close_connection = True
                return
            body = self.rfile.read(length) if length else b""
            try:
                event = decode_event(dict(self.headers.items()), body)
            except (BadEvent, ValueError) as exc:
                self._send(400, {"Content-Type": "text/plain"}, f"{exc}\n".encode())
                return
            started = time.time()
            if is_warmup(event):   # the request that scaled us from zero was the point: nothing to do
                warmup_done(name, event, started)
                self._send(200)
                return
            try:
                reply = handle(event)
            except Exception as exc:  # a handler bug must not kill the server: answer 500
                print(json.dumps({"level": "error", "function": name, "error": repr(exc)}), file=sys.stderr, flush=True)
                self._send(500, {"Content-Type": "text/plain"}, f"handler failed: {exc}\n".encode())
                invocation_done(name, event, started, 500)
                return
            spans = invocation_done(name, event, started, 202 if reply is None else 200)
            if reply is None:
                self._send(202)
            else:
                parent = reply_trace(spans, parse_traceparent(event["attributes"].get("traceparent")))
                if parent and isinstance(reply.get("attributes"), dict):
                    reply["attributes"].setdefault("traceparent", parent)
                headers, out = encode_reply(reply)
                self._send(200, headers, out)

    return FunctionHTTPHandler


_served = 0
_journal_lock = threading.Lock()
_spans: OtlpSpans | None = None   # set by main() when OTLP export is configured


def invocation_done(name: str, event: dict[str, Any], started: float, status: int) -> list[SpanRecord]:
    """An invocation is over: log it, journal it, export its spans; returns them (for a reply's trace)."""
    end = time.time()
    attrs = event.get("attributes", {})
    service = os.environ.get("K_SERVICE", name)
    spans = invocation_spans(service, attrs, started, end)
    access_log(name, service, attrs, started, end, status)
    journal(name, event, started, end, status)
    if _spans is not None and spans:
        _spans.emit(spans)
    return spans


def warmup_done(name: str, event: dict[str, Any], started: float) -> None:
    """A warm-up was answered: logged as msg "warmup" (not "invocation") and journalled in
    warmups.jsonl (with FN_JOURNAL), counted as this process's first request if it was."""
    end = time.time()
    attrs = event.get("attributes", {})
    service = os.environ.get("K_SERVICE", name)
    access_log(name, service, attrs, started, end, 200, msg="warmup")
    journal(name, event, started, end, 200, file=WARMUPS)


def access_log(name: str, service: str, attrs: dict[str, Any], started: float, end: float, status: int,
               msg: str = "invocation") -> None:
    """One JSON line on stdout per invocation (unless FN_ACCESS_LOG=0), with the trace context."""
    if os.environ.get("FN_ACCESS_LOG", "1") == "0":
        return
    line = {"level": "info", "msg": msg, "function": name, "service": service, "id": attrs.get("id"),
            "type": attrs.get("type"), "status": status, "ms": round((end - started) * 1000, 3),
            "traceparent": attrs.get("traceparent")}
    print(json.dumps(line, separators=(",", ":")), flush=True)


def journal(name: str, event: dict[str, Any], started: float, finished: float, status: int,
            file: str = INVOCATIONS) -> None:
    """One line per invocation in $FN_STATE_DIR/invocations.jsonl (when FN_JOURNAL is set):
    the handler's start and end times, and whether it was this process's first request (a
    cold start when the function scaled from zero), which the demo's latency report reads."""
    if not os.environ.get("FN_JOURNAL"):
        return
    global _served
    with _journal_lock:
        _served += 1
        first = _served == 1
    attrs = event.get("attributes", {})
    record = {"first": first, "function": name, "service": os.environ.get("K_SERVICE", name), "id": attrs.get("id"),
              "source": attrs.get("source"), "type": attrs.get("type"), "start": started, "end": finished,
              "status": status, "traceparent": attrs.get("traceparent")}
    append_jsonl(file, record)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # socketserver's default of 5 drops SYNs under a burst (1 s retransmits)
    daemon_threads = True


def load_handler(name: str) -> Handler:
    if not name.replace("_", "").isalnum() or name == "serve":
        raise SystemExit(f"serve: bad function name {name!r}")
    try:
        module = importlib.import_module(f"testbed.functions.{name}")
    except ModuleNotFoundError as exc:
        raise SystemExit(f"serve: no function {name!r} in testbed.functions") from exc
    handle = getattr(module, "handle", None)
    if not callable(handle):
        raise SystemExit(f"serve: testbed.functions.{name} has no handle(event)")
    return handle


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: str | None) -> bool:
    """Under the local runner (``FN_PARENT_PID``), end when the broker that started us ends, even by
    kill -9, as a pod's containers end with the pod; False when the parent is gone already."""
    if not parent:
        return True
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        return os.getppid() == int(parent)  # it may have died before the prctl
    except (OSError, AttributeError, ValueError):
        return True  # not Linux: the runner stops us itself


def main(argv: list[str] | None = None) -> int:
    if not die_with_parent(os.environ.get("FN_PARENT_PID")):
        return 1
    ap = argparse.ArgumentParser(prog="python -m testbed.functions.serve",
                                 description="Serve one sample function as CloudEvents over HTTP.")
    ap.add_argument("function", nargs="?", default=os.environ.get("FN_HANDLER"),
                    help="handler module in testbed.functions (buy, dns_edge, logger); default $FN_HANDLER")
    ap.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="address to bind (default 0.0.0.0)")
    ap.add_argument("--port", type=int, default=None, help="port (default: $PORT, else 8080; 0 = any free port)")
    ap.add_argument("--ready-line", action="store_true", help="print 'READY port=N' on stdout once listening")
    args = ap.parse_args(argv)
    if not args.function:
        ap.error("name the function (buy, dns_edge, logger) or set FN_HANDLER")
    port = args.port
    if port is None:
        try:
            port = int(os.environ.get("PORT", "8080"))
        except ValueError:
            print(f"serve: PORT is not a number: {os.environ['PORT']!r}", file=sys.stderr)
            return 2
    handle = load_handler(args.function)
    global _spans
    _spans = otlp_from_env(os.environ.get("K_SERVICE", args.function))
    try:
        server = _Server((args.host, port), make_handler_class(handle, args.function))
    except OSError as exc:
        print(f"serve: cannot listen on {args.host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.ready_line:
        print(f"READY port={server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if _spans is not None:
            _spans.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
