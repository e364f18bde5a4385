"""A small expander for the subset of Go's text/template that tunesmith's Ollama TEMPLATE uses, written from the Go
documentation (https://pkg.go.dev/text/template), independent of tunesmith/export/ollama.py:

  {{ .Field }}  {{ $.Field }}  {{ $var }}  {{- trims the text before }}  {{ trims the text after -}}
  {{ if P }} {{ else if P }} {{ else }} {{ end }}   {{ range $i, $_ := P }} {{ end }}   {{ $x := P }}
  functions eq, not, len, slice, index; string and integer literals; parenthesised pipelines.

Truthiness as in Go: false, 0, "", nil and empty lists are false. `slice x i` is x[i:]; `index x i` is x[i].
"""

from __future__ import annotations

import re
from typing import Any

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|-?\d+|\$?[A-Za-z_][A-Za-z_0-9]*(?:\.[A-Za-z_][A-Za-z_0-9]*)*|\$\.[A-Za-z_.]+|\.[A-Za-z_.]*|\$)')


def lex(source: str) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in ACTION.finditer(source):
        text = source[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        items.append(("text", text))
        items.append(("action", m.group(2).strip()))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = source[pos:]
    items.append(("text", tail.lstrip() if trim_next else tail))
    return items


def parse(items: list[tuple[str, str]], i: int = 0, stop: tuple[str, ...] = ()) -> tuple[list, int, str | None]:
    """Nodes until an action starting with one of `stop`; returns (nodes, next index, the stopping action)."""
    nodes: list = []
    while i < len(items):
        kind, value = items[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
            continue
        word = value.split(" ", 1)[0]
        if word in stop or (value.startswith("else") and "else" in stop):
            return nodes, i, value
        if word == "if":
            branches, otherwise = [], []
            cond = value[3:]
            while True:
                body, i, ended = parse(items, i + 1, ("end", "else"))
                branches.append((cond, body))
                if ended == "end":
                    break
                if ended.startswith("else if "):
                    cond = ended[len("else if "):]
                    continue
                otherwise, i, _ = parse(items, i + 1, ("end",))
                break
            nodes.append(("if", branches, otherwise))
            i += 1
        elif word == "range":
            header = value[len("range "):]
            names, expr = header.split(":=")
            body, i, _ = parse(items, i + 1, ("end",))
            nodes.append(("range", [n.strip() for n in names.split(",")], expr.strip(), body))
            i += 1
        elif re.match(r"^\$\w+\s*:?=", value):
            name, expr = re.split(r"\s*:?=\s*", value, maxsplit=1)
            nodes.append(("assign", name, expr))
            i += 1
        else:
            nodes.append(("output", value))
            i += 1
    return nodes, i, None


def tokens(expr: str) -> list[str]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot read {expr[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


FUNCS = {
    "eq": lambda a, *b: any(a == x for x in b),
    "not": lambda a: not truthy(a),
    "len": len,
    "slice": lambda x, i=0, j=None: x[i:j],
    "index": lambda x, i: x[i],
}


def truthy(value: Any) -> bool:
    return bool(value)


def evaluate(expr: str, dot: Any, scope: dict) -> Any:
    toks = tokens(expr)
    value, rest = command(toks, dot, scope)
    if rest:
        raise ValueError(f"left over in {expr!r}: {rest}")
    return value


def command(toks: list[str], dot: Any, scope: dict) -> tuple[Any, list[str]]:
    args = []
    while toks and toks[0] != ")":
        term, toks = operand(toks, dot, scope)
        args.append(term)
    if args and callable(args[0]) and getattr(args[0], "_func", False):
        return args[0](*args[1:]), toks
    if len(args) != 1:
        raise ValueError(f"not a command: {args}")
    return args[0], toks


def operand(toks: list[str], dot: Any, scope: dict) -> tuple[Any, list[str]]:
    tok, toks = toks[0], toks[1:]
    if tok == "(":
        value, toks = command(toks, dot, scope)
        return value, toks[1:]  # drop ")"
    if tok.startswith('"'):
        return bytes(tok[1:-1], "utf-8").decode("unicode_escape"), toks
    if re.fullmatch(r"-?\d+", tok):
        return int(tok), toks
    if tok in FUNCS:
        f = FUNCS[tok]

        def call(*a, f=f):
            return f(*a)

        call._func = True
        return call, toks
    if tok == ".":
        return dot, toks
    if tok.startswith("$"):
        head, *path = tok.split(".")
        value = scope["$"] if head == "$" else scope[head]
        return fields(value, path), toks
    if tok.startswith("."):
        return fields(dot, tok[1:].split(".")), toks
    raise ValueError(f"unknown token {tok!r}")


def fields(value: Any, path: list[str]) -> Any:
    for name in path:
        if not name:
            continue
        value = value.get(name) if isinstance(value, dict) else getattr(value, name)
    return value


def run(nodes: list, dot: Any, scope: dict) -> str:
    out = []
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "output":
            value = evaluate(node[1], dot, scope)
            out.append("" if value is None else str(value))
        elif kind == "assign":
            scope[node[1]] = evaluate(node[2], dot, scope)
        elif kind == "if":
            for cond, body in node[1]:
                if truthy(evaluate(cond, dot, scope)):
                    out.append(run(body, dot, dict(scope)))
                    break
            else:
                out.append(run(node[2], dot, dict(scope)))
        elif kind == "range":
            names, expr, body = node[1], node[2], node[3]
            for i, item in enumerate(evaluate(expr, dot, scope) or []):
                inner = dict(scope)
                if len(names) == 2:
                    inner[names[0]], inner[names[1]] = i, item
                else:
                    inner[names[0]] = item
                out.append(run(body, item, inner))
    return "".join(out)


def expand(source: str, data: dict) -> str:
    nodes, _, _ = parse(lex(source))
    return run(nodes, data, {"$": data})
