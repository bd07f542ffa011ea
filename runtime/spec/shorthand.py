"""The run file's shorthand, in one place: `stage: sft` is `stage: {type: sft}`, and so is `method: lora`.

Every reader expands it before merging or validating, every writer collapses it again, and dotted paths
(`training.learning_rate`, as `--set` and the wizard use them) are flattened and nested here too.
"""

from __future__ import annotations

import copy
from typing import Any

SHORTHAND = {"stage": "type", "method": "type"}  # section -> the field its shorthand value fills


def expand(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with `stage: sft` and `method: lora` in their section form."""
    out = copy.deepcopy(raw)
    for key, field in SHORTHAND.items():
        if isinstance(out.get(key), str):
            out[key] = {field: out[key]}
    return out


def collapse(data: dict[str, Any]) -> dict[str, Any]:
    """`stage: {type: sft}` back to `stage: sft` where the type is all the section holds (in place)."""
    for key, field in SHORTHAND.items():
        if isinstance(data.get(key), dict) and list(data[key]) == [field]:
            data[key] = data[key][field]
    return data


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted paths: {"training": {"seed": 1}} -> {"training.seed": 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def nest(dotted: str, value: Any) -> dict[str, Any]:
    """One dotted path as nested sections: "training.seed", 1 -> {"training": {"seed": 1}}."""
    out: dict[str, Any] = {}
    cursor = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return out
