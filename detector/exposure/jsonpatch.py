"""JSON Patch (RFC 6902) with JSON Pointers (RFC 6901), for Nupf_EventExposure's ModifySubscription.

`apply(doc, ops)` returns a patched copy, or raises PatchError naming the failed operation; the
document given is never changed (a patch applies entirely or not at all, RFC 6902 §5).
"""

from __future__ import annotations

import copy
from typing import Any

OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})


class PatchError(ValueError):
    """Operation `index` of the patch failed: `path` is its path (or from), `reason` why."""

    def __init__(self, index: int, path: str, reason: str) -> None:
        super().__init__(f"{reason} (failed operation index= {index})")
        self.index = index
        self.path = path
        self.reason = reason


def parse_pointer(text: str) -> list[str]:
    """RFC 6901: "" is the whole document, else "/"-separated tokens with ~1 = "/" and ~0 = "~"."""
    if text == "":
        return []
    if not text.startswith("/"):
        raise ValueError(f"{text!r} is not a JSON Pointer (it must start with /)")
    tokens = text[1:].split("/")
    for t in tokens:
        rest = t.replace("~0", "").replace("~1", "")
        if "~" in rest:
            raise ValueError(f"{text!r}: ~ must be followed by 0 or 1")
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def _index(token: str, size: int, *, append: bool) -> int:
    """An array index token: digits without leading zeros; "-" (the end) only where `append`."""
    if append and token == "-":
        return size
    if not token.isdigit() or not token.isascii() or (len(token) > 1 and token[0] == "0"):
        raise ValueError(f"{token!r} is not an array index")
    i = int(token)
    if i > size or (i == size and not append):
        raise ValueError(f"array index {i} is out of range (size {size})")
    return i


def _walk(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for t in tokens:
        if isinstance(node, dict):
            if t not in node:
                raise ValueError(f"no member {t!r}")
            node = node[t]
        elif isinstance(node, list):
            node = node[_index(t, len(node), append=False)]
        else:
            raise ValueError(f"cannot descend into a {type(node).__name__} at {t!r}")
    return node


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(last, len(parent), append=True), value)
    else:
        raise ValueError(f"cannot add a member to a {type(parent).__name__}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> tuple[Any, Any]:
    """(the document, the value removed)."""
    if not tokens:
        raise ValueError("cannot remove the whole document")
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise ValueError(f"no member {last!r} to remove")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(last, len(parent), append=False))
    raise ValueError(f"cannot remove from a {type(parent).__name__}")


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers by value, but true is not 1 (Python's bool is an int)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _is_prefix(shorter: list[str], longer: list[str]) -> bool:
    return len(shorter) < len(longer) and longer[: len(shorter)] == shorter


def _apply_one(doc: Any, op: dict[str, Any]) -> Any:
    name = op["op"]
    path = parse_pointer(op["path"])
    if name == "add":
        return _add(doc, path, copy.deepcopy(op["value"]))
    if name == "remove":
        return _remove(doc, path)[0]
    if name == "replace":
        if not path:
            return copy.deepcopy(op["value"])
        _walk(doc, path)                       # the target must exist
        doc, _ = _remove(doc, path)
        return _add(doc, path, copy.deepcopy(op["value"]))
    if name == "test":
        if not json_equal(_walk(doc, path), op["value"]):
            raise ValueError("test failed: the value differs")
        return doc
    source = parse_pointer(op["from"])
    if name == "move":
        if _is_prefix(source, path):
            raise ValueError("cannot move a value into one of its own children")
        doc, value = _remove(doc, source)
        return _add(doc, path, value)
    return _add(doc, path, copy.deepcopy(_walk(doc, source)))   # copy


def _check_op(i: int, op: Any) -> None:
    if not isinstance(op, dict):
        raise PatchError(i, "", "an operation must be an object")
    name, path = op.get("op"), op.get("path")
    if not isinstance(name, str) or name not in OPS:
        raise PatchError(i, path if isinstance(path, str) else "", f"op must be one of {', '.join(sorted(OPS))}")
    if not isinstance(path, str):
        raise PatchError(i, "", "path must be a string")
    if name in ("add", "replace", "test") and "value" not in op:
        raise PatchError(i, path, f"{name} needs a value")
    if name in ("move", "copy") and not isinstance(op.get("from"), str):
        raise PatchError(i, path, f"{name} needs from (a JSON Pointer)")


def apply(doc: Any, ops: list[Any]) -> Any:
    """`doc` patched by `ops` (a new object); raises PatchError."""
    out = copy.deepcopy(doc)
    for i, op in enumerate(ops):
        _check_op(i, op)
        try:
            out = _apply_one(out, op)
        except (ValueError, IndexError, KeyError) as e:
            raise PatchError(i, op["path"], str(e)) from None
    return out
