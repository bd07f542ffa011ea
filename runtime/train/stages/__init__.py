"""The stage registry: one `StageDef` per stage, each in its own file here (sft.py, dpo.py, ...), listed once in
ORDER (also the wizard's order). Adding a stage is its file plus its name below.

Importing this imports no torch, transformers or TRL: the CLI, the wizard and the schema read it."""

from __future__ import annotations

import importlib

from ftune.runtime.train.stages.stage import StageDef

ORDER = ("sft", "dpo", "kto", "orpo", "simpo", "rm", "pt", "rl")

STAGES: dict[str, StageDef] = {n: importlib.import_module(f"{__name__}.{n}").STAGE for n in ORDER}
NAMES = tuple(STAGES)


def stage(name: str) -> StageDef:
    """The stage called `name` (the schema has already checked it is one)."""
    return STAGES[name]


def data_kinds() -> dict[str, list[str]]:
    """Each data kind and the stages that train on it, in registry order: {"chat": ["sft", "rl"], ...}."""
    kinds: dict[str, list[str]] = {}
    for s in STAGES.values():
        kinds.setdefault(s.data_kind, []).append(s.name)
    return kinds


__all__ = ["NAMES", "ORDER", "STAGES", "StageDef", "data_kinds", "stage"]
