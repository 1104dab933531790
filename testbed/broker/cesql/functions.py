"""CESQL casts (spec v1 §3.7) and built-in functions (§3.5).

Every function is total: it returns a value of its return type and appends errors to
the list it is given. Values are Python bool, int (32-bit range) and str; note that
bool is checked before int everywhere, since bool is a subclass of int in Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from testbed.broker.cesql.errors import CAST, FUNCTION_EVALUATION, MATH, EvalError

Value = bool | int | str
INT_MIN = -(2**31)
INT_MAX = 2**31 - 1
_INT_TEXT = re.compile(r"[+-]?[0-9]+\Z")


def type_name(v: Value) -> str:
    return "Boolean" if isinstance(v, bool) else "Integer" if isinstance(v, int) else "String"


def to_string(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def to_int(v: Value, errors: list[EvalError]) -> int:
    if isinstance(v, bool):
        return 1 if v else 0
    if isinstance(v, int):
        return v
    if _INT_TEXT.match(v):
        n = int(v)
        if INT_MIN <= n <= INT_MAX:
            return n
        errors.append(EvalError(CAST, f"{v!r} overflows a 32-bit integer"))
        return 0
    errors.append(EvalError(CAST, f"cannot cast {v!r} to Integer"))
    return 0


def to_bool(v: Value, errors: list[EvalError], *, explicit: bool = False) -> bool:
    """String and (explicitly, through BOOL) Integer to Boolean.

    The TCK has `NOT 10` give a cast error: an Integer becomes a Boolean only through
    an explicit BOOL(x), never implicitly.
    """
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        if explicit:
            return v != 0
        errors.append(EvalError(CAST, f"cannot implicitly cast Integer {v} to Boolean"))
        return False
    low = v.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    errors.append(EvalError(CAST, f"cannot cast {v!r} to Boolean"))
    return False


def cast(v: Value, target: type, errors: list[EvalError]) -> Value:
    if target is bool:
        return to_bool(v, errors)
    if target is int:
        return to_int(v, errors)
    return to_string(v)


def wrap32(n: int, errors: list[EvalError], what: str) -> int:
    """Keep a result in the 32-bit range; outside it, wrap (as int32 does) and report."""
    if INT_MIN <= n <= INT_MAX:
        return n
    errors.append(EvalError(MATH, f"{what} overflows a 32-bit integer"))
    return (n - INT_MIN) % 2**32 + INT_MIN


# --- built-ins -------------------------------------------------------------------------


def _length(errors: list[EvalError], x: str) -> int:
    return len(x)


def _concat(errors: list[EvalError], *xs: str) -> str:
    return "".join(xs)


def _concat_ws(errors: list[EvalError], sep: str, *xs: str) -> str:
    return sep.join(xs)


def _lower(errors: list[EvalError], x: str) -> str:
    return x.lower()


def _upper(errors: list[EvalError], x: str) -> str:
    return x.upper()


def _trim(errors: list[EvalError], x: str) -> str:
    return x.strip()


def _left(errors: list[EvalError], x: str, n: int) -> str:
    if n < 0:
        errors.append(EvalError(FUNCTION_EVALUATION, f"LEFT: negative length {n}"))
        return x
    return x[:n]


def _right(errors: list[EvalError], x: str, n: int) -> str:
    if n < 0:
        errors.append(EvalError(FUNCTION_EVALUATION, f"RIGHT: negative length {n}"))
        return x
    return x[len(x) - n:] if n < len(x) else x


def _substring(errors: list[EvalError], x: str, pos: int, length: int | None = None) -> str:
    size = len(x)
    if pos > size or pos < -size:
        errors.append(EvalError(FUNCTION_EVALUATION, f"SUBSTRING: position {pos} outside a string of {size}"))
        return ""
    if length is not None and length < 0:
        errors.append(EvalError(FUNCTION_EVALUATION, f"SUBSTRING: negative length {length}"))
        return ""
    if pos == 0:
        return ""
    start = pos - 1 if pos > 0 else size + pos
    return x[start:] if length is None else x[start:start + length]


def _abs(errors: list[EvalError], x: int) -> int:
    if x == INT_MIN:
        errors.append(EvalError(MATH, "ABS(-2147483648) overflows a 32-bit integer"))
        return INT_MAX
    return abs(x)


def _int(errors: list[EvalError], x: Value) -> int:
    return to_int(x, errors)


def _bool(errors: list[EvalError], x: Value) -> bool:
    return to_bool(x, errors, explicit=True)


def _string(errors: list[EvalError], x: Value) -> str:
    return to_string(x)


def _is_bool(errors: list[EvalError], x: Value) -> bool:
    probe: list[EvalError] = []
    to_bool(x, probe, explicit=True)
    return not probe


def _is_int(errors: list[EvalError], x: Value) -> bool:
    probe: list[EvalError] = []
    to_int(x, probe)
    return not probe


@dataclass(frozen=True, slots=True)
class Function:
    """params: the fixed parameter types; variadic: the type of the rest (or None)."""

    impl: Callable[..., Value]
    params: tuple[type | None, ...]  # None = any type, no cast
    returns: type
    variadic: type | None = None


BUILTINS: dict[str, list[Function]] = {
    "LENGTH": [Function(_length, (str,), int)],
    "CONCAT": [Function(_concat, (), str, variadic=str)],
    "CONCAT_WS": [Function(_concat_ws, (str,), str, variadic=str)],
    "LOWER": [Function(_lower, (str,), str)],
    "UPPER": [Function(_upper, (str,), str)],
    "TRIM": [Function(_trim, (str,), str)],
    "LEFT": [Function(_left, (str, int), str)],
    "RIGHT": [Function(_right, (str, int), str)],
    "SUBSTRING": [Function(_substring, (str, int), str), Function(_substring, (str, int, int), str)],
    "ABS": [Function(_abs, (int,), int)],
    "INT": [Function(_int, (None,), int)],
    "BOOL": [Function(_bool, (None,), bool)],
    "STRING": [Function(_string, (None,), str)],
    "IS_BOOL": [Function(_is_bool, (None,), bool)],
    "IS_INT": [Function(_is_int, (None,), bool)],
}


def dispatch(name: str, arity: int) -> Function | None:
    """The overload of `name` for `arity` arguments: a fixed one first, then a variadic one."""
    overloads = BUILTINS.get(name, [])
    for fn in overloads:
        if fn.variadic is None and len(fn.params) == arity:
            return fn
    for fn in overloads:
        if fn.variadic is not None and arity >= len(fn.params):
            return fn
    return None
