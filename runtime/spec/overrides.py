"""`--set key.path=value` overrides and the merge order: defaults < preset < run file < overrides."""

from __future__ import annotations

from typing import Any

from ftune.runtime.spec import shorthand
from ftune.runtime.spec.edit import parse_assignment
from ftune.runtime.spec.problems import Problem, SpecError


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, section by section (neither is changed)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides (values parsed as YAML: 3e-4, true, [a, b])."""
    out = shorthand.expand(raw)
    for key, value in _parse(overrides):
        out = deep_merge(out, shorthand.expand(shorthand.nest(key, value)))
    return out


def _parse(overrides: list[str]) -> list[tuple[str, Any]]:
    problems, out = [], []
    for item in overrides:
        parsed = parse_assignment(item)
        if parsed is None:
            problems.append(Problem(item, "an override must look like section.key=value, e.g. training.learning_rate=3e-4"))
            continue
        out.append(parsed)
    if problems:
        raise SpecError(problems, "--set")
    return out


def edit_in_place(text: str, overrides: list[str]) -> str:
    """The run file's text with `--set` applied to it and nothing else changed: its comments, order, quoting and
    shorthand (`stage: sft` stays, unless a stage setting needs the section) stay as the user wrote them."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    rt = YAML()  # round-trip: comments and layout are kept
    rt.preserve_quotes = True
    rt.width = 120
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    data = rt.load(text) if text.strip() else None
    data = data if isinstance(data, dict) else CommentedMap()
    for key, value in _parse(overrides):
        *parents, last = key.split(".")
        if len(parents) == 1 and isinstance(data.get(parents[0]), str) and shorthand.SHORTHAND.get(parents[0]) == last:
            data[parents[0]] = value  # stage.type=dpo on `stage: sft`: still a shorthand
            continue
        node = data
        for part in parents:
            child = node.get(part)
            if isinstance(child, str) and node is data and part in shorthand.SHORTHAND:
                child = CommentedMap([(shorthand.SHORTHAND[part], child)])  # `stage: sft` grows a section
                node[part] = child
            elif not isinstance(child, dict):
                child = CommentedMap()
                node[part] = child
            node = child
        node[last] = value
    out = io.StringIO()
    rt.dump(data, out)
    return out.getvalue()


def preset_override(overrides: list[str]) -> str | None:
    """The preset `--set preset=NAME` picks: it must be known before the preset is merged under the file."""
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "preset":
            return value.strip()
    return None
