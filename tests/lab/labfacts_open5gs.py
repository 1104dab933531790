"""Derives tests/lab/facts/open5gs.yaml from the real Open5GS source (test support, not product code).

Open5GS reads its YAML configs with libyaml through ``ogs_yaml_iter_key`` and compares every key
with ``strcmp`` in nested ``if``/``else if`` chains, one iterator per YAML mapping (sequences are
stepped through transparently); subscriber documents are read the same way from BSON with
``bson_iter_key``. So the key *paths* a program reads follow from the C text alone:

* a key variable is one assigned from ``ogs_yaml_iter_key(&it)`` / ``bson_iter_key(&it)`` (or a
  ``const char *..._key`` parameter); comparing it with ``"lit"`` reads key ``lit`` at ``it``'s level;
* ``it``'s level comes by data flow: ``ogs_yaml_iter_recurse(&parent, &it)`` (``bson_iter_recurse``)
  inside ``if (!strcmp(<parent's key var>, "x")) {...}`` puts ``it`` one level under ``x``;
  ``OGS_YAML_ARRAY_NEXT`` keeps the level, ``bson_iter_init_find(&it, doc, KEY)`` points at KEY;
* a parser function called inside ``if (!strcmp(k, "x")) {...}`` reads under ``x``;
* string macros (``OGS_SLICE_STRING``), ``#define APP_NAME "amf"`` and string arguments passed to
  parameters (``ogs_sbi_context_parse_config(APP_NAME, "nrf", "scp")``) are substituted;
* an NF reads what the call graph from ``main`` (src/main.c) through src/<nf>/*.c and the library
  files holding YAML parsers (found with git grep) reaches.

Only facts (key names, types, values compared) come out of this; no upstream code is kept.
The extractor is exercised against upstream's own sample configs (every key they use must come out)
and the WebUI's subscriber schema in tests/lab/test_facts_open5gs.py.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from labfacts import require_upstream, upstream_files, upstream_text

REPO = "open5gs/open5gs"
TAG = "v2.7.5"
NFS = ("nrf", "scp", "ausf", "udm", "udr", "pcf", "nssf", "bsf", "amf", "smf", "upf")
MACRO_HEADERS = ("lib/proto/types.h", "lib/sbi/types.h")
DBI_FILES = ("lib/dbi/subscription.c", "lib/dbi/session.c", "lib/dbi/ims.c")
WEBUI_SCHEMA = "webui/server/models/subscriber.js"
LOG_FILE = "lib/core/ogs-log.c"

_STR = r'"(?:[^"\\\n]|\\.)*"'
_ARG = rf"(?:{_STR}(?:\s*{_STR})*|\w+)"
_CMP = re.compile(rf"\b(?:ogs_)?str(?:case)?cmp\s*\(\s*(\w+)\s*,\s*({_ARG})\s*\)")
_HOLDS = re.compile(r"\bBSON_ITER_HOLDS_(\w+)\s*\(")
_DEFINE = re.compile(rf"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+({_STR})[ \t]*$", re.M)
_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
_NOT_CALLS = {"if", "while", "for", "switch", "return", "sizeof", "do", "else"}


# ------------------------------------------------------------------ C text


def _strip_comments(text: str) -> str:
    """Comments and preprocessor lines blanked (same length, so offsets stay); strings kept."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            i = j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        else:
            i += 1
    code = "".join(out)
    # preprocessor lines (with continuations): both #if branches stay, directives go
    return re.sub(r"(?m)^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", lambda m: re.sub(r"[^\n]", " ", m.group()), code)


