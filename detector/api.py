"""The detector's HTTP API (aiohttp): ingest, relay, probes, metrics, sources, dead letters.

POST /v1/events        NDJSON AppEvents, Bearer token; 202 once durable, 400 with reasons per
                       line (valid lines are kept), 401, 413, 503 when draining or overloaded
POST / , /v1/cloudevents   one CloudEvent (binary or structured), relayed to the sink
GET  /healthz /readyz /metrics   probes and Prometheus text (no token)
GET  /v1/sources  /v1/deadletters   (token)

The bearer token is checked by one middleware for the routes marked `_token_required`; the app
runs the detector's life cycle (`cleanup_ctx`: start on startup, stop on cleanup, after the
requests in flight finished) and refuses new ingest from shutdown on.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from detector.metrics import CONTENT_TYPE
from detector.service import Batch, Detector

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DETECTOR_KEY: web.AppKey[Detector] = web.AppKey("detector", Detector)

_TOKEN_REQUIRED: set[Handler] = set()   # routes behind the bearer token
_INGEST: set[Handler] = set()           # routes counted in detector_ingest_requests_total


def _token_required(handler: Handler) -> Handler:
    _TOKEN_REQUIRED.add(handler)
    return handler


def _ingest(handler: Handler) -> Handler:
    _INGEST.add(handler)
    return handler


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json",
                        headers=headers)


def _authorized(token: str | None, request: web.Request) -> bool:
    if token is None:
        return True
    auth = request.headers.get("Authorization", "")
    scheme, _, given = auth.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@web.middleware
async def count_ingest(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every ingest request, refused ones included."""
    if request.match_info.handler in _INGEST:
        request.app[DETECTOR_KEY].metrics.ingest_requests += 1
    return await handler(request)


@web.middleware
async def bearer_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 unless the request carries the configured bearer token (routes marked `_token_required`)."""
    if request.match_info.handler in _TOKEN_REQUIRED:
        det = request.app[DETECTOR_KEY]
        if not _authorized(det.cfg.token, request):
            det.metrics.unauthorized += 1
            return _json(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
    return await handler(request)


@web.middleware
async def ingest_admission(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Ingest routes: 503 while draining or overloaded, 413 for a declared body over the cap,
    before the body is read (after the token check, as the middlewares are ordered)."""
    if request.match_info.handler in _INGEST:
        refused = _refuse(request.app[DETECTOR_KEY], request)
        if refused is not None:
            return refused
    return await handler(request)


def _refuse(det: Detector, request: web.Request) -> web.Response | None:
    """The answer that ends an ingest request before its body is read, if any."""
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


@_ingest
@_token_required
async def post_events(request: web.Request) -> web.Response:
    det = request.app[DETECTOR_KEY]
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


@_ingest
@_token_required
async def post_cloudevent(request: web.Request) -> web.Response:
    det = request.app[DETECTOR_KEY]
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
    return web.Response(body=det.metrics.render(),
                        headers={"Content-Type": CONTENT_TYPE, "X-Content-Type-Options": "nosniff"})


@_token_required
async def get_sources(request: web.Request) -> web.Response:
    det = request.app[DETECTOR_KEY]
    return _json(200, {"sources": det.sources.listing()})


@_token_required
async def get_deadletters(request: web.Request) -> web.Response:
    det = request.app[DETECTOR_KEY]
    if det.outbox is None:
        return _json(503, {"error": "outbox closed"})
    rows = await det.db(det.outbox.dead_letters, 100)
    return _json(200, {"deadletters": rows})


async def _detector_life(app: web.Application) -> AsyncIterator[None]:
    """Start the detector with the app; stop it once the requests in flight have finished."""
    det = app[DETECTOR_KEY]
    try:
        await det.start()
    except BaseException:
        await det.stop()
        raise
    yield
    await det.stop()


async def _refuse_new_ingest(app: web.Application) -> None:
    app[DETECTOR_KEY].draining = True


def make_app(det: Detector) -> web.Application:
    # the body limit is enforced by us (413 with a JSON reason); aiohttp's own check backs it up
    app = web.Application(client_max_size=det.cfg.max_body_bytes, middlewares=[count_ingest, bearer_token, ingest_admission])
    app[DETECTOR_KEY] = det
    app.cleanup_ctx.append(_detector_life)
    app.on_shutdown.append(_refuse_new_ingest)
    app.router.add_post("/v1/events", post_events)
    app.router.add_post("/", post_cloudevent)
    app.router.add_post("/v1/cloudevents", post_cloudevent)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/sources", get_sources)
    app.router.add_get("/v1/deadletters", get_deadletters)
    return app
