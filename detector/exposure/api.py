"""The Nupf_EventExposure routes: {apiRoot}/nupf-ee/v1/ee-subscriptions[/{subscriptionId}].

POST   /ee-subscriptions                    CreateEventSubscription -> 201, Location, CreatedEventSubscription
PATCH  /ee-subscriptions/{subscriptionId}   JSON Patch (application/json-patch+json) -> 204
DELETE /ee-subscriptions/{subscriptionId}   -> 204

Errors are TS 29.571 ProblemDetails (`application/problem+json`). The bearer token is checked by
the detector's middleware (detector/api.py registers these routes behind it).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from detector.exposure import spec
from detector.exposure.models import BAD_FORMAT, Problem
from detector.exposure.service import ExposureService, not_found
from detector.service import Detector, first_line, parse_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EXPOSURE_KEY: web.AppKey[ExposureService] = web.AppKey("exposure", ExposureService)
PROBLEM_TYPE = "application/problem+json"
JSON_PATCH_TYPE = "application/json-patch+json"
_SAFE_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def problem_response(p: Problem, headers: dict[str, str] | None = None) -> web.Response:
    extra = dict(headers or {})
    if p.retry_after is not None:
        extra["Retry-After"] = str(p.retry_after)
    return web.Response(status=p.status, body=json.dumps(p.body()).encode(), content_type=PROBLEM_TYPE,
                        headers=extra)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json",
                        headers=headers)


def _unsupported_media(ctype: str, want: str) -> Problem:
    return Problem(415, "Unsupported Media Type", f"Content-Type {ctype or '(none)'}: send {want}")


async def _read_json(request: web.Request, want: str) -> Any:
    """The request's JSON body; raises Problem (415, 413, 400)."""
    if request.content_type != want:
        raise _unsupported_media(request.content_type, want)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Problem(413, "Payload Too Large", f"body over {request.app[EXPOSURE_KEY].max_body_bytes} bytes") from None
    except web.RequestPayloadError as e:
        raise Problem(400, "Bad Request", f"cannot read the body: {first_line(e)}", BAD_FORMAT) from None
    try:
        return parse_json(body)
    except (ValueError, RecursionError) as e:
        reason = "not UTF-8" if isinstance(e, UnicodeDecodeError) else f"not JSON: {first_line(e)}"
        raise Problem(400, "Bad Request", f"the body is {reason}", BAD_FORMAT) from None


def api_root(request: web.Request) -> str:
    """{apiRoot} as the client reached us (empty, giving a relative Location, if its Host is odd)."""
    host = request.host
    return f"{request.scheme}://{host}" if _SAFE_HOST.match(host) else ""


async def create_subscription(request: web.Request) -> web.Response:
    service = request.app[EXPOSURE_KEY]
    try:
        body = await _read_json(request, "application/json")
        sub = await service.create(body)
    except Problem as p:
        return problem_response(p)
    answer: dict[str, Any] = {"subscription": sub.body, "subscriptionId": sub.id}
    if isinstance(body, dict) and "supportedFeatures" in body:
        answer["supportedFeatures"] = "0"          # no optional feature of TS 29.564 is implemented
    location = f"{api_root(request)}{spec.COLLECTION}/{sub.id}"
    return _json(201, answer, {"Location": location})


async def modify_subscription(request: web.Request) -> web.Response:
    service = request.app[EXPOSURE_KEY]
    sub_id = request.match_info["subscriptionId"]
    try:
        if sub_id not in service.subs:   # 404 before the body: a patch of nothing is not a bad patch
            raise not_found(sub_id)
        ops = await _read_json(request, JSON_PATCH_TYPE)
        if not isinstance(ops, list) or not ops:
            raise Problem(400, "Bad Request", "a JSON Patch is a non-empty array of operations", BAD_FORMAT,
                          [{"param": "", "reason": "expected an array of PatchItem (at least one)"}])
        await service.modify(sub_id, ops)
    except Problem as p:
        return problem_response(p, {"Accept-Patch": JSON_PATCH_TYPE} if p.status == 415 else None)
    return web.Response(status=204)


async def delete_subscription(request: web.Request) -> web.Response:
    service = request.app[EXPOSURE_KEY]
    try:
        await service.delete(request.match_info["subscriptionId"])
    except Problem as p:
        return problem_response(p)
    return web.Response(status=204)


ITEM = spec.COLLECTION + "/{subscriptionId}"
# every route of this API; detector/openapi.yaml documents them (tests/detector/test_det_openapi.py)
ROUTES: tuple[tuple[str, str, Handler], ...] = (("POST", spec.COLLECTION, create_subscription),
                                               ("PATCH", ITEM, modify_subscription),
                                               ("DELETE", ITEM, delete_subscription))


def install(app: web.Application, det: Detector) -> None:
    """Attach the exposure service to the detector and the app (started and stopped with the app,
    after the detector starts and before it stops)."""
    service = ExposureService(det.cfg, det.metrics)
    app[EXPOSURE_KEY] = service
    det.exposure = service

    async def life(app: web.Application) -> AsyncIterator[None]:
        try:
            await service.start()
        except BaseException:      # e.g. an unreadable store: undo what started, the detector included
            await service.stop()
            await det.stop()
            raise
        yield
        await service.stop()

    app.cleanup_ctx.append(life)
