"""The detector's HTTP side (aiohttp): ingest, probes, metrics, sources.

POST /v1/events        NDJSON AppEvents, Bearer token; 202 once durable, 400 with reasons per
                       line (valid lines are kept), 401, 413, 503 when draining or overloaded
POST / , /v1/cloudevents   one CloudEvent (binary or structured), relayed to the sink
GET  /healthz /readyz /metrics   probes and Prometheus text (no token)
GET  /v1/sources  /v1/deadletters   (token)
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from detector.service import Batch, Detector

DETECTOR_KEY: web.AppKey[Detector] = web.AppKey("detector", Detector)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json",
                        headers=headers)


def _authorized(det: Detector, request: web.Request) -> bool:
    if det.cfg.token is None:
        return True
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), det.cfg.token.encode())


def _refuse(det: Detector, request: web.Request) -> web.Response | None:
    """The answer that ends the request before its body is read, if any."""
    if not _authorized(det, request):
        det.metrics.unauthorized += 1
        return _json(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
    if det.draining:
        return _json(503, {"error": "shutting down"}, {"Retry-After": "1"})
    if det.overloaded():
        return _json(503, {"error": "too many CloudEvents pending delivery"}, {"Retry-After": "1"})
    cl = request.content_length
    if cl is not None and cl > det.cfg.max_body_bytes:
        return _json(413, {"error": f"body over {det.cfg.max_body_bytes} bytes"})
    return None


async def _read(det: Detector, request: web.Request) -> bytes | web.Response:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _json(413, {"error": f"body over {det.cfg.max_body_bytes} bytes"})


async def post_events(request: web.Request) -> web.Response:
    det = request.app[DETECTOR_KEY]
    det.metrics.ingest_requests += 1
    refused = _refuse(det, request)
    if refused is not None:
        return refused
    body = await _read(det, request)
    if isinstance(body, web.Response):
        return body
    b = Batch()
    accepted, dup, rejected = det.process_lines(body, b)
    try:
        await det.persist(b)
    except Exception as e:
        return _json(500, {"error": f"outbox write failed: {e}"})
    det.metrics.ingest_accepted += accepted
    det.metrics.ingest_rejected += len(rejected)
    answer = {"accepted": accepted, "duplicates": dup, "emitted": len(b.rows), "rejected": rejected}
    if rejected:
        return _json(400, answer)
    if not accepted and not dup:
        return _json(400, {**answer, "error": "empty body: expected NDJSON AppEvents"})
    return _json(202, answer)


async def post_cloudevent(request: web.Request) -> web.Response:
    det = request.app[DETECTOR_KEY]
    det.metrics.ingest_requests += 1
    refused = _refuse(det, request)
    if refused is not None:
        return refused
    body = await _read(det, request)
    if isinstance(body, web.Response):
        return body
    try:
        ce = from_http_event(HTTPMessage(headers=dict(request.headers), body=body))
        if ce.get_specversion() != "1.0":
            raise ValueError("only CloudEvents 1.0 are relayed")
    except Exception as e:
        det.metrics.ingest_rejected += 1
        return _json(400, {"error": f"not a CloudEvent: {str(e).splitlines()[0] if str(e) else type(e).__name__}"})
    b = Batch()
    try:
        fresh = det.process_cloudevent(ce, b)
    except Exception as e:
        det.metrics.ingest_rejected += 1
        return _json(400, {"error": f"cannot relay CloudEvent: {str(e).splitlines()[0]}"})
    try:
        await det.persist(b)
    except Exception as e:
        return _json(500, {"error": f"outbox write failed: {e}"})
    det.metrics.ingest_accepted += 1
    return _json(202, {"accepted": 1, "duplicates": 0 if fresh else 1})


async def healthz(request: web.Request) -> web.Response:
    return _json(200, {"ok": True})


async def readyz(request: web.Request) -> web.Response:
    det = request.app[DETECTOR_KEY]
    ok = det.ready()
    return _json(200 if ok else 503, {"ready": ok, "sink_answered": det.delivery.sink_answered,
                                      "draining": det.draining})


async def metrics(request: web.Request) -> web.Response:
    det = request.app[DETECTOR_KEY]
    return web.Response(text=det.metrics.render(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def get_sources(request: web.Request) -> web.Response:
    det = request.app[DETECTOR_KEY]
    if not _authorized(det, request):
        det.metrics.unauthorized += 1
        return _json(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
    return _json(200, {"sources": det.sources.listing()})


async def get_deadletters(request: web.Request) -> web.Response:
    det = request.app[DETECTOR_KEY]
    if not _authorized(det, request):
        det.metrics.unauthorized += 1
        return _json(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
    if det.outbox is None:
        return _json(503, {"error": "outbox closed"})
    rows = await det.db(det.outbox.dead_letters, 100)
    return _json(200, {"deadletters": rows})


def make_app(det: Detector) -> web.Application:
    # the body limit is enforced by us (413 with a JSON reason); aiohttp's own check backs it up
    app = web.Application(client_max_size=det.cfg.max_body_bytes)
    app[DETECTOR_KEY] = det
    app.router.add_post("/v1/events", post_events)
    app.router.add_post("/", post_cloudevent)
    app.router.add_post("/v1/cloudevents", post_cloudevent)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/sources", get_sources)
    app.router.add_get("/v1/deadletters", get_deadletters)
    return app