def _match(code: str, i: int) -> int:
    """Index just past the bracket closing the one at ``code[i]`` (strings and chars skipped)."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = [pairs[code[i]]]
    j = i + 1
    while j < len(code):
        c = code[j]
        if c in "\"'":
            k = j + 1
            while k < len(code) and code[k] != c:
                k += 2 if code[k] == "\\" else 1
            j = k
        elif c in pairs:
            stack.append(pairs[c])
        elif c in ")}]":
            if c != stack.pop():
                raise ValueError(f"unbalanced {c!r} at {j}")
            if not stack:
                return j + 1
        j += 1
    raise ValueError(f"no match for {code[i]!r} at {i}")


def _split_args(s: str) -> list[str]:
    args, depth, cur, i = [], 0, [], 0
    while i < len(s):
        c = s[i]
        if c == '"':
            j = i + 1
            while s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            cur.append(s[i:j + 1])
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if "".join(cur).strip():
        args.append("".join(cur).strip())
    return args


def _unquote(lit: str) -> str:
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', lit))


@dataclass
class Region:
    """The body of an ``if`` whose condition matched key variable ``var`` against ``keys``."""

    start: int
    end: int
    var: str
    keys: list[tuple[str, str]]          # atoms: ("lit", s) | ("param", name) | ("null", "")


@dataclass
class Func:
    path: str
    name: str
    static: bool
    params: list[str]
    body: str
    key_params: set[str] = field(default_factory=set)


@dataclass
class Compare:
    pos: int
    var: str
    atom: tuple[str, str]
    types: frozenset[str] = frozenset()
    region: Region | None = None       # the if-body this compare (positively) opens


@dataclass
class Analysis:
    compares: list[Compare]
    values: list[tuple[int, str]]                                      # pos, literal
    regions: list[Region]
    calls: list[tuple[int, str, list[str]]]
    assigned: dict[str, list[int]]                                     # key var -> positions
    key_iter: dict[int, str] = field(default_factory=dict)            # assignment pos -> iterator
    iter_defs: dict[str, list[tuple[int, str, Any]]] = field(default_factory=dict)


class CSource:
    """One C file at the tag: its string macros and top-level functions."""

    def __init__(self, path: str, text: str, macros: dict[str, str]) -> None:
        self.path = path
        self.macros = {**macros, **{k: _unquote(v) for k, v in _DEFINE.findall(text)}}
        self.code = _strip_comments(text)
        self.functions: list[Func] = []
        code, i, last = self.code, 0, 0
        while i < len(code):
            c = code[i]
            if c in "\"'":
                i = _match_quote(code, i)
                continue
            if c == ";" or c == "}":
                last = i + 1
            elif c == "{":
                end = _match(code, i)
                head = code[last:i]
                m = re.search(r"(\w+)\s*\(([^;{}]*)\)\s*$", head)
                if m and "=" not in head and m.group(1) not in _NOT_CALLS:
                    params = [re.findall(r"\w+", p)[-1] for p in _split_args(m.group(2))
                              if re.findall(r"\w+", p) and p.strip() != "void"]
                    key_params = {re.findall(r"\w+", p)[-1] for p in _split_args(m.group(2))
                                  if re.search(r"\bchar\s*\*\s*\w*key\s*$", p)}
                    self.functions.append(Func(path, m.group(1), bool(re.search(r"\bstatic\b", head)),
                                               params, code[i:end], key_params))
                i = end
                last = i
                continue
            i += 1

    def atom(self, arg: str, params: list[str]) -> tuple[str, str]:
        arg = arg.strip()
        if arg.startswith('"'):
            return ("lit", _unquote(arg))
        if arg == "NULL":
            return ("null", "")
        parts = re.findall(rf"{_STR}|\w+", arg)
        if parts and "".join(parts) == re.sub(r"\s+", "", arg) and all(
                p.startswith('"') or p in self.macros for p in parts):
            return ("lit", "".join(_unquote(p) if p.startswith('"') else self.macros[p] for p in parts))
        if arg in params:
            return ("param", arg)
        return ("expr", arg)


def _match_quote(code: str, i: int) -> int:
    q, j = code[i], i + 1
    while j < len(code) and code[j] != q:
        j += 2 if code[j] == "\\" else 1
    return j + 1


def analyse(src: CSource, fn: Func, key_fns: tuple[str, ...], value_fns: tuple[str, ...]) -> Analysis:
    body = fn.body
    kf = "|".join(key_fns)
    vf = "|".join(value_fns)
    assigned: dict[str, list[int]] = {}
    for m in re.finditer(rf"(\w+)\s*=\s*(?:\([^()]*\)\s*)?(?:{kf})\s*\(", body):
        assigned.setdefault(m.group(1), []).append(m.start())
    key_vars = set(assigned) | fn.key_params
    key_iter = {m.start(): m.group(2) for m in re.finditer(
        rf"(\w+)\s*=\s*(?:\([^()]*\)\s*)?(?:{kf})\s*\(\s*&?\s*(\w+)\s*\)", body)}
    iter_defs: dict[str, list[tuple[int, str, Any]]] = {}
    for m in re.finditer(r"\b(?:ogs_yaml_iter_recurse|bson_iter_recurse)\s*\(\s*&?\s*(\w+)\s*,\s*&?\s*(\w+)\s*\)",
                         body):
        iter_defs.setdefault(m.group(2), []).append((m.start(), "recurse", m.group(1)))
    for m in re.finditer(r"\bOGS_YAML_ARRAY_NEXT\s*\(\s*&?\s*(\w+)\s*,\s*&?\s*(\w+)\s*\)", body):
        iter_defs.setdefault(m.group(2), []).append((m.start(), "array", m.group(1)))
    for m in re.finditer(r"\b(?:ogs_yaml_iter_init|bson_iter_init)\s*\(\s*&?\s*(\w+)\s*,", body):
        iter_defs.setdefault(m.group(1), []).append((m.start(), "root", None))
    for m in re.finditer(r"\bbson_iter_(?:init_)?find\s*\(\s*&?\s*(\w+)\s*,", body):
        args = _split_args(body[m.end():_match(body, m.end() - len(m.group()) + m.group().index("(")) - 1])
        iter_defs.setdefault(m.group(1), []).append((m.start(), "find", src.atom(args[-1], fn.params)))
    val_vars = set(re.findall(rf"(\w+)\s*=\s*(?:\([^()]*\)\s*)?(?:{vf})\s*\(", body)) if vf else set()
    a = Analysis([], [], [], [], assigned, key_iter, iter_defs)
    at: dict[int, Compare] = {}
    for m in _CMP.finditer(body):
        var, arg = m.group(1), m.group(2)
        if var in key_vars:
            at[m.start()] = Compare(m.start(), var, src.atom(arg, fn.params))
            a.compares.append(at[m.start()])
        elif var in val_vars and arg.startswith('"'):
            a.values.append((m.start(), _unquote(arg)))
    for m in re.finditer(r"\bif\s*\(", body):
        c0 = m.end() - 1
        c1 = _match(body, c0)
        cond = body[c0:c1]
        k = c1
        while k < len(body) and body[k].isspace():
            k += 1
        if k < len(body) and body[k] == "{":
            end = _match(body, k)
        else:                              # one statement: up to its ';' outside brackets
            end = k
            while end < len(body) and body[end] != ";":
                end = _match(body, end) if body[end] in "([{" else end + 1
        holds = frozenset(_HOLDS.findall(cond))
        by_var: dict[str, list[Compare]] = {}
        for cm in _CMP.finditer(cond):
            c = at.get(c0 + cm.start())
            if c is None:
                continue
            c.types = holds
            pre = cond[:cm.start()].rstrip()
            post = cond[cm.end():].lstrip()
            if pre.endswith("!") or post.startswith("== 0"):       # !strcmp(k, "x"), strcmp(...) == 0
                by_var.setdefault(c.var, []).append(c)
        for var, cs in by_var.items():
            r = Region(k, end, var, [c.atom for c in cs])
            a.regions.append(r)
            for c in cs:
                c.region = r
    for m in _CALL.finditer(body):
        name = m.group(1)
        if name in _NOT_CALLS or name in key_fns:
            continue
        try:
            end = _match(body, m.end() - 1)
        except ValueError:
            continue
        a.calls.append((m.start(), name, _split_args(body[m.end():end - 1])))
    a.regions.sort(key=lambda r: (r.start, -r.end))
    return a


# ------------------------------------------------------------------ programs


class Program:
    """A set of C files and the key paths reachable from an entry function."""

    def __init__(self, files: dict[str, str], macros: dict[str, str], *, key_fns: tuple[str, ...],
                 value_fns: tuple[str, ...] = ()) -> None:
        self.sources = {p: CSource(p, t, macros) for p, t in files.items()}
        self.key_fns, self.value_fns = key_fns, value_fns
        self.by_file: dict[tuple[str, str], Func] = {}
        self.public: dict[str, list[Func]] = {}
        for src in self.sources.values():
            for fn in src.functions:
                self.by_file[(src.path, fn.name)] = fn
                if not fn.static:
                    self.public.setdefault(fn.name, []).append(fn)
        self._analysis: dict[tuple[str, str], Analysis] = {}
        self.keys: dict[tuple[str, ...], set[str]] = {}
        self.values: dict[tuple[str, ...], set[str]] = {}
        self.files_used: set[str] = set()
        self.unresolved: set[str] = set()
        self._relevant: dict[str, bool] = {}

    def relevant(self, fn: Func, seen: frozenset[str] = frozenset()) -> bool:
        """Whether ``fn`` or anything it calls compares a key (only those are walked)."""
        ident = f"{fn.path}:{fn.name}"
        if ident in self._relevant:
            return self._relevant[ident]
        if ident in seen:
            return False
        a = self.analysis(fn)
        finds = any(k == "find" for defs in a.iter_defs.values() for _, k, _ in defs)
        rel = bool(a.compares or finds or a.values) or any(
            self.relevant(c, seen | {ident}) for c in
            (self.resolve(fn, name) for _, name, _ in a.calls) if c is not None)
        if rel or not seen:
            self._relevant[ident] = rel
        return rel

    def resolve(self, caller: Func, name: str) -> Func | None:
        fn = self.by_file.get((caller.path, name))
        if fn:
            return fn
        cands = self.public.get(name, [])
        if len(cands) > 1:
            raise AssertionError(f"{name} defined in {[c.path for c in cands]}")
        return cands[0] if cands else None

    def analysis(self, fn: Func) -> Analysis:
        k = (fn.path, fn.name)
        if k not in self._analysis:
            self._analysis[k] = analyse(self.sources[fn.path], fn, self.key_fns, self.value_fns)
        return self._analysis[k]

    def run(self, path: str, name: str) -> None:
        self._walk(self.by_file[(path, name)], {}, ((),), ())

    def _bind(self, atom: tuple[str, str], env: dict[str, tuple[str, str]]) -> str | None:
        kind, v = atom
        if kind == "param":
            kind, v = env.get(v, ("expr", v))
        if kind == "lit":
            return v
        if kind == "expr":
            self.unresolved.add(v)
        return None

    def _prefixes(self, regions: list[list[tuple[str, str]]],
                  env: dict[str, tuple[str, str]]) -> list[tuple[str, ...]]:
        opts = []
        for r in regions:
            keys = [k for k in (self._bind(a, env) for a in r) if k is not None]
            if not keys:
                return []
            opts.append(sorted(set(keys)))
        return [tuple(p) for p in itertools.product(*opts)]

    def _walk(self, fn: Func, env: dict[str, tuple[str, str]], base: tuple[tuple[str, ...], ...],
              stack: tuple[str, ...]) -> None:
        ident = f"{fn.path}:{fn.name}"
        if stack.count(ident) >= 2:        # recursion (server config inside server config): once
            return
        stack = (*stack, ident)
        a = self.analysis(fn)

        def enclosing(pos: int) -> list[Region]:
            return [r for r in a.regions if r.start <= pos < r.end]

        def reach(var: str, pos: int) -> int | None:
            """Where ``var`` was last assigned from the key function before ``pos`` (None: a parameter)."""
            before = [p for p in a.assigned.get(var, ()) if p < pos]
            return max(before) if before else None

        def last(defs: list[tuple[int, Any]] | list[tuple[int, str, Any]], pos: int) -> Any:
            before = [d for d in defs if d[0] < pos]
            return max(before, key=lambda d: d[0]) if before else None

        def level(it: str, pos: int, depth: int = 0) -> list[list[tuple[str, str]]]:
            """The key levels above the mapping iterator ``it`` walks at ``pos`` (data flow)."""
            d = last(a.iter_defs.get(it, []), pos)
            if d is None or d[1] in ("root", "find") or depth > 20:
                return []                       # a parameter or the document: the caller's base
            if d[1] == "array":
                return level(d[2], d[0], depth + 1)
            return level(d[2], d[0], depth + 1) + keyset(d[2], d[0], depth + 1)

        def keyset(it: str, pos: int, depth: int) -> list[list[tuple[str, str]]]:
            """The key(s) ``it`` points at, at ``pos``: the ifs on its key variable around ``pos``."""
            d = last(a.iter_defs.get(it, []), pos)
            if d is not None and d[1] == "find":
                return [[d[2]]]
            kd = last([(p, v) for p, v in a.key_iter.items() if v == it], pos)
            if kd is None:
                return []                       # a sequence (or a parameter): no key of its own
            var = next(v for v, ps in a.assigned.items() if kd[0] in ps)
            regs = [r for r in enclosing(pos) if r.var == var]
            return [regs[-1].keys] if regs else []

        def parents(c: Compare) -> list[list[tuple[str, str]]]:
            """c's parent keys, by data flow: the key variable comes from an iterator, recursed from
            another one while an if held that one's key to some value, and so on up."""
            d = reach(c.var, c.pos)
            if d is None:
                return []
            return level(a.key_iter[d], d)

        def prefixes(regs: list[Region] | list[list[tuple[str, str]]]) -> list[tuple[str, ...]]:
            atoms = [r.keys if isinstance(r, Region) else r for r in regs]
            return [b + p for b in base for p in self._prefixes(atoms, env)]

        paths: dict[int, list[tuple[str, ...]]] = {}
        for c in a.compares:
            key = self._bind(c.atom, env)
            paths[c.pos] = [(*p, key) for p in prefixes(parents(c))] if key is not None else []
        for c in a.compares:
            # `if (!strcmp(key, "timestamp")) { if (!strcmp(parent_key, "file")) ... }`: the parent's
            # key is tested inside the child's if (lib/app/ogs-init.c logger); the child then sits
            # under each parent key tested there
            if c.region is None:
                continue
            d = reach(c.var, c.pos)
            outer = [o for o in a.compares
                     if c.region.start <= o.pos < c.region.end and o.var != c.var and o.region is not None
                     and (reach(o.var, o.pos) is None or reach(o.var, o.pos) < (d if d is not None else -1))]
            if outer and paths[c.pos]:
                key = paths[c.pos][0][-1]
                paths[c.pos] = [(*p, key) for o in outer for p in paths[o.pos]]
        for c in a.compares:
            for p in paths[c.pos]:
                self.keys.setdefault(p, set()).update(c.types)
                self.files_used.add(fn.path)
        for it, defs in a.iter_defs.items():
            for pos, kind, atom in defs:
                key = self._bind(atom, env) if kind == "find" else None
                if key is None:
                    continue
                for p in prefixes(level(it, pos)):
                    self.keys.setdefault((*p, key), set()).add("DOCUMENT")
                    self.files_used.add(fn.path)
        for pos, lit in a.values:
            for p in prefixes(enclosing(pos)):
                if p:
                    self.values.setdefault(p, set()).add(lit)
        for pos, name, args in a.calls:
            callee = self.resolve(fn, name)
            if callee is None or not self.relevant(callee):
                continue
            src = self.sources[fn.path]
            new_env = {}
            for param, arg in zip(callee.params, args, strict=False):
                atom = src.atom(arg, fn.params)
                if atom[0] == "param":
                    atom = env.get(atom[1], ("expr", atom[1]))
                new_env[param] = atom
            pre = prefixes(enclosing(pos))
            if pre:
                self._walk(callee, new_env, tuple(pre), stack)


