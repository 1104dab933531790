"""CESQL v1: own cases in the style of the spec repository's TCK (cesql/cesql_tck).

Each case: expression, extra event attributes, expected value, expected error kind.
The base event has the four required attributes only.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from testbed.broker.cesql import CesqlParseError, compile_expression
from testbed.broker.cesql.parser import INT_MAX, INT_MIN

BASE = {"specversion": "1.0", "id": "evt-1", "source": "/detector/ue/1", "type": "mec.app.buy"}

CASES: list[tuple[str, dict[str, Any], Any, str | None]] = [
    # literals and case-insensitive keywords
    ("TrUe", {}, True, None),
    ("false", {}, False, None),
    ("42", {}, 42, None),
    ("-2147483648", {}, INT_MIN, None),
    ("+17", {}, 17, None),
    ("'it''s'", {}, "it's", None),
    ("'say \\'hi\\''", {}, "say 'hi'", None),
    ('"a \\"b\\" c"', {}, 'a "b" c', None),
    ("\"mixed 'quotes'\"", {}, "mixed 'quotes'", None),
    ("'back\\slash'", {}, "back\\slash", None),
    ("'Keep CASE'", {}, "Keep CASE", None),
    # attribute access; identifiers are case-insensitive, values are Strings
    ("type", {}, "mec.app.buy", None),
    ("TYPE", {}, "mec.app.buy", None),
    ("qfi", {"qfi": "9"}, "9", None),
    ("subject", {}, False, "missingAttribute"),
    ("flag", {"flag": True}, True, None),           # structured-mode JSON boolean
    ("count", {"count": 12}, 12, None),            # structured-mode JSON integer
    # EXISTS
    ("EXISTS id AND EXISTS specversion AND EXISTS source AND EXISTS type", {}, True, None),
    ("EXISTS supi", {"supi": "imsi-999700000000001"}, True, None),
    ("EXISTS supi", {}, False, None),
    ("NOT EXISTS supi", {}, True, None),
    # arithmetic: truncated division, sign of the dividend for %
    ("7 / 2", {}, 3, None),
    ("-7 / 2", {}, -3, None),
    ("7 % -3", {}, 1, None),
    ("-7 % 3", {}, -1, None),
    ("2 + 3 * 4 - 6 / 2", {}, 11, None),
    ("(2 + 3) * 4", {}, 20, None),
    ("10-4", {}, 6, None),
    ("1 / 0", {}, 0, "math"),
    ("1 % 0", {}, 0, "math"),
    ("2147483647 + 1", {}, INT_MIN, "math"),
    ("-2147483647 - 2", {}, INT_MAX, "math"),
    ("65536 * 65536", {}, 0, "math"),
    ("-(-2147483648)", {}, INT_MIN, "math"),
    ("'40' + 2", {}, 42, None),
    ("TRUE + TRUE", {}, 2, None),
    ("'four' + 1", {}, 1, "cast"),
    ("qfi * 2", {"qfi": "5"}, 10, None),
    ("nope * 2", {}, 0, "missingAttribute"),
    ("7 / nope", {}, 0, "missingAttribute"),  # zero of the subexpression, no math error
    ("--3", {}, 3, None),
    ("-'8'", {}, -8, None),
    ("-nope", {}, 0, "missingAttribute"),
    # comparisons; the right operand's type decides the cast
    ("qfi = 5", {"qfi": "5"}, True, None),
    ("qfi = '5'", {"qfi": "5"}, True, None),
    ("qfi = '05'", {"qfi": "5"}, False, None),
    ("qfi = 05", {"qfi": "5"}, True, None),
    ("5 = qfi", {"qfi": "05"}, False, None),      # left Integer cast to String '5' != '05'
    ("TRUE = 'true'", {}, True, None),
    ("TRUE = 'TRUE'", {}, False, None),
    ("'TRUE' = TRUE", {}, True, None),
    ("'yes' = TRUE", {}, False, "cast"),
    ("1 <> 2 AND 1 != 2", {}, True, None),
    ("teid >= 10 AND teid < 11", {"teid": "10"}, True, None),
    ("'abc' < 'abd'", {}, False, "cast"),
    ("nope = ''", {}, False, "missingAttribute"),
    ("nope != 'x'", {}, False, "missingAttribute"),
    # logic: short-circuit, XOR, and the grammar's right associativity
    ("FALSE AND 1 / 0 = 0", {}, False, None),
    ("TRUE OR 1 / 0 = 0", {}, True, None),
    ("TRUE AND 1 / 0 = 0", {}, True, "math"),
    ("TRUE XOR TRUE", {}, False, None),
    ("TRUE XOR FALSE", {}, True, None),
    ("FALSE AND FALSE OR TRUE", {}, False, None),   # FALSE AND (FALSE OR TRUE)
    ("(FALSE AND FALSE) OR TRUE", {}, True, None),
    ("TRUE OR FALSE AND FALSE", {}, True, None),     # TRUE OR (...)
    ("'true' AND 'FALSE'", {}, False, None),
    ("NOT 'false'", {}, True, None),
    ("NOT 0", {}, True, "cast"),                     # no implicit Integer -> Boolean
    ("NOT nope", {}, False, "missingAttribute"),
    ("TRUE AND nope", {}, False, "missingAttribute"),
    ("FALSE AND nope", {}, False, None),
    ("nope OR TRUE", {}, True, "missingAttribute"),
    # LIKE
    ("type LIKE 'mec.%'", {}, True, None),
    ("type LIKE 'mec._pp.buy'", {}, True, None),
    ("type LIKE 'MEC.%'", {}, False, None),
    ("type NOT LIKE '%.buy'", {}, False, None),
    ("'50%' LIKE '50\\%'", {}, True, None),
    ("'500' LIKE '50\\%'", {}, False, None),
    ("'a_c' LIKE 'a\\_c'", {}, True, None),
    ("'abc' LIKE 'a\\_c'", {}, False, None),
    ("'a.c' LIKE 'a.c'", {}, True, None),           # regex characters are literal
    ("'abc' LIKE 'a.c'", {}, False, None),
    ("'a\\b' LIKE 'a\\b'", {}, True, None),
    ("'line\nbreak' LIKE 'line%'", {}, True, None),
    ("123 LIKE '1_3'", {}, True, None),
    ("FALSE LIKE 'f%'", {}, True, None),
    ("nope LIKE '%'", {}, False, "missingAttribute"),
    # IN: the left operand's type decides
    ("type IN ('mec.app.buy', 'mec.order.created')", {}, True, None),
    ("type NOT IN ('x', 'y')", {}, True, None),
    ("qfi IN (1, 5, 9)", {"qfi": "5"}, True, None),
    ("5 IN ('1', '5')", {}, True, None),
    ("'5' IN (5)", {}, True, None),
    ("TRUE IN ('TRUE')", {}, True, None),
    ("'TRUE' IN (TRUE)", {}, False, None),
    ("1 IN ('one')", {}, False, "cast"),
    ("nope IN ('a')", {}, False, "missingAttribute"),
    ("subject IN (nope, 'a')", {"subject": "a"}, False, "missingAttribute"),
    # string functions
    ("LENGTH('héllo')", {}, 5, None),
    ("LENGTH(12345)", {}, 5, None),
    ("CONCAT()", {}, "", None),
    ("CONCAT('a', 1, TRUE)", {}, "a1true", None),
    ("CONCAT_WS('-', 'a', 'b', 'c')", {}, "a-b-c", None),
    ("CONCAT_WS('-')", {}, "", None),
    ("CONCAT_WS()", {}, False, "missingFunction"),
    ("lower('MiXeD')", {}, "mixed", None),
    ("UPPER(type)", {}, "MEC.APP.BUY", None),
    ("TRIM('  \t pad \n ')", {}, "pad", None),
    ("LEFT('abcdef', 3)", {}, "abc", None),
    ("LEFT('ab', 5)", {}, "ab", None),
    ("LEFT('abc', -1)", {}, "abc", "functionEvaluation"),
    ("RIGHT('abcdef', 2)", {}, "ef", None),
    ("RIGHT('abcdef', 0)", {}, "", None),
    ("RIGHT('abc', -4)", {}, "abc", "functionEvaluation"),
    ("SUBSTRING('abcdef', 3)", {}, "cdef", None),
    ("SUBSTRING('abcdef', -2)", {}, "ef", None),
    ("SUBSTRING('abcdef', 0)", {}, "", None),
    ("SUBSTRING('abcdef', 2, 3)", {}, "bcd", None),
    ("SUBSTRING('abcdef', -4, 2)", {}, "cd", None),
    ("SUBSTRING('abcdef', 5, 99)", {}, "ef", None),
    ("SUBSTRING('abcdef', 7)", {}, "", "functionEvaluation"),
    ("SUBSTRING('abcdef', -7, 1)", {}, "", "functionEvaluation"),
    ("SUBSTRING('abcdef', 1, -1)", {}, "", "functionEvaluation"),
    ("LENGTH(nope)", {}, 0, "missingAttribute"),
    ("UPPER(nope)", {}, "", "missingAttribute"),
    ("NO_SUCH_FN(1)", {}, False, "missingFunction"),
    ("LENGTH('a', 'b')", {}, False, "missingFunction"),
    # math and casting functions
    ("ABS(-5)", {}, 5, None),
    ("ABS(-2147483648)", {}, INT_MAX, "math"),
    ("INT('-12')", {}, -12, None),
    ("INT('+12')", {}, 12, None),
    ("INT(' 12')", {}, 0, "cast"),
    ("INT('2147483648')", {}, 0, "cast"),
    ("INT(FALSE)", {}, 0, None),
    ("BOOL('False')", {}, False, None),
    ("BOOL(7)", {}, True, None),
    ("BOOL(0)", {}, False, None),
    ("BOOL('yes')", {}, False, "cast"),
    ("STRING(-3)", {}, "-3", None),
    ("STRING(TRUE)", {}, "true", None),
    ("IS_INT('12')", {}, True, None),
    ("IS_INT('1.5')", {}, False, None),
    ("IS_INT(TRUE)", {}, True, None),
    ("IS_BOOL('TRUE')", {}, True, None),
    ("IS_BOOL('on')", {}, False, None),
    ("IS_BOOL(qfi)", {"qfi": "1"}, False, None),
    ("INT(hop) < INT(ttl) AND INT(hop) < 1000", {"hop": "5", "ttl": "10"}, True, None),
    # precedence: unary binds tighter than LIKE/IN/binary operators
    ("NOT TRUE = FALSE", {}, True, None),            # (NOT TRUE) = FALSE
    ("1 + 2 IN (3)", {}, 1, None),                   # 1 + (2 IN (3)) -> 1 + FALSE
    ("'a' = 'a' AND 'b' LIKE 'b'", {}, True, None),
]


@pytest.mark.parametrize(("expression", "extra", "value", "error"), CASES,
                         ids=[c[0] for c in CASES])
def test_cesql_case(expression: str, extra: dict[str, Any], value: Any, error: str | None) -> None:
    got, errors = compile_expression(expression).evaluate({**BASE, **extra})
    assert got == value and type(got) is type(value), f"{expression!r} gave {got!r}"
    kinds = {e.kind for e in errors}
    if error is None:
        assert not errors, f"{expression!r}: unexpected errors {errors}"
    else:
        assert error in kinds, f"{expression!r}: expected a {error} error, got {errors}"


@pytest.mark.parametrize("expression", [
    "", "   ", "(", "1 +", "ABC(", "a AND", "type LIKE 123", "type LIKE subject", "x IN ()", "x IN 'a'",
    "2147483648", "-2147483649", "'unterminated", "a # b", "type NOT = 'x'", "EXISTS 'a'", "EXISTS",
    "a b", "1 2", "my_ext = 'x'", "1 = = 1", "(TRUE))",
])
def test_cesql_parse_errors(expression: str) -> None:
    with pytest.raises(CesqlParseError):
        compile_expression(expression)


def test_matches_needs_boolean_true_without_errors() -> None:
    assert compile_expression("type = 'mec.app.buy'").matches(BASE)
    assert not compile_expression("type").matches(BASE)                   # a String, not a Boolean
    assert not compile_expression("1").matches(BASE)
    assert compile_expression("TRUE OR nope").matches(BASE)                # short-circuit: nope never read
    assert not compile_expression("nope OR TRUE").matches(BASE)            # true, but with an error
    assert not compile_expression("nope = 1 OR TRUE").matches(BASE)


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


ints = st.integers(min_value=INT_MIN + 1, max_value=INT_MAX)


@given(a=ints, b=ints.filter(lambda v: v != 0))
def test_division_and_modulo_truncate(a: int, b: int) -> None:
    attrs = {**BASE, "a": str(a), "b": str(b)}
    q, qerr = compile_expression("a / b").evaluate(attrs)
    r, rerr = compile_expression("a % b").evaluate(attrs)
    assert (q, qerr, r, rerr) == (_trunc_div(a, b), [], a - b * _trunc_div(a, b), [])
    assert r == 0 or (r < 0) == (a < 0)


@given(a=ints, b=ints)
def test_addition_reports_overflow(a: int, b: int) -> None:
    value, errors = compile_expression(f"{a} + {b}").evaluate(BASE)
    in_range = INT_MIN <= a + b <= INT_MAX
    assert (not errors) == in_range
    assert value == (a + b if in_range else (a + b + 2**31) % 2**32 - 2**31)


@given(st.text(alphabet="ab%_\\", max_size=8), st.text(alphabet="ab%_", max_size=8))
def test_like_never_crashes_and_literal_pattern_matches_itself(pattern: str, value: str) -> None:
    # an odd run of trailing backslashes would escape the closing quote
    assume((len(pattern) - len(pattern.rstrip("\\"))) % 2 == 0)
    expr = compile_expression(f"v LIKE '{pattern}'")
    got, errors = expr.evaluate({**BASE, "v": value})
    assert isinstance(got, bool) and not errors
    if "%" not in pattern and "_" not in pattern:
        assert got == (value == pattern)
