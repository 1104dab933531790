"""GET /openapi.json: a valid OpenAPI 3.1 document that lists exactly the routes the detector
serves, whose AppEvent schema is the shared one, and whose every error answer carries a reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import schemathesis
from detlib import Sink, base_url, det_config, running, schema_refs

from detector.api import make_app
from detector.delivery import Delivery
from detector.metrics import Metrics
from detector.openapi import OPENAPI_PATH, document
from detector.rules import default_ruleset
from detector.schema import load_schema
from detector.service import Detector

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method.upper(), path, op


def _resolve(doc: dict[str, Any], node: Any) -> Any:
    """`node`, or what its local `$ref` (chain) points to."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


async def test_served_document_is_valid_openapi(tmp_path: Path, sink: Sink) -> None:
    async with (running(det_config(tmp_path, sink.url)) as srv, aiohttp.ClientSession() as s,
                s.get(base_url(srv) + OPENAPI_PATH) as r):           # no token: it is a description
        assert r.status == 200 and r.content_type == "application/json"
        served = await r.json()
    assert served == document()
    assert served["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(served).validate()               # the OpenAPI 3.1 meta-schema
    for ref in set(schema_refs(served)):                                    # every reference resolves inside it
        assert ref.startswith("#/"), ref
        _resolve(served, {"$ref": ref})
    for schema in served["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_route_is_documented_and_every_operation_served(tmp_path: Path) -> None:
    cfg = det_config(tmp_path, "http://127.0.0.1:9/")
    metrics = Metrics()
    app = make_app(Detector(cfg, default_ruleset(), Delivery.from_config(cfg, metrics), metrics))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    documented = {(method, path) for method, path, _ in _operations(document())}
    assert routes == documented


def test_the_app_event_schema_is_the_shared_one(shared: Path) -> None:
    inlined = document()["components"]["schemas"]["AppEvent"]
    shared_schema = json.loads((shared / "schemas" / "app-event.schema.json").read_text())
    assert load_schema() == shared_schema
    assert inlined == {k: v for k, v in shared_schema.items() if k not in ("$schema", "$id")}


def test_every_error_answer_has_a_json_reason() -> None:
    doc = document()
    error = doc["components"]["schemas"]["Error"]
    for method, path, op in _operations(doc):
        assert op.get("operationId"), (method, path)
        assert "security" in op, (method, path)           # token or explicitly none
        for status, answer in op["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            answer = _resolve(doc, answer)
            schema = _resolve(doc, answer["content"]["application/json"]["schema"])
            choices = [_resolve(doc, s) for s in schema.get("anyOf", [schema])]
            if status == "503" and path == "/readyz":
                continue                                    # readiness answers its state, not an error
            assert error in choices or all("error" in c.get("properties", {}) for c in choices), (method, path, status)
            if status == "503":                              # tells the sender when to try again
                assert answer["headers"]["Retry-After"]["required"] is True, (method, path)
