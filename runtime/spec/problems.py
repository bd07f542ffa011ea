"""Mistakes in a run file, reported all at once: each with its field path, its YAML line and what to do."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import yaml
from pydantic import ValidationError

from ftune.runtime.errors import UserError
from ftune.runtime.spec.keys import FOREIGN_KEYS
from ftune.runtime.spec.schema import class_at, stages_text, stages_with, untagged


@dataclass
class Problem:
    path: str  # dotted field path, e.g. training.learning_rate
    message: str
    line: int | None = None  # 1-based line in the YAML file, when known


class SpecError(UserError):
    """A run file with mistakes: every mistake at once, each with its field path (and line)."""

    def __init__(self, problems: list[Problem], source: str | None = None):
        self.problems = problems
        self.source = source
        super().__init__(self.render(), hint="Fix the run file and try again; every field is in docs/run-file.md.")

    def render(self) -> str:
        where = self.source or "the run spec"
        n = len(self.problems)
        head = f"{where} has {n} mistake{'s' if n != 1 else ''}:"
        lines = [head]
        for p in self.problems:
            at = f"line {p.line}: " if p.line else ""
            said = p.path and p.message.startswith(p.path)  # "training.optim adam_mini ...": no need to say it twice
            lines.append(f"  {at}{p.message}" if said else f"  {at}{p.path or '(top level)'}: {p.message}")
        if sum("in ftune this is" in p.message for p in self.problems) >= 3:
            lines.append("This looks like another tool's config (LLaMA-Factory, GLM-4, a platform's parameters): "
                         "`ftune import FILE` converts it key by key (docs/import.md).")
        return "\n".join(lines)


def _suggest(path: tuple[str | int, ...]) -> str:
    key = str(path[-1])
    if key in FOREIGN_KEYS:
        return f" — in ftune this is '{FOREIGN_KEYS[key]}'"
    cls = class_at(path[:-1])
    if cls is not None:
        close = difflib.get_close_matches(key, list(cls.model_fields), n=1, cutoff=0.6)
        if close:
            return f" — did you mean '{close[0]}'?"
        return f" — expected one of: {', '.join(cls.model_fields)}"
    return ""


_LEADING_PATH = re.compile(r"^[a-z_]+(?:\.[a-z0-9_]+)+")


def _leading_field(message: str) -> str | None:
    """The field a cross-field message starts with ("training.optim adam_mini splits ..."), so the problem is
    filed under it: its line is found and the wizard greys out exactly that choice."""
    m = _LEADING_PATH.match(message)
    parts = m.group(0).split(".") if m else []
    for n in range(len(parts), 1, -1):
        cls = class_at(tuple(parts[: n - 1]))
        if cls is not None and parts[n - 1] in cls.model_fields:
            return ".".join(parts[:n])
    return None


def pydantic_problems(err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors(include_url=False):
        loc, kind = untagged(tuple(e["loc"])), e["type"]
        if kind == "union_tag_invalid":  # stage.type names no stage: said as pydantic says it of any other choice
            *tags, last = e["ctx"]["expected_tags"].split(", ")
            loc, kind = (*loc, "type"), "literal_error"
            e = {**e, "msg": f"Input should be {', '.join(tags)} or {last}", "input": e["ctx"]["tag"]}
        dotted = ".".join(str(p) for p in loc)
        if kind == "value_error" and len(loc) <= 1:  # a model validator: name the field it is about
            dotted = _leading_field(e["msg"].removeprefix("Value error, ")) or dotted
        owners = stages_with(str(loc[-1])) if loc[:1] == ("stage",) else []
        if kind == "extra_forbidden" and owners:  # another stage's setting (its loc: stage, <this type>, key)
            msg = (f"not a setting of stage {e['loc'][1]}: it belongs to {stages_text(owners)}; remove it, or set "
                   f"stage.type to {'one of them' if len(owners) > 1 else owners[0]}")
        elif kind == "extra_forbidden":
            msg = "unknown key" + _suggest(tuple(e["loc"]))
        elif kind == "missing":
            msg = "required, but missing"
        else:
            msg = e["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if kind not in ("value_error", "assertion_error") and "input" in e and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
        problems.append(Problem(dotted, msg))
    return problems


def line_of(root: yaml.Node | None, path: str) -> int | None:
    """1-based line of the deepest existing key of `path` in a composed YAML document."""
    node, line = root, None
    for part in path.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                node, line = value_node, key_node.start_mark.line + 1
                break
        else:
            break
    return line
