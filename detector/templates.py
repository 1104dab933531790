"""Safe templates over an AppEvent's fields: "{app.host}{app.path}", no code execution.

Syntax: text with `{path}` references, `path` a dotted name into the event (`ue.supi`,
`app.path`) or one of the extra names the detector provides (`rule`, `detector`, `source`,
`uekey`); `{a|b}` takes the first of a, b that is present; `{{` and `}}` are literal braces.
A template that is exactly one reference keeps the value's JSON type (`"{ue.qfi}"` -> 1,
`"{app}"` -> the whole object); otherwise the result is a string and a missing field renders
as "". Nothing else is interpreted: there are no expressions, calls or attribute access.
"""

from __future__ import annotations

import json
import re
from typing import Any

ROOTS = frozenset(
    {"id", "time", "kind", "point", "tap", "direction", "ue", "flow", "tunnel", "app",
     "rule", "detector", "source", "uekey"}
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
MAX_TEMPLATE = 1024
MISSING = object()


class TemplateError(ValueError):
    pass


def _lookup(ctx: dict[str, Any], path: tuple[str, ...]) -> Any:
    v: Any = ctx
    for part in path:
        if not isinstance(v, dict):
            return MISSING
        v = v.get(part, MISSING)
        if v is MISSING or v is None:
            return MISSING
    return v


def to_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(",", ":"), sort_keys=True)
    return str(v)


class Template:
    """A compiled template: literal strings and reference alternatives."""

    __slots__ = ("parts", "single", "text")

    def __init__(self, text: str) -> None:
        if len(text) > MAX_TEMPLATE:
            raise TemplateError(f"template longer than {MAX_TEMPLATE} characters")
        self.text = text
        self.parts: list[str | tuple[tuple[str, ...], ...]] = []
        i, buf = 0, []
        while i < len(text):
            c = text[i]
            if c == "{" and text.startswith("{{", i):
                buf.append("{")
                i += 2
            elif c == "}" and text.startswith("}}", i):
                buf.append("}")
                i += 2
            elif c == "{":
                end = text.find("}", i)
                if end < 0:
                    raise TemplateError(f"unclosed '{{' in template {text!r}")
                if buf:
                    self.parts.append("".join(buf))
                    buf = []
                self.parts.append(self._ref(text[i + 1:end].strip(), text))
                i = end + 1
            elif c == "}":
                raise TemplateError(f"single '}}' in template {text!r} (write '}}}}')")
            else:
                buf.append(c)
                i += 1
        if buf:
            self.parts.append("".join(buf))
        self.single = len(self.parts) == 1 and isinstance(self.parts[0], tuple)

    @staticmethod
    def _ref(body: str, text: str) -> tuple[tuple[str, ...], ...]:
        alts = []
        for alt in body.split("|"):
            path = tuple(p.strip() for p in alt.split("."))
            if not all(_NAME.match(p) for p in path):
                raise TemplateError(f"bad reference {{{body}}} in template {text!r}")
            if path[0] not in ROOTS:
                raise TemplateError(
                    f"unknown name {path[0]!r} in template {text!r} (known: {', '.join(sorted(ROOTS))})")
            alts.append(path)
        return tuple(alts)

    @staticmethod
    def _resolve(ctx: dict[str, Any], alts: tuple[tuple[str, ...], ...]) -> Any:
        for path in alts:
            v = _lookup(ctx, path)
            if v is not MISSING:
                return v
        return MISSING

    def render(self, ctx: dict[str, Any]) -> Any:
        """The value (typed when the template is a single reference; None if missing) or a string."""
        if self.single:
            v = self._resolve(ctx, self.parts[0])  # type: ignore[arg-type]
            return None if v is MISSING else v
        out = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
            else:
                v = self._resolve(ctx, p)
                if v is not MISSING:
                    out.append(to_text(v))
        return "".join(out)


def compile_tree(obj: Any, where: str) -> Any:
    """Compile every string inside a YAML value (dicts, lists, scalars) into a Template."""
    try:
        if isinstance(obj, str):
            return Template(obj)
        if isinstance(obj, dict):
            return {str(k): compile_tree(v, f"{where}.{k}") for k, v in obj.items()}
        if isinstance(obj, list):
            return [compile_tree(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    except TemplateError as e:
        raise TemplateError(f"{where}: {e}") from None
    if obj is None or isinstance(obj, bool | int | float):
        return obj
    raise TemplateError(f"{where}: unsupported value {obj!r}")


def render_tree(obj: Any, ctx: dict[str, Any]) -> Any:
    if isinstance(obj, Template):
        return obj.render(ctx)
    if isinstance(obj, dict):
        return {k: render_tree(v, ctx) for k, v in obj.items()}
    if isinstance(obj, list):
        return [render_tree(v, ctx) for v in obj]
    return obj
