"""The detector's HTTP API (aiohttp): ingest, relay, probes, metrics, sources, dead letters.

POST /v1/events        AppEvents as NDJSON (or one JSON object / array), Bearer token; 202 once
                       durable, 400 with reasons per line (valid lines are kept), 401, 413, 415,
                       503 + Retry-After when draining, overloaded or the outbox cannot store
POST / , /v1/cloudevents   one CloudEvent (binary or structured), relayed to the sink
GET  /healthz /readyz /metrics   probes and Prometheus text (no token)
GET  /v1/sources  /v1/deadletters   (token)
GET  /v1/mobility/ues/{ue}   where a UE is served, for the other MEC sites' detectors (token; detector/mobility.py)
GET  /openapi.json     the OpenAPI 3.1 description of all of these (detector/openapi.yaml)
POST/PATCH/DELETE /nupf-ee/v1/ee-subscriptions[/{id}]   Nupf_EventExposure (detector/exposure, token)

The bearer token is checked by one middleware for the routes marked `_token_required`; the app
runs the detector's life cycle (`cleanup_ctx`: start on startup, stop on cleanup, after the
requests in flight finished) and refuses new ingest from shutdown on. Every error answer is
JSON `{"error": reason}` (aiohttp's own 404/405 included).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from detector.exposure import api as exposure_api
from detector.metrics import CONTENT_TYPE
from detector.mobility import KEY_LIMIT, PEER_ROUTE
from detector.openapi import OPENAPI_PATH, document_bytes
from detector.service import Batch, Detector, first_line

log = logging.getLogger("detector")
STORE_RETRY_AFTER = "5"   # seconds: a full disk rarely clears within one
# Content types read as NDJSON; aiohttp reports a missing Content-Type as application/octet-stream
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/x-jsonlines", "text/plain",
                          "application/octet-stream"})
JSON_TYPE = "application/json"

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
    # aiohttp keeps non-UTF-8 header bytes as surrogates: encode them back rather than fail (500)
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token.encode())


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answer carries a JSON reason: aiohttp's own (404, 405, ...) too; an unexpected
    exception is logged and becomes a 500 with its one-line reason."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() not in ("content-type", "content-length")}
        return _json(e.status, {"error": e.reason.lower()}, headers)
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return _json(500, {"error": f"internal error: {first_line(e)}"})


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
    except web.RequestPayloadError as e:
        # e.g. a body that does not follow its Content-Encoding (aiohttp decompresses it): the client's fault
        return _json(400, {"error": f"cannot read the body: {_payload_reason(e)}"})


def _payload_reason(e: BaseException) -> str:
    """aiohttp's payload errors say "400, message:" and keep the cause below."""
    causes = [c for c in (e.__cause__, e.__cause__ and e.__cause__.__context__) if c is not None]
    for c in causes:
        if not isinstance(c, aiohttp.http_exceptions.HttpProcessingError) and str(c):
            return first_line(c)
    return "malformed payload"


async def _persist(det: Detector, b: Batch) -> web.Response | None:
    """Store `b`; None once durable, else the 503 that makes the sender retry (nothing of it may be
    answered 2xx: a disk full, an I/O error or a closed outbox all mean "not stored")."""
    try:
        await det.persist(b)
    except Exception as e:
        det.metrics.store_failed += 1
        return _json(503, {"error": f"outbox cannot store events: {first_line(e)}"},
                     {"Retry-After": STORE_RETRY_AFTER})
    return None


def _unsupported_type(request: web.Request) -> web.Response | None:
    """415 for a body that is neither NDJSON nor JSON (a form, say), before reading it."""
    ctype = request.content_type
    if ctype == JSON_TYPE or ctype in NDJSON_TYPES:
        return None
    return _json(415, {"error": f"unsupported Content-Type {ctype}: send application/x-ndjson "
                                f"(one AppEvent per line) or application/json"})


@_ingest
@_token_required
async def post_events(request: web.Request) -> web.Response:
    det = request.app[DETECTOR_KEY]
    refused = _unsupported_type(request)
    if refused is not None:
        return refused
    body = await _read(det, request)
    if isinstance(body, web.Response):
        return body
    b = Batch()
    await det.prefetch(body, request.content_type == JSON_TYPE, b)   # mobility: ask the peers first
    parse = det.process_json if request.content_type == JSON_TYPE else det.process_lines
    accepted, dup, rejected = parse(body, b)
    refused = await _persist(det, b)
    if refused is not None:
        return refused
    det.metrics.ingest_accepted += accepted
    det.metrics.ingest_rejected += len(rejected)
    answer = {"accepted": accepted, "duplicates": dup, "emitted": len(b.rows), "rejected": rejected}
    if rejected:
        return _json(400, answer)
    if not accepted and not dup:
        return _json(400, {**answer, "error": "empty body: expected AppEvents (NDJSON, one per line)"})
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
        return _json(400, {"error": f"not a CloudEvent: {first_line(e)}"})
    b = Batch()
    try:
        fresh = det.process_cloudevent(ce, b)
    except Exception as e:
        det.metrics.ingest_rejected += 1
        return _json(400, {"error": f"cannot relay CloudEvent: {first_line(e)}"})
    refused = await _persist(det, b)
    if refused is not None:
        return refused
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
        return _json(503, {"error": "outbox closed"}, {"Retry-After": "1"})
    rows = await det.db(det.outbox.dead_letters, 100)
    return _json(200, {"deadletters": rows})


@_token_required
async def get_mobility_ue(request: web.Request) -> web.Response:
    """Where this detector last saw a UE (by SUPI or UE IP) and its recent CloudEvent types: what
    another site's detector asks when the UE shows up there (docs/detector.md, Mobility)."""
    det = request.app[DETECTOR_KEY]
    if det.mobility is None:
        return _json(404, {"error": "mobility is not configured on this detector"})
    key = request.match_info["ue"]
    view = det.mobility.view(key) if 0 < len(key) <= KEY_LIMIT else None
    if view is None:
        return _json(404, {"error": "unknown UE"})
    return _json(200, view)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=document_bytes(), content_type="application/json")


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


# every route; detector/openapi.yaml documents exactly these (tests/detector/test_det_openapi.py)
POSTS: tuple[tuple[str, Handler], ...] = (("/v1/events", post_events), ("/", post_cloudevent),
                                          ("/v1/cloudevents", post_cloudevent))
GETS: tuple[tuple[str, Handler], ...] = (("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics),
                                         ("/v1/sources", get_sources), ("/v1/deadletters", get_deadletters),
                                         (PEER_ROUTE, get_mobility_ue), (OPENAPI_PATH, openapi))


def make_app(det: Detector) -> web.Application:
    # the body limit is enforced by us (413 with a JSON reason); aiohttp's own check backs it up
    app = web.Application(client_max_size=det.cfg.max_body_bytes,
                          middlewares=[json_errors, count_ingest, bearer_token, ingest_admission])
    app[DETECTOR_KEY] = det
    app.cleanup_ctx.append(_detector_life)
    app.on_shutdown.append(_refuse_new_ingest)
    for path, handler in POSTS:
        app.router.add_post(path, handler)
    for path, handler in GETS:
        # no implicit HEAD: the routes are exactly the operations of openapi.yaml (a test checks)
        app.router.add_get(path, handler, allow_head=False)
    for method, path, handler in exposure_api.ROUTES:      # Nupf_EventExposure (docs/exposure.md)
        app.router.add_route(method, path, _token_required(handler))
    exposure_api.install(app, det)
    return app

