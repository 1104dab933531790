"""AppEvent construction: the boundary between parsing and policy (DESIGN.md, Contract 1).

An AppEvent is a plain dict, serialised as one JSON line. Ids are stable: they are a
hash of what the tap saw (capture time, point, kind, tunnel, flow, app fields), so a
replay of the same capture gives the same ids and the detector can dedupe.

Each event also starts a W3C trace (`trace.traceparent`, mec_common/tracing.py): the trace id
is the event's id and the parent span the tap's `decode` span (the id's second half), so the
same capture always gives the same traces, for one string format per event. With
OTEL_EXPORTER_OTLP_ENDPOINT set, the tap's spans (`capture`, `decode`) are exported too.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import orjson

from mec_common.tracing import ZERO_SPAN, otlp_from_env, tap_spans, tap_traceparent
from upf_tap.decode.gtpu import PDU_TYPE_DL, PDU_TYPE_UL
from upf_tap.decode.ip import ip_str

if TYPE_CHECKING:  # types only: making a Protocol class costs start-up time
    from typing import Protocol

    from upf_tap.decode.gtpu import GtpuContext

    class Identities(Protocol):
        """Who a UE is, as the control plane (PFCP/NGAP or an identity file) knows it."""

        def ue_for_teid(self, teid: int, tunnel_dst: str | None = None,
                        ue_ip: str | None = None) -> dict[str, Any] | None: ...

        def ue_for_ip(self, ip: str) -> dict[str, Any] | None: ...

try:  # what hashlib.blake2b is, without hashlib loading OpenSSL at start (~3 ms)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import blake2b

AppEvent = dict[str, Any]


_SPANS = otlp_from_env("upf-tap")   # None unless OTLP export is configured

# The two encodings of every event. orjson (a dependency for this reason) does each in about
# 0.75 µs where the json module takes 5-6 (a TLS event, timeit); the two json.dumps were an eighth
# of the mixed workload's time (docs/performance.md). Both keep the json module's meaning: compact separators, UTF-8 in the
# line, sorted keys in the id's input, str() of what JSON has no type for. A value orjson refuses
# (an integer past 64 bits) takes the json module's path, for that event every time.
_ORJSON_ID = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
_ORJSON_LINE = orjson.OPT_NON_STR_KEYS
_ORJSON_LINE_NL = _ORJSON_LINE | orjson.OPT_APPEND_NEWLINE
_json_id = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode
_json_line = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode

_MAX_SEC = 253_402_300_799  # 9999-12-31T23:59:59: RFC 3339 years have four digits
_second: list[Any] = [-1, ""]  # the last second formatted: most events share one with the event before


def rfc3339(ts_ns: int) -> str:
    """Capture time in RFC 3339, UTC, microsecond precision.

    A time outside 1970-9999 (a capture with a garbled timestamp) is clamped to that range.
    """
    sec, ns = divmod(ts_ns, 1_000_000_000)
    if not 0 <= sec <= _MAX_SEC:
        sec, ns = (0, 0) if sec < 0 else (_MAX_SEC, 999_999_999)
    if sec != _second[0]:
        _second[0], _second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
    return f"{_second[1]}{ns // 1000:06d}Z"


def _id_bytes(event: AppEvent) -> bytes:
    try:
        return orjson.dumps(event, default=str, option=_ORJSON_ID)
    except orjson.JSONEncodeError:
        return _json_id(event).encode()


def stable_id(event: AppEvent, ts_ns: int, seq: int = 0) -> str:
    """A 32-hex-digit id from the event's content and exact capture time.

    ``seq`` separates events that are otherwise identical within one packet.
    """
    h = blake2b(f"{ts_ns}|{seq}|".encode(), digest_size=16)
    h.update(_id_bytes(event))
    return h.hexdigest()


def identify(ue_ip: str, tun: GtpuContext | None, control: Identities | None,
             direction: str | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The ``ue`` and ``tunnel`` fields of a user-plane event: the UE's address, the tunnel's
    TEID and QFI, the serving gNB, and what the control plane knows of the subscriber (by
    TEID, else by address).

    ``ue.gnb_ip`` is the gNB end of the packet's own tunnel (its source uplink, its
    destination downlink; without a direction, the PDU Session Container's PDU type says
    which), so it follows a handover from the first packet on the new path; without a
    tunnel (an N6 tap) it is the control plane's serving gNB."""
    ue: dict[str, Any] = {"ip": ue_ip}
    tunnel: dict[str, Any] | None = None
    known = None
    if tun is not None:
        osrc, odst, teid, qfi, pdu = tun
        ue["teid"] = teid
        tunnel = {"src": ip_str(osrc), "dst": ip_str(odst), "teid": teid}
        if qfi >= 0:
            ue["qfi"] = qfi
            tunnel["qfi"] = qfi
        if direction == "ul" or (direction is None and pdu == PDU_TYPE_UL):
            ue["gnb_ip"] = tunnel["src"]
        elif direction == "dl" or (direction is None and pdu == PDU_TYPE_DL):
            ue["gnb_ip"] = tunnel["dst"]
        if control is not None:
            known = control.ue_for_teid(teid, tunnel["dst"], ue_ip=ue_ip)
    if known is None and control is not None:
        known = control.ue_for_ip(ue_ip)
    if known:
        for k, v in known.items():
            if v is not None and k not in ue:
                ue[k] = v
    return ue, tunnel


