"""Editing a run file's data as plain dicts: get, set and delete by dotted path, `KEY=VALUE` values, the usual key
order, and compacting before it is written. The wizard, the importers and `--set` all edit through here."""

from __future__ import annotations

import re
import typing
from typing import Any

import yaml

from ftune.runtime.spec import shorthand
from ftune.runtime.spec.schema import iter_fields

ORDER = ("name", "preset", "model", "data", "stage", "method", "training", "output", "resources")


def get_path(data: dict[str, Any], dotted: str, default: Any = None) -> Any:
    cur: Any = data
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a value, making the sections on the way; `stage: sft` becomes `stage: {type: sft}` when a stage setting
    goes under it."""
    parts = dotted.split(".")
    cur = data
    for part in parts[:-1]:
        if not isinstance(cur.get(part), dict):
            kind = cur.get(part)
            cur[part] = {shorthand.SHORTHAND[part]: kind} if part in shorthand.SHORTHAND and isinstance(kind, str) \
                else {}
        cur = cur[part]
    cur[parts[-1]] = value


def del_path(data: dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    cur: Any = data
    for part in parts[:-1]:
        if not isinstance(cur, dict) or not isinstance(cur.get(part), dict):
            return
        cur = cur[part]
    if isinstance(cur, dict):
        cur.pop(parts[-1], None)


_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def numbers(value: Any) -> Any:
    """`5e-5` as the number everyone means: PyYAML reads YAML 1.1, which keeps an exponent without a dot as text."""
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [numbers(v) for v in value]
    if isinstance(value, str) and _EXPONENT.match(value.strip()):
        return float(value)
    return value


def parse_value(text: str) -> Any:
    """The value of a `KEY=VALUE` as YAML (3e-4, true, null, [a, b]); text that is not YAML stays text."""
    if not text.strip():
        return None
    try:
        return numbers(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


def parse_assignment(item: str) -> tuple[str, Any] | None:
    """`section.key=value` as (key, value); None when it is not of that shape."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        return None
    return key.strip(), parse_value(text)


def schema_default(dotted: str) -> Any:
    return field_info(dotted).get_default(call_default_factory=True)


def field_info(dotted: str) -> Any:
    for path, info, _cls in iter_fields():
        if path == dotted:
            return info
    raise KeyError(dotted)


def literal_values(annotation: Any) -> list[Any] | None:
    """The allowed values of a Literal type (or an optional one); None for other types."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is typing.Literal:
            return list(typing.get_args(candidate))
    return None


def _null_matters(dotted: str) -> bool:
    """`--set training.save_total_limit=null` (keep every checkpoint) differs from leaving it out (keep 3)."""
    try:
        return schema_default(dotted) is not None
    except KeyError:
        return False


def compact(raw: dict[str, Any]) -> dict[str, Any]:
    """Sections in the usual order, empty ones and needless nulls dropped, `stage: sft` for `stage: {type: sft}`."""

    def prune(value: Any, path: str = "") -> Any:
        if isinstance(value, dict):
            pruned = {k: prune(v, f"{path}{k}.") for k, v in value.items()}
            return {k: v for k, v in pruned.items() if v != {} and (v is not None or _null_matters(f"{path}{k}"))}
        return value

    data = shorthand.collapse(prune(raw))
    ordered = {k: data[k] for k in ORDER if k in data}
    ordered.update({k: v for k, v in data.items() if k not in ordered})
    return ordered
