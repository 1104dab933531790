"""CESQL v1 evaluation in "complete evaluation" mode: a value plus an error list.

A missing attribute makes the subexpression that uses it return the zero value of
its own return type, with a MissingAttributeError (spec §3.2): `missing * 5` is 0,
`1 / missing` is 0 without a MathError, `NOT missing` is false. AND/OR short-circuit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from testbed.broker.cesql.errors import MATH, MISSING_ATTRIBUTE, MISSING_FUNCTION, EvalError
from testbed.broker.cesql.functions import (
    Value,
    cast,
    dispatch,
    to_bool,
    to_int,
    to_string,
    wrap32,
)
from testbed.broker.cesql.parser import Attr, Binary, Call, Exists, In, Like, Lit, Unary

REQUIRED = frozenset({"id", "source", "specversion", "type"})
_ZERO: dict[type, Value] = {bool: False, int: 0, str: ""}


class _Missing:
    """What an absent attribute evaluates to before an operator turns it into a zero value."""

    __slots__ = ()


MISSING: Any = _Missing()


def _attr_value(v: Any) -> Value:
    """bool and 32-bit int extension values (structured mode JSON) keep their type;
    anything else is represented as a String (spec §3.2)."""
    if isinstance(v, bool | str):
        return v
    if isinstance(v, int) and -(2**31) <= v < 2**31:
        return v
    return str(v)


def evaluate(node: Any, attrs: Mapping[str, Any], errors: list[EvalError]) -> Any:
    """Evaluate an AST against event attributes (name -> value); may return MISSING."""
    t = type(node)
    if t is Lit:
        return node.value
    if t is Attr:
        if node.name in attrs and attrs[node.name] is not None:
            return _attr_value(attrs[node.name])
        errors.append(EvalError(MISSING_ATTRIBUTE, f"attribute {node.name!r} is not in the event"))
        return MISSING
    if t is Exists:
        return node.name in REQUIRED or (node.name in attrs and attrs[node.name] is not None)
    if t is Unary:
        v = evaluate(node.operand, attrs, errors)
        if node.op == "NOT":
            return False if v is MISSING else not to_bool(v, errors)
        if v is MISSING:
            return 0
        return wrap32(-to_int(v, errors), errors, "negation")
    if t is Binary:
        return _binary(node, attrs, errors)
    if t is Like:
        v = evaluate(node.operand, attrs, errors)
        if v is MISSING:
            return False
        hit = node.pattern.fullmatch(to_string(v)) is not None
        return hit != node.negate
    if t is In:
        v = evaluate(node.operand, attrs, errors)
        items = [evaluate(item, attrs, errors) for item in node.items]
        if v is MISSING or any(item is MISSING for item in items):
            return False
        target = type(v)
        hit = any(cast(item, target, errors) == v for item in items)
        return hit != node.negate
    if t is Call:
        return _call(node, attrs, errors)
    raise TypeError(f"not a CESQL node: {node!r}")


def _binary(node: Binary, attrs: Mapping[str, Any], errors: list[EvalError]) -> Any:
    op = node.op
    if op in ("AND", "OR", "XOR"):
        left = evaluate(node.left, attrs, errors)
        lb = False if left is MISSING else to_bool(left, errors)
        if op == "AND" and not lb:
            return False
        if op == "OR" and lb:
            return True
        right = evaluate(node.right, attrs, errors)
        rb = False if right is MISSING else to_bool(right, errors)
        if right is MISSING:
            return False
        return (lb != rb) if op == "XOR" else rb
    left = evaluate(node.left, attrs, errors)
    right = evaluate(node.right, attrs, errors)
    if op in ("=", "!=", "<>"):
        if left is MISSING or right is MISSING:
            return False
        # ambiguous operator: the right operand's type decides (spec §3.7)
        same = cast(left, type(right), errors) == right
        return same if op == "=" else not same
    if left is MISSING or right is MISSING:
        return False if op in ("<", "<=", ">", ">=") else 0
    a = to_int(left, errors)
    b = to_int(right, errors)
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    if op == "+":
        return wrap32(a + b, errors, "addition")
    if op == "-":
        return wrap32(a - b, errors, "subtraction")
    if op == "*":
        return wrap32(a * b, errors, "multiplication")
    if b == 0:
        errors.append(EvalError(MATH, "division by zero"))
        return 0
    q = abs(a) // abs(b)
    if (a < 0) != (b < 0):
        q = -q
    if op == "/":
        return wrap32(q, errors, "division")
    return a - b * q  # "%": truncated, the sign of the dividend


def _call(node: Call, attrs: Mapping[str, Any], errors: list[EvalError]) -> Any:
    args = [evaluate(a, attrs, errors) for a in node.args]
    fn = dispatch(node.name, len(args))
    if fn is None:
        errors.append(EvalError(MISSING_FUNCTION, f"no function {node.name} with {len(args)} argument(s)"))
        return False
    if any(a is MISSING for a in args):
        return _ZERO[fn.returns]
    cast_args: list[Value] = []
    for i, a in enumerate(args):
        want = fn.params[i] if i < len(fn.params) else fn.variadic
        cast_args.append(a if want is None else cast(a, want, errors))
    return fn.impl(errors, *cast_args)

