"""`--set key.path=value` overrides and the merge order: defaults < preset < run file < overrides."""

from __future__ import annotations

from typing import Any

import yaml

from ftune.runtime.spec import shorthand
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
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(Problem(item, "an override must look like section.key=value, e.g. training.learning_rate=3e-4"))
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        out = deep_merge(out, shorthand.expand(shorthand.nest(key.strip(), value)))
    if problems:
        raise SpecError(problems, "--set")
    return out


def preset_override(overrides: list[str]) -> str | None:
    """The preset `--set preset=NAME` picks: it must be known before the preset is merged under the file."""
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "preset":
            return value.strip()
    return None