# ------------------------------------------------------------------ upstream access


@cache
def grep_files(pattern: str, *under: str, repo: str = REPO, tag: str = TAG) -> tuple[str, ...]:
    """Paths at ``tag`` whose text matches ``pattern`` (git grep; skips when the snapshot is absent)."""
    d = require_upstream(repo, tag)
    p = subprocess.run(["git", "--git-dir", str(d), "grep", "-l", "-E", pattern, tag, "--", *under],
                       capture_output=True, text=True)
    if p.returncode not in (0, 1):
        raise AssertionError(p.stderr)
    return tuple(sorted(line.split(":", 1)[1] for line in p.stdout.split()))


@cache
def macros(tag: str = TAG) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in MACRO_HEADERS:
        out.update({k: _unquote(v) for k, v in _DEFINE.findall(upstream_text(REPO, tag, h))})
    return out


def yaml_parser_files(tag: str = TAG) -> tuple[str, ...]:
    """Library files holding YAML config parsers (they call ogs_yaml_iter_key)."""
    return tuple(p for p in grep_files(r"ogs_yaml_iter_key", "lib", tag=tag)
                 if p.endswith(".c") and p != "lib/app/ogs-yaml.c")


def nf_sources(nf: str, tag: str = TAG) -> dict[str, str]:
    paths = ["src/main.c", *yaml_parser_files(tag),
             *(p for p in upstream_files(REPO, tag, f"src/{nf}") if p.endswith(".c"))]
    return {p: upstream_text(REPO, tag, p) for p in paths}