def end_marker(ts_ns: int, point: str, tap: str, osrc: bytes, odst: bytes, teid: int,
               control: Identities | None, seq: int = 0) -> AppEvent:
    """A GTP-U End Marker (TS 29.281 §7.3.2): the last packet on a DL path a handover left.

    The UPF sends it to the old gNB with the old DL TEID, so the tunnel (destination, TEID) is
    the path that ended: it is ``app.gnb_ip`` / ``app.dl_teid`` and names the UE through the
    control plane (which remembers tunnels left behind). ``ue.gnb_ip`` is the control plane's
    serving gNB, left out while that is still the old one (the marker says it no longer is).
    """
    src, dst = ip_str(osrc), ip_str(odst)
    ue: dict[str, Any] = {"teid": teid}
    known = control.ue_for_teid(teid, dst) if control is not None else None
    for k, v in (known or {}).items():
        if v is not None and k not in ue:
            ue[k] = v
    if ue.get("gnb_ip") == dst:
        del ue["gnb_ip"]
    return make_event("gtpu.end_marker", ts_ns, point, tap, direction="dl", ue=ue,
                      tunnel={"src": src, "dst": dst, "teid": teid}, app={"gnb_ip": dst, "dl_teid": teid},
                      seq=seq)


def make_event(
    kind: str,
    ts_ns: int,
    point: str,
    tap: str,
    *,
    direction: str | None = None,
    ue: dict[str, Any] | None = None,
    flow: dict[str, Any] | None = None,
    tunnel: dict[str, Any] | None = None,
    app: dict[str, Any] | None = None,
    seq: int = 0,
) -> AppEvent:
    ev: AppEvent = {"kind": kind, "point": point, "tap": tap}
    if direction is not None:
        ev["direction"] = direction
    if ue:
        ev["ue"] = ue
    if flow is not None:
        ev["flow"] = flow
    if tunnel is not None:
        ev["tunnel"] = tunnel
    if app is not None:
        ev["app"] = app
    ev["time"] = rfc3339(ts_ns)
    ev["id"] = eid = stable_id(ev, ts_ns, seq)
    decode_span = eid[16:]
    ev["trace"] = {"traceparent": f"00-{eid}-{decode_span}-01" if decode_span != ZERO_SPAN
                   else tap_traceparent(eid)}
    if _SPANS is not None:
        _SPANS.emit(tap_spans(ev, ts_ns, time.time_ns()))
    return ev


def flush_spans(timeout_ms: int = 5000) -> None:
    """Send the spans still batched, where OTLP export is on: for a process that ends without the
    interpreter's exit handlers (a `read --workers` child)."""
    if _SPANS is not None:
        _SPANS.flush(timeout_ms)


def to_json_line(event: AppEvent) -> str:
    """The event as one JSON line (without the newline)."""
    try:
        return orjson.dumps(event, default=str, option=_ORJSON_LINE).decode()
    except orjson.JSONEncodeError:
        return _json_line(event)


def to_json_bytes(event: AppEvent) -> bytes:
    """The event as one JSON line with its newline, UTF-8: what ``to_json_line`` gives, for a
    binary stream (no decode and re-encode per event)."""
    try:
        return orjson.dumps(event, default=str, option=_ORJSON_LINE_NL)
    except orjson.JSONEncodeError:
        return (_json_line(event) + "\n").encode()
