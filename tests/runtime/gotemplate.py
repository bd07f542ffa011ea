"""A small renderer of Go's text/template, for the constructs ftune's Modelfiles and Ollama's own simple templates use:
text, {{ .Field }}, {{ range .Messages }}, {{ if }}/{{ else if }}/{{ else }}/{{ end }}, `eq A B`, `not A`, and the
`{{-` / `-}}` whitespace trimming. Fields resolve on the current item (a message in a range) and then on the top
(.System, .Prompt, .Response, .Messages)."""

from __future__ import annotations

import re
import shlex

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _tokens(src: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        if out and out[-1][0] == "trim-next":
            out.pop()
            text = text.lstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        if m.group(3):
            out.append(("trim-next", ""))
        pos = m.end()
    text = src[pos:]
    if out and out[-1][0] == "trim-next":
        out.pop()
        text = text.lstrip()
    out.append(("text", text))
    return [t for t in out if t != ("text", "")]


def _parse(tokens, i=0, stop=("end",)):
    """A list of nodes up to one of `stop` (returns nodes, index of the stop token)."""
    nodes = []
    while i < len(tokens):
        kind, body = tokens[i]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        word = body.split()[0] if body else ""
        if word in stop or body.startswith("else"):
            return nodes, i
        if word == "range":
            inner, j = _parse(tokens, i + 1)
            nodes.append(("range", body[len("range"):].strip(), inner))
            i = j + 1
        elif word == "if":
            branches = []
            cond = body[2:].strip()
            while True:
                inner, j = _parse(tokens, i + 1)
                branches.append((cond, inner))
                _, b = tokens[j]
                if b == "end":
                    break
                cond = b[len("else if"):].strip() if b.startswith("else if") else None
                i = j
            nodes.append(("if", branches))
            i = j + 1
        else:
            nodes.append(("expr", body))
            i += 1
    if stop != ():
        raise ValueError("template ends inside a block")
    return nodes, i


def _value(expr: str, scope: list[dict]):
    words = shlex.split(expr)
    if words[0] == "eq":
        return _value(words[1], scope) == _value(words[2], scope) if words[2].startswith(".") else \
            _value(words[1], scope) == words[2]
    if words[0] == "not":
        return not _value(" ".join(words[1:]), scope)
    if expr.startswith("."):
        key = expr[1:]
        for s in reversed(scope):
            if key in s:
                return s[key]
        return ""
    return expr


def _run(nodes, scope) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            out.append(str(_value(node[1], scope)))
        elif node[0] == "range":
            for item in _value(node[1], scope) or []:
                out.append(_run(node[2], [*scope, item]))
        else:
            for cond, inner in node[1]:
                if cond is None or _value(cond, scope):
                    out.append(_run(inner, scope))
                    break
    return "".join(out)


def render(template: str, **top) -> str:
    """Render `template` with top-level fields such as Messages=[{"Role": ..., "Content": ...}], System=..."""
    nodes, _ = _parse(_tokens(template), 0, ())
    return _run(nodes, [top])


def ollama_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"Role": m["role"], "Content": m["content"]} for m in messages]