def _dotted(p: tuple[str, ...]) -> str:
    return ".".join(p)


def nf_config_facts(nf: str, tag: str = TAG) -> dict[str, Any]:
    prog = Program(nf_sources(nf, tag), macros(tag), key_fns=("ogs_yaml_iter_key",),
                   value_fns=("ogs_yaml_iter_value",))
    prog.run("src/main.c", "main")
    bad = {u for u in prog.unresolved if re.fullmatch(r"[A-Z][A-Z0-9_]+", u)}
    if bad:
        raise AssertionError(f"{nf}: key compares against unresolved macros {sorted(bad)}")
    return {
        "paths": sorted(prog.files_used),
        "keys": sorted(_dotted(p) for p in prog.keys),
        "values": {_dotted(p): sorted(v) for p, v in sorted(prog.values.items())},
    }


def binaries(tag: str = TAG) -> dict[str, str]:
    """{meson.build path: executable name} for every daemon built under src/."""
    out = {}
    for p in upstream_files(REPO, tag, "src"):
        if p.endswith("/meson.build"):
            for name in re.findall(r"\bexecutable\s*\(\s*'([^']+)'", upstream_text(REPO, tag, p)):
                out[p] = name
    return out


def main_options(tag: str = TAG) -> str:
    """The getopt option string of src/main.c (every daemon's command line)."""
    m = re.search(r'ogs_getopt\s*\(\s*&\w+\s*,\s*"([^"]*)"', upstream_text(REPO, tag, "src/main.c"))
    assert m, "no ogs_getopt in src/main.c"
    return m.group(1)


