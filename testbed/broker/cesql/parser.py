"""CESQL v1 parser: tokens to a small AST, by precedence climbing.

Precedence follows the spec's grammar (CESQLParser.g4), highest first: function calls,
NOT, unary minus, LIKE, EXISTS, IN, `* / %`, `+ -`, comparisons, then AND/OR/XOR
together. The grammar marks the logic operators `<assoc=right>`, and the reference
engine (sdk-go, which Knative runs) parses them that way: `a AND b OR c` is
`a AND (b OR c)`. We do the same, so a Trigger passes here exactly when it would in
Knative.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from testbed.broker.cesql.errors import CesqlParseError
from testbed.broker.cesql.lexer import Token, tokenize

INT_MIN = -(2**31)
INT_MAX = 2**31 - 1

_IDENT = re.compile(r"[A-Za-z0-9]+\Z")
_FUNC = re.compile(r"[A-Za-z][A-Za-z_]*\Z")

# binding powers of the infix/postfix operators
_LOGIC_BP = 10
_CMP_BP = 20
_ADD_BP = 30
_MUL_BP = 40
_IN_BP = 50
_LIKE_BP = 60
_UNARY_BP = 70

_CMP_OPS = frozenset({"=", "!=", "<>", "<", "<=", ">", ">="})


@dataclass(frozen=True, slots=True)
class Lit:
    value: Any  # bool | int | str


@dataclass(frozen=True, slots=True)
class Attr:
    name: str


@dataclass(frozen=True, slots=True)
class Exists:
    name: str


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "NOT" | "-"
    operand: Any


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Any
    right: Any


@dataclass(frozen=True, slots=True)
class Like:
    operand: Any
    pattern: re.Pattern[str]
    negate: bool


@dataclass(frozen=True, slots=True)
class In:
    operand: Any
    items: tuple[Any, ...]
    negate: bool


@dataclass(frozen=True, slots=True)
class Call:
    name: str  # upper-case
    args: tuple[Any, ...]


def like_regex(pattern: str) -> re.Pattern[str]:
    """`%` any run, `_` one character, `\\%` and `\\_` literal; all else literal."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "%_":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


class _Parser:
    def __init__(self, src: str) -> None:
        self.tokens = tokenize(src)
        self.i = 0

    def peek(self, k: int = 0) -> Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_op(self, text: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind == "op" and tok.text == text

    def is_kw(self, text: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind == "kw" and tok.text == text

    def expect_op(self, text: str) -> None:
        tok = self.next()
        if tok.kind != "op" or tok.text != text:
            raise CesqlParseError(f"expected {text!r} at position {tok.pos}, found {_show(tok)}")

    def parse(self) -> Any:
        node = self.expr(0)
        tok = self.peek()
        if tok.kind != "eof":
            raise CesqlParseError(f"unexpected {_show(tok)} at position {tok.pos}")
        return node

    def expr(self, min_bp: int) -> Any:
        left = self.prefix()
        while True:
            tok = self.peek()
            if tok.kind == "kw" and tok.text in ("AND", "OR", "XOR"):
                if min_bp > _LOGIC_BP:
                    break
                self.next()
                left = Binary(tok.text, left, self.expr(_LOGIC_BP))  # right-associative
            elif tok.kind == "op" and tok.text in _CMP_OPS:
                if min_bp > _CMP_BP:
                    break
                self.next()
                left = Binary(tok.text, left, self.expr(_CMP_BP + 1))
            elif tok.kind == "op" and tok.text in ("+", "-"):
                if min_bp > _ADD_BP:
                    break
                self.next()
                left = Binary(tok.text, left, self.expr(_ADD_BP + 1))
            elif tok.kind == "op" and tok.text in ("*", "/", "%"):
                if min_bp > _MUL_BP:
                    break
                self.next()
                left = Binary(tok.text, left, self.expr(_MUL_BP + 1))
            elif self.is_kw("LIKE") or (self.is_kw("NOT") and self.is_kw("LIKE", 1)):
                if min_bp > _LIKE_BP:
                    break
                negate = self.is_kw("NOT")
                self.i += 2 if negate else 1
                pat = self.next()
                if pat.kind != "str":
                    raise CesqlParseError(f"LIKE needs a string literal pattern at position {pat.pos}, found {_show(pat)}")
                left = Like(left, like_regex(pat.text), negate)
            elif self.is_kw("IN") or (self.is_kw("NOT") and self.is_kw("IN", 1)):
                if min_bp > _IN_BP:
                    break
                negate = self.is_kw("NOT")
                self.i += 2 if negate else 1
                self.expect_op("(")
                items = [self.expr(0)]
                while self.is_op(","):
                    self.next()
                    items.append(self.expr(0))
                self.expect_op(")")
                left = In(left, tuple(items), negate)
            elif tok.kind == "kw" and tok.text == "NOT":
                raise CesqlParseError(f"NOT at position {tok.pos} must be followed by LIKE or IN here")
            else:
                break
        return left

    def prefix(self) -> Any:
        tok = self.next()
        if tok.kind == "int":
            return Lit(_int_literal(tok.text, tok.pos))
        if tok.kind == "str":
            return Lit(tok.text)
        if tok.kind == "kw":
            if tok.text in ("TRUE", "FALSE"):
                return Lit(tok.text == "TRUE")
            if tok.text == "NOT":
                return Unary("NOT", self.expr(_UNARY_BP))
            if tok.text == "EXISTS":
                name = self.next()
                if name.kind != "word" or not _IDENT.match(name.text):
                    raise CesqlParseError(f"EXISTS needs an attribute name at position {name.pos}, found {_show(name)}")
                return Exists(name.text.lower())
            raise CesqlParseError(f"unexpected {tok.text} at position {tok.pos}")
        if tok.kind == "op":
            if tok.text in ("-", "+") and self.peek().kind == "int":
                digits = self.next()
                return Lit(_int_literal(tok.text + digits.text, tok.pos))
            if tok.text == "-":
                return Unary("-", self.expr(_UNARY_BP))
            if tok.text == "(":
                node = self.expr(0)
                self.expect_op(")")
                return node
            raise CesqlParseError(f"unexpected {tok.text!r} at position {tok.pos}")
        if tok.kind == "word":
            if self.is_op("("):
                if not _FUNC.match(tok.text):
                    raise CesqlParseError(f"bad function name {tok.text!r} at position {tok.pos}")
                self.next()
                args: list[Any] = []
                if not self.is_op(")"):
                    args.append(self.expr(0))
                    while self.is_op(","):
                        self.next()
                        args.append(self.expr(0))
                self.expect_op(")")
                return Call(tok.text.upper(), tuple(args))
            if not _IDENT.match(tok.text):
                raise CesqlParseError(f"bad attribute name {tok.text!r} at position {tok.pos}")
            return Attr(tok.text.lower())
        raise CesqlParseError("unexpected end of expression")


def _int_literal(text: str, pos: int) -> int:
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise CesqlParseError(f"integer literal {text} at position {pos} is outside the 32-bit range")
    return value


def _show(tok: Token) -> str:
    if tok.kind == "eof":
        return "end of expression"
    if tok.kind == "str":
        return f"string {tok.text!r}"
    return repr(tok.text)


def parse(src: str) -> Any:
    """Parse a CESQL expression into an AST; raise CesqlParseError with a position."""
    if not src.strip():
        raise CesqlParseError("empty expression")
    return _Parser(src).parse()
