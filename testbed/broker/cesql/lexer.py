"""CESQL v1 tokens: the lexical rules of the spec's ANTLR grammar (CESQLLexer.g4).

Keywords are case-insensitive; value identifiers are letters and digits (looked up
lower-case, so `EXISTS SOURCE` addresses `source`); strings are '...' or "..." where
the delimiter is escaped as \\' (or \\") or doubled, and any other backslash pair is
kept as written (as the reference Go engine does). Integer signs are left to the
parser so that `5-1` is a subtraction.
"""

from __future__ import annotations

from dataclasses import dataclass

from testbed.broker.cesql.errors import CesqlParseError

KEYWORDS = frozenset({"AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS", "TRUE", "FALSE"})
# longest first, so that "<=" wins over "<"
OPERATORS = ("!=", "<>", "<=", ">=", "(", ")", ",", "=", "<", ">", "+", "-", "*", "/", "%")


@dataclass(frozen=True, slots=True)
class Token:
    kind: str   # "int", "str", "word", "kw", "op", "eof"
    text: str   # int digits, decoded string, word as written, upper-case keyword, operator
    pos: int


def _string(src: str, i: int) -> tuple[str, int]:
    """Decode a quoted string starting at src[i]; return (value, index after it)."""
    quote = src[i]
    out: list[str] = []
    j = i + 1
    n = len(src)
    while j < n:
        c = src[j]
        if c == "\\" and j + 1 < n:
            nxt = src[j + 1]
            out.append(nxt if nxt == quote else c + nxt)
            j += 2
        elif c == quote:
            if j + 1 < n and src[j + 1] == quote:  # doubled delimiter
                out.append(quote)
                j += 2
            else:
                return "".join(out), j + 1
        else:
            out.append(c)
            j += 1
    raise CesqlParseError(f"unterminated string literal at position {i}")


def tokenize(src: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(src)
    while i < n:
        c = src[i]
        if c in " \t\r\n":
            i += 1
            continue
        if c in "'\"":
            value, i2 = _string(src, i)
            tokens.append(Token("str", value, i))
            i = i2
            continue
        if c.isascii() and (c.isalnum() or c == "_"):
            j = i
            while j < n and src[j].isascii() and (src[j].isalnum() or src[j] == "_"):
                j += 1
            word = src[i:j]
            if word.isdigit():
                tokens.append(Token("int", word, i))
            elif word.upper() in KEYWORDS:
                tokens.append(Token("kw", word.upper(), i))
            else:
                tokens.append(Token("word", word, i))
            i = j
            continue
        for op in OPERATORS:
            if src.startswith(op, i):
                tokens.append(Token("op", op, i))
                i += len(op)
                break
        else:
            raise CesqlParseError(f"unexpected character {c!r} at position {i}")
    tokens.append(Token("eof", "", n))
    return tokens
