"""A run's name: the rule and its check. Light (no pydantic): the run directory needs it on every command,
the monitor's start included, and the spec's schema applies the same rule to `name:`."""

from __future__ import annotations

import re

NAME_RULE = "lowercase letters, digits and '-', starting and ending with a letter or digit"
NAME_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


def check_run_name(name: str) -> str | None:
    """Return why `name` is not a valid run name, or None when it is."""
    if not name:
        return "the run name is empty"
    if len(name) > 64:
        return "the run name is longer than 64 characters"
    if not NAME_PATTERN.match(name):
        return f"'{name}' is not a valid run name: use {NAME_RULE} (e.g. run-01)"
    return None
