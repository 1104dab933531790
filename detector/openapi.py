"""The OpenAPI 3.1 description of the detector's HTTP API, served at GET /openapi.json.

The document is `openapi.yaml` in this package; its AppEvent schema is a reference to the
packaged `app-event.schema.json` (the shared Contract 1 schema), inlined here so that the
served document stands alone and can never drift from what ingest checks.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

import yaml

from detector.schema import load_schema

OPENAPI_PATH = "/openapi.json"
APP_EVENT_REF = "app-event.schema.json"
# keys of a standalone JSON Schema that an embedded one must not carry: `$id` would move the
# base URI of every reference inside the OpenAPI document
_STANDALONE_KEYS = ("$schema", "$id")


def _app_event_schema() -> dict[str, Any]:
    schema = load_schema()
    for key in _STANDALONE_KEYS:
        schema.pop(key, None)
    return schema


def _inline_app_event(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    if schemas.get("AppEvent") != {"$ref": APP_EVENT_REF}:
        raise ValueError(f"openapi.yaml: components.schemas.AppEvent must be {{$ref: {APP_EVENT_REF}}}")
    schemas["AppEvent"] = _app_event_schema()


@functools.cache
def _document() -> dict[str, Any]:
    text = resources.files("detector").joinpath("openapi.yaml").read_text(encoding="utf-8")
    doc: dict[str, Any] = yaml.safe_load(text)
    _inline_app_event(doc)
    return doc


def document() -> dict[str, Any]:
    """The served document (a copy: callers may change it)."""
    return copy.deepcopy(_document())


@functools.cache
def document_bytes() -> bytes:
    return json.dumps(_document(), indent=1).encode()
