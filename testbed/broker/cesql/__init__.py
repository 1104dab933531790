"""CloudEvents SQL (CESQL) v1: parse once, evaluate per event.

    expr = compile_expression("type LIKE 'mec.%' AND EXISTS supi")
    expr.matches({"type": "mec.app.buy", "supi": "imsi-999700000000001", ...})  # True

As a Trigger filter, an expression passes only when it evaluates to Boolean true
without any error (spec v1 §1.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from testbed.broker.cesql.errors import CesqlParseError, EvalError
from testbed.broker.cesql.evaluator import MISSING, evaluate
from testbed.broker.cesql.parser import parse


@dataclass(frozen=True)
class Expression:
    source: str
    ast: Any = field(repr=False)

    def evaluate(self, attrs: Mapping[str, Any]) -> tuple[Any, list[EvalError]]:
        """(value, errors); a top-level missing attribute is (False, [missingAttribute])."""
        errors: list[EvalError] = []
        value = evaluate(self.ast, attrs, errors)
        return (False if value is MISSING else value), errors

    def matches(self, attrs: Mapping[str, Any]) -> bool:
        value, errors = self.evaluate(attrs)
        return value is True and not errors


def compile_expression(source: str) -> Expression:
    """Parse `source`; raise CesqlParseError (a ValueError) with a position when it is not CESQL."""
    return Expression(source, parse(source))


__all__ = ["CesqlParseError", "EvalError", "Expression", "compile_expression"]
