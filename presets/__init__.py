"""Scenario presets: partial run specs merged under the user's answers.

Merge order: built-in defaults < preset < run file < `--set` overrides.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

NAMES = ("standard", "quality", "fast")


def _read(name: str) -> dict[str, Any]:
    if name not in NAMES:
        raise KeyError(f"unknown preset '{name}': choose one of {', '.join(NAMES)}")
    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_preset(name: str) -> dict[str, Any]:
    """The partial spec a preset sets (without its description)."""
    data = _read(name)
    data.pop("description", None)
    return data


def describe(name: str) -> str:
    """The one line a beginner reads when choosing."""
    return _read(name)["description"]