def log_levels(tag: str = TAG) -> list[str]:
    """Level names `logger.level` may take: ogs_log_level_from_string (lib/core/ogs-log.c)."""
    code = _strip_comments(upstream_text(REPO, tag, LOG_FILE))
    m = re.search(r"\bogs_log_level_from_string\s*\([^)]*\)\s*\{", code)
    assert m, f"no ogs_log_level_from_string in {LOG_FILE}"
    body = code[m.end() - 1:_match(code, m.end() - 1)]
    return sorted(set(re.findall(r"\bstr(?:case)?cmp\s*\(\s*\w+\s*,\s*\"(\w+)\"", body)))


# ------------------------------------------------------------------ subscriber documents


def subscriber_read_facts(tag: str = TAG) -> dict[str, Any]:
    """Fields of a `subscribers` document the dbi functions read, with the BSON types they accept."""
    files = {p: upstream_text(REPO, tag, p) for p in DBI_FILES}
    prog = Program(files, macros(tag), key_fns=("bson_iter_key",))
    for src in prog.sources.values():
        for fn in src.functions:
            if not fn.static:
                prog.run(src.path, fn.name)
    return {_dotted(p): sorted(t) for p, t in sorted(prog.keys.items())}


def subscriber_written_facts(tag: str = TAG) -> list[str]:
    """Fields the dbi functions update in place (BCON_NEW("$set" | "$inc" | "$bit", ...))."""
    out: set[str] = set()
    for path in DBI_FILES:
        src = CSource(path, upstream_text(REPO, tag, path), macros(tag))
        for m in re.finditer(r"\bBCON_NEW\s*\(", src.code):
            args = _split_args(src.code[m.end():_match(src.code, m.end() - 1) - 1])
            if not args or src.atom(args[0], []) not in {("lit", "$set"), ("lit", "$inc"), ("lit", "$bit")}:
                continue
            depth = 0                        # "$set", "{", KEY, BCON_X(v), ..., "}"
            for prev, arg in itertools.pairwise(args):
                kind, v = src.atom(prev, [])
                if kind == "lit" and v in ("{", "}"):
                    depth += 1 if v == "{" else -1
                elif depth == 1 and kind == "lit" and (arg.startswith("BCON_") or arg == '"{"'):
                    out.add(v)
    return sorted(out)


