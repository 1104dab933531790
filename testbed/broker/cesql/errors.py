"""CESQL error kinds (spec v1 §3.3). Evaluation errors are collected, never raised."""

from __future__ import annotations

from dataclasses import dataclass

PARSE = "parse"
MATH = "math"
CAST = "cast"
MISSING_ATTRIBUTE = "missingAttribute"
MISSING_FUNCTION = "missingFunction"
FUNCTION_EVALUATION = "functionEvaluation"
GENERIC = "generic"


class CesqlParseError(ValueError):
    """The expression does not follow the grammar (the only error that is raised)."""

    kind = PARSE


@dataclass(frozen=True, slots=True)
class EvalError:
    kind: str      # one of the constants above
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"
