"""Schemathesis against a running detector, driven by the OpenAPI document it serves.

Every operation of GET /openapi.json is fuzzed (the examples, coverage and fuzzing phases; valid
and invalid inputs), with the bearer token of the security scheme, and every answer must pass
`not_a_server_error` (no 5xx), `status_code_conformance` (a status the document lists) and
`response_schema_conformance` (a body matching its schema). Seeded and deterministic with a
small example budget: CI sees the same run every time, in seconds.

Schemathesis runs through its engine (the code behind its CLI): its pytest integration
(`schemathesis.pytest.from_fixture`) does not work with pytest 9 (it sets `Function._nodeid`).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from detlib import TOKEN, det_config
from schemathesis.engine import Status, events, from_schema
from threaded import ThreadedDetector

from detector.openapi import OPENAPI_PATH

SEED = 20261203
MAX_EXAMPLES = 40      # per operation in the fuzzing phase; the coverage phase adds its own fixed cases
CHECKS = ("not_a_server_error", "status_code_conformance", "response_schema_conformance")


@schemathesis.serializer("application/x-ndjson")
def ndjson_body(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """The document describes an NDJSON body as the array of its lines: send one JSON value per line."""
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def fuzz_config() -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "workers": 1,
        "auth": {"openapi": {"bearerAuth": {"bearer": TOKEN}}},
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })


@dataclass
class FuzzReport:
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)   # one readable paragraph each
    errors: list[str] = field(default_factory=list)     # the engine's own: schema, network

    def add_scenario(self, ev: events.ScenarioFinished) -> None:
        rec = ev.recorder
        for interaction in rec.interactions.values():
            if interaction.response is not None:
                self.statuses[(rec.label, interaction.response.status_code)] += 1
        for case_id, checks in rec.checks.items():
            for check in checks:
                if check.status == Status.FAILURE and check.failure_info is not None:
                    self.failures.append(self._describe(rec.label, check.name, case_id, check.failure_info, rec))

    @staticmethod
    def _describe(label: str, check: str, case_id: str, info: Any, rec: Any) -> str:
        response = rec.find_response(case_id=case_id)
        body = response.content[:300] if response is not None else b""
        return f"{label}: {check}: {info.failure.title}\n  answer: {body!r}\n  reproduce: {info.code_sample}"


def run_schemathesis(schema: schemathesis.BaseSchema) -> FuzzReport:
    report = FuzzReport()
    for ev in from_schema(schema).execute():
        if isinstance(ev, events.ScenarioFinished):
            report.add_scenario(ev)
        elif isinstance(ev, events.NonFatalError | events.FatalError):
            report.errors.append(f"{type(ev).__name__}: {getattr(ev, 'label', '')} {ev.info.format()}")
    return report


@pytest.fixture(scope="module")
def live_detector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedDetector]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    # a small body cap, so that 413 is reachable too
    with ThreadedDetector(lambda sink_url: det_config(tmp, sink_url, max_body_bytes=64 * 1024)) as d:
        yield d


def test_api_conforms_to_its_openapi_document(live_detector: ThreadedDetector) -> None:
    schema = schemathesis.openapi.from_url(live_detector.base_url + OPENAPI_PATH, config=fuzz_config())
    report = run_schemathesis(schema)
    assert not report.errors, "\n".join(report.errors)
    assert not report.failures, "\n".join(dict.fromkeys(report.failures))   # de-duplicated, in order
    # the run was not all refusals: valid AppEvents and CloudEvents got through to the sink
    for want in (("POST /v1/events", 202), ("POST /v1/cloudevents", 202), ("POST /", 202),
                 ("GET /v1/sources", 200), ("GET /v1/deadletters", 200), ("POST /v1/events", 400),
                 ("POST /v1/events", 401)):
        assert report.statuses[want] > 0, (want, report.statuses)
    # every operation but GET /openapi.json (schemathesis leaves out the document it loaded) was run
    tested = {label for label, _ in report.statuses}
    documented = {f"{m.upper()} {p}" for p, item in schema.raw_schema["paths"].items() for m in item}
    assert tested == documented - {f"GET {OPENAPI_PATH}"}
    server = live_detector.server
    assert server is not None and server.det.metrics.ingest_accepted > 0
