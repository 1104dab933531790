"""A tiny OTLP/HTTP trace collector for tests: POST /v1/traces (protobuf), spans decoded into dicts.

Needs the `[trace]` extra (opentelemetry-proto comes with the exporter); callers skip without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """(endpoint URL for OTEL_EXPORTER_OTLP_ENDPOINT, the spans received so far), while it runs.

    Each span: service (the resource's service.name), name, trace_id, span_id, parent_id (None for
    a root), start and end (unix ns)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans: list[dict[str, Any]] = []

    async def traces(request: web.Request) -> web.Response:
        for rs in ExportTraceServiceRequest.FromString(await request.read()).resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            spans.extend({"service": service, "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                          "parent_id": s.parent_span_id.hex() or None, "start": s.start_time_unix_nano,
                          "end": s.end_time_unix_nano} for ss in rs.scope_spans for s in ss.spans)
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", spans
    finally:
        await runner.cleanup()