def _js_tokens(text: str) -> list[str]:
    text = re.sub(r"//[^\n]*|/\*.*?\*/", " ", text, flags=re.S)
    return re.findall(r"'[^']*'|\"[^\"]*\"|[\w$.]+|[{}\[\]:,()]", text)


def _js_value(toks: list[str], i: int) -> tuple[Any, int]:
    t = toks[i]
    if t == "{":
        obj: dict[str, Any] = {}
        i += 1
        while toks[i] != "}":
            key = toks[i].strip("'\"")
            assert toks[i + 1] == ":", toks[i:i + 3]
            obj[key], i = _js_value(toks, i + 2)
            if toks[i] == ",":
                i += 1
        return obj, i + 1
    if t == "[":
        arr = []
        i += 1
        while toks[i] != "]":
            v, i = _js_value(toks, i)
            arr.append(v)
            if toks[i] == ",":
                i += 1
        return arr, i + 1
    parts = []
    depth = 0
    while depth or toks[i] not in {",", "}", "]"}:
        depth += {"(": 1, ")": -1}.get(toks[i], 0)
        parts.append(toks[i])
        i += 1
    return " ".join(parts), i


def _schema_fields(node: Any, prefix: str, out: dict[str, str]) -> None:
    for k, v in node.items():
        p = f"{prefix}{k}"
        if isinstance(v, dict) and "$type" in v:
            out[p] = str(v["$type"])
        elif isinstance(v, dict):
            out[p] = "object"
            _schema_fields(v, p + ".", out)
        elif isinstance(v, list):
            if v and isinstance(v[0], dict):
                out[p] = "array of object"
                _schema_fields(v[0], p + ".", out)
            else:
                out[p] = f"array of {v[0] if v else 'Mixed'}"
        else:
            out[p] = str(v)


def webui_schema_fields(tag: str = TAG) -> dict[str, str]:
    """The WebUI's mongoose schema for `subscribers`: {dotted field: declared type}."""
    toks = _js_tokens(upstream_text(REPO, tag, WEBUI_SCHEMA))
    i = next(j for j in range(len(toks) - 2) if toks[j] == "Schema" and toks[j + 1] == "(")
    schema, _ = _js_value(toks, i + 2)
    out: dict[str, str] = {}
    _schema_fields(schema, "", out)
    return out


# ------------------------------------------------------------------ the whole facts file


def derive(tag: str = TAG) -> dict[str, Any]:
    """Everything tests/lab/facts/open5gs.yaml records, from the source at ``tag``."""
    nf_facts = {nf: nf_config_facts(nf, tag) for nf in NFS}
    common = set.intersection(*(set(f["keys"]) for f in nf_facts.values()))
    common = {k for k in common if k.split(".")[0] not in NFS}
    bins = binaries(tag)
    return {
        "source": {"repo": REPO, "tag": tag, "paths": sorted({
            *(p for f in nf_facts.values() for p in f["paths"]), *DBI_FILES, *MACRO_HEADERS,
            WEBUI_SCHEMA, LOG_FILE, "src/main.c", *bins})},
        "config": {
            "model": ("path-aware: dotted key paths, YAML sequences transparent (smf.session.subnet is "
                      "`smf: {session: [{subnet: ...}]}`); a key is listed when the NF's parse compares it "
                      "with strcmp, including keys it accepts and leaves to another parser"),
            "common": {
                "note": "read by every NF: ogs_app_initialize -> parse_config, ogs_app_parse_global_conf",
                "paths": sorted(set.intersection(*(set(f["paths"]) for f in nf_facts.values()))
                                & {"lib/app/ogs-init.c", "lib/app/ogs-config.c"}),
                "keys": sorted(common),
            },
            "nf": {nf: {"paths": f["paths"], "keys": sorted(set(f["keys"]) - common), "values": f["values"]}
                   for nf, f in nf_facts.items()},
        },
        "logger_levels": {"paths": [LOG_FILE], "levels": log_levels(tag)},
        "binaries": {"paths": sorted(bins), "names": sorted(bins.values()),
                     "getopt": {"paths": ["src/main.c"], "options": main_options(tag)}},
        "subscriber": {
            "collection": "subscribers",
            "read": {"note": "field: BSON types the reader accepts (BSON_ITER_HOLDS_*); others are skipped",
                     "paths": list(DBI_FILES), "fields": subscriber_read_facts(tag)},
            "written": {"note": "updated in place by Open5GS (BCON_NEW $set/$inc/$bit)",
                        "paths": list(DBI_FILES), "fields": subscriber_written_facts(tag)},
            "webui_schema": {"note": "the WebUI's mongoose schema (what the WebUI and open5gs-dbctl write)",
                             "paths": [WEBUI_SCHEMA], "fields": webui_schema_fields(tag)},
        },
    }


HEADER = """\
# Facts about Open5GS {tag} (the lab's gradiant/open5gs:2.7.5 image), derived from the real source by
# tests/lab/labfacts_open5gs.py: regenerate with
#   .venv/bin/python tests/lab/labfacts_open5gs.py > tests/lab/facts/open5gs.yaml
# Key names only; no upstream code. tests/lab/test_facts_open5gs.py checks our rendered configs and
# subscriber documents against them, and (where the snapshot is present) that they still match the source.
"""


def render_facts(tag: str = TAG) -> str:
    import yaml

    return HEADER.format(tag=tag) + yaml.safe_dump(derive(tag), sort_keys=False, default_flow_style=False,
                                                   width=110)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(render_facts(), end="")
